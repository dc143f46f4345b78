//! What Lambda would bill and report for each invocation, kept in memory and appended to a
//! JSON-lines file so another process (the CLI, a benchmark) can follow a run while it happens.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One invocation as the stand-in saw it. `outcome` is `"ok"`, `"function_error:<errorType>"`,
/// `"throttled"` or `"too_large"`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct InvocationRecord {
    pub request_id: String,
    pub function: String,
    pub version: String,
    /// The Restate handler path from the event's `path` field, e.g. `/invoke/worker/run`.
    pub path: Option<String>,
    pub cold: bool,
    /// Spawn to the first `/next`; only for cold invocations.
    pub init_ms: Option<f64>,
    /// Event handed out on `/next` to the response or error arriving.
    pub duration_ms: f64,
    /// `ceil(duration_ms)`, plus `ceil(init_ms)` when cold (custom runtimes pay for init).
    pub billed_ms: u64,
    pub request_bytes: usize,
    pub response_bytes: usize,
    /// `content-encoding` of the Restate request body (`zstd` when Restate compressed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_encoding: Option<String>,
    /// The Restate invocation this Lambda invocation served (`x-restate-invocation-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restate_invocation_id: Option<String>,
    /// The Restate request body as the handler sees it: base64- and zstd-decoded. With
    /// `request_bytes` it shows what compression saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body_bytes: Option<usize>,
    /// `content-encoding` of the function's response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_encoding: Option<String>,
    /// `VmHWM` of the instance process right after the invocation.
    pub peak_rss_kb: Option<u64>,
    pub outcome: String,
    /// Unix epoch milliseconds at which the Invoke call arrived.
    pub started_at_ms: u64,
    /// Instance number (from 1); 0 when no instance ran the event (throttled, too large).
    pub instance: u64,
}

/// Records kept for [`super::StandIn::records`] and `GET /fanout/metrics`, and mirrored to the
/// metering file. The file is appended to, never truncated, so earlier runs are not lost.
pub(crate) struct Meter {
    records: Mutex<Vec<InvocationRecord>>,
    file: Option<Mutex<File>>,
}

impl Meter {
    pub(crate) fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let file = match path {
            None => None,
            Some(path) => Some(Mutex::new(open_append(path).map_err(|e| {
                anyhow::anyhow!("cannot open the metering file {}: {e}", path.display())
            })?)),
        };
        Ok(Self {
            records: Mutex::new(Vec::new()),
            file,
        })
    }

    pub(crate) fn record(&self, record: InvocationRecord) {
        if let Some(file) = &self.file {
            match serde_json::to_vec(&record) {
                Ok(mut line) => {
                    line.push(b'\n');
                    // One write per line on an O_APPEND file keeps lines whole for readers.
                    let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = file.write_all(&line) {
                        tracing::warn!("cannot append to the metering file: {e}");
                    }
                }
                Err(e) => tracing::warn!("cannot serialize a metering record: {e}"),
            }
        }
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }

    pub(crate) fn snapshot(&self) -> Vec<InvocationRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub(crate) fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Lambda bills per started millisecond, and a custom runtime's init phase is billed too.
pub(crate) fn billed_ms(duration_ms: f64, init_ms: Option<f64>) -> u64 {
    let ceil = |ms: f64| ms.max(0.0).ceil() as u64;
    ceil(duration_ms) + init_ms.map_or(0, ceil)
}

/// Milliseconds to the microsecond: finer is noise, and short decimals read back exactly from
/// the JSON lines.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Peak resident set of a live process, as Lambda's `Max Memory Used` reports it.
pub(crate) fn peak_rss_kb(pid: u32) -> Option<u64> {
    crate::process::status_kb(pid, "VmHWM")
}

/// The `path` of a Restate event, without materialising the (possibly multi-megabyte) body.
pub(crate) fn event_path(event: &[u8]) -> Option<String> {
    serde_json::from_slice::<Envelope>(event).ok()?.path
}

/// The fields of a Restate event or response document that metering reads; the body is
/// skipped, not copied.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    path: Option<String>,
    #[serde(default)]
    headers: std::collections::HashMap<String, serde_json::Value>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: bool,
}

impl Envelope {
    fn content_encoding(&self) -> Option<String> {
        self.header("content-encoding")
    }

    fn header(&self, wanted: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .and_then(|(_, value)| value.as_str().map(str::to_owned))
    }

