//! Items from a source, results to a sink: a fan-out whose inputs and outcomes live in S3, so
//! that neither passes through the coordinator's journal, whatever the width.
//!
//! `worker/runItems` takes `{"items": "s3://BUCKET/KEY", "results": "s3://BUCKET/KEY"}`. The
//! items object is JSON Lines, one subtask per line, each line the job's [`Job::Subtask`] JSON
//! (for the reference chores job `{"description":"shower"}`). The results object is JSON Lines
//! too, one line per item in input order: the item's outcome JSON, or under a tolerant failure
//! policy `{"error":{"index":…,"subtask":…,"code":…,"message":…}}` in a failed item's place.
//!
//! ```text
//! worker/runItems ── scan (one ctx.run): stream the items, check every line, write the
//!     │              line offsets to <results>.fanout/<run>/index; journal the count and ETag
//!     ├─send─► fanIn/start ─► lanes: a claim grants indexes [a, b); the lane reads those
//!     │        lines by byte range (the index, then the items, If-Match the ETag) in its own
//!     │        ctx.run, runs them, and at hand-over and at its end writes its outcomes as one
//!     │        part object <results>.fanout/<run>/parts/<lane invocation id>; the ledger gets
//!     │        counts and failures only
//!     └◄─ awakeable ◄─ the record that brings the last count merges the parts in index order
//!                      into the results object (one ctx.run of the ledger), deletes the
//!                      scratch objects and answers with a summary
//! ```
//!
//! What is journaled: the coordinator holds the count, the ETag and a summary (a few hundred
//! bytes for any N); a lane holds the items of its grants and its own outcomes, as for an
//! inline run; the ledger holds counters. The 10,000-subtask cap of inline runs
//! ([`crate::job::MAX_SUBTASKS`]) does not apply; [`MAX_ITEMS`] does.
//!
//! The S3 client is the AWS SDK's, configured the standard way (credentials and region from
//! the environment; `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` point it at another store, such
//! as the moto server `fanout local` starts, and then address buckets by path). Built without
//! the crate's `items` feature, `worker/runItems` refuses every run.

use crate::job::{Job, SubtaskFailure};
use crate::payload::Indexed;
use restate_sdk::prelude::{HandlerError, TerminalError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most items one run takes. The coordinator's and the ledger's journals do not grow with
/// the width; what does is the scan's index object (8 bytes per item, written in one request)
/// and the merge, which holds the results in memory (see the README's limits).
pub const MAX_ITEMS: usize = 10_000_000;

/// The longest line (one item), in bytes: an item becomes one `runSubtask` request, which on
/// Lambda must fit the 6 MB payload limit with its journal.
pub const MAX_ITEM_BYTES: usize = 1 << 20;

/// The body of `worker/runItems`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsRequest {
    /// `s3://BUCKET/KEY` of the JSON Lines items.
    pub items: String,
    /// `s3://BUCKET/KEY` the JSON Lines results are written to (replaced if it exists).
    pub results: String,
}

/// What `worker/runItems` answers: counts and where the results are, never the outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemsSummary {
    pub items: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub results: String,
}

/// An object in S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
}

impl S3Location {
    /// Parses `s3://BUCKET/KEY`; `what` names the field in the error.
    pub fn parse(what: &str, url: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "{what} {url:?} is not an S3 location; give s3://BUCKET/KEY \
                 (`fanout invoke --{what} FILE` uploads a local file for you)"
            )
        };
        let rest = url.trim().strip_prefix("s3://").ok_or_else(usage)?;
        let (bucket, key) = rest.split_once('/').ok_or_else(usage)?;
        if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
            return Err(usage());
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Where a source run's items come from and its results go; travels with the run to its
/// lanes and its ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sink {
    pub items: S3Location,
    /// The items object's ETag when the run scanned it: every later read is `If-Match` it.
    pub etag: String,
    pub results: S3Location,
    /// The key prefix (in the results' bucket) of the run's scratch objects, the index and
    /// the parts: `<results key>.fanout/<run id>/`.
    pub scratch: String,
}

impl Sink {
    pub fn new(items: S3Location, results: S3Location, run: &str) -> Self {
        let scratch = format!("{}.fanout/{run}/", results.key);
        Self {
            items,
            etag: String::new(),
            results,
            scratch,
        }
    }

    pub fn index_key(&self) -> String {
        format!("{}index", self.scratch)
    }

