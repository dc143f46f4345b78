//! Items and results of a run from a source (`fanout invoke --items … --results …`), and the
//! local S3-compatible store `fanout local` serves for them.
//!
//! The handler's `worker/runItems` reads JSON Lines items from S3 and writes JSON Lines results
//! to S3 (see `fanout_handler::source`). Here: a local file given as `--items FILE` is checked
//! line by line (JSON on every line; the job's own types are the handler's to check) and
//! uploaded to a staging location first; `--results FILE` is written to the staging location
//! and fetched back when the run is done. The staging location is `FANOUT_STAGE`
//! (`s3://BUCKET/PREFIX/`) or, when the S3 endpoint is a local one (`AWS_ENDPOINT_URL_S3` on
//! loopback, as `fanout local` prints it), the local store's own bucket.
//!
//! The local store is moto in server mode (`moto[server]` from PyPI, installed into
//! `.tools/venv` by `make tools-aws`) on a free loopback port, stopped by pid.

use anyhow::{Context, Result, bail};
use aws_sdk_s3::primitives::ByteStream;
use fanout_standin::process::{Managed, free_port, wait_until};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The bucket the local store starts with; local files are staged under `staging/` in it.
pub const LOCAL_BUCKET: &str = "fanout-local";

/// Where local `--items` and `--results` files are staged: `s3://BUCKET/PREFIX/`.
pub const STAGE_ENV: &str = "FANOUT_STAGE";

/// The moto server's program in the project's venv.
fn moto_server() -> Result<PathBuf> {
    crate::tools::project_root()
        .map(|root| root.join(".tools/venv/bin/moto_server"))
        .filter(|path| path.is_file())
        .context(
            "moto_server is not installed; run `make tools-aws` in the project (it installs \
             moto[server] from PyPI into .tools/venv)",
        )
}

/// Whether the local store can be started (`make tools-aws` has run).
pub fn local_store_available() -> bool {
    moto_server().is_ok()
}

/// An S3-compatible store on loopback: moto in server mode, with [`LOCAL_BUCKET`].
pub struct LocalS3 {
    process: Managed,
    pub endpoint_url: String,
}

impl LocalS3 {
    /// Starts moto on a free loopback port (its log in `log`) and creates [`LOCAL_BUCKET`].
    pub async fn start(log: &Path) -> Result<Self> {
        Self::start_on(None, log).await
    }

    /// Starts moto on `port` (a free one when `None`) and creates [`LOCAL_BUCKET`].
    pub async fn start_on(port: Option<u16>, log: &Path) -> Result<Self> {
        let program = moto_server()?;
        let port = match port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut command = tokio::process::Command::new(program);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = Managed::spawn("moto_server", command, log)?;
        let up = wait_until(Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        let store = Self {
            process,
            endpoint_url: format!("http://127.0.0.1:{port}"),
        };
        if !up {
            store.stop().await;
            bail!(
                "the local S3 store (moto) did not listen on port {port} within 30 s; log:\n{}",
                crate::restate_server::log_tail(log, 20)
            );
        }
        let client = store.client();
        client
            .create_bucket()
            .bucket(LOCAL_BUCKET)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "creating the bucket {LOCAL_BUCKET} in the local S3 store failed: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            })?;
        Ok(store)
    }

    /// A client of this store, whatever the caller's environment says.
    pub fn client(&self) -> aws_sdk_s3::Client {
        local_client(&self.endpoint_url)
    }

    /// What a process needs to use this store with the standard AWS chain: the endpoint
    /// override, throwaway credentials and a region.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL_S3", self.endpoint_url.as_str()),
            ("AWS_ACCESS_KEY_ID", "local"),
            ("AWS_SECRET_ACCESS_KEY", "local"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    pub async fn stop(self) {
        self.process.stop(Duration::from_secs(3)).await;
    }
}

/// A client of the local store at `endpoint_url` (its throwaway credentials, path-style).
pub fn local_client(endpoint_url: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint_url)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "local",
            "local",
            None,
            None,
            "fanout-local",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The local store's port in a `fanout local` stack whose ingress is on `ingress_port`
/// (9002 beside Restate's 8080).
pub fn local_store_port(ingress_port: u16) -> u16 {
    ingress_port.saturating_add(922)
}

/// The S3 client for a run through `ingress_url`, and where local files are staged: the
/// standard chain when an S3 endpoint or [`STAGE_ENV`] is set (or the ingress is not on
/// loopback); otherwise the local store of a `fanout local` stack, if one listens beside the
/// ingress, so that `fanout local` then `fanout invoke --items FILE --results FILE` need no
/// variables.
pub async fn client_for(ingress_url: &str) -> Result<(aws_sdk_s3::Client, bool)> {
    let configured = endpoint_override().is_some()
        || std::env::var(STAGE_ENV).is_ok_and(|v| !v.trim().is_empty());
    let local_port = reqwest::Url::parse(ingress_url).ok().and_then(|url| {
        let host = url.host_str()?.to_owned();
        let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]");
        let port = url.port_or_known_default()?;
        loopback.then(|| local_store_port(port))
    });
    if !configured && let Some(port) = local_port {
        let listening = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if listening {
            return Ok((local_client(&format!("http://127.0.0.1:{port}")), true));
        }
    }
    Ok((s3_client().await?, false))
}

/// An S3 client from the standard chain; a store of one's own (`AWS_ENDPOINT_URL_S3` or
/// `AWS_ENDPOINT_URL`) is addressed by path, as moto and MinIO serve buckets.
pub async fn s3_client() -> Result<aws_sdk_s3::Client> {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    if config.region().is_none() {
        bail!(
            "no AWS region is configured for S3: set AWS_REGION (e.g. us-east-1) or a region in \
             your AWS profile (`fanout local` prints the variables of its local store)"
        );
    }
    let path_style = endpoint_override().is_some();
    let s3 = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(path_style)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(s3))
}

