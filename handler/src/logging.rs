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

/// Installs the global subscriber. `RUST_LOG` sets verbosity (default `info`).
pub fn init(format: LogFormat) {
    let wanted = std::env::var("RUST_LOG").unwrap_or_default();
    SHOW_SUSPENSIONS.store(
        wanted.contains("debug") || wanted.contains("trace"),
        Ordering::Relaxed,
    );
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(e) if std::env::var_os("RUST_LOG").is_some() => {
            (EnvFilter::new("info"), Some(e.to_string()))
        }
        Err(_) => (EnvFilter::new("info"), None),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(LineFormat { format })
        .with_filter(filter)
        .with_filter(restate_sdk::filter::ReplayAwareFilter);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layer).try_init();
    if let Some(e) = bad_filter {
        tracing::warn!("RUST_LOG is not a valid filter ({e}); logging at info");
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
