//! `fanout bench`: fan-outs of several widths and completion orders on the local stack (the
//! handler as a Lambda function behind the stand-in), measured from the stand-in's metering,
//! next to the floor: the same subtasks sent straight through the ingress, no coordinator.
//!
//! A benchmark, not a test: it prints figures and asserts nothing about time.

use crate::ingress::IngressClient;
use crate::report::{self, Summary};
use crate::stack::{HandlerMode, LocalStack, StackOptions};
use anyhow::{Context, Result, bail};
use fanout_contract::policy::FanInStrategy;
use fanout_contract::{headers, names};
use serde::Serialize;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// In which order the subtasks' results come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Each subtask sleeps a time drawn from the spread, the same draws in every row and in
    /// the floor of a width.
    Random,
    /// Subtask i finishes before subtask i+1.
    Increasing,
    /// The last subtask finishes first.
    Decreasing,
}

impl Order {
    /// The task's chores, `sI@MS`: each sleeps exactly MS, so every strategy and the floor run
    /// the very same subtask durations and their ratios compare like with like.
    fn chores(self, n: usize, spread: &Spread) -> Vec<String> {
        let at = |i: usize| spread.max_ms * i as u64 / n.max(1) as u64;
        let mut draws = spread.draws(n);
        (1..=n)
            .map(|i| match self {
                Order::Random => format!("s{i}@{}", draws.next().unwrap_or(0)),
                Order::Increasing => format!("s{i}@{}", at(i)),
                Order::Decreasing => format!("s{i}@{}", at(n - i)),
            })
            .collect()
    }
}

/// How the coordinator waits (the handler's `x-fanout-fan-in` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Lanes keep the cap full and a ledger wakes the coordinator: at most 3 coordinator
    /// invocations.
    Ledger,
    /// The coordinator keeps the cap full itself and waits with a select on any: the peer
    /// baseline, what the reference TypeScript code does.
    SelectAny,
    /// Awaiting every call in index order: the old baseline.
    InOrder,
}

impl Strategy {
    fn header(self) -> &'static str {
        match self {
            Strategy::Ledger => FanInStrategy::Ledger,
            Strategy::SelectAny => FanInStrategy::SelectAny,
            Strategy::InOrder => FanInStrategy::InOrder,
        }
        .as_str()
    }
}

/// How long subtasks take: the handler's `FANOUT_MAX_SUBTASK_MS` and `FANOUT_SUBTASK_TAIL`.
/// Written `0-10s`, `0-500ms`, a bare number of ms, `tail` (0-1s with 5 % of the subtasks
/// 20 times longer) or `tail:0-2s:5%x20`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    pub max_ms: u64,
    /// `P%xF`: P % of the subtasks take F times as long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail: Option<String>,
}

impl Spread {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let uniform = |raw: &str| -> Result<u64, String> {
            let raw = raw.trim();
            let bound = raw.strip_prefix("0-").unwrap_or(raw);
            let (digits, unit) = match bound.strip_suffix("ms") {
                Some(digits) => (digits, 1),
                None => match bound.strip_suffix('s') {
                    Some(digits) => (digits, 1000),
                    None => (bound, 1),
                },
            };
            digits.parse::<u64>().map(|n| n * unit).map_err(|_| {
                format!("spread {raw:?}: write 0-10s, 0-500ms, a number of ms, or tail")
            })
        };
        match raw.trim().split(':').collect::<Vec<_>>().as_slice() {
            ["tail"] => Ok(Self {
                max_ms: 1000,
                tail: Some("5%x20".into()),
            }),
            ["tail", bound, tail] if tail.contains("%x") => Ok(Self {
                max_ms: uniform(bound)?,
                tail: Some((*tail).to_owned()),
            }),
            [bound] => Ok(Self {
                max_ms: uniform(bound)?,
                tail: None,
            }),
            _ => Err(format!(
                "spread {raw:?}: write 0-10s, 0-500ms, a number of ms, tail or tail:0-1s:5%x20"
            )),
        }
    }

    pub fn label(&self) -> String {
        let bound = if self.max_ms.is_multiple_of(1000) {
            format!("0-{}s", self.max_ms / 1000)
        } else {
            format!("0-{}ms", self.max_ms)
        };
        match &self.tail {
            Some(tail) => format!("{bound}+{tail}"),
            None => bound,
        }
    }

    /// `n` sleeps, uniform below `max_ms`, a share of them `factor` times longer: drawn from a
    /// generator seeded by `n`, so a width gets the same durations in every row.
    fn draws(&self, n: usize) -> impl Iterator<Item = u64> + use<> {
        let (percent, factor) = self
            .tail
            .as_deref()
            .and_then(|t| t.split_once("%x"))
            .and_then(|(p, f)| Some((p.parse::<f64>().ok()?, f.parse::<u64>().ok()?)))
            .unwrap_or((0.0, 1));
        let max_ms = self.max_ms.max(1);
        let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ n as u64;
        let mut next = move || {
            // xorshift64: fixed, fast, and no dependency for a benchmark's draws.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n).map(move |_| {
            let ms = next() % max_ms;
            let long = ((next() % 10_000) as f64) < percent * 100.0;
            if long { ms * factor } else { ms }
        })
    }

    fn handler_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("FANOUT_MAX_SUBTASK_MS".into(), self.max_ms.to_string())];
        if let Some(tail) = &self.tail {
            env.push(("FANOUT_SUBTASK_TAIL".into(), tail.clone()));
        }
        env
    }
}

/// A run's cap on subtasks in flight: a number, `n` (the width) or `n/D` (a share of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Fixed(usize),
    WidthOver(usize),
}