fn endpoint_override() -> Option<String> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// An object in S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Where `--items` or `--results` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    File(PathBuf),
    S3(S3Url),
}

impl Place {
    /// `s3://BUCKET/KEY`, or a path to a local file.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let Some(rest) = raw.strip_prefix("s3://") else {
            if raw.trim().is_empty() {
                return Err("give a file or s3://BUCKET/KEY".into());
            }
            return Ok(Self::File(PathBuf::from(raw)));
        };
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
                Ok(Self::S3(S3Url {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                }))
            }
            _ => Err(format!(
                "{raw:?} is not an S3 object; give s3://BUCKET/KEY (or a local file)"
            )),
        }
    }
}

/// Where local files are staged: [`STAGE_ENV`], or the local store's bucket when the S3
/// endpoint is on loopback (or `local_store`: the client is the local stack's). Never a
/// guessed bucket on AWS.
pub fn stage_location(local_store: bool) -> Result<(String, String)> {
    if let Ok(raw) = std::env::var(STAGE_ENV)
        && !raw.trim().is_empty()
    {
        let rest = raw.trim().strip_prefix("s3://").with_context(|| {
            format!("{STAGE_ENV}={raw:?} is not an S3 location; give s3://BUCKET/PREFIX/")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{STAGE_ENV}={raw:?} names no bucket; give s3://BUCKET/PREFIX/");
        }
        let prefix = match prefix {
            "" => String::new(),
            p if p.ends_with('/') => p.to_owned(),
            p => format!("{p}/"),
        };
        return Ok((bucket.to_owned(), prefix));
    }
    let local = local_store
        || endpoint_override().is_some_and(|url| {
            url.contains("://127.0.0.1") || url.contains("://localhost") || url.contains("://[::1]")
        });
    if local {
        return Ok((LOCAL_BUCKET.to_owned(), "staging/".to_owned()));
    }
    bail!(
        "a local file needs a staging location in S3: set {STAGE_ENV}=s3://BUCKET/PREFIX/ (a \
         bucket you may write to), or give s3:// locations; with `fanout local`, export the \
         AWS_ENDPOINT_URL_S3 … line it prints"
    )
}

/// Checks a local items file before it is uploaded: one JSON value per line, no blank lines
/// between items (blank lines at the end are ignored), each refused with its line number.
/// Whether a line is a subtask of the job is the handler's to check: it has the job's types.
/// Returns the number of items.
pub fn check_items(path: &Path) -> Result<usize, String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the items file {}: {e}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let (mut items, mut number, mut blank) = (0usize, 0usize, None);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read the items file {}: {e}", path.display()))?;
        if read == 0 {
            break;
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            blank.get_or_insert(number);
            continue;
        }
        if let Some(blank) = blank {
            return Err(format!(
                "{}: line {blank} is empty; give one JSON subtask per line, with no blank lines \
                 between them",
                path.display()
            ));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            return Err(format!(
                "{}: line {number} is not valid JSON (column {}): {}",
                path.display(),
                e.column(),
                e.to_string()
                    .rsplit_once(" at line ")
                    .map(|(m, _)| m.to_owned())
                    .unwrap_or_else(|| e.to_string())
            ));
        }
        items += 1;
    }
    if items == 0 {
        return Err(format!(
            "{} holds no items; give one JSON subtask per line, e.g. {{\"description\":\"shower\"}}",
            path.display()
        ));
    }
    Ok(items)
}

fn s3_failure<E>(doing: &str, at: &S3Url, error: aws_sdk_s3::error::SdkError<E>) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    anyhow::anyhow!(
        "{doing} {at} failed: {}",
        aws_sdk_s3::error::DisplayErrorContext(error)
    )
}

