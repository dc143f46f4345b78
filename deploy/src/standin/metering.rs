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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The `path` of a Restate event, without materialising the (possibly multi-megabyte) body.
pub(crate) fn event_path(event: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Event {
        path: Option<String>,
    }
    serde_json::from_slice::<Event>(event).ok()?.path
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
    fn vm_hwm_is_read_from_proc_status() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    4242 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(4242));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
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