impl Cap {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || format!("cap {raw:?}: write a number (e.g. 1000), n (the width) or n/5");
        match raw.trim() {
            "n" => Ok(Cap::WidthOver(1)),
            other => match other.strip_prefix("n/") {
                Some(d) => match d.parse::<usize>() {
                    Ok(d) if d >= 1 => Ok(Cap::WidthOver(d)),
                    _ => Err(bad()),
                },
                None => match other.parse::<usize>() {
                    Ok(k) if k >= 1 => Ok(Cap::Fixed(k)),
                    _ => Err(bad()),
                },
            },
        }
    }

    /// The cap for `n` subtasks; a cap above the width runs as the width does.
    pub fn of(self, n: usize) -> usize {
        match self {
            Cap::Fixed(k) => k.min(n),
            Cap::WidthOver(d) => n.div_ceil(d),
        }
        .max(1)
    }
}

/// Measure fan-outs of several widths on the local stack (Lambda mode) and print a table.
#[derive(clap::Args)]
pub struct Args {
    /// The handler binary (default: target/release/fanout-handler, else target/debug).
    #[arg(long, env = "FANOUT_HANDLER_BIN")]
    handler: Option<PathBuf>,
    /// Fan-out widths to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    sizes: Vec<usize>,
    /// Completion orders to run for each width, comma-separated (random, increasing, decreasing).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "random")]
    orders: Vec<Order>,
    /// Caps on each run's subtasks in flight, comma-separated: a number, n (the width) or n/D
    /// (a share of it); a cap at or above the width is run once.
    #[arg(
        long,
        alias = "max-concurrency",
        value_delimiter = ',',
        value_parser = Cap::parse,
        default_value = "n,n/5"
    )]
    caps: Vec<Cap>,
    /// Fan-in strategies to compare, comma-separated (ledger, select-any, in-order).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ledger,select-any,in-order"
    )]
    strategies: Vec<Strategy>,
    /// How long subtasks take, comma-separated: 0-10s, 0-500ms, a number of ms, tail (0-1s
    /// with 5 % of the subtasks 20 times longer) or tail:0-2s:5%x20. Each spread gets a
    /// stack of its own.
    #[arg(
        long,
        alias = "max-subtask-ms",
        value_delimiter = ',',
        value_parser = Spread::parse,
        default_value = "0-1s"
    )]
    spreads: Vec<Spread>,
    /// Skip the floor (the same subtasks sent straight through the ingress).
    #[arg(long)]
    no_floor: bool,
    /// Skip the unmeasured warm-up before each width (the floor's subtasks once). Every row
    /// and floor meets a pool of warm instances either way (provisioned, N + 64 up to the
    /// concurrency limit), so that none pays for cold starts another reuses.
    #[arg(long)]
    no_warm_up: bool,
    /// Also write an SVG plot of invocations and bytes against N.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Concurrent executions allowed to the local Lambda function.
    #[arg(long, default_value_t = 1000)]
    concurrency_limit: usize,
    /// A restate-server setting for every stack, as its env var (repeatable), e.g.
    /// --server-env RESTATE_WORKER__INVOKER__REQUEST_COMPRESSION_THRESHOLD="4 MiB".
    #[arg(long, value_name = "KEY=VALUE", value_parser = crate::commands::args::parse_env)]
    server_env: Vec<(String, String)>,
    /// Measure the select-any baseline only up to this width: its coordinator replays one
    /// call per subtask on every wake (O(N²) bytes), which takes long at 10,000.
    #[arg(long, default_value_t = 1000)]
    select_any_up_to: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<u8> {
    let handler_binary = match args.handler {
        Some(path) => path,
        None => {
            crate::tools::handler_binary(true).or_else(|_| crate::tools::handler_binary(false))?
        }
    };
    let report = bench(BenchOptions {
        handler_binary,
        sizes: args.sizes,
        orders: args.orders,
        strategies: args.strategies,
        caps: args.caps,
        spreads: args.spreads,
        concurrency_limit: args.concurrency_limit,
        server_env: args.server_env,
        select_any_up_to: args.select_any_up_to,
        floor: !args.no_floor,
        warm_up: !args.no_warm_up,
    })
    .await?;
    print!("{}", table(&report));
    if let Some(path) = args.plot {
        std::fs::write(&path, plot(&report))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    Ok(crate::exit::OK)
}

pub struct BenchOptions {
    pub handler_binary: PathBuf,
    pub sizes: Vec<usize>,
    pub orders: Vec<Order>,
    pub strategies: Vec<Strategy>,
    pub caps: Vec<Cap>,
    pub spreads: Vec<Spread>,
    pub concurrency_limit: usize,
    /// Extra restate-server settings (env), e.g. to compare a compression threshold.
    pub server_env: Vec<(String, String)>,
    /// The widest run the select-any baseline is measured at: its coordinator replays its
    /// whole journal (one call per subtask) on every wake, O(N²) bytes.
    pub select_any_up_to: usize,
    /// Also measure the floor for each width.
    pub floor: bool,
    /// Send each width's subtasks once, unmeasured, before its fan-outs: restate-server and
    /// the instances have then served the width once before the first row.
    pub warm_up: bool,
}

/// The goals a row is held to (issue "Keep the cap full").
pub const GOAL_VS_FLOOR: f64 = 1.10;
pub const GOAL_VS_IDEAL: f64 = 1.15;
pub const GOAL_UTILIZATION: f64 = 0.90;
pub const GOAL_BYTES_PER_SUBTASK: f64 = 2048.0;

/// One fan-out's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub spread: String,
    pub subtasks: usize,
    pub order: Order,
    pub strategy: Strategy,
    pub cap: usize,
    pub wall_ms: u128,
    pub coordinator_invocations: usize,
    pub bytes_to_coordinator: usize,
    pub subtask_invocations: usize,
    /// Lane and ledger invocations.
    pub fan_in_invocations: usize,
    pub bytes_total: usize,
    pub billed_ms: u64,
    pub coordinator_billed_ms: u64,
    pub throttled: usize,
    pub cold_starts: usize,
    /// restate-server's largest resident set during the fan-out (sampled every 100 ms).
    pub server_rss_kb: Option<u64>,
    /// The largest peak resident set of a Lambda instance that served the fan-out.
    pub instance_rss_kb: Option<u64>,
    /// What the stand-in saw of the subtasks: the ideal schedule, the cap's use.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Invocations and bytes (request + response) per Restate handler, e.g. `worker/runShard`.
    pub by_handler: std::collections::BTreeMap<String, (usize, usize)>,
    /// Wall time of the same width's subtasks sent straight through the ingress.
    pub floor_wall_ms: Option<u128>,
    /// Instances the floor started: a row and its floor compare fairly only when both met a
    /// warm pool (see `--no-warm-up`).
    pub floor_cold_starts: Option<usize>,
    /// Bytes the floor shipped to and from Lambda: what the subtasks cost alone, with no
    /// coordination, the baseline of `bytes_total`.
    pub floor_bytes_total: Option<usize>,
}

