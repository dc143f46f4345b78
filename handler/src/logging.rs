//! Log lines in the reference format, once per real execution.
//!
//! Human mode (HTTP endpoint, local runs):
//! `[worker/runSubtask][inv_1abc…][2026-11-28T08:50:00.123Z] INFO: Started executing subtask: shower`
//!
//! JSON mode (on Lambda, one object per line for CloudWatch): the same facts as keys, plus the
//! Lambda request id of the event being handled.
//!
//! Lines logged while the SDK replays a journal are dropped by the SDK's replay-aware filter,
//! so a handler resumed ten times still prints each line once.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Names a log line after the invocation it belongs to.
pub struct InvocationLog {
    handler: &'static str,
    invocation_id: String,
}

impl InvocationLog {
    pub fn new(handler: &'static str, invocation_id: &str) -> Self {
        Self {
            handler,
            invocation_id: invocation_id.to_owned(),
        }
    }

    pub fn info(&self, message: fmt::Arguments<'_>) {
        tracing::info!(
            handler = self.handler,
            invocation_id = %self.invocation_id,
            "{message}"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The Lambda request being handled. A Lambda instance handles one event at a time, so one
/// slot is exact; the adapter sets it per event.
static LAMBDA_REQUEST_ID: Mutex<Option<String>> = Mutex::new(None);

/// Whether suspensions are shown (when `RUST_LOG` asks for debug output of the SDK).
static SHOW_SUSPENSIONS: AtomicBool = AtomicBool::new(false);

pub fn set_lambda_request_id(request_id: Option<String>) {
    if let Ok(mut slot) = LAMBDA_REQUEST_ID.lock() {
        *slot = request_id;
    }
}

fn lambda_request_id() -> Option<String> {
    LAMBDA_REQUEST_ID.lock().ok().and_then(|slot| slot.clone())
}

/// Lambda's advanced logging controls: the log format the function's `LoggingConfig` asks for.
pub const LAMBDA_LOG_FORMAT_ENV: &str = "AWS_LAMBDA_LOG_FORMAT";
/// Lambda's advanced logging controls: the application log level.
pub const LAMBDA_LOG_LEVEL_ENV: &str = "AWS_LAMBDA_LOG_LEVEL";

/// How the handler logs, read from its environment the way `lambda_runtime`'s own subscriber
/// reads it: `AWS_LAMBDA_LOG_FORMAT` (`JSON` or `Text`) picks the format, `AWS_LAMBDA_LOG_LEVEL`
/// the level, and `RUST_LOG` adds its directives beside them (`restate_sdk=debug`…). A level
/// set in both is Lambda's: it is what the console and the template configure, and a custom
/// runtime must filter by it itself, as Lambda only filters managed runtimes' logs.
pub struct LogSettings {
    pub format: LogFormat,
    filter: EnvFilter,
    /// Debug or trace asked for: suspensions are shown.
    verbose: bool,
    /// Values that could not be used, each with what was used instead.
    pub warnings: Vec<String>,
}

impl LogSettings {
    /// Settings from `var` (the process environment in production); `default` is the format
    /// when `AWS_LAMBDA_LOG_FORMAT` is unset: JSON on Lambda, human lines elsewhere.
    pub fn from_env(default: LogFormat, var: impl Fn(&str) -> Option<String>) -> Self {
        let mut warnings = Vec::new();
        let format = match var(LAMBDA_LOG_FORMAT_ENV) {
            None => default,
            Some(raw) if raw.eq_ignore_ascii_case("json") => LogFormat::Json,
            Some(raw) if raw.eq_ignore_ascii_case("text") => LogFormat::Human,
            Some(raw) => {
                warnings.push(format!(
                    "{LAMBDA_LOG_FORMAT_ENV}={raw:?} is neither JSON nor Text; logging as {}",
                    default.name()
                ));
                default
            }
        };
        let lambda_level = var(LAMBDA_LOG_LEVEL_ENV).and_then(|raw| {
            let level = lambda_level(&raw);
            if level.is_none() {
                warnings.push(format!(
                    "{LAMBDA_LOG_LEVEL_ENV}={raw:?} is not one of TRACE, DEBUG, INFO, WARN, \
                     ERROR, FATAL; ignoring it"
                ));
            }
            level
        });
        let rust_log = var("RUST_LOG").unwrap_or_default();
        // (An empty string parses as a level, `off`.)
        let is_bare_level = |directive: &str| {
            let directive = directive.trim();
            !directive.is_empty() && directive.parse::<LevelFilter>().is_ok()
        };
        let rust_log_sets_level = rust_log.split(',').any(is_bare_level);
        // Lambda's level replaces a bare level of RUST_LOG's; its targeted directives stay.
        let kept: Vec<&str> = rust_log
            .split(',')
            .filter(|d| !(d.trim().is_empty() || lambda_level.is_some() && is_bare_level(d)))
            .collect();
        let directives = EnvFilter::builder()
            .parse(kept.join(","))
            .unwrap_or_else(|e| {
                warnings.push(format!("RUST_LOG is not a valid filter ({e}); ignoring it"));
                EnvFilter::default()
            });
        let filter = match lambda_level {
            Some(level) => directives.add_directive(level.into()),
            None if rust_log_sets_level => directives,
            None => directives.add_directive(LevelFilter::INFO.into()),
        };
        let verbose = filter
            .max_level_hint()
            .is_some_and(|level| level >= LevelFilter::DEBUG);
        Self {
            format,
            filter,
            verbose,
            warnings,
        }
    }
}

/// A level of Lambda's advanced logging controls; `FATAL` has no tracing level of its own.
fn lambda_level(raw: &str) -> Option<LevelFilter> {
    match raw.to_ascii_uppercase().as_str() {
        "TRACE" => Some(LevelFilter::TRACE),
        "DEBUG" => Some(LevelFilter::DEBUG),
        "INFO" => Some(LevelFilter::INFO),
        "WARN" => Some(LevelFilter::WARN),
        "ERROR" | "FATAL" => Some(LevelFilter::ERROR),
        _ => None,
    }
}

impl LogFormat {
    fn name(self) -> &'static str {
        match self {
            LogFormat::Human => "text",
            LogFormat::Json => "JSON",
        }
    }
}

/// Installs the global subscriber with `settings`, then reports what it could not use.
pub fn init(settings: LogSettings) {
    SHOW_SUSPENSIONS.store(settings.verbose, Ordering::Relaxed);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(LineFormat {
            format: settings.format,
        })
        .with_filter(settings.filter)
        .with_filter(restate_sdk::filter::ReplayAwareFilter);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layer).try_init();
    for warning in settings.warnings {
        tracing::warn!("{warning}");
    }
}

struct LineFormat {
    format: LogFormat,
}

#[derive(Default)]
struct Fields {
    message: String,
    handler: Option<String>,
    rpc_service: Option<String>,
    rpc_method: Option<String>,
    invocation_id: Option<String>,
    extra: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "handler" => self.handler = Some(value),
            "invocation_id" => self.invocation_id = Some(value),
            "rpc.service" => self.rpc_service = Some(value),
            "rpc.method" => self.rpc_method = Some(value),
            name => self.extra.push((name, value)),
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut level = *event.metadata().level();
        // The SDK reports every suspension as a handler failure at WARN. A suspension is the
        // normal way a coordinator waits (on Lambda, every wait), so it is shown only at debug
        // and as what it is.
        if event.metadata().target().starts_with("restate_sdk")
            && fields.message.contains("Suspended invocation")
        {
            let (Some(service), Some(method)) = (&fields.rpc_service, &fields.rpc_method) else {
                return Ok(()); // the same suspension, reported a second time
            };
            if !SHOW_SUSPENSIONS.load(Ordering::Relaxed) {
                return Ok(());
            }
            fields.handler = Some(format!("{service}/{method}"));
            fields.message = "suspended: Restate resumes it when what it awaits completes".into();
            fields.rpc_service = None;
            fields.rpc_method = None;
            level = Level::DEBUG;
        }
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        match self.format {
            LogFormat::Human => {
                let handler = fields
                    .handler
                    .as_deref()
                    .unwrap_or_else(|| event.metadata().target());
                let invocation = fields.invocation_id.as_deref().unwrap_or("-");
                write!(
                    writer,
                    "[{handler}][{invocation}][{timestamp}] {}: {}",
                    level_name(level),
                    fields.message
                )?;
                for (name, value) in &fields.extra {
                    write!(writer, " {name}={value}")?;
                }
                writeln!(writer)
            }
            LogFormat::Json => {
                let mut line = serde_json::Map::new();
                line.insert("timestamp".into(), timestamp.into());
                line.insert("level".into(), level_name(level).into());
                line.insert("target".into(), event.metadata().target().into());
                if let Some(handler) = fields.handler {
                    line.insert("handler".into(), handler.into());
                }
                if let Some(id) = fields.invocation_id {
                    line.insert("invocationId".into(), id.into());
                }
                if let Some(id) = lambda_request_id() {
                    line.insert("requestId".into(), id.into());
                }
                line.insert("message".into(), fields.message.into());
                for (name, value) in fields.extra {
                    line.insert(name.into(), value.into());
                }
                let mut text = serde_json::Value::Object(line).to_string();
                text.push('\n');
                writer.write_str(&text)
            }
        }
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(default: LogFormat, vars: &[(&str, &str)]) -> LogSettings {
        LogSettings::from_env(default, |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    fn level(s: &LogSettings) -> Option<LevelFilter> {
        s.filter.max_level_hint()
    }

    #[test]
    fn lambdas_format_control_overrides_the_default_either_way() {
        assert_eq!(settings(LogFormat::Json, &[]).format, LogFormat::Json);
        let text = settings(LogFormat::Json, &[("AWS_LAMBDA_LOG_FORMAT", "Text")]);
        assert_eq!(text.format, LogFormat::Human);
        let json = settings(LogFormat::Human, &[("AWS_LAMBDA_LOG_FORMAT", "JSON")]);
        assert_eq!(json.format, LogFormat::Json);
        let odd = settings(LogFormat::Json, &[("AWS_LAMBDA_LOG_FORMAT", "xml")]);
        assert_eq!(odd.format, LogFormat::Json);
        assert!(
            odd.warnings[0].contains("neither JSON nor Text"),
            "{:?}",
            odd.warnings
        );
    }

    #[test]
    fn the_level_comes_from_lambda_then_rust_log_then_info() {
        assert_eq!(
            level(&settings(LogFormat::Json, &[])),
            Some(LevelFilter::INFO)
        );
        let warn = settings(LogFormat::Json, &[("AWS_LAMBDA_LOG_LEVEL", "WARN")]);
        assert_eq!(level(&warn), Some(LevelFilter::WARN));
        assert!(!warn.verbose);
        let fatal = settings(LogFormat::Json, &[("AWS_LAMBDA_LOG_LEVEL", "fatal")]);
        assert_eq!(level(&fatal), Some(LevelFilter::ERROR));
        let rust_log = settings(LogFormat::Human, &[("RUST_LOG", "debug")]);
        assert_eq!(level(&rust_log), Some(LevelFilter::DEBUG));
        assert!(rust_log.verbose);
        // Both: Lambda's level wins over a bare level, RUST_LOG's targeted directives stay.
        let both = settings(
            LogFormat::Json,
            &[("AWS_LAMBDA_LOG_LEVEL", "ERROR"), ("RUST_LOG", "debug")],
        );
        assert_eq!(level(&both), Some(LevelFilter::ERROR));
        let targeted = settings(
            LogFormat::Json,
            &[
                ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
                ("RUST_LOG", "restate_sdk=debug"),
            ],
        );
        assert_eq!(level(&targeted), Some(LevelFilter::DEBUG));
        assert!(targeted.filter.to_string().contains("restate_sdk=debug"));
    }

    #[test]
    fn unusable_values_are_reported_and_ignored() {
        let bad = settings(
            LogFormat::Json,
            &[("AWS_LAMBDA_LOG_LEVEL", "LOUD"), ("RUST_LOG", "a=b=c")],
        );
        assert_eq!(level(&bad), Some(LevelFilter::INFO));
        assert_eq!(bad.warnings.len(), 2, "{:?}", bad.warnings);
        assert!(bad.warnings[0].contains("AWS_LAMBDA_LOG_LEVEL=\"LOUD\""));
        assert!(bad.warnings[1].starts_with("RUST_LOG is not a valid filter"));
    }
}
