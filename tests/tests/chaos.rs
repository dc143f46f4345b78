//! The randomized fault suite: seeded, replayable runs of `fanout invoke` on the real
//! restate-server and the real `fanout-handler` (HTTP endpoint, or Lambda bootstrap behind the
//! local stand-in), with faults injected while the fan-out runs.
//!
//! Each run is drawn from its seed alone (xorshift64): a width (1/4/10/50/200), a mode, a fan-in
//! strategy, a cap, failure knobs (transiently failing `flaky…` chores; chores that fail for good
//! under a tolerant or fail-fast policy) and one to three faults, each at its own moment (the
//! first within 0.4 s of Restate accepting the run, the others within 2.5 s):
//! - `server-restart`: `kill -9` of restate-server, down for a while, restarted on its base dir;
//! - `handler-restart` (HTTP): `kill -9` of the handler process, then a restart on its port;
//! - `lambda-kill` (Lambda): `kill -9` of the instances busy with a subtask;
//! - `throttle-429`, `service-5xx`, `response-lost`, `timeout` (Lambda): the stand-in answers
//!   429 or 500 without running the function, runs it and drops the response, or times it out
//!   mid-event; optionally only for `runSubtask` events.
//!
//! The first fault's kind is `KINDS[seed % 7]`, so consecutive seeds cover every kind evenly.
//!
//! After every run: the exact result in order with the usual exit code (or the expected failure),
//! nothing left unfinished in `sys_invocation`, no panic in any log, and how many subtask bodies
//! ran more than once (from the handler's `Started executing` / `Execution subtask finished`
//! lines, printed once per real execution). A table sums it up per fault kind.
//!
//! `cargo test -p fanout-tests --test chaos` runs the CI seeds ([`CI_SEEDS`]);
//! `make chaos` runs `chaos_many` (`--ignored`): `CHAOS_RUNS` runs (default 105) from
//! `CHAOS_SEED` (default 1000). Replay one run: `CHAOS_SEED=1042 CHAOS_RUNS=1 make chaos`.

use fanout_standin::FaultPlan;
use fanout_tests::{Harness, Mode};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Seeds CI runs: one per fault kind (seed % 7), small enough for a few minutes on 2 cores.
const CI_SEEDS: &[u64] = &[7, 1, 2, 3, 4, 5, 6];

/// A client that has not returned by then is stuck. Restate backs a failing invocation off
/// from 0.5 s doubling to 60 s, so nine faults in a row on one subtask alone take about 3 min.
const CLIENT_DEADLINE: Duration = Duration::from_secs(600);

/// How long the run's invocations may take to all be completed after the client returned.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ServerRestart,
    HandlerRestart,
    LambdaKill,
    Throttle,
    ServiceError,
    ResponseLost,
    Timeout,
}

const KINDS: [Kind; 7] = [
    Kind::ServerRestart,
    Kind::HandlerRestart,
    Kind::LambdaKill,
    Kind::Throttle,
    Kind::ServiceError,
    Kind::ResponseLost,
    Kind::Timeout,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ServerRestart => "server-restart",
            Kind::HandlerRestart => "handler-restart",
            Kind::LambdaKill => "lambda-kill",
            Kind::Throttle => "throttle-429",
            Kind::ServiceError => "service-5xx",
            Kind::ResponseLost => "response-lost",
            Kind::Timeout => "timeout",
        }
    }

    fn fits(self, mode: Mode) -> bool {
        match self {
            Kind::ServerRestart => true,
            Kind::HandlerRestart => mode == Mode::Http,
            _ => mode == Mode::Lambda,
        }
    }
}

/// xorshift64, as `fanout bench` draws: fixed, so a seed replays the same run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Debug, Clone)]
struct Fault {
    kind: Kind,
    /// When, from the moment Restate has the run.
    at: Duration,
    /// How long a killed server or handler stays down.
    down: Duration,
    /// Invokes hit, for the stand-in's faults.
    count: u32,
    /// Only `runSubtask` events, for the stand-in's faults.
    subtasks_only: bool,
    /// The injected timeout.
    timeout_ms: u64,
}

