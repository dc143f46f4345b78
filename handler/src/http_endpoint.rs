//! HTTP mode: serves the Restate endpoint (HTTP/2, bidirectional streaming) on a TCP port.

use restate_sdk::prelude::{Endpoint, HttpServer};
use std::net::SocketAddr;

/// The port of the reference contract.
pub const DEFAULT_PORT: u16 = 9080;

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish.
pub async fn serve(endpoint: Endpoint, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        "serving the Restate endpoint on http://{}",
        listener.local_addr()?
    );
    HttpServer::new(endpoint)
        .serve_with_cancel(listener, shutdown_signal())
        .await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