    pub fn parts_prefix(&self) -> String {
        format!("{}parts/", self.scratch)
    }
}

/// What the coordinator's scan step journals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scanned {
    pub count: usize,
    pub etag: String,
}

/// Reads JSON Lines chunk by chunk, checks that every line is a subtask of the job, and keeps
/// each line's byte offset. A line is refused with its number (from 1): not JSON, not the
/// job's subtask, too long, or blank between items (blank lines at the end are ignored).
pub struct LineScanner<S> {
    partial: Vec<u8>,
    /// Where `partial` starts in the object.
    partial_at: u64,
    line: usize,
    /// The first blank line since the last item, refused if an item follows.
    blank: Option<usize>,
    /// Offsets of each item's first byte, then the end of the last item's line.
    offsets: Vec<u64>,
    end: u64,
    _subtask: std::marker::PhantomData<fn() -> S>,
}

impl<S: DeserializeOwned> Default for LineScanner<S> {
    fn default() -> Self {
        Self {
            partial: Vec::new(),
            partial_at: 0,
            line: 0,
            blank: None,
            offsets: Vec::new(),
            end: 0,
            _subtask: std::marker::PhantomData,
        }
    }
}

impl<S: DeserializeOwned> LineScanner<S> {
    /// Takes the next bytes of the object.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), String> {
        while let Some(newline) = chunk.iter().position(|&b| b == b'\n') {
            let (head, tail) = chunk.split_at(newline + 1);
            let start = self.partial_at;
            let length = if self.partial.is_empty() {
                self.check(start, head)?;
                head.len()
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.check(start, &line)?;
                line.len()
            };
            self.partial_at = start + length as u64;
            chunk = tail;
        }
        if self.partial.len() + chunk.len() > MAX_ITEM_BYTES {
            return Err(self.too_long(self.line + 1));
        }
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    /// Ends the object: the offsets of every item and the end of the last.
    pub fn finish(mut self) -> Result<Vec<u64>, String> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.check(self.partial_at, &line)?;
        }
        if self.offsets.is_empty() {
            return Err(
                "holds no items; give one JSON subtask per line, e.g. {\"description\":\"shower\"}"
                    .into(),
            );
        }
        self.offsets.push(self.end);
        Ok(self.offsets)
    }

    fn too_long(&self, line: usize) -> String {
        format!(
            "line {line} is longer than {MAX_ITEM_BYTES} bytes; an item is one JSON subtask per line"
        )
    }

    /// One line (with its newline, if any) starting at byte `start`.
    fn check(&mut self, start: u64, raw: &[u8]) -> Result<(), String> {
        self.line += 1;
        let line = self.line;
        if raw.len() > MAX_ITEM_BYTES + 2 {
            return Err(self.too_long(line));
        }
        let text = raw.strip_suffix(b"\n").unwrap_or(raw);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            self.blank.get_or_insert(line);
            return Ok(());
        }
        if let Some(blank) = self.blank {
            return Err(format!(
                "line {blank} is empty; give one JSON subtask per line, with no blank lines \
                 between them (a missing item would go unnoticed)"
            ));
        }
        if let Err(e) = serde_json::from_slice::<S>(text) {
            let what = if e.is_syntax() || e.is_eof() {
                "is not valid JSON"
            } else {
                "is not a subtask of this job"
            };
            let message = e.to_string();
            let message = match message.rfind(" at line ") {
                Some(at) => &message[..at],
                None => &message,
            };
            return Err(format!(
                "line {line} {what} (column {}): {message}",
                e.column()
            ));
        }
        if self.offsets.len() >= MAX_ITEMS {
            return Err(format!(
                "holds more than {MAX_ITEMS} items, the most one run takes; split it into runs"
            ));
        }
        self.offsets.push(start);
        self.end = start + raw.len() as u64;
        Ok(())
    }
}

/// The items between two offsets (`lines` of them), each with its index from `first`.
pub fn parse_items<S: DeserializeOwned>(
    bytes: &[u8],
    first: usize,
    lines: usize,
) -> Result<Vec<Indexed<S>>, String> {
    let mut items = Vec::with_capacity(lines);
    for raw in bytes.split(|&b| b == b'\n') {
        let text = raw.strip_suffix(b"\r").unwrap_or(raw);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let index = first + items.len();
        let item = serde_json::from_slice(text)
            .map_err(|e| format!("item {} (line {}) no longer reads: {e}", index, index + 1))?;
        items.push(Indexed { index, item });
    }
    if items.len() != lines {
        return Err(format!(
            "expected {lines} items from line {} on, read {}",
            first + 1,
            items.len()
        ));
    }
    Ok(items)
}