impl BenchRow {
    pub fn bytes_per_subtask(&self) -> f64 {
        self.bytes_total as f64 / self.subtasks.max(1) as f64
    }

    /// What coordination adds per subtask over the floor's bytes: the row's bytes less those
    /// of the subtasks sent alone.
    pub fn coordination_bytes_per_subtask(&self) -> Option<f64> {
        self.floor_bytes_total
            .map(|floor| (self.bytes_total as f64 - floor as f64) / self.subtasks.max(1) as f64)
    }

    pub fn vs_floor(&self) -> Option<f64> {
        self.floor_wall_ms
            .map(|floor| self.wall_ms as f64 / floor.max(1) as f64)
    }

    pub fn vs_ideal(&self) -> f64 {
        self.wall_ms as f64 / self.schedule.ideal_ms.max(1.0)
    }

    /// The goals this row misses, by name (`wall`, `util`, `cap`, `coord`, `bytes`): empty when
    /// it meets them all, `None` where no goal applies (the ledger is held to all of them; the
    /// baselines are there to compare with).
    pub fn missed_goals(&self) -> Option<Vec<&'static str>> {
        if self.strategy != Strategy::Ledger {
            return None;
        }
        let wall = if self.cap >= self.subtasks {
            self.vs_floor().is_none_or(|r| r <= GOAL_VS_FLOOR)
        } else {
            self.vs_ideal() <= GOAL_VS_IDEAL
        };
        let util = self.cap >= self.subtasks
            || self
                .schedule
                .utilization
                .is_none_or(|u| u >= GOAL_UTILIZATION);
        let checks = [
            ("wall", wall),
            ("util", util),
            ("cap", self.schedule.max_in_flight <= self.cap),
            ("coord", self.coordinator_invocations <= 3),
            ("bytes", self.bytes_per_subtask() <= GOAL_BYTES_PER_SUBTASK),
        ];
        Some(
            checks
                .into_iter()
                .filter(|(_, met)| !met)
                .map(|(goal, _)| goal)
                .collect(),
        )
    }
}

/// What the subtasks' own timeline says, from the stand-in's metering: each subtask is in
/// flight from the start of its first Lambda invocation to the end of its last (its durable
/// sleeps included).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Schedule {
    /// The ideal `cap`-slot schedule of the same subtask durations: in the order they started
    /// (index order), each on the first free slot, from the first start.
    pub ideal_ms: f64,
    /// Mean subtasks in flight over the cap, while at least `cap` subtasks remained (`None`
    /// when the cap covers every subtask).
    pub utilization: Option<f64>,
    pub max_in_flight: usize,
}

/// The schedule of subtasks whose lifetimes are `intervals` (start, end in ms), under `cap`.
pub fn schedule(intervals: &[(f64, f64)], cap: usize) -> Schedule {
    let cap = cap.max(1);
    let mut by_start: Vec<(f64, f64)> = intervals.to_vec();
    by_start.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(first) = by_start.first().map(|i| i.0) else {
        return Schedule::default();
    };
    // Ideal: every slot takes the next subtask the moment it frees.
    let mut slots = std::collections::BinaryHeap::new();
    let mut ideal: f64 = 0.0;
    for &(start, end) in &by_start {
        let free_at = if slots.len() < cap {
            0.0
        } else {
            let std::cmp::Reverse(Ms(t)) = slots.pop().expect("cap slots are taken");
            t
        };
        let done = free_at + (end - start);
        ideal = ideal.max(done);
        slots.push(std::cmp::Reverse(Ms(done)));
    }
    // In flight over time, from start and end events (an end before a start at the same ms).
    let mut events: Vec<(f64, i64)> = by_start
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let total = by_start.len();
    let (mut in_flight, mut max_in_flight, mut finished) = (0i64, 0i64, 0usize);
    let (mut area, mut last) = (0.0, first);
    let mut window_end = None;
    for &(t, delta) in &events {
        if window_end.is_none() {
            area += in_flight as f64 * (t - last);
        }
        last = t;
        in_flight += delta;
        max_in_flight = max_in_flight.max(in_flight);
        if delta < 0 {
            finished += 1;
            if window_end.is_none() && total - finished < cap {
                window_end = Some(t);
            }
        }
    }
    let utilization = match window_end {
        Some(end) if total > cap && end > first => Some(area / (end - first) / cap as f64),
        _ => None,
    };
    Schedule {
        ideal_ms: ideal,
        utilization,
        max_in_flight: max_in_flight.max(0) as usize,
    }
}