    fn decoded_body_len(&self) -> Option<usize> {
        use base64::Engine as _;
        let body = self.body.as_deref()?;
        let raw = if self.is_base64_encoded {
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .ok()?
        } else {
            body.as_bytes().to_vec()
        };
        match self.content_encoding().as_deref() {
            Some("zstd") => zstd::stream::decode_all(raw.as_slice())
                .ok()
                .map(|b| b.len()),
            _ => Some(raw.len()),
        }
    }
}

/// The `content-encoding` header of a Restate event or of the function's response document.
pub(crate) fn content_encoding(document: &[u8]) -> Option<String> {
    serde_json::from_slice::<Envelope>(document)
        .ok()?
        .content_encoding()
}

/// What metering reads from a Restate event, in one parse.
#[derive(Default)]
pub(crate) struct EventFacts {
    pub path: Option<String>,
    pub encoding: Option<String>,
    pub body_bytes: Option<usize>,
    pub invocation_id: Option<String>,
}

pub(crate) fn event_facts(event: &[u8]) -> EventFacts {
    match serde_json::from_slice::<Envelope>(event) {
        Ok(envelope) => EventFacts {
            path: envelope.path.clone(),
            encoding: envelope.content_encoding(),
            body_bytes: envelope.decoded_body_len(),
            invocation_id: envelope.header("x-restate-invocation-id"),
        },
        Err(_) => EventFacts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_rounds_each_phase_up_to_the_millisecond() {
        assert_eq!(billed_ms(0.2, None), 1);
        assert_eq!(billed_ms(2.0, None), 2);
        assert_eq!(billed_ms(2.01, Some(30.5)), 3 + 31);
        assert_eq!(billed_ms(0.0, None), 0);
    }

    #[test]
    fn peak_rss_is_read_for_a_live_process() {
        assert!(peak_rss_kb(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn event_path_is_taken_from_restate_events_only() {
        let event = br#"{"path":"/invoke/worker/run","httpMethod":"POST","body":"AAAA"}"#;
        assert_eq!(event_path(event).as_deref(), Some("/invoke/worker/run"));
        assert_eq!(event_path(br#"{"hello":1}"#), None);
        assert_eq!(event_path(b"not json"), None);
    }

    #[test]
    fn content_encoding_is_read_from_either_document() {
        let event =
            br#"{"path":"/invoke/worker/run","headers":{"Content-Encoding":"zstd"},"body":"AAAA"}"#;
        assert_eq!(content_encoding(event).as_deref(), Some("zstd"));
        let response = br#"{"statusCode":200,"headers":{"content-type":"x"},"body":""}"#;
        assert_eq!(content_encoding(response), None);
    }

    #[test]
    fn event_facts_decode_base64_and_zstd_bodies() {
        use base64::Engine as _;
        let raw = vec![7u8; 10_000];
        let packed = zstd::bulk::compress(&raw, 3).unwrap();
        let event = serde_json::json!({
            "path": "/invoke/worker/run",
            "headers": {"content-encoding": "zstd"},
            "body": base64::engine::general_purpose::STANDARD.encode(&packed),
            "isBase64Encoded": true,
        });
        let facts = event_facts(event.to_string().as_bytes());
        assert_eq!(facts.path.as_deref(), Some("/invoke/worker/run"));
        assert_eq!(facts.encoding.as_deref(), Some("zstd"));
        assert_eq!(facts.body_bytes, Some(10_000));
    }

    #[test]
    fn records_are_kept_and_appended_as_json_lines() {
        let dir = std::env::temp_dir().join(format!("standin-meter-{}", uuid::Uuid::new_v4()));
        let path = dir.join("m.jsonl");
        let meter = Meter::open(Some(&path)).unwrap();
        let record = InvocationRecord {
            request_id: "r".into(),
            function: "f".into(),
            version: "1".into(),
            path: None,
            cold: true,
            init_ms: Some(1.5),
            duration_ms: 2.5,
            billed_ms: 5,
            request_bytes: 1,
            response_bytes: 2,
            request_encoding: None,
            request_body_bytes: None,
            restate_invocation_id: None,
            response_encoding: None,
            peak_rss_kb: None,
            outcome: "ok".into(),
            started_at_ms: 7,
            instance: 1,
        };
        meter.record(record.clone());
        meter.record(record.clone());
        assert_eq!(meter.snapshot(), vec![record.clone(), record.clone()]);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<InvocationRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, vec![record.clone(), record]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