/// One item's line in the results: its outcome, or an error object in its place.
pub fn result_line<O: Serialize>(result: Result<&O, &SubtaskFailure>) -> String {
    match result {
        Ok(outcome) => serde_json::to_string(outcome)
            .unwrap_or_else(|e| format!("{{\"error\":{{\"message\":\"unserializable: {e}\"}}}}")),
        Err(failure) => serde_json::json!({ "error": failure }).to_string(),
    }
}

/// A part object's body: `INDEX\tRESULT LINE\n` per item, in index order, so that the merge
/// reads the index without parsing the outcome.
pub fn part_body<O: Serialize>(
    outcomes: &[Indexed<O>],
    failures: &[SubtaskFailure],
) -> (String, Vec<usize>) {
    let mut lines: Vec<(usize, String)> = outcomes
        .iter()
        .map(|o| (o.index, result_line::<O>(Ok(&o.item))))
        .chain(failures.iter().map(|f| (f.index, result_line::<O>(Err(f)))))
        .collect();
    lines.sort_by_key(|(index, _)| *index);
    let indexes = lines.iter().map(|(i, _)| *i).collect();
    let mut body = String::new();
    for (index, line) in lines {
        body += &format!("{index}\t{line}\n");
    }
    (body, indexes)
}

/// Puts parts back in index order: every index of `0..total` exactly once.
pub fn merge_parts(parts: &[bytes::Bytes], total: usize) -> Result<Vec<u8>, String> {
    let mut lines: Vec<(usize, &[u8])> = Vec::with_capacity(total);
    for part in parts {
        for raw in part.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let tab = raw
                .iter()
                .position(|&b| b == b'\t')
                .ok_or("a part line without its index")?;
            let index = std::str::from_utf8(&raw[..tab])
                .ok()
                .and_then(|i| i.parse::<usize>().ok())
                .ok_or("a part line with a bad index")?;
            lines.push((index, &raw[tab + 1..]));
        }
    }
    lines.sort_by_key(|(index, _)| *index);
    for (expected, (index, _)) in lines.iter().enumerate() {
        if *index != expected {
            let (item, what) = if *index < expected {
                (*index, "twice")
            } else {
                (expected, "missing")
            };
            return Err(format!(
                "the parts hold {} lines for {total} items: item {item} is {what}",
                lines.len()
            ));
        }
    }
    if lines.len() != total {
        return Err(format!(
            "the parts hold {} lines for {total} items",
            lines.len()
        ));
    }
    let mut body = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
    for (_, line) in lines {
        body.extend_from_slice(line);
        body.push(b'\n');
    }
    Ok(body)
}

/// A terminal 400 for what the user must fix.
fn refuse(message: impl Into<String>) -> HandlerError {
    TerminalError::new_with_code(400, message.into()).into()
}

#[cfg(feature = "items")]
pub use io::*;

#[cfg(feature = "items")]
mod io {
    use super::*;
    use aws_sdk_s3::Client;
    use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    use futures::{StreamExt, TryStreamExt};
    use tokio::sync::OnceCell;

    /// Metadata on the results object naming the run that wrote it, so a merge that ran to
    /// the end but was not journaled knows on its retry that it is done.
    const RUN_METADATA: &str = "fanout-run";
    const FAILED_METADATA: &str = "fanout-failed";

