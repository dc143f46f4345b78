//! Where the binaries the toolkit drives come from.
//!
//! restate-server is the pinned npm package the Makefile installs into `.tools/`; the handler
//! is built from this workspace. Each can be overridden by an env var, so an installed copy
//! elsewhere works too.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The restate-server version the project is tested against.
pub const RESTATE_SERVER_VERSION: &str = "1.7.12";

/// Env var naming a restate-server binary to use instead of the project's install.
pub const RESTATE_SERVER_ENV: &str = "FANOUT_RESTATE_SERVER";

/// Env var naming the handler binary (`fanout-handler` / `bootstrap`) to run.
pub const HANDLER_BIN_ENV: &str = "FANOUT_HANDLER_BIN";

/// The folder holding `.tools/` and `target/`: the nearest ancestor of the current directory
/// (or of this executable) that has a `.tools` folder, else one with a `Cargo.lock` file. A
/// `.tools` folder wins, so that in a job crate of your own (`fanout new`, which has a
/// Cargo.lock) the checkout's tools are still found through this executable.
pub fn project_root() -> Option<PathBuf> {
    let from_cwd = std::env::current_dir().ok();
    let from_exe = std::env::current_exe().ok();
    let starts: Vec<PathBuf> = [from_cwd, from_exe].into_iter().flatten().collect();
    let find = |marks: &dyn Fn(&Path) -> bool| {
        starts.iter().find_map(|start| {
            start
                .ancestors()
                .find(|dir| marks(dir))
                .map(Path::to_path_buf)
        })
    };
    find(&|dir| dir.join(".tools").is_dir())
        .or_else(|| find(&|dir| dir.join("Cargo.lock").is_file()))
}

/// The restate-server binary to start.
pub fn restate_server() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(RESTATE_SERVER_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{RESTATE_SERVER_ENV}={} does not name a file; point it at a restate-server binary \
             or unset it to use the project's install",
            path.display()
        );
    }
    // The npm package's `.bin/restate-server` is a node wrapper that spawns the platform
    // binary as its child; run the binary itself so that stopping it by pid stops the server.
    let installed = project_root()
        .map(|root| {
            root.join(".tools/restate/node_modules/@restatedev")
                .join(format!("restate-server-{}", npm_platform()))
                .join("bin/restate-server")
        })
        .filter(|path| path.is_file());
    installed.with_context(|| {
        format!(
            "restate-server is not installed; run `make tools` in the project (it installs \
             @restatedev/restate-server {RESTATE_SERVER_VERSION} from npm into .tools/), or set \
             {RESTATE_SERVER_ENV}"
        )
    })
}

/// The suffix of restate-server's platform package on npm (`linux-x64`, `linux-arm64`, …).
fn npm_platform() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("{os}-{arch}")
}

/// The handler binary built from this workspace (debug unless `release`).
pub fn handler_binary(release: bool) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(HANDLER_BIN_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{HANDLER_BIN_ENV}={} does not name a file", path.display());
    }
    let profile = if release { "release" } else { "debug" };
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| project_root().map(|root| root.join("target")));
    target_dir
        .map(|dir| dir.join(profile).join("fanout-handler"))
        .filter(|path| path.is_file())
        .with_context(|| {
            format!(
                "the handler binary is not built; run `cargo build{} -p fanout-handler` (or \
                 `make build-local`), or set {HANDLER_BIN_ENV}",
                if release { " --release" } else { "" }
            )
        })
}
