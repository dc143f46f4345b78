//! Following a run live: a progress bar on a terminal, plain lines in a pipe, polls spaced by
//! how long they take.

use super::introspection::Observer;
use super::model::Progress;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown while a run is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// A live bar, redrawn in place (a terminal).
    Bar,
    /// A line when something changed, at most one a second, and one every 10 s regardless (a
    /// pipe or CI log).
    Plain,
    /// Nothing.
    Quiet,
}

impl DisplayMode {
    /// A bar when stderr, where progress goes, is a terminal; plain lines otherwise.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Plain
        }
    }
}

/// Progress shown on stderr, so stdout carries only the result.
pub struct Display {
    mode: DisplayMode,
    bar: Option<ProgressBar>,
    started: Instant,
    last_state: Option<String>,
    last_print: Option<Instant>,
    /// The bar is drawn against a total (until the split is done there is none).
    counting: bool,
}

const PLAIN_MIN_GAP: Duration = Duration::from_secs(1);
const PLAIN_HEARTBEAT: Duration = Duration::from_secs(10);

/// The bar's layout: spinner, elapsed, bar, done/total, then the states.
pub fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} subtasks done{msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Before the coordinator has called its subtasks: no total to draw a bar against. The phase
/// is the prefix, the counts the message, as in the bar style.
pub fn waiting_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {elapsed:>4} {prefix}{msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Display {
    pub fn new(mode: DisplayMode) -> Self {
        let bar = (mode == DisplayMode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(waiting_style());
            bar.set_prefix("starting the fan-out");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self::with_bar(mode, bar)
    }

    /// A display drawing to `bar` (a hidden one in tests).
    pub fn with_bar(mode: DisplayMode, bar: Option<ProgressBar>) -> Self {
        Self {
            mode,
            bar,
            started: Instant::now(),
            last_state: None,
            last_print: None,
            counting: false,
        }
    }

    pub fn bar(&self) -> Option<&ProgressBar> {
        self.bar.as_ref()
    }

    pub fn update(&mut self, progress: &Progress) {
        match self.mode {
            DisplayMode::Bar => {
                let Some(bar) = &self.bar else { return };
                let message = counts_text(progress);
                match progress.total {
                    None => {
                        bar.set_prefix(if progress.batches {
                            format!("{} batches done", progress.finished())
                        } else {
                            phase(false).to_owned()
                        });
                        bar.set_message(message);
                    }
                    Some(total) => {
                        bar.set_length(total as u64);
                        bar.set_message(message);
                        bar.set_position(progress.finished() as u64);
                        // Last, so the first frame in bar style already has its numbers.
                        if !self.counting {
                            bar.set_style(bar_style());
                            self.counting = true;
                        }
                    }
                }
            }
            DisplayMode::Plain => {
                let state = state_text(progress, false);
                let now = Instant::now();
                let since = self.last_print.map(|at| now - at);
                let due = match since {
                    None => true,
                    Some(gap) => {
                        (Some(&state) != self.last_state.as_ref() && gap >= PLAIN_MIN_GAP)
                            || gap >= PLAIN_HEARTBEAT
                    }
                };
                if due {
                    eprintln!("{}", plain_line(self.started.elapsed(), progress));
                    self.last_print = Some(now);
                    self.last_state = Some(state);
                }
            }
            DisplayMode::Quiet => {}
        }
    }

    /// The final state: the bar left drawn complete, or a last plain line.
    pub fn finish(&mut self, progress: &Progress) {
        match self.mode {
            DisplayMode::Bar => {
                self.update(progress);
                if let Some(bar) = &self.bar {
                    if progress.total.is_none() {
                        bar.set_prefix(phase(true));
                    }
                    bar.finish();
                    // The finished bar keeps the cursor on its line; what follows starts below.
                    eprintln!();
                }
            }
            DisplayMode::Plain => {
                let elapsed = self.started.elapsed();
                eprintln!("{}", line(elapsed, &state_text(progress, true)));
            }
            DisplayMode::Quiet => {}
        }
    }

    /// Removes the bar so a message can be printed on a clean line.
    pub fn abandon(&mut self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// What follows `done/total` on the bar: `· 1 running · 1 retrying`.
pub fn bar_message(progress: &Progress) -> String {
    counts_text(progress)
}

/// The states after `done/total`; `ended`: the run is over, so no total means none were called.
/// What the run is doing while there is no total yet (`ended`: it is over, and called none).
fn phase(ended: bool) -> &'static str {
    if ended {
        "no subtask was called"
    } else {
        "splitting the task"
    }
}

fn messages(progress: &Progress, ended: bool) -> String {
    match progress.total {
        None if !progress.batches => format!(" · {}{}", phase(ended), counts_text(progress)),
        _ => counts_text(progress),
    }
}

fn counts_text(progress: &Progress) -> String {
    let mut message = String::new();
    for (n, what) in [
        (progress.running, "running"),
        (progress.retrying, "retrying"),
        (progress.pending, "pending"),
        (progress.paused, "paused"),
        (progress.failed, "failed"),
    ] {
        if n > 0 {
            let _ = write!(message, " · {n} {what}");
        }
    }
    message
}

fn state_text(progress: &Progress, ended: bool) -> String {
    let total = progress
        .total
        .map_or_else(|| "?".to_owned(), |n| n.to_string());
    let unit = if progress.batches {
        "batches"
    } else {
        "subtasks"
    };
    format!(
        "{}/{total} {unit} done{}",
        progress.finished(),
        messages(progress, ended)
    )
}

fn line(elapsed: Duration, state: &str) -> String {
    format!("[{:>7.1}s] {state}", elapsed.as_secs_f64())
}

/// `[   2.5s] 3/4 subtasks done · 1 retrying`.
pub fn plain_line(elapsed: Duration, progress: &Progress) -> String {
    line(elapsed, &state_text(progress, false))
}

/// Spacing of progress polls: every 500 ms while things change, backing off to 2 s while they
/// do not, and never closer than ten times what the last poll took, so a busy server (or a wide
/// fan-out whose queries take longer) is asked less often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollInterval {
    current: Duration,
}

impl PollInterval {
    pub const FLOOR: Duration = Duration::from_millis(500);
    pub const IDLE: Duration = Duration::from_secs(2);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Self {
            current: Self::FLOOR,
        }
    }

    pub fn current(&self) -> Duration {
        self.current
    }

    /// The wait before the next poll, given whether the last one saw a change and how long
    /// its queries took.
    pub fn next(&mut self, changed: bool, query_time: Duration) -> Duration {
        let floor = (query_time * 10).clamp(Self::FLOOR, Self::MAX);
        self.current = if changed {
            floor
        } else {
            self.current
                .mul_f64(1.5)
                .clamp(floor, Self::IDLE.max(floor))
        };
        self.current
    }
}

impl Default for PollInterval {
    fn default() -> Self {
        Self::new()
    }
}

/// One progress poll; reads the split's total until it is known.
async fn poll(observer: &Observer, id: &str, total: &mut Option<usize>) -> Result<Progress> {
    let progress = observer.progress(id, *total).await?;
    if total.is_some() {
        return Ok(progress);
    }
    // Asked after the counts, so any child counted has its split already journaled.
    *total = observer.split_total(id).await.ok().flatten();
    Ok(progress.with_total(*total))
}

/// Polls the progress of coordinator `id` into `display` until `until` completes, then polls
/// once more so the display ends on the final counts. Returns `until`'s output and the last
/// progress seen. A failed poll keeps the previous counts: the display is a convenience, and the
/// run's outcome comes from `until`.
pub async fn watch<F: Future>(
    observer: &Observer,
    id: &str,
    display: &mut Display,
    until: F,
) -> (F::Output, Progress) {
    let mut until = std::pin::pin!(until);
    let mut interval = PollInterval::new();
    let mut last = Progress::default();
    // The first answer counts as a change: the run has just started, so look again soon.
    let mut seen_any = false;
    // Fixed once the split is journaled; read once, as it can be large.
    let mut total = None;
    loop {
        let started = Instant::now();
        let changed = match poll(observer, id, &mut total).await {
            Ok(progress) => {
                let changed = !seen_any || progress != last;
                seen_any = true;
                last = progress;
                display.update(&last);
                changed
            }
            Err(_) => false,
        };
        let wait = interval.next(changed, started.elapsed());
        tokio::select! {
            output = &mut until => {
                if let Ok(progress) = poll(observer, id, &mut total).await {
                    last = progress;
                }
                display.finish(&last);
                return (output, last);
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_and_bar_messages() {
        let progress = Progress {
            total: Some(4),
            completed: 2,
            running: 1,
            retrying: 1,
            ..Progress::default()
        };
        assert_eq!(
            plain_line(Duration::from_millis(2500), &progress),
            "[    2.5s] 2/4 subtasks done · 1 running · 1 retrying"
        );
        assert_eq!(
            plain_line(Duration::ZERO, &Progress::default()),
            "[    0.0s] 0/? subtasks done · splitting the task"
        );
        // A batched run counts batches, whose total is not the task's width.
        let batches = Progress {
            completed: 3,
            batches: true,
            ..Progress::default()
        }
        .with_total(Some(30));
        assert_eq!(
            plain_line(Duration::from_secs(1), &batches),
            "[    1.0s] 3/? batches done"
        );
    }

    #[test]
    fn the_bar_tracks_done_over_total() {
        let mut display = Display::with_bar(DisplayMode::Bar, Some(ProgressBar::hidden()));
        display.update(&Progress::default());
        assert_eq!(display.bar().unwrap().prefix(), "splitting the task");
        display.update(&Progress {
            total: Some(10),
            completed: 3,
            failed: 1,
            retrying: 2,
            running: 4,
            ..Progress::default()
        });
        let bar = display.bar().unwrap();
        assert_eq!((bar.position(), bar.length()), (4, Some(10)));
        assert_eq!(bar.message(), " · 4 running · 2 retrying · 1 failed");
        // The template itself must parse, or the bar would silently fall back to the default.
        assert!(
            ProgressStyle::with_template(
                "{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} subtasks done{msg}"
            )
            .is_ok()
        );
    }

    #[test]
    fn polls_back_off_when_idle_and_slow_down_for_slow_queries() {
        let mut interval = PollInterval::new();
        let fast = Duration::from_millis(5);
        assert_eq!(interval.next(true, fast), PollInterval::FLOOR);
        let mut waits = Vec::new();
        for _ in 0..6 {
            waits.push(interval.next(false, fast));
        }
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), PollInterval::IDLE);
        assert_eq!(interval.next(true, fast), PollInterval::FLOOR);
        assert_eq!(
            interval.next(true, Duration::from_millis(300)),
            Duration::from_secs(3)
        );
        assert_eq!(
            interval.next(true, Duration::from_secs(5)),
            PollInterval::MAX
        );
    }
}