    /// The process's S3 client, made on first use from the environment.
    async fn client() -> &'static Client {
        static CLIENT: OnceCell<Client> = OnceCell::const_new();
        CLIENT
            .get_or_init(|| async {
                let tls = aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                );
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls)
                    .build_https();
                let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .http_client(http)
                    .load()
                    .await;
                let overridden = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                    .iter()
                    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
                // A store of one's own (moto, MinIO) serves buckets by path, not by host name.
                let config = aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(overridden)
                    .build();
                Client::from_conf(config)
            })
            .await
    }

    /// An S3 error as the run sees it: what the user must fix is terminal (400), anything else
    /// (the network, throttling, a 5xx) is retried by Restate.
    fn s3_error<E, R>(doing: &str, location: &str, error: SdkError<E, R>) -> HandlerError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug,
    {
        let status = match &error {
            SdkError::ServiceError(e) => Some(format!("{:?}", e.raw())),
            _ => None,
        };
        let code = error.code().map(str::to_owned);
        let message = error.message().map(str::to_owned);
        let terminal = matches!(
            code.as_deref(),
            Some(
                "NoSuchBucket"
                    | "NoSuchKey"
                    | "AccessDenied"
                    | "InvalidBucketName"
                    | "PreconditionFailed"
                    | "InvalidRange"
                    | "AllAccessDisabled"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "PermanentRedirect"
            )
        ) || status
            .as_deref()
            .is_some_and(|s| s.contains("status: 404") || s.contains("status: 403"));
        let detail = match (&code, &message) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.clone(),
            _ => aws_sdk_s3::error::DisplayErrorContext(&error).to_string(),
        };
        let text = format!("{doing} {location}: {detail}");
        if code.as_deref() == Some("PreconditionFailed") {
            return refuse(format!(
                "{location} changed while the run read it (its ETag is not the one the run \
                 scanned); a run reads a fixed set of items: start a new run"
            ));
        }
        if terminal {
            refuse(text)
        } else {
            HandlerError::from(text)
        }
    }

    /// The coordinator's scan: streams the items, refuses the first bad line with its number,
    /// writes every item's offset to the index object and gives the count and the ETag.
    pub async fn scan<S: DeserializeOwned>(sink: &Sink) -> Result<Scanned, HandlerError> {
        let s3 = client().await;
        let items = &sink.items;
        let object = s3
            .get_object()
            .bucket(&items.bucket)
            .key(&items.key)
            .send()
            .await
            .map_err(|e| s3_error("reading the items", &items.to_string(), e))?;
        let etag = object.e_tag().unwrap_or_default().to_owned();
        let mut body = object.body;
        let mut scanner = LineScanner::<S>::default();
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| HandlerError::from(format!("reading the items {items}: {e}")))?
        {
            scanner
                .feed(&chunk)
                .map_err(|e| refuse(format!("items {items}: {e}")))?;
        }
        let offsets = scanner
            .finish()
            .map_err(|e| refuse(format!("items {items}: {e}")))?;
        let count = offsets.len() - 1;
        let index: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        put(s3, &sink.results.bucket, &sink.index_key(), index, &[]).await?;
        Ok(Scanned { count, etag })
    }

    async fn put(
        s3: &Client,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
    ) -> Result<(), HandlerError> {
        let mut request = s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body));
        for (name, value) in metadata {
            request = request.metadata(*name, value);
        }
        request
            .send()
            .await
            .map_err(|e| s3_error("writing", &format!("s3://{bucket}/{key}"), e))?;
        Ok(())
    }

    async fn get_range(
        s3: &Client,
        bucket: &str,
        key: &str,
        range: std::ops::Range<u64>,
        etag: Option<&str>,
    ) -> Result<bytes::Bytes, HandlerError> {
        let location = format!("s3://{bucket}/{key}");
        let object = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(etag.filter(|e| !e.is_empty()).map(str::to_owned))
            .send()
            .await
            .map_err(|e| s3_error("reading", &location, e))?;
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| HandlerError::from(format!("reading {location}: {e}")))?
            .into_bytes();
        if bytes.len() as u64 != range.end - range.start {
            return Err(HandlerError::from(format!(
                "reading {location}: asked for {} bytes, got {}",
                range.end - range.start,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Items `[start, end)`: their offsets from the index, then their lines from the items
    /// object, which must still be the one the run scanned.
    pub async fn read_items<S: DeserializeOwned>(
        sink: &Sink,
        start: usize,
        end: usize,
    ) -> Result<Vec<Indexed<S>>, HandlerError> {
        let s3 = client().await;
        let index = get_range(
            s3,
            &sink.results.bucket,
            &sink.index_key(),
            (start as u64 * 8)..((end as u64 + 1) * 8),
            None,
        )
        .await?;
        let offset = |i: usize| {
            let at = (i - start) * 8;
            u64::from_le_bytes(index[at..at + 8].try_into().expect("8 bytes"))
        };
        let bytes = get_range(
            s3,
            &sink.items.bucket,
            &sink.items.key,
            offset(start)..offset(end),
            Some(&sink.etag),
        )
        .await?;
        parse_items(&bytes, start, end - start)
            .map_err(|e| refuse(format!("items {}: {e}", sink.items)))
    }

    /// One lane invocation's outcomes as a part object named after the invocation.
    pub async fn write_part(sink: &Sink, name: &str, body: String) -> Result<(), HandlerError> {
        let s3 = client().await;
        let key = format!("{}{name}", sink.parts_prefix());
        put(s3, &sink.results.bucket, &key, body.into_bytes(), &[]).await
    }

    async fn keys_under(
        s3: &Client,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<String>, HandlerError> {
        let mut keys = Vec::new();
        let mut pages = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| s3_error("listing", &format!("s3://{bucket}/{prefix}"), e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    /// Deletes the run's scratch objects (the index and the parts).
    pub async fn clean_up(sink: &Sink) -> Result<(), HandlerError> {
        let s3 = client().await;
        let bucket = &sink.results.bucket;
        let keys = keys_under(s3, bucket, &sink.scratch).await?;
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| HandlerError::from(e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| HandlerError::from(e.to_string()))?;
            s3.delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| s3_error("deleting", &format!("s3://{bucket}/{}", sink.scratch), e))?;
        }
        Ok(())
    }

    /// Writes the results object from `body` and deletes the scratch objects.
    pub async fn write_results(
        sink: &Sink,
        run: &str,
        body: Vec<u8>,
        total: usize,
        failed: usize,
    ) -> Result<ItemsSummary, HandlerError> {
        let s3 = client().await;
        put(
            s3,
            &sink.results.bucket,
            &sink.results.key,
            body,
            &[
                (RUN_METADATA, run.to_owned()),
                (FAILED_METADATA, failed.to_string()),
            ],
        )
        .await?;
        clean_up(sink).await?;
        Ok(summary(sink, total, failed))
    }

    fn summary(sink: &Sink, total: usize, failed: usize) -> ItemsSummary {
        ItemsSummary {
            items: total,
            succeeded: total - failed,
            failed,
            results: sink.results.to_string(),
        }
    }

    /// Merges the parts of run `run` in index order into the results object, then deletes
    /// them. Idempotent: a merge that finished before (the results name the run and the
    /// parts are gone) answers the same summary again.
    pub async fn merge(
        sink: &Sink,
        run: &str,
        total: usize,
        failed: usize,
    ) -> Result<ItemsSummary, HandlerError> {
        let s3 = client().await;
        let bucket = &sink.results.bucket;
        let keys = keys_under(s3, bucket, &sink.parts_prefix()).await?;
        if keys.is_empty()
            && let Ok(head) = s3
                .head_object()
                .bucket(bucket)
                .key(&sink.results.key)
                .send()
                .await
            && let Some(metadata) = head.metadata()
            && metadata.get(RUN_METADATA).map(String::as_str) == Some(run)
        {
            let failed = metadata
                .get(FAILED_METADATA)
                .and_then(|f| f.parse().ok())
                .unwrap_or(failed);
            return Ok(summary(sink, total, failed));
        }
        let parts: Vec<bytes::Bytes> = futures::stream::iter(keys)
            .map(|key| async move {
                let location = format!("s3://{bucket}/{key}");
                let object = s3
                    .get_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| s3_error("reading", &location, e))?;
                object
                    .body
                    .collect()
                    .await
                    .map(|b| b.into_bytes())
                    .map_err(|e| HandlerError::from(format!("reading {location}: {e}")))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let body = merge_parts(&parts, total).map_err(|e| {
            TerminalError::new(format!("merging the results of {}: {e}", sink.results))
        })?;
        write_results(sink, run, body, total, failed).await
    }
}

#[cfg(not(feature = "items"))]
pub use stub::*;

#[cfg(not(feature = "items"))]
mod stub {
    use super::*;

    fn unsupported() -> HandlerError {
        TerminalError::new_with_code(
            501,
            "this handler was built without fanout-handler's `items` feature, so it cannot \
             read items from S3; build it with the feature (on by default)",
        )
        .into()
    }

    pub async fn scan<S: DeserializeOwned>(_: &Sink) -> Result<Scanned, HandlerError> {
        Err(unsupported())
    }
    pub async fn read_items<S: DeserializeOwned>(
        _: &Sink,
        _: usize,
        _: usize,
    ) -> Result<Vec<Indexed<S>>, HandlerError> {
        Err(unsupported())
    }
    pub async fn write_part(_: &Sink, _: &str, _: String) -> Result<(), HandlerError> {
        Err(unsupported())
    }
    pub async fn clean_up(_: &Sink) -> Result<(), HandlerError> {
        Err(unsupported())
    }
    pub async fn write_results(
        _: &Sink,
        _: &str,
        _: Vec<u8>,
        _: usize,
        _: usize,
    ) -> Result<ItemsSummary, HandlerError> {
        Err(unsupported())
    }
    pub async fn merge(
        _: &Sink,
        _: &str,
        _: usize,
        _: usize,
    ) -> Result<ItemsSummary, HandlerError> {
        Err(unsupported())
    }
}

/// Keeps the job's types in one place for the worker.
pub fn results_body<J: Job>(
    outcomes: &[Indexed<J::Outcome>],
    failures: &[SubtaskFailure],
) -> (Vec<u8>, usize) {
    let (body, _) = part_body(outcomes, failures);
    let mut out = Vec::with_capacity(body.len());
    for line in body.lines() {
        let (_, result) = line.split_once('\t').unwrap_or(("", line));
        out.extend_from_slice(result.as_bytes());
        out.push(b'\n');
    }
    (out, failures.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chores::Description;

    fn scan(text: &str, chunk: usize) -> Result<Vec<u64>, String> {
        let mut scanner = LineScanner::<Description>::default();
        for piece in text.as_bytes().chunks(chunk.max(1)) {
            scanner.feed(piece)?;
        }
        scanner.finish()
    }

    #[test]
    fn offsets_of_every_item_whatever_the_chunks() {
        let text = "{\"description\":\"a\"}\n{\"description\":\"bb\"}\r\n{\"description\":\"c\"}";
        for chunk in [1, 2, 5, 7, 100] {
            assert_eq!(scan(text, chunk).unwrap(), vec![0, 20, 42, 61], "{chunk}");
        }
        let trailing = "{\"description\":\"a\"}\n\n  \n";
        assert_eq!(scan(trailing, 3).unwrap(), vec![0, 20]);
        let items: Vec<Indexed<Description>> = parse_items(&text.as_bytes()[20..61], 1, 2).unwrap();
        assert_eq!(items[0].index, 1);
        assert_eq!(items[1].item.description, "c");
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let bad = scan("{\"description\":\"a\"}\n{\"description\":\n", 4).unwrap_err();
        assert!(bad.starts_with("line 2 is not valid JSON"), "{bad}");
        let shape = scan("{\"description\":\"a\"}\n{\"desc\":\"b\"}\n", 64).unwrap_err();
        assert!(
            shape.starts_with("line 2 is not a subtask of this job")
                && shape.contains("description"),
            "{shape}"
        );
        let blank = scan("{\"description\":\"a\"}\n\n{\"description\":\"b\"}\n", 64).unwrap_err();
        assert!(blank.starts_with("line 2 is empty"), "{blank}");
        assert!(scan("", 1).unwrap_err().contains("no items"));
        assert!(scan("\n\n", 1).unwrap_err().contains("no items"));
        let long = format!("{{\"description\":\"{}\"}}", "x".repeat(MAX_ITEM_BYTES));
        assert!(
            scan(&long, 4096)
                .unwrap_err()
                .starts_with("line 1 is longer")
        );
    }

    #[test]
    fn locations_parse_and_refuse() {
        let at = S3Location::parse("items", "s3://b/k/x.jsonl").unwrap();
        assert_eq!((at.bucket.as_str(), at.key.as_str()), ("b", "k/x.jsonl"));
        assert_eq!(at.to_string(), "s3://b/k/x.jsonl");
        for bad in ["b/k", "s3://b", "s3:///k", "s3://b/", "s3://b/dir/"] {
            assert!(S3Location::parse("items", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_merge_in_index_order_with_failures_in_place() {
        let failure = SubtaskFailure {
            index: 1,
            subtask: "b".into(),
            code: 500,
            message: "broke".into(),
        };
        let (first, _) = part_body(
            &[Indexed {
                index: 2,
                item: "c",
            }],
            &[failure],
        );
        let (second, _) = part_body(
            &[Indexed {
                index: 0,
                item: "a",
            }],
            &[],
        );
        let parts = [bytes::Bytes::from(first), bytes::Bytes::from(second)];
        let body = merge_parts(&parts, 3).unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "\"a\"\n{\"error\":{\"code\":500,\"index\":1,\"message\":\"broke\",\"subtask\":\"b\"}}\n\"c\"\n"
        );
        assert!(merge_parts(&parts, 4).is_err());
        assert!(
            merge_parts(&parts[..1], 3)
                .unwrap_err()
                .contains("item 0 is missing")
        );
    }
}
