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

/// The table every verb's `--help` ends with (and `fanout --help`).
pub const HELP: &str = "Exit codes (the same for every fanout verb):
  0    success (status: the run succeeded or is still going)
  1    other errors (cancel: nothing to cancel, or the run did not stop within --timeout; \
redrive: the run is still going)
  2    a bad flag or argument, refused by the parser before anything ran
  3    the run failed terminally (invoke, attach, status: cancelled, or a subtask failed for good: \
the first under fail-fast, one more than the failure policy tolerates otherwise; redrive: the \
redrive run failed, after merging what it finished)
  4    rejected: bad input found before anything changed (an unreadable --input, --zip or \
--handler, a malformed ARN or invocation id, a flag value Lambda cannot take, no crate to build, \
HTTP 4xx from the ingress, a task the handler refused with 400/413 before any subtask started) \
or missing or invalid credentials (Restate token, AWS credentials or region)
  5    unreachable: Restate's admin API or ingress, or the Lambda API (connection refused, DNS, \
timeout), or the ingress answered 5xx; once a run is started, invoke and attach ride out a \
restart of Restate (reconnecting for up to 10 min) before giving up with 5
  6    not found: an unknown invocation id (never existed here, or past its retention), or a \
Lambda function that does not exist where the AWS credentials and region point
  130  interrupted with Ctrl-C while waiting; the run goes on, `fanout attach ID` follows it again";

/// An error a verb found in what it was given (exit [`BAD_INPUT`]): wrap it in an
/// `anyhow::Error` with [`rejected`]; [`code_of`] finds it under any context added later.
#[derive(Debug)]
pub struct Rejected(pub String);

/// Something named that does not exist (exit [`UNKNOWN_ID`]): see [`not_found`].
#[derive(Debug)]
pub struct NotFound(pub String);

/// A server or API that could not be reached (exit [`UNREACHABLE`]): see [`unreachable`].
/// Errors of `reqwest` (our HTTP client) count as this without being wrapped.
#[derive(Debug)]
pub struct Unreachable(pub String);

macro_rules! message_error {
    ($($name:ident),*) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for $name {}
    )*};
}
message_error!(Rejected, NotFound, Unreachable);

/// Bad input: exit 4.
pub fn rejected(message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Rejected(message.to_string()))
}

/// Not found: exit 6.
pub fn not_found(message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(NotFound(message.to_string()))
}

/// Unreachable: exit 5.
pub fn unreachable(message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Unreachable(message.to_string()))
}

/// The exit code of an error that ended a verb: the first classified cause in its chain
/// (outermost first), else [`OTHER`].
pub fn code_of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<Rejected>() {
            return BAD_INPUT;
        }
        if cause.is::<NotFound>() {
            return UNKNOWN_ID;
        }
        if cause.is::<Unreachable>() || cause.is::<reqwest::Error>() {
            return UNREACHABLE;
        }
    }
    OTHER
}

/// The `outcome` a JSON error report gives for exit `code`.
pub fn outcome_of(code: u8) -> &'static str {
    match code {
        BAD_INPUT => "rejected",
        UNREACHABLE => "unreachable",
        UNKNOWN_ID => "unknown",
        INTERRUPTED => "interrupted",
        _ => "error",
    }
}

/// Whether `error` is a transport failure (connection refused, DNS, timeout) rather than an
/// answer: those get [`UNREACHABLE`].
pub fn is_unreachable(error: &anyhow::Error) -> bool {
    code_of(error) == UNREACHABLE
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn the_code_is_found_under_added_context() {
        let wrapped = Err::<(), _>(rejected("bad ARN"))
            .context("registering")
            .unwrap_err();
        assert_eq!(code_of(&wrapped), BAD_INPUT);
        assert_eq!(format!("{wrapped:#}"), "registering: bad ARN");
        assert_eq!(code_of(&not_found("no such function")), UNKNOWN_ID);
        assert_eq!(code_of(&unreachable("down")), UNREACHABLE);
        assert_eq!(code_of(&anyhow::anyhow!("anything else")), OTHER);
    }
}
