//! The harness itself: every process it starts is gone after a test panics.

use fanout_tests::{Harness, Mode};
use std::sync::{Arc, Mutex};

fn alive(pid: u32) -> bool {
    // A zombie still answers kill -0, so read the state from /proc.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

#[test]
fn a_panicking_test_leaves_no_process_behind() {
    let pids = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&pids);
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let h = Harness::start(Mode::Http).await;
            seen.lock().unwrap().extend(
                [h.stack.server.pid(), h.stack.http_handler_pid()]
                    .into_iter()
                    .flatten(),
            );
            panic!("a failing test");
        });
    })
    .join();
    assert!(outcome.is_err(), "the test body panicked");
    let pids = pids.lock().unwrap().clone();
    assert_eq!(pids.len(), 2, "restate-server and the handler were started");
    // kill_on_drop sends SIGKILL as the runtime unwinds; give the kernel a moment to reap.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the panicking test");
    }
}