/// Milliseconds ordered for the slot heap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ms(f64);
impl Eq for Ms {}
impl PartialOrd for Ms {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ms {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Invocations and bytes per Restate handler.
pub fn by_handler(
    records: &[fanout_standin::InvocationRecord],
) -> std::collections::BTreeMap<String, (usize, usize)> {
    let mut totals = std::collections::BTreeMap::new();
    for r in records {
        let handler = r
            .path
            .as_deref()
            .unwrap_or("-")
            .trim_start_matches("/invoke/");
        let entry: &mut (usize, usize) = totals.entry(handler.to_owned()).or_default();
        entry.0 += 1;
        entry.1 += r.request_bytes + r.response_bytes;
    }
    totals
}

/// Each executor invocation's lifetime (a subtask, or a batch of them), from the records of
/// its Lambda invocations.
pub fn subtask_intervals(records: &[fanout_standin::InvocationRecord]) -> Vec<(f64, f64)> {
    let mut by_invocation: std::collections::HashMap<&str, (f64, f64)> = Default::default();
    for r in records {
        if !report::is_executor(r) || r.outcome == "throttled" {
            continue;
        }
        let Some(id) = r.restate_invocation_id.as_deref() else {
            continue;
        };
        let (start, end) = (
            r.started_at_ms as f64,
            r.started_at_ms as f64 + r.duration_ms,
        );
        let entry = by_invocation.entry(id).or_insert((start, end));
        entry.0 = entry.0.min(start);
        entry.1 = entry.1.max(end);
    }
    by_invocation.into_values().collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub handler_binary: String,
    pub handler_binary_bytes: u64,
    pub cold_starts: usize,
    pub cold_init_ms_min: Option<f64>,
    pub cold_init_ms_median: Option<f64>,
    pub cold_init_ms_max: Option<f64>,
    pub instance_peak_rss_kb_max: Option<u64>,
    /// restate-server's peak resident set over each spread's stack (`VmHWM`), the largest.
    pub server_peak_rss_kb: Option<u64>,
    pub rows: Vec<BenchRow>,
}

pub async fn bench(options: BenchOptions) -> Result<BenchReport> {
    if options.sizes.is_empty() || options.sizes.contains(&0) {
        bail!("--sizes needs one or more widths above 0, e.g. --sizes 10,100,1000");
    }
    if options.strategies.is_empty() {
        bail!("--strategies needs at least one of ledger, select-any, in-order");
    }
    if options.orders.is_empty() {
        bail!("--orders needs at least one of random, increasing, decreasing");
    }
    if options.caps.is_empty() || options.spreads.is_empty() {
        bail!("--caps and --spreads need at least one value each");
    }
    let mut rows = Vec::new();
    let mut records = Vec::new();
    let mut server_peak_rss_kb = None;
    // The spread is the handler's environment, so each spread gets a stack of its own.
    for spread in &options.spreads {
        let mut stack_options =
            StackOptions::new(HandlerMode::Lambda, options.handler_binary.clone());
        stack_options.lambda.concurrency_limit = options.concurrency_limit;
        stack_options.handler_env.extend(spread.handler_env());
        stack_options
            .server_env
            .extend(options.server_env.iter().cloned());
        let stack = LocalStack::start(stack_options).await?;
        let result = measure(&stack, &options, spread).await;
        let peak = stack
            .server
            .pid()
            .and_then(|pid| fanout_standin::process::status_kb(pid, "VmHWM"));
        server_peak_rss_kb = server_peak_rss_kb.max(peak);
        records.extend(
            stack
                .standin
                .as_ref()
                .map(|s| s.records())
                .unwrap_or_default(),
        );
        stack.stop().await;
        rows.extend(result?);
    }

    let mut inits: Vec<f64> = records.iter().filter_map(|r| r.init_ms).collect();
    inits.sort_by(f64::total_cmp);
    Ok(BenchReport {
        handler_binary: options.handler_binary.display().to_string(),
        handler_binary_bytes: std::fs::metadata(&options.handler_binary)
            .map(|m| m.len())
            .unwrap_or(0),
        cold_starts: inits.len(),
        cold_init_ms_min: inits.first().copied(),
        cold_init_ms_median: inits.get(inits.len() / 2).copied(),
        cold_init_ms_max: inits.last().copied(),
        instance_peak_rss_kb_max: records.iter().filter_map(|r| r.peak_rss_kb).max(),
        server_peak_rss_kb,
        rows,
    })
}

async fn measure(
    stack: &LocalStack,
    options: &BenchOptions,
    spread: &Spread,
) -> Result<Vec<BenchRow>> {
    let standin = stack
        .standin
        .as_ref()
        .expect("the bench stack runs in Lambda mode");
    let mut rows = Vec::new();
    for &n in &options.sizes {
        let first_row = rows.len();
        // Caps above the width run as the width does: measured once. A cap above the
        // function's concurrency limit would only measure Restate backing off from 429s.
        let mut caps: Vec<usize> = options.caps.iter().map(|c| c.of(n)).collect();
        caps.sort_unstable_by(|a, b| b.cmp(a));
        caps.dedup();
        caps.retain(|&cap| {
            let fits = cap <= options.concurrency_limit;
            if !fits {
                eprintln!(
                    "skipping cap {cap} at N={n}: above the function's concurrency limit of {} \
                     (--concurrency-limit), every subtask past it would be throttled",
                    options.concurrency_limit
                );
            }
            fits
        });
        let strategies: Vec<Strategy> = options
            .strategies
            .iter()
            .copied()
            .filter(|&s| s != Strategy::SelectAny || n <= options.select_any_up_to)
            .collect();
        if options.warm_up {
            floor(&stack.ingress_url, &Order::Random.chores(n, spread))
                .await
                .with_context(|| format!("the warm-up of {n} subtasks failed"))?;
        }
        for &cap in &caps {
            for (&strategy, &order) in strategies
                .iter()
                .flat_map(|s| options.orders.iter().map(move |o| (s, o)))
            {
                warm_pool(standin, n, options.concurrency_limit).await?;
                let before = standin.records().len();
                let server_rss = stack
                    .server
                    .pid()
                    .map(fanout_standin::process::RssSampler::start);
                let chores = order.chores(n, spread);
                let wall = fan_out(&stack.ingress_url, strategy, cap, &chores)
                    .await
                    .with_context(|| format!("{order:?} order"))?;
                let server_rss_kb =
                    server_rss.and_then(fanout_standin::process::RssSampler::finish);
                // The last subtask's invocation may be metered a moment after the result is out.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let records = standin.records();
                let run = &records[before..];
                let Summary {
                    coordinator_invocations,
                    subtask_invocations,
                    other_invocations,
                    bytes_to_coordinator,
                    bytes_total,
                    billed_ms,
                    coordinator_billed_ms,
                    throttled,
                    cold_starts,
                    ..
                } = report::summarize(run);
                rows.push(BenchRow {
                    spread: spread.label(),
                    subtasks: n,
                    order,
                    strategy,
                    cap,
                    wall_ms: wall.as_millis(),
                    coordinator_invocations,
                    bytes_to_coordinator,
                    subtask_invocations,
                    fan_in_invocations: other_invocations,
                    bytes_total,
                    billed_ms,
                    coordinator_billed_ms,
                    throttled,
                    cold_starts,
                    server_rss_kb,
                    instance_rss_kb: run.iter().filter_map(|r| r.peak_rss_kb).max(),
                    schedule: schedule(&subtask_intervals(run), cap),
                    by_handler: by_handler(run),
                    floor_wall_ms: None,
                    floor_cold_starts: None,
                    floor_bytes_total: None,
                });
                eprintln!("{}", row_line(rows.last().expect("just pushed")));
            }
        }
        // After the fan-outs, so the floor meets instances as warm as they did.
        if options.floor {
            warm_pool(standin, n, options.concurrency_limit).await?;
            let before = standin.records().len();
            let floor_ms = floor(&stack.ingress_url, &Order::Random.chores(n, spread))
                .await?
                .as_millis();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let floor_run = standin.records();
            let floor_run = &floor_run[before..];
            let floor_cold = floor_run.iter().filter(|r| r.cold).count();
            let floor_bytes = report::summarize(floor_run).bytes_total;
            for row in &mut rows[first_row..] {
                row.floor_wall_ms = Some(floor_ms);
                row.floor_cold_starts = Some(floor_cold);
                row.floor_bytes_total = Some(floor_bytes);
            }
        }
    }
    Ok(rows)
}

/// Starts the instances a run of `n` subtasks may need at once, so that every row and the
/// floor meet the same warm pool: on this machine hundreds of instances starting together take
/// up to seconds each (Lambda starts them on separate hosts), and whichever run first needed
/// them would pay for them. Instances only ever wait idle here (for ten minutes), so this
/// starts the ones missing.
async fn warm_pool(standin: &fanout_standin::StandIn, n: usize, limit: usize) -> Result<()> {
    // Every subtask at once, with the lanes, the ledger and the coordinator beside them.
    const BESIDE_THE_SUBTASKS: usize = 64;
    for function in standin.function_names() {
        standin
            .warm(&function, None, (n + BESIDE_THE_SUBTASKS).min(limit))
            .await
            .with_context(|| format!("cannot warm {n} instances of {function}"))?;
    }
    Ok(())
}

/// One fan-out of `chores` through `worker/run` with `strategy` under `cap`: its wall time,
/// once every one of the N results came back in input order (or the figures mean nothing).
async fn fan_out(
    ingress_url: &str,
    strategy: Strategy,
    cap: usize,
    chores: &[String],
) -> Result<Duration> {
    let n = chores.len();
    let ingress = IngressClient::new(ingress_url, None)
        .with_timeout(Duration::from_secs(3600))
        .with_header(headers::FAN_IN, strategy.header())
        .with_header(headers::MAX_CONCURRENCY, cap.to_string());
    let started = Instant::now();
    let response = ingress
        .run(&json!({ "description": chores.join(",") }), None)
        .await?;
    let wall = started.elapsed();
    if response.status != 200 {
        bail!(
            "the fan-out of {n} ({strategy:?}, cap {cap}) failed with HTTP {}: {}",
            response.status,
            response.message()
        );
    }
    let expected: Vec<String> = chores.iter().map(|s| format!("{s}: DONE")).collect();
    if response.body["description"].as_str() != Some(expected.join(",").as_str()) {
        bail!("the fan-out of {n} ({strategy:?}, cap {cap}) returned a wrong result");
    }
    Ok(wall)
}

/// The floor: one independent `runSubtask` invocation per chore (the same chores, so the
/// same durations, as the fan-outs), sent straight through the ingress, all started before
/// any is awaited, from the first send to the last result: no coordinator and no cap.
async fn floor(ingress_url: &str, chores: &[String]) -> Result<Duration> {
    // Requests in flight at once: enough to keep Restate busy without exhausting sockets.
    const IN_FLIGHT: usize = 64;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    let started = Instant::now();
    let sends = chores.iter().map(|chore| {
        let http = http.clone();
        let url = format!("{ingress_url}/{}/send", names::SUBTASK_TARGET);
        let body = json!({ "description": chore });
        async move {
            let sent: Value = http.post(url).json(&body).send().await?.json().await?;
            sent["invocationId"]
                .as_str()
                .map(str::to_owned)
                .context("the ingress returned no invocation id")
        }
    });
    let ids = bounded(sends, IN_FLIGHT).await?;
    let attaches = ids.into_iter().map(|id| {
        let http = http.clone();
        let url = format!("{ingress_url}/restate/invocation/{id}/attach");
        async move {
            let done = http.get(url).send().await?;
            if !done.status().is_success() {
                bail!("floor subtask {id} failed with HTTP {}", done.status());
            }
            Ok(())
        }
    });
    bounded(attaches, IN_FLIGHT).await?;
    Ok(started.elapsed())
}

/// Runs `tasks` with at most `limit` at once; the first error wins.
async fn bounded<T: Send + 'static>(
    tasks: impl Iterator<Item = impl std::future::Future<Output = Result<T>> + Send + 'static>,
    limit: usize,
) -> Result<Vec<T>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut set = tokio::task::JoinSet::new();
    for (index, task) in tasks.enumerate() {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        set.spawn(async move {
            let result = task.await;
            drop(permit);
            result.map(|value| (index, value))
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = set.join_next().await {
        results.push(joined.context("a floor request panicked")??);
    }
    results.sort_by_key(|(index, _)| *index);
    Ok(results.into_iter().map(|(_, value)| value).collect())
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or_else(|| "-".into(), |kb| format!("{:.1}", kb as f64 / 1024.0))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

const HEADER: &str = "spread          N strategy     cap   wall s  floor s ×floor  ideal s ×ideal util% in-fl coord fan-in  B/sub +B/sub  429s    cold srv MiB goals";

/// One row of the table.
pub fn row_line(r: &BenchRow) -> String {
    let seconds = |ms: f64| format!("{:.2}", ms / 1000.0);
    let order = match r.order {
        Order::Random => String::new(),
        other => format!("/{}", format!("{other:?}").to_lowercase()),
    };
    let goals = match r.missed_goals() {
        Some(missed) if missed.is_empty() => "met".to_owned(),
        Some(missed) => format!("missed:{}", missed.join(",")),
        None => "-".to_owned(),
    };
    format!(
        "{:<10} {:>6} {:<12} {:>5} {:>8} {:>8} {:>6} {:>8} {:>6} {:>5} {:>5} {:>5} {:>6} {:>6} {:>6} {:>5} {:>7} {:>7} {}",
        r.spread,
        r.subtasks,
        format!("{}{order}", r.strategy.header()),
        r.cap,
        seconds(r.wall_ms as f64),
        r.floor_wall_ms
            .map_or_else(|| "-".into(), |f| seconds(f as f64)),
        ratio(r.vs_floor()),
        seconds(r.schedule.ideal_ms),
        ratio(Some(r.vs_ideal())),
        r.schedule
            .utilization
            .map_or_else(|| "-".into(), |u| format!("{:.0}", 100.0 * u)),
        r.schedule.max_in_flight,
        r.coordinator_invocations,
        r.fan_in_invocations,
        format!("{:.0}", r.bytes_per_subtask()),
        r.coordination_bytes_per_subtask()
            .map_or_else(|| "-".into(), |b| format!("{b:.0}")),
        r.throttled,
        // The row's cold starts and its floor's: a fair pair meets a warm pool alike.
        match r.floor_cold_starts {
            Some(floor) => format!("{}/{floor}", r.cold_starts),
            None => r.cold_starts.to_string(),
        },
        mib(r.server_rss_kb),
        goals,
    )
    .trim_end()
    .to_owned()
}

pub fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "handler: {} ({:.1} MiB); {} cold starts, init min {} / median {} / max {} ms \
         (instances start concurrently on this machine's cores); instance peak RSS {} KiB; \
         restate-server peak RSS {} KiB",
        report.handler_binary,
        report.handler_binary_bytes as f64 / (1024.0 * 1024.0),
        report.cold_starts,
        ms(report.cold_init_ms_min),
        ms(report.cold_init_ms_median),
        ms(report.cold_init_ms_max),
        report
            .instance_peak_rss_kb_max
            .map(|v| v.to_string())
            .unwrap_or("-".into()),
        report
            .server_peak_rss_kb
            .map(|v| v.to_string())
            .unwrap_or("-".into()),
    );
    let _ = writeln!(
        out,
        "goals (ledger rows): cap >= N: wall <= {GOAL_VS_FLOOR}x floor; cap < N: wall <= \
         {GOAL_VS_IDEAL}x ideal and util >= {:.0}%; in-fl <= cap; coord <= 3; B/sub <= {:.0} \
         (+B/sub: bytes per subtask over the floor's, what coordination adds)",
        100.0 * GOAL_UTILIZATION,
        GOAL_BYTES_PER_SUBTASK
    );
    let _ = writeln!(out, "{HEADER}");
    for r in &report.rows {
        let _ = writeln!(out, "{}", row_line(r));
    }
    out
}

/// A plot's title and the figure it draws from a row (`None`: the row is not in the panel).
type Panel = (&'static str, fn(&BenchRow) -> Option<f64>, bool);

/// An SVG with three panels against N (log scale): wall over the floor where the cap covers
/// every subtask, wall over the ideal schedule where it does not, and coordinator
/// invocations; one line per strategy (colour) and spread (dash).
pub fn plot(report: &BenchReport) -> String {
    const W: f64 = 420.0;
    const H: f64 = 300.0;
    const PAD: f64 = 50.0;
    let colors = [
        (Strategy::Ledger, "#1f77b4"),
        (Strategy::SelectAny, "#2ca02c"),
        (Strategy::InOrder, "#d62728"),
    ];
    let mut spreads: Vec<&str> = report.rows.iter().map(|r| r.spread.as_str()).collect();
    spreads.dedup();
    spreads.sort_unstable();
    spreads.dedup();
    let dashes = ["", "6 4", "2 3", "10 3 2 3"];
    // The smallest cap below N per line and width, so a line does not zig-zag between caps.
    let smallest_cap = |r: &BenchRow| {
        report
            .rows
            .iter()
            .filter(|o| {
                o.spread == r.spread && o.strategy == r.strategy && o.subtasks == r.subtasks
            })
            .map(|o| o.cap)
            .min()
            .unwrap_or(r.cap)
    };
    let panels: [Panel; 3] = [
        (
            "wall / floor, cap >= N",
            |r| (r.cap >= r.subtasks).then(|| r.vs_floor()).flatten(),
            false,
        ),
        (
            "wall / ideal schedule, cap < N",
            |r| (r.cap < r.subtasks).then(|| r.vs_ideal()),
            false,
        ),
        (
            "coordinator invocations",
            |r| Some(r.coordinator_invocations as f64),
            true,
        ),
    ];
    let ns: Vec<f64> = report.rows.iter().map(|r| r.subtasks as f64).collect();
    let (n_min, n_max) = (
        ns.iter().copied().fold(f64::MAX, f64::min).max(1.0),
        ns.iter().copied().fold(1.0, f64::max),
    );
    let x_of = |n: f64| {
        let span = (n_max.log10() - n_min.log10()).max(1e-9);
        PAD + (n.log10() - n_min.log10()) / span * (W - 2.0 * PAD)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        3.0 * W
    );
    for (panel, (title, value, log_y)) in panels.iter().enumerate() {
        let dx = panel as f64 * W;
        let in_panel =
            |r: &&BenchRow| value(r).is_some() && (r.cap >= r.subtasks || r.cap == smallest_cap(r));
        let y_max = report
            .rows
            .iter()
            .filter(in_panel)
            .filter_map(value)
            .fold(if *log_y { 10.0 } else { 2.0 }, f64::max);
        let y_of = |v: f64| {
            let share = if *log_y {
                v.max(1.0).log10() / y_max.log10()
            } else {
                v / y_max
            };
            H - PAD - share * (H - 2.0 * PAD)
        };
        let _ = writeln!(
            svg,
            "<g transform=\"translate({dx},0)\"><text x=\"{}\" y=\"20\" text-anchor=\"middle\">{title} vs N</text>\
             <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y_max:.1}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            W / 2.0,
            H - PAD,
            W - PAD,
            H - PAD,
            H - PAD,
            PAD - 4.0,
            PAD + 4.0,
            PAD - 4.0,
            H - PAD,
            if *log_y { "1" } else { "0" },
        );
        if !*log_y {
            // The goal line: 1.10 against the floor, 1.15 against the ideal.
            let goal = if panel == 0 {
                GOAL_VS_FLOOR
            } else {
                GOAL_VS_IDEAL
            };
            let _ = writeln!(
                svg,
                "<line x1=\"{PAD}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#999\" stroke-dasharray=\"1 2\"/>\
                 <text x=\"{}\" y=\"{:.1}\" fill=\"#999\">goal {goal}</text>",
                W - PAD,
                W - PAD + 2.0,
                y_of(goal) + 4.0,
                y = y_of(goal),
            );
        }
        let mut widths: Vec<usize> = report.rows.iter().map(|r| r.subtasks).collect();
        widths.dedup();
        for n in widths {
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{n}</text>",
                x_of(n as f64),
                H - PAD + 14.0
            );
        }
        let mut legend = 0;
        for (strategy, color) in colors {
            for (s, spread) in spreads.iter().enumerate() {
                let mut points: Vec<(usize, f64)> = report
                    .rows
                    .iter()
                    .filter(|r| r.strategy == strategy && r.spread == *spread)
                    .filter(in_panel)
                    .filter_map(|r| value(r).map(|v| (r.subtasks, v)))
                    .collect();
                points.sort_by_key(|p| p.0);
                points.dedup_by_key(|p| p.0);
                if points.is_empty() {
                    continue;
                }
                let line: Vec<String> = points
                    .iter()
                    .map(|&(n, v)| format!("{:.1},{:.1}", x_of(n as f64), y_of(v)))
                    .collect();
                let _ = writeln!(
                    svg,
                    "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{}\" points=\"{}\"/>\
                     <text x=\"{}\" y=\"{}\" fill=\"{color}\">{} {spread}</text>",
                    dashes[s % dashes.len()],
                    line.join(" "),
                    PAD + 6.0,
                    PAD + 12.0 * legend as f64,
                    strategy.header(),
                );
                legend += 1;
            }
        }
        svg.push_str("</g>\n");
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(strategy: Strategy, n: usize, cap: usize, invocations: usize) -> BenchRow {
        BenchRow {
            spread: "0-1s".into(),
            subtasks: n,
            order: Order::Random,
            strategy,
            cap,
            wall_ms: 1050,
            coordinator_invocations: invocations,
            bytes_to_coordinator: 10 * invocations,
            subtask_invocations: n,
            fan_in_invocations: 0,
            bytes_total: 1000 * n,
            billed_ms: 0,
            coordinator_billed_ms: 0,
            throttled: 0,
            cold_starts: 0,
            server_rss_kb: Some(2048),
            instance_rss_kb: None,
            schedule: Schedule {
                ideal_ms: 1000.0,
                utilization: (cap < n).then_some(0.95),
                max_in_flight: cap,
            },
            by_handler: Default::default(),
            floor_wall_ms: Some(1000),
            floor_cold_starts: Some(0),
            floor_bytes_total: Some(900 * n),
        }
    }

    #[test]
    fn the_plot_draws_one_line_per_strategy_and_spread_in_each_panel() {
        let report = BenchReport {
            handler_binary: "h".into(),
            handler_binary_bytes: 0,
            cold_starts: 0,
            cold_init_ms_min: None,
            cold_init_ms_median: None,
            cold_init_ms_max: None,
            instance_peak_rss_kb_max: None,
            server_peak_rss_kb: Some(4096),
            rows: vec![
                row(Strategy::Ledger, 10, 10, 3),
                row(Strategy::SelectAny, 10, 10, 11),
                row(Strategy::Ledger, 100, 100, 3),
                row(Strategy::SelectAny, 100, 100, 60),
                row(Strategy::Ledger, 100, 20, 3),
                row(Strategy::SelectAny, 100, 20, 90),
            ],
        };
        let svg = plot(&report);
        // Panel 1 and 3: two strategies each; panel 2 (cap < N): two strategies at one width.
        assert_eq!(svg.matches("<polyline").count(), 6, "{svg}");
        let text = table(&report);
        assert!(text.contains("restate-server peak RSS 4096 KiB"), "{text}");
        let ledger_capped = text
            .lines()
            .find(|l| l.contains(" ledger ") && l.contains("   20 "))
            .unwrap();
        assert!(ledger_capped.ends_with(" met"), "{ledger_capped}");
        assert!(
            ledger_capped.contains(" 1000    100 "),
            "bytes per subtask, then what coordination adds over the floor: {ledger_capped}"
        );
        assert!(
            ledger_capped.contains(" 95 "),
            "utilization: {ledger_capped}"
        );
        let peer = text.lines().find(|l| l.contains("select-any")).unwrap();
        assert!(peer.ends_with('-'), "only the ledger is held to the goals");
    }

    #[test]
    fn each_figure_over_its_bound_is_named_as_a_missed_goal() {
        let missed = |r: &BenchRow| r.missed_goals().expect("a ledger row");
        assert_eq!(
            missed(&row(Strategy::Ledger, 100, 100, 3)),
            Vec::<&str>::new()
        );
        assert_eq!(row(Strategy::SelectAny, 100, 100, 3).missed_goals(), None);
        let mut slow = row(Strategy::Ledger, 100, 100, 3);
        slow.wall_ms = 1200;
        assert_eq!(missed(&slow), ["wall"], "1.2x the floor");
        let mut chatty = row(Strategy::Ledger, 100, 20, 4);
        assert_eq!(missed(&chatty), ["coord"], "4 coordinator invocations");
        chatty.coordinator_invocations = 3;
        chatty.schedule.max_in_flight = 21;
        chatty.schedule.utilization = Some(0.8);
        assert_eq!(
            missed(&chatty),
            ["util", "cap"],
            "80 % in flight, over the cap"
        );
        let mut heavy = row(Strategy::Ledger, 100, 20, 3);
        heavy.bytes_total = 2100 * 100;
        assert_eq!(missed(&heavy), ["bytes"], "2.1 KB per subtask");
        assert_eq!(heavy.coordination_bytes_per_subtask(), Some(1200.0));
    }

    #[test]
    fn the_ideal_schedule_puts_each_subtask_on_the_first_free_slot() {
        // Durations 4, 1, 1, 1, 1 ms: with 2 slots the short ones run beside the long one.
        let intervals = [(0.0, 4.0), (0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)];
        let s = schedule(&intervals, 2);
        assert_eq!(s.ideal_ms, 4.0);
        assert_eq!(s.max_in_flight, 2);
        // Two in flight the whole time, until fewer than two remain at t=3.
        assert_eq!(s.utilization, Some(1.0));
        // One slot: the sum.
        assert_eq!(schedule(&intervals, 1).ideal_ms, 8.0);
        // A cap covering every subtask: the longest one, and no utilization to speak of.
        let wide = schedule(&intervals, 5);
        assert_eq!(wide.ideal_ms, 4.0);
        assert_eq!(wide.utilization, None);
    }

    #[test]
    fn utilization_sees_a_wave_that_waits_for_its_slowest_subtask() {
        // Cap 2, four subtasks in two waves: the second waits for the first's slowest.
        let waves = [(0.0, 1.0), (0.0, 4.0), (4.0, 5.0), (4.0, 8.0)];
        let s = schedule(&waves, 2);
        // In flight: 2 for 1 ms, then 1 for 3 ms; the window ends when the 3rd finishes (t=5).
        let expected = (2.0 * 1.0 + 1.0 * 3.0 + 2.0 * 1.0) / 5.0 / 2.0;
        assert!((s.utilization.unwrap() - expected).abs() < 1e-9, "{s:?}");
        assert!(s.ideal_ms < 8.0, "the ideal refills the freed slot: {s:?}");
    }

    #[test]
    fn spreads_and_caps_parse_as_written() {
        assert_eq!(Spread::parse("0-10s").unwrap().max_ms, 10_000);
        assert_eq!(Spread::parse("0-500ms").unwrap().max_ms, 500);
        assert_eq!(Spread::parse("100").unwrap().max_ms, 100);
        let tail = Spread::parse("tail").unwrap();
        assert_eq!((tail.max_ms, tail.tail.as_deref()), (1000, Some("5%x20")));
        assert_eq!(tail.label(), "0-1s+5%x20");
        assert_eq!(
            Spread::parse("tail:0-2s:1%x50").unwrap().handler_env()[1].1,
            "1%x50"
        );
        assert!(Spread::parse("soon").unwrap_err().contains("0-10s"));
        assert_eq!(Cap::parse("n").unwrap().of(700), 700);
        assert_eq!(Cap::parse("n/5").unwrap().of(1000), 200);
        assert_eq!(Cap::parse("1000").unwrap().of(100), 100);
        assert!(Cap::parse("n/0").unwrap_err().contains("n/5"));
        assert!(Cap::parse("0").is_err());
    }

    #[test]
    fn orders_fix_when_each_subtask_finishes() {
        let spread = Spread::parse("300").unwrap();
        assert_eq!(
            Order::Increasing.chores(3, &spread),
            ["s1@100", "s2@200", "s3@300"]
        );
        assert_eq!(
            Order::Decreasing.chores(3, &spread),
            ["s1@200", "s2@100", "s3@0"]
        );
    }

    #[test]
    fn random_draws_repeat_for_a_width_and_follow_the_spread() {
        let uniform = Spread::parse("0-10s").unwrap();
        let a = Order::Random.chores(1000, &uniform);
        assert_eq!(
            a,
            Order::Random.chores(1000, &uniform),
            "same width, same draws"
        );
        let ms: Vec<u64> = a
            .iter()
            .map(|c| c.rsplit_once('@').unwrap().1.parse().unwrap())
            .collect();
        assert!(ms.iter().all(|&m| m < 10_000));
        let mean = ms.iter().sum::<u64>() as f64 / ms.len() as f64;
        assert!((4000.0..6000.0).contains(&mean), "{mean}");
        let tail = Spread::parse("tail").unwrap();
        let long = tail.draws(10_000).filter(|&m| m >= 1000).count();
        // 5 % are 20× longer, of which 95 % land above 1 s.
        assert!((380..570).contains(&long), "{long} long ones in 10,000");
    }
}