impl Fault {
    /// A fault of `kind` in the first `within_ms` of the run.
    fn draw(kind: Kind, within_ms: u64, rng: &mut Rng) -> Self {
        Self {
            kind,
            at: Duration::from_millis(rng.below(within_ms)),
            down: Duration::from_millis(rng.below(3000)),
            count: 1 + rng.below(3) as u32,
            subtasks_only: rng.below(3) > 0,
            timeout_ms: rng.pick(&[1, 60]),
        }
    }

    fn describe(&self) -> String {
        let at = self.at.as_millis();
        let scope = if self.subtasks_only {
            "runSubtask"
        } else {
            "any"
        };
        match self.kind {
            Kind::ServerRestart | Kind::HandlerRestart => {
                format!(
                    "{}@{at}ms(down {}ms)",
                    self.kind.name(),
                    self.down.as_millis()
                )
            }
            Kind::LambdaKill => format!("{}@{at}ms", self.kind.name()),
            Kind::Timeout => format!(
                "{}x{}@{at}ms({scope},{}ms)",
                self.kind.name(),
                self.count,
                self.timeout_ms
            ),
            _ => format!("{}x{}@{at}ms({scope})", self.kind.name(), self.count),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Failures {
    None,
    /// These chores (by index) fail retryably for 500 ms, then succeed.
    Transient(Vec<usize>),
    /// These chores fail for good (at their retry limit); a tolerant policy lets the run
    /// aggregate them, fail-fast fails the run.
    Permanent {
        doomed: Vec<usize>,
        tolerate: Option<usize>,
    },
}

#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    width: usize,
    mode: Mode,
    fan_in: &'static str,
    cap: Option<usize>,
    failures: Failures,
    faults: Vec<Fault>,
}

impl Plan {
    fn draw(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let primary = KINDS[(seed % KINDS.len() as u64) as usize];
        let mode = match primary {
            Kind::ServerRestart => rng.pick(&[Mode::Http, Mode::Lambda]),
            Kind::HandlerRestart => Mode::Http,
            _ => Mode::Lambda,
        };
        let width = rng.pick(&[1, 4, 10, 50, 200]);
        let fan_in = rng.pick(&["ledger", "select-any", "in-order"]);
        let cap = match rng.below(4) {
            0 => None,
            1 => Some(width),
            2 => Some((width / 5).max(1)),
            _ => Some(width.min(3)),
        };
        let indices = |rng: &mut Rng, n: usize| {
            let mut chosen: Vec<usize> = (0..n).map(|_| rng.below(width as u64) as usize).collect();
            chosen.sort_unstable();
            chosen.dedup();
            chosen
        };
        let failures = match (rng.below(3), width >= 4) {
            (1, _) => Failures::Transient(indices(&mut rng, 1 + width / 20)),
            (2, true) => {
                let doomed = indices(&mut rng, 1 + width / 50);
                let tolerate = (doomed.len() < width / 2).then_some(doomed.len() + 1);
                Failures::Permanent { doomed, tolerate }
            }
            _ => Failures::None,
        };
        // The first fault strikes early, so that even a one-subtask run (about a second) meets it.
        let mut faults = vec![Fault::draw(primary, 400, &mut rng)];
        let extra = rng.below(3);
        let fitting: Vec<Kind> = KINDS.into_iter().filter(|k| k.fits(mode)).collect();
        for _ in 0..extra {
            let kind = rng.pick(&fitting);
            faults.push(Fault::draw(kind, 2500, &mut rng));
        }
        faults.sort_by_key(|f| f.at);
        Self {
            seed,
            width,
            mode,
            fan_in,
            cap,
            failures,
            faults,
        }
    }

    fn failing(&self) -> &[usize] {
        match &self.failures {
            Failures::None => &[],
            Failures::Transient(ix) | Failures::Permanent { doomed: ix, .. } => ix,
        }
    }

    /// The chores, in order: `s1`…`sN`, failing ones named `flaky-sK`.
    fn labels(&self) -> Vec<String> {
        (0..self.width)
            .map(|i| {
                if self.failing().contains(&i) {
                    format!("flaky-s{}", i + 1)
                } else {
                    format!("s{}", i + 1)
                }
            })
            .collect()
    }

    fn handler_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("FANOUT_MAX_SUBTASK_MS", "1000".to_owned()),
            // Busy instances mid-subtask, for kills and timeouts to land in.
            ("FANOUT_SUBTASK_WORK_MS", "100".to_owned()),
        ];
        match &self.failures {
            Failures::None => {}
            Failures::Transient(_) => env.push(("FANOUT_FLAKY_MS", "500".into())),
            Failures::Permanent { .. } => env.extend([
                ("FANOUT_FLAKY_MS", "3600000".into()),
                // Fails for good after 48 attempts 250 ms apart (12 s). The limit counts every
                // failed attempt, also those an outage causes (a handler down for 3 s refuses 12
                // in a row), so it must span more than the faults of one run can take from a
                // healthy subtask; then only the doomed ones fail.
                ("FANOUT_SUBTASK_MAX_ATTEMPTS", "48".into()),
                ("FANOUT_SUBTASK_RETRY_INITIAL_MS", "250".into()),
                ("FANOUT_SUBTASK_RETRY_FACTOR", "1".into()),
                ("FANOUT_SUBTASK_AT_MAX_ATTEMPTS", "kill".into()),
            ]),
        }
        env
    }