/// Uploads a local file to `to`.
pub async fn stage(client: &aws_sdk_s3::Client, file: &Path, to: &S3Url) -> Result<()> {
    let body = ByteStream::from_path(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    client
        .put_object()
        .bucket(&to.bucket)
        .key(&to.key)
        .body(body)
        .send()
        .await
        .map_err(|e| s3_failure("uploading the items to", to, e))?;
    Ok(())
}

/// Downloads `from` into a local file (written whole, then renamed into place).
pub async fn fetch(client: &aws_sdk_s3::Client, from: &S3Url, file: &Path) -> Result<u64> {
    let object = client
        .get_object()
        .bucket(&from.bucket)
        .key(&from.key)
        .send()
        .await
        .map_err(|e| s3_failure("fetching the results from", from, e))?;
    let bytes = object
        .body
        .collect()
        .await
        .with_context(|| format!("reading {from}"))?
        .into_bytes();
    let partial = file.with_extension("partial");
    std::fs::write(&partial, &bytes)
        .and_then(|()| std::fs::rename(&partial, file))
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(bytes.len() as u64)
}

/// Deletes a staged object (best effort: a leftover is only storage).
pub async fn remove(client: &aws_sdk_s3::Client, at: &S3Url) {
    let _ = client
        .delete_object()
        .bucket(&at.bucket)
        .key(&at.key)
        .send()
        .await;
}

/// A run of items ready to send: its request body, and what to fetch once it is done.
pub struct Prepared {
    /// The body of `worker/runItems`: `{"items": "s3://…", "results": "s3://…"}`.
    pub task: serde_json::Value,
    /// The number of items, when they were a local file checked here.
    pub count: Option<usize>,
    client: aws_sdk_s3::Client,
    staged_items: Option<S3Url>,
    fetch_to: Option<(S3Url, PathBuf)>,
}

/// Checks and stages local items, picks where local results are written first, and gives the
/// request. A bad line is an input error (exit 4) with its line number, before anything is
/// uploaded or started.
pub async fn prepare(items: &Place, results: &Place, ingress_url: &str) -> Result<Prepared> {
    let count = match items {
        Place::File(path) => Some(check_items(path).map_err(crate::exit::rejected)?),
        Place::S3(_) => None,
    };
    let (client, local_store) = client_for(ingress_url).await?;
    let staging = || -> Result<S3Url> {
        let (bucket, prefix) =
            stage_location(local_store).map_err(|e| crate::exit::rejected(format!("{e:#}")))?;
        let run = uuid::Uuid::new_v4().simple();
        Ok(S3Url {
            bucket,
            key: format!("{prefix}fanout-invoke-{run}/"),
        })
    };
    let (items_url, staged_items) = match items {
        Place::S3(url) => (url.clone(), None),
        Place::File(path) => {
            let mut at = staging()?;
            at.key += "items.jsonl";
            stage(&client, path, &at).await?;
            (at.clone(), Some(at))
        }
    };
    let (results_url, fetch_to) = match results {
        Place::S3(url) => (url.clone(), None),
        Place::File(path) => {
            let mut at = match &staged_items {
                Some(items) => S3Url {
                    bucket: items.bucket.clone(),
                    key: items.key.trim_end_matches("items.jsonl").to_owned(),
                },
                None => staging()?,
            };
            at.key += "results.jsonl";
            (at.clone(), Some((at, path.clone())))
        }
    };
    Ok(Prepared {
        task: serde_json::json!({
            "items": items_url.to_string(),
            "results": results_url.to_string(),
        }),
        count,
        client,
        staged_items,
        fetch_to,
    })
}

impl Prepared {
    /// After a run that wrote its results: fetches them into the local file, if one was
    /// asked for, and removes what was staged. Returns the file and its size.
    pub async fn finish(&self) -> Result<Option<(PathBuf, u64)>> {
        let fetched = match &self.fetch_to {
            Some((from, file)) => {
                let bytes = fetch(&self.client, from, file).await?;
                remove(&self.client, from).await;
                Some((file.clone(), bytes))
            }
            None => None,
        };
        self.clean_up().await;
        Ok(fetched)
    }

    /// Removes the staged items (after a run, whatever its outcome).
    pub async fn clean_up(&self) {
        if let Some(items) = &self.staged_items {
            remove(&self.client, items).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse() {
        assert_eq!(
            Place::parse("s3://b/k.jsonl").unwrap(),
            Place::S3(S3Url {
                bucket: "b".into(),
                key: "k.jsonl".into()
            })
        );
        assert_eq!(
            Place::parse("items.jsonl").unwrap(),
            Place::File("items.jsonl".into())
        );
        for bad in ["s3://b", "s3:///k", "s3://b/", ""] {
            assert!(Place::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_items_are_checked_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| {
            let path = dir.path().join("items.jsonl");
            std::fs::write(&path, text).unwrap();
            path
        };
        assert_eq!(check_items(&write("{\"a\":1}\n\"x\"\r\n3\n\n")).unwrap(), 3);
        let bad = check_items(&write("{\"a\":1}\n{\"a\":\n")).unwrap_err();
        assert!(bad.contains("line 2 is not valid JSON"), "{bad}");
        let blank = check_items(&write("1\n\n2\n")).unwrap_err();
        assert!(blank.contains("line 2 is empty"), "{blank}");
        assert!(check_items(&write("\n")).unwrap_err().contains("no items"));
    }
}
