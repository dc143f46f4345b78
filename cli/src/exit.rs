//! The exit codes of every `fanout` verb: one table, so a script can tell a bad input from an
//! unreachable server from a failed run whatever verb it called.

pub const OK: u8 = 0;
/// Anything not listed below.
pub const OTHER: u8 = 1;
/// A bad flag or argument, refused by the parser before anything ran (clap's own code).
pub const BAD_ARGUMENTS: u8 = 2;
pub const RUN_FAILED: u8 = 3;
pub const BAD_INPUT: u8 = 4;
pub const UNREACHABLE: u8 = 5;
pub const UNKNOWN_ID: u8 = 6;
/// Ctrl-C while waiting: the run goes on (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

/// The table, for `--help`.
pub const HELP: &str = "Exit codes:
  0    success (status: the run succeeded or is still going)
  1    other errors
  2    a bad flag or argument (nothing was sent)
  3    the run failed terminally (cancelled, or a subtask failed for good: the first under \
fail-fast, one more than the failure policy tolerates otherwise)
  4    rejected: bad input (unreadable --input, HTTP 4xx from the ingress, a task the handler \
refused with 400/413 before any subtask started, a malformed invocation id) or a missing or \
invalid token
  5    Restate unreachable (connection refused, DNS, timeout) or its ingress answered 5xx; \
once a run is started, invoke and attach ride out a restart of Restate (reconnecting for up to \
10 min) before giving up with 5
  6    unknown invocation id (never existed here, or past its retention)
  130  interrupted with Ctrl-C while waiting; the run goes on, `fanout attach ID` follows it again";

/// Whether `error` is a transport failure (connection refused, DNS, timeout) rather than an
/// answer: those get [`UNREACHABLE`].
pub fn is_unreachable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<reqwest::Error>().is_some())
}