    fn invoke_args(&self) -> Vec<String> {
        let mut args = vec![
            "invoke".to_owned(),
            self.labels().join(","),
            "--output".into(),
            "json".into(),
            "--progress".into(),
            "plain".into(),
            "--fan-in".into(),
            self.fan_in.into(),
        ];
        if let Some(cap) = self.cap {
            args.extend(["--max-concurrency".into(), cap.to_string()]);
        }
        if let Failures::Permanent { tolerate, .. } = &self.failures {
            match tolerate {
                Some(n) => args.extend(["--tolerate-failures".into(), n.to_string()]),
                None => args.push("--fail-fast".into()),
            }
        }
        args
    }

    fn describe(&self) -> String {
        let failures = match &self.failures {
            Failures::None => "no failures".to_owned(),
            Failures::Transient(ix) => format!("{} transient", ix.len()),
            Failures::Permanent {
                doomed,
                tolerate: Some(n),
            } => format!("{} doomed, tolerate:{n}", doomed.len()),
            Failures::Permanent { doomed, .. } => format!("{} doomed, fail-fast", doomed.len()),
        };
        let faults: Vec<String> = self.faults.iter().map(Fault::describe).collect();
        format!(
            "seed {}: {:?} width {} {} cap {} ({failures}); faults: {}",
            self.seed,
            self.mode,
            self.width,
            self.fan_in,
            self.cap.map_or("default".into(), |c| c.to_string()),
            faults.join(", ")
        )
    }

