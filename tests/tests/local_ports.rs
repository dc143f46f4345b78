//! `fanout local` and `fanout invoke` meet: `fanout local` listens on fixed ports (Restate's
//! defaults, or the same set moved with `--ports BASE`), prints the export line that points
//! the other verbs at it and the Restate UI's URL, and says which port is taken when one is.
//!
//! The fixed-port path is proven on a base picked from a free range, so the test runs beside
//! other stacks; Restate's own defaults are tried only when they are free on this machine.

use fanout::ports::LocalPorts;
use fanout_tests::{CliRun, fanout_binary, handler_binary};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running `fanout local`, its stdout kept open (a closed pipe would kill it with SIGPIPE
/// when it prints on stopping).
struct FanoutLocal {
    child: std::process::Child,
    printed: Vec<String>,
    _rest: std::io::Lines<BufReader<std::process::ChildStdout>>,
    _state: tempfile::TempDir,
}

impl FanoutLocal {
    /// `fanout local ARGS` in a temp dir, up until it prints that Ctrl-C stops it.
    fn start(args: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let mut child = Command::new(fanout_binary())
            .arg("local")
            .args(args)
            .args(["--max-subtask-ms", "200"])
            .current_dir(state.path())
            .env("FANOUT_HANDLER_BIN", handler_binary())
            .env_remove("RESTATE_ADMIN_URL")
            .env_remove("RESTATE_INGRESS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.contains("Ctrl-C stops everything");
            printed.push(line);
            if done {
                break;
            }
        }
        assert!(
            printed
                .iter()
                .any(|l| l.contains("Ctrl-C stops everything")),
            "fanout local did not come up: {printed:#?}"
        );
        Self {
            child,
            printed,
            _rest: lines,
            _state: state,
        }
    }

    /// The value after `label:` on the line that starts with it.
    fn shown(&self, label: &str) -> String {
        self.printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(&format!("{label}:")))
            .unwrap_or_else(|| panic!("no {label}: line in {:#?}", self.printed))
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// The variables of the printed `export A=… B=…` line.
    fn exports(&self) -> Vec<(String, String)> {
        let line = self
            .printed
            .iter()
            .find_map(|l| l.trim().strip_prefix("export RESTATE_INGRESS_URL"))
            .map(|rest| format!("RESTATE_INGRESS_URL{rest}"))
            .unwrap_or_else(|| panic!("no export line in {:#?}", self.printed));
        line.split_whitespace()
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    /// Ctrl-C; it must exit 0.
    fn stop(mut self) {
        fanout_standin::process::interrupt(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("fanout local ignored Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FanoutLocal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            fanout_standin::process::interrupt(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// Every port a one-node Lambda-mode stack on `ports` needs.
fn lambda_stack_ports(ports: &LocalPorts) -> [u16; 4] {
    [ports.ingress, ports.admin, ports.node, ports.lambda]
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A `--ports` base whose whole set is free now, from a range no ephemeral port uses.
fn free_base() -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for attempt in 0..200u64 {
        // Ingress 11000-24999: node ports 8042-22041, the rest below 26000.
        let base = 11_000 + ((seed.wrapping_mul(31).wrapping_add(attempt * 7919)) % 14_000) as u16;
        let ports = LocalPorts::with_ingress_at(base, 1).unwrap();
        if lambda_stack_ports(&ports).into_iter().all(free) {
            return base;
        }
    }
    panic!("no free port set found");
}

/// `fanout ARGS` in `dir` with exactly `env` for Restate (none of the caller's).
fn fanout_in(dir: &std::path::Path, args: &[&str], env: &[(String, String)]) -> CliRun {
    Command::new(fanout_binary())
        .args(args)
        .current_dir(dir)
        .env_remove("RESTATE_ADMIN_URL")
        .env_remove("RESTATE_INGRESS_URL")
        .env_remove("RESTATE_AUTH_TOKEN")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

const TASK: &str = "get out of bed,shower,make coffee,have breakfast";
const RESULT: &str =
    r#"{"description":"get out of bed: DONE,shower: DONE,make coffee: DONE,have breakfast: DONE"}"#;

#[test]
fn fanout_local_on_fixed_ports_meets_fanout_invoke_through_the_printed_exports() {
    let base = free_base();
    let ports = LocalPorts::with_ingress_at(base, 1).unwrap();
    let local = FanoutLocal::start(&["--ports", &base.to_string()]);
    assert_eq!(local.shown("ingress"), format!("http://127.0.0.1:{base}"));
    assert_eq!(
        local.shown("admin"),
        format!("http://127.0.0.1:{}", ports.admin)
    );
    assert_eq!(
        local.shown("lambda"),
        format!("http://127.0.0.1:{}", ports.lambda)
    );
    let ui = local.shown("UI");
    assert_eq!(ui, format!("http://127.0.0.1:{}/ui/", ports.admin));
    let exports = local.exports();
    assert_eq!(
        exports,
        vec![
            (
                "RESTATE_INGRESS_URL".to_owned(),
                format!("http://127.0.0.1:{base}")
            ),
            (
                "RESTATE_ADMIN_URL".to_owned(),
                format!("http://127.0.0.1:{}", ports.admin)
            ),
        ]
    );

    // Restate's web UI is served where it says.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let page = runtime.block_on(async {
        let response = reqwest::get(&ui).await.unwrap();
        let status = response.status();
        (status, response.text().await.unwrap())
    });
    assert!(
        page.0.is_success() && page.1.contains("<html"),
        "{ui}: {page:?}"
    );

    // fanout invoke with no URL flags, pointed only by the exported variables.
    let elsewhere = tempfile::tempdir().unwrap();
    let run = fanout_in(
        elsewhere.path(),
        &["invoke", TASK, "--progress", "none"],
        &exports,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout.trim(), RESULT, "{run:?}");
    // …and so does the rest: runs lists it.
    let runs = fanout_in(elsewhere.path(), &["runs"], &exports);
    assert_eq!(runs.code, Some(0), "{runs:?}");
    assert!(runs.stdout.contains("completed"), "{runs:?}");
    local.stop();
    assert!(free(base), "the ingress port is still taken after Ctrl-C");
}

#[test]
fn a_taken_port_is_named_with_its_holder_and_the_way_out() {
    let base = free_base();
    let ports = LocalPorts::with_ingress_at(base, 1).unwrap();
    // Someone (this test) already listens where the admin API would.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", ports.admin)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(fanout_binary())
        .args(["local", "--ports", &base.to_string()])
        .current_dir(state.path())
        .env("FANOUT_HANDLER_BIN", handler_binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It must give up at once; a stack that came up anyway is stopped, and the test fails.
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            fanout_standin::process::interrupt(child.id());
            let run: CliRun = child.wait_with_output().unwrap().into();
            panic!("fanout local did not stop at the taken port: {run:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run: CliRun = child.wait_with_output().unwrap().into();
    assert_eq!(run.code, Some(1), "{run:?}");
    let says = |text: &str| assert!(run.stderr.contains(text), "{text:?} missing: {run:?}");
    says(&format!(
        "port {} (Restate admin API) is taken by pid {}",
        ports.admin,
        std::process::id()
    ));
    says("--ports auto");
    says("stop it");
    // It failed before starting anything.
    assert!(free(base), "the ingress port was taken: something started");
    drop(squatter);
}

#[test]
fn ports_auto_picks_free_ports_and_still_prints_the_exports() {
    let local = FanoutLocal::start(&["--ports", "auto", "--mode", "http"]);
    let exports = local.exports();
    let ingress = local.shown("ingress");
    assert_eq!(exports[0], ("RESTATE_INGRESS_URL".to_owned(), ingress));
    let elsewhere = tempfile::tempdir().unwrap();
    let run = fanout_in(
        elsewhere.path(),
        &["invoke", "a,b", "--progress", "none"],
        &exports,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    local.stop();
}

/// Restate's own defaults: `fanout local` with no flag, then `fanout invoke` with no flag and
/// no variable. Skipped (with the reason) when one of those ports is taken on this machine.
#[test]
fn on_restates_default_ports_invoke_needs_no_flags() {
    let defaults = LocalPorts::RESTATE_DEFAULTS;
    if let Some(taken) = lambda_stack_ports(&defaults)
        .into_iter()
        .find(|p| !free(*p))
    {
        eprintln!("skipped: port {taken} is taken here, and the default stack needs it");
        return;
    }
    let local = FanoutLocal::start(&[]);
    assert_eq!(local.shown("ingress"), "http://127.0.0.1:8080");
    assert_eq!(local.shown("admin"), "http://127.0.0.1:9070");
    assert_eq!(local.shown("lambda"), "http://127.0.0.1:9000");
    let elsewhere = tempfile::tempdir().unwrap();
    let run = fanout_in(
        elsewhere.path(),
        &["invoke", TASK, "--progress", "none"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout.trim(), RESULT, "{run:?}");
    local.stop();
}