    /// Checks the client's `--output json` report against what this plan must produce.
    fn check(&self, code: Option<i32>, report: &Value) -> Result<(), String> {
        let labels = self.labels();
        match &self.failures {
            Failures::Permanent {
                doomed,
                tolerate: None,
            } => {
                let error = report["error"].as_str().unwrap_or_default();
                let named = doomed
                    .iter()
                    .any(|&i| error.contains(&format!("({}) failed", labels[i])));
                if code == Some(3) && report["outcome"] == "failed" && named {
                    Ok(())
                } else {
                    Err(format!(
                        "expected exit 3 naming a doomed subtask, got exit {code:?}: {report}"
                    ))
                }
            }
            failures => {
                let doomed: &[usize] = match failures {
                    Failures::Permanent { doomed, .. } => doomed,
                    _ => &[],
                };
                let description: Vec<String> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, label)| {
                        let status = if doomed.contains(&i) {
                            "FAILED"
                        } else {
                            "DONE"
                        };
                        format!("{label}: {status}")
                    })
                    .collect();
                let result = &report["result"];
                let failed: Vec<(u64, &str)> = result["failed"]
                    .as_array()
                    .map(|all| {
                        all.iter()
                            .map(|f| {
                                (
                                    f["index"].as_u64().unwrap_or(u64::MAX),
                                    f["subtask"].as_str().unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let expected_failed: Vec<(u64, &str)> = doomed
                    .iter()
                    .map(|&i| (i as u64, labels[i].as_str()))
                    .collect();
                if code == Some(0)
                    && result["description"].as_str() == Some(description.join(",").as_str())
                    && failed == expected_failed
                {
                    Ok(())
                } else {
                    Err(format!(
                        "expected exit 0 with the exact result, got exit {code:?}: {}",
                        truncate(&report.to_string(), 600)
                    ))
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Exact,
    /// Finished with another result or exit code.
    Wrong(String),
    /// The client lost the run (gave up unreachable, unknown id, no report).
    Lost(String),
    /// The client never returned, or invocations were left unfinished.
    Stuck(String),
}

struct RunReport {
    plan: Plan,
    verdict: Verdict,
    panics: Vec<String>,
    /// Subtasks whose body ran more than once, and the extra runs.
    reexecuted: usize,
    extra_runs: usize,
    /// Faults that landed: kills, injected stand-in faults that hit, timeouts that fired,
    /// restarts.
    landed: BTreeMap<Kind, u64>,
    elapsed: Duration,
}

/// Counts the lines of `log` that carry `prefix`, by the label after it.
fn count_by_label(log: &str, prefix: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in log.lines() {
        if let Some((_, rest)) = line.split_once(prefix) {
            let label = rest.split('"').next().unwrap_or(rest).trim();
            *counts.entry(label.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Injects the plan's faults at their moments until the client is done; returns what landed.
async fn inject(
    h: &mut Harness,
    plan: &Plan,
    done: tokio::sync::watch::Receiver<bool>,
) -> Result<BTreeMap<Kind, u64>, String> {
    let mut landed = BTreeMap::new();
    // Faults are timed from the moment Restate has the run: a server killed before the client's
    // first connection would only show that nothing is there (exit 5 at once, by design).
    h.query_until(
        "SELECT count(*) AS n FROM sys_invocation WHERE target = 'worker/run'",
        Duration::from_secs(30),
        |rows| rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0) > 0,
    )
    .await;
    let started = Instant::now();
    for fault in &plan.faults {
        let mut done_now = done.clone();
        let until = tokio::time::Instant::from_std(started + fault.at);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = done_now.wait_for(|d| *d) => break,
        }
        if *done.borrow() {
            break;
        }
        let hit = match fault.kind {
            Kind::ServerRestart => {
                h.stack.server.kill();
                tokio::time::sleep(fault.down).await;
                h.stack
                    .server
                    .restart()
                    .await
                    .map_err(|e| format!("restate-server did not come back: {e:#}"))?;
                1
            }
            Kind::HandlerRestart => {
                h.stack.kill_http_handler().await;
                tokio::time::sleep(fault.down).await;
                h.stack
                    .restart_http_handler()
                    .await
                    .map_err(|e| format!("the handler did not come back: {e:#}"))?;
                1
            }
            Kind::LambdaKill => {
                // Mid-subtask: wait (briefly) for an instance busy with one.
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut killed = 0;
                while killed == 0 && Instant::now() < deadline && !*done.borrow() {
                    killed = h
                        .standin()
                        .kill_busy("fanout", Some("runSubtask"))
                        .map_err(|e| format!("{e:#}"))?;
                    if killed == 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                killed as u64
            }
            kind => {
                let n = fault.count;
                let mut plan = FaultPlan {
                    path: fault.subtasks_only.then(|| "runSubtask".to_owned()),
                    ..FaultPlan::default()
                };
                match kind {
                    Kind::Throttle => plan.throttle = n,
                    Kind::ServiceError => plan.service_error = n,
                    Kind::ResponseLost => plan.drop_response = n,
                    _ => {
                        plan.timeout = n;
                        plan.timeout_ms = Some(fault.timeout_ms);
                    }
                }
                h.standin().arm_faults(&plan);
                0 // counted from the stand-in's tallies at the end
            }
        };
        *landed.entry(fault.kind).or_insert(0) += hit;
    }
    Ok(landed)
}

async fn run_one(plan: Plan) -> RunReport {
    let mut options = Harness::options(plan.mode);
    for (name, value) in plan.handler_env() {
        options = Harness::with_env(options, name, &value);
    }
    let mut h = Harness::start_with(options).await;
    let args = plan.invoke_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let child = h
        .fanout_command(&args)
        .spawn()
        .expect("the fanout binary runs");
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let client = async move {
        let output = tokio::time::timeout(CLIENT_DEADLINE, child.wait_with_output()).await;
        let _ = done_tx.send(true);
        output
    };
    let (output, landed) = tokio::join!(client, inject(&mut h, &plan, done_rx));
    let elapsed = started.elapsed();
    let mut landed = landed.unwrap_or_else(|e| panic!("{}: {e}", plan.describe()));

    let mut verdict = match output {
        Err(_) => Verdict::Stuck(format!("the client did not return in {CLIENT_DEADLINE:?}")),
        Ok(Err(e)) => panic!("waiting for the fanout client failed: {e}"),
        Ok(Ok(output)) => {
            let code = output.status.code();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if std::env::var_os("CHAOS_VERBOSE").is_some() {
                for line in stderr.lines().filter(|l| !l.contains("subtasks done")) {
                    eprintln!("  client: {}", truncate(line, 300));
                }
            }
            match serde_json::from_str::<Value>(stdout.trim()) {
                Err(_) => Verdict::Lost(format!(
                    "exit {code:?}, no report; stderr: {}",
                    truncate(&stderr, 600)
                )),
                Ok(report) if matches!(code, Some(1 | 5 | 6)) => Verdict::Lost(format!(
                    "exit {code:?}: {report}; stderr: {}",
                    truncate(&stderr, 600)
                )),
                Ok(report) => match plan.check(code, &report) {
                    Ok(()) => Verdict::Exact,
                    Err(why) => {
                        Verdict::Wrong(format!("{why}; stderr: {}", truncate(&stderr, 600)))
                    }
                },
            }
        }
    };

    // Nothing of the run may be left running, suspended, backing off or paused.
    let sql = "SELECT id, target, status FROM sys_invocation WHERE status <> 'completed'";
    let settle_by = Instant::now() + SETTLE;
    let unfinished = loop {
        match h.stack.admin.query(sql).await {
            Ok(rows) if rows.is_empty() || Instant::now() >= settle_by => break Ok(rows),
            Err(e) if Instant::now() >= settle_by => break Err(e),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    match unfinished {
        Ok(rows) if rows.is_empty() => {}
        Ok(rows) if !matches!(verdict, Verdict::Stuck(_)) => {
            let some: Vec<String> = rows
                .iter()
                .take(5)
                .map(|r| format!("{} {} {}", r["id"], r["target"], r["status"]))
                .collect();
            verdict = Verdict::Stuck(format!(
                "{} invocations unfinished {SETTLE:?} after the client returned ({:?}), e.g. {}",
                rows.len(),
                verdict,
                some.join("; ")
            ));
        }
        Ok(_) => {}
        // The server is gone: nothing injected that (restarts wait until it is healthy).
        Err(e) => {
            let log = h.server_log();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            verdict = Verdict::Stuck(format!(
                "restate-server stopped answering after the run ({verdict:?}; server pid alive: \
                 {}): {e:#}; its log ends with:\n{}",
                h.stack
                    .server
                    .pid()
                    .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()),
                tail.join("\n")
            ));
        }
    }

    let handler_log = h.handler_log();
    let mut panics = Vec::new();
    for (name, log) in [
        ("restate-server", h.server_log()),
        ("handler", handler_log.clone()),
    ] {
        panics.extend(
            log.lines()
                .filter(|line| line.contains("panicked"))
                .take(3)
                .map(|line| format!("{name}: {}", truncate(line, 300))),
        );
    }

    let started_lines = count_by_label(&handler_log, "Started executing subtask: ");
    let finished_lines = count_by_label(&handler_log, "Execution subtask finished: ");
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        for record in h.stack.standin.iter().flat_map(|s| s.records()) {
            if record.outcome != "ok" {
                eprintln!(
                    "  lambda {:?} {:?} {}",
                    record.path, record.restate_invocation_id, record.outcome
                );
            }
        }
        for line in handler_log.lines().filter(|l| l.contains("subtask")) {
            eprintln!("  {}", truncate(line, 200));
        }
    }
    let mut reexecuted = 0;
    let mut extra_runs = 0;
    for label in plan.labels() {
        let runs = started_lines
            .get(&label)
            .copied()
            .unwrap_or(0)
            .max(finished_lines.get(&label).copied().unwrap_or(0));
        if runs > 1 {
            reexecuted += 1;
            extra_runs += runs - 1;
        }
    }

    if plan.mode == Mode::Lambda {
        let counts = h.standin().fault_counts();
        let timeouts = h
            .records()
            .iter()
            .filter(|r| r.outcome.contains("Sandbox.Timedout"))
            .count() as u64;
        for (kind, n) in [
            (Kind::Throttle, counts.throttle),
            (Kind::ServiceError, counts.service_error),
            (Kind::ResponseLost, counts.drop_response),
            (Kind::Timeout, timeouts),
        ] {
            if let Some(entry) = landed.get_mut(&kind) {
                *entry += n;
            }
        }
    }
    h.stop().await;
    RunReport {
        plan,
        verdict,
        panics,
        reexecuted,
        extra_runs,
        landed,
        elapsed,
    }
}

#[derive(Default)]
struct Row {
    runs: usize,
    exact: usize,
    wrong: usize,
    lost: usize,
    stuck: usize,
    panics: usize,
    landed: u64,
    reexecuted: usize,
    extra_runs: usize,
}

impl Row {
    fn add(&mut self, report: &RunReport, landed: u64) {
        self.runs += 1;
        match report.verdict {
            Verdict::Exact => self.exact += 1,
            Verdict::Wrong(_) => self.wrong += 1,
            Verdict::Lost(_) => self.lost += 1,
            Verdict::Stuck(_) => self.stuck += 1,
        }
        self.panics += usize::from(!report.panics.is_empty());
        self.landed += landed;
        self.reexecuted += report.reexecuted;
        self.extra_runs += report.extra_runs;
    }
}

/// The table: one row per fault kind (a run counts under every kind it had), then all runs.
fn table(reports: &[RunReport]) -> String {
    let mut rows: BTreeMap<Kind, Row> = BTreeMap::new();
    let mut all = Row::default();
    for report in reports {
        for (&kind, &landed) in &report.landed {
            rows.entry(kind).or_default().add(report, landed);
        }
        all.add(report, report.landed.values().sum());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>5} {:>6} {:>6} {:>5} {:>6} {:>7} {:>7} {:>13} {:>11}",
        "fault kind",
        "runs",
        "exact",
        "wrong",
        "lost",
        "stuck",
        "panics",
        "landed",
        "re-executed",
        "extra runs"
    );
    let mut line = |name: &str, row: &Row| {
        let _ = writeln!(
            out,
            "{:<16} {:>5} {:>6} {:>6} {:>5} {:>6} {:>7} {:>7} {:>13} {:>11}",
            name,
            row.runs,
            row.exact,
            row.wrong,
            row.lost,
            row.stuck,
            row.panics,
            row.landed,
            row.reexecuted,
            row.extra_runs
        );
    };
    for kind in KINDS {
        if let Some(row) = rows.get(&kind) {
            line(kind.name(), row);
        }
    }
    line("all runs", &all);
    out
}

/// Runs `seeds` one after the other, prints each run and the table, and fails on anything but
/// exact results, a clean `sys_invocation` and panic-free logs.
async fn run_seeds(seeds: Vec<u64>) {
    let mut reports = Vec::new();
    let suite_started = Instant::now();
    for (n, seed) in seeds.iter().enumerate() {
        let plan = Plan::draw(*seed);
        eprintln!("[chaos {}/{}] {}", n + 1, seeds.len(), plan.describe());
        let report = run_one(plan).await;
        let landed: Vec<String> = report
            .landed
            .iter()
            .map(|(k, n)| format!("{}={n}", k.name()))
            .collect();
        eprintln!(
            "[chaos {}/{}] seed {}: {:?} in {:.1} s; landed {}; {} subtask(s) re-executed ({} extra runs){}",
            n + 1,
            seeds.len(),
            seed,
            report.verdict,
            report.elapsed.as_secs_f64(),
            landed.join(" "),
            report.reexecuted,
            report.extra_runs,
            if report.panics.is_empty() {
                String::new()
            } else {
                format!("; PANICS: {:?}", report.panics)
            }
        );
        reports.push(report);
    }
    let table = table(&reports);
    let conditions = format!(
        "{} runs, seeds {}..={}, {:.0} s in all",
        reports.len(),
        seeds.first().copied().unwrap_or(0),
        seeds.last().copied().unwrap_or(0),
        suite_started.elapsed().as_secs_f64()
    );
    println!("\nchaos: {conditions}\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chaos.txt");
    let _ = std::fs::write(&out, format!("chaos: {conditions}\n{table}"));
    let bad: Vec<String> = reports
        .iter()
        .filter(|r| r.verdict != Verdict::Exact || !r.panics.is_empty())
        .map(|r| {
            format!(
                "{}\n    {:?}\n    panics: {:?}",
                r.plan.describe(),
                r.verdict,
                r.panics
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} runs were not exact and clean (replay one with CHAOS_SEED=S CHAOS_RUNS=1 make \
         chaos):\n{}\n{table}",
        bad.len(),
        reports.len(),
        bad.join("\n")
    );
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(raw) => raw.trim().parse().unwrap_or_else(|_| {
            panic!("{name}={raw:?} is not a whole number; set it to e.g. {default}")
        }),
    }
}

/// CI: one run per fault kind, fixed seeds.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_ci_seeds() {
    run_seeds(CI_SEEDS.to_vec()).await;
}

/// `make chaos`: `CHAOS_RUNS` runs (default 105, 15 per kind) from `CHAOS_SEED` (default 1000).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: run with make chaos"]
async fn chaos_many() {
    let first = env_number("CHAOS_SEED", 1000);
    let runs = env_number("CHAOS_RUNS", 105);
    run_seeds((first..first + runs).collect()).await;
}

/// A seed always draws the same run, and the CI seeds cover every fault kind and both modes.
#[test]
fn plans_replay_from_their_seed_and_ci_covers_every_kind() {
    for seed in 0..200 {
        assert_eq!(Plan::draw(seed).describe(), Plan::draw(seed).describe());
        let plan = Plan::draw(seed);
        assert!(
            plan.faults.iter().all(|f| f.kind.fits(plan.mode)),
            "{}",
            plan.describe()
        );
        assert_eq!(plan.labels().len(), plan.width);
    }
    let ci: Vec<Plan> = CI_SEEDS.iter().map(|&s| Plan::draw(s)).collect();
    for kind in KINDS {
        assert!(
            ci.iter().any(|p| p.faults.iter().any(|f| f.kind == kind)),
            "no CI seed injects {}",
            kind.name()
        );
    }
    assert!(ci.iter().any(|p| p.mode == Mode::Http));
    assert!(ci.iter().any(|p| p.mode == Mode::Lambda));
    for plan in &ci {
        eprintln!("{}", plan.describe());
    }
}

/// The log counting behind the re-execution figure, on both log formats.
#[test]
fn re_executions_are_counted_per_subtask_in_both_log_formats() {
    let log = "[worker/runSubtask][inv_1][t] INFO: Execution subtask finished: s1\n\
        {\"level\":\"INFO\",\"message\":\"Execution subtask finished: s12\",\"handler\":\"worker/runSubtask\"}\n\
        {\"level\":\"INFO\",\"message\":\"Execution subtask finished: s1\"}\n";
    let counts = count_by_label(log, "Execution subtask finished: ");
    assert_eq!(counts.get("s1"), Some(&2));
    assert_eq!(counts.get("s12"), Some(&1));
}

/// The stand-in's lost response is real: the subtask ran to the end, Restate never heard, so it
/// runs the body again (at-least-once), and the run still returns its exact result.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_response_runs_the_subtask_body_again() {
    let options = Harness::with_env(Harness::options(Mode::Lambda), "FANOUT_MAX_SUBTASK_MS", "0");
    let options = Harness::with_env(options, "FANOUT_SUBTASK_WORK_MS", "50");
    let h = Harness::start_with(options).await;
    h.standin().arm_faults(&FaultPlan {
        drop_response: 1,
        path: Some("runSubtask".into()),
        ..FaultPlan::default()
    });
    let run = h.fanout(&["invoke", "only", "--output", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["result"]["description"], "only: DONE");
    let counts = h.standin().fault_counts();
    assert_eq!((counts.drop_response, counts.armed), (1, 0));
    // The first invocation journals the sleep and suspends; its answer is the one lost, so the
    // body starts again from the top.
    let started = count_by_label(&h.handler_log(), "Started executing subtask: ");
    assert_eq!(started.get("only"), Some(&2), "{}", h.handler_log());
    h.stop().await;
}

/// `fanout invoke` rides out a `kill -9` of restate-server and its restart: it says it lost
/// Restate, re-attaches by id, and prints the exact result with exit code 0.
#[tokio::test(flavor = "multi_thread")]
async fn invoke_rides_out_a_server_restart() {
    let mut h = Harness::start(Mode::Http).await;
    let chores: Vec<String> = (1..=10).map(|i| format!("c{i}@2000")).collect();
    let args = ["invoke", &chores.join(","), "--output", "json"];
    let client = h.fanout_command(&args).spawn().unwrap();
    // The run is under way: its subtasks are in Restate.
    let rows = h
        .query_until(
            "SELECT count(*) AS n FROM sys_invocation WHERE target = 'worker/runSubtask'",
            Duration::from_secs(30),
            |rows| rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0) >= 10,
        )
        .await;
    assert_eq!(rows[0]["n"], 10, "the fan-out did not start");
    h.stack.server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.stack
        .server
        .restart()
        .await
        .expect("restate-server restarts");
    let output = tokio::time::timeout(CLIENT_DEADLINE, client.wait_with_output())
        .await
        .expect("the client returns")
        .unwrap();
    let run = fanout_tests::CliRun::from(output);
    assert_eq!(run.code, Some(0), "{run:?}");
    let expected: Vec<String> = chores.iter().map(|c| format!("{c}: DONE")).collect();
    assert_eq!(run.json()["result"]["description"], expected.join(","));
    assert_eq!(run.json()["outcome"], "succeeded");
    assert!(
        run.stderr.contains("lost Restate while waiting for inv_"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Restate is back"), "{}", run.stderr);
    eprintln!("{}", run.stderr);
    h.stop().await;
}
