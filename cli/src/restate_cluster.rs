//! A Restate cluster on loopback: N restate-server nodes, one config file each, free ports (or
//! fixed ones: n1 at the given ports, each further node one higher), temp base dirs, stopped by
//! pid.
//!
//! Each node is a [`RestateServer`] started from its own config file, so it is killed and
//! restarted like a single server. The config is the recipe that works for restate-server
//! 1.7.12 (checked with `restate-server --config-file … --dump-config` and by running it):
//!
//! - `node-name`, `cluster-name`, and `auto-provision = true` on the first node only: it
//!   provisions the cluster, the others join it;
//! - `default-replication = 2`: every log record and every partition's state lives on two nodes,
//!   so the cluster loses nothing when one node dies;
//! - `[bifrost] default-provider = "replicated"`: the log itself is replicated across nodes;
//! - `[metadata-client] addresses` lists every node: the metadata store runs on all of them and a
//!   node reaches it through any;
//! - per node its own `advertised-address`/`bind-address` (node to node), `[admin]` and
//!   `[ingress]` bind addresses.
//!
//! Memory comes from the single server's settings split between the nodes
//! ([`crate::restate_server`]), so three nodes fit next to each other on a small machine.
//!
//! The nodes report healthy about a second after they start, but a first invocation completes
//! only once partition leaders are elected, 7–12 s later on a quiet machine:
//! [`wait_until_serving`] waits for real invocations.

use crate::ingress::IngressClient;
use crate::restate_server::{RestateServer, ServerOptions, log_tail, server_settings};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cluster's name in every node's config.
pub const CLUSTER_NAME: &str = "fanout-local";

/// How many copies of each log record and partition the cluster keeps.
pub const REPLICATION: usize = 2;

pub use crate::ports::MAX_NODES;

/// How long a cluster may take to serve its first invocations after its nodes report healthy:
/// 7–12 s on a quiet machine; the margin covers a loaded two-core one.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(180);

/// Whether `nodes` is a cluster size `fanout local` can start: 1 (a single server) or 3 to
/// [`MAX_NODES`]. Two nodes are refused: with [`REPLICATION`] 2 and a metadata store that needs
/// a majority, losing either one stops the cluster, so two nodes survive nothing one does not.
pub fn check_nodes(nodes: usize) -> Result<(), String> {
    match nodes {
        1 | 3..=MAX_NODES => Ok(()),
        0 => Err("--nodes must be at least 1".into()),
        2 => Err(format!(
            "--nodes 2 is not a useful cluster: with replication {REPLICATION} and a metadata \
             store that needs a majority, losing either node stops it; use --nodes 3 (the \
             smallest cluster that survives losing a node) or --nodes 1"
        )),
        n => Err(format!(
            "--nodes {n} is more than one machine is for (at most {MAX_NODES}); a larger \
             cluster belongs on several machines, see \"Beyond one machine\" in the README"
        )),
    }
}

pub use crate::ports::NodePorts;

/// Node `index`'s name: `n1`, `n2`, …
pub fn node_name(index: usize) -> String {
    format!("n{}", index + 1)
}

/// The config file of node `index` (0-based) of a cluster whose nodes listen on `ports`.
pub fn node_config(index: usize, ports: &[NodePorts]) -> String {
    let me = ports[index];
    let name = node_name(index);
    let addresses = ports
        .iter()
        .map(|p| format!("\"{}\"", p.node_address()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut toml = String::new();
    let _ = writeln!(
        toml,
        "# Node {name} of the {}-node Restate cluster \"{CLUSTER_NAME}\" on loopback.",
        ports.len()
    );
    let _ = writeln!(toml, "node-name = \"{name}\"");
    let _ = writeln!(toml, "cluster-name = \"{CLUSTER_NAME}\"");
    let _ = writeln!(
        toml,
        "# Only the first node provisions the cluster; the others join it."
    );
    let _ = writeln!(toml, "auto-provision = {}", index == 0);
    let _ = writeln!(
        toml,
        "# Each log record and each partition is kept on {REPLICATION} nodes: one may die."
    );
    let _ = writeln!(toml, "default-replication = {REPLICATION}");
    let _ = writeln!(toml, "advertised-address = \"{}\"", me.node_address());
    let _ = writeln!(toml, "bind-address = \"127.0.0.1:{}\"", me.node);
    let _ = writeln!(toml, "\n[bifrost]\ndefault-provider = \"replicated\"");
    let _ = writeln!(toml, "\n[metadata-client]\naddresses = [{addresses}]");
    let _ = writeln!(toml, "\n[admin]\nbind-address = \"127.0.0.1:{}\"", me.admin);
    let _ = writeln!(
        toml,
        "\n[ingress]\nbind-address = \"127.0.0.1:{}\"",
        me.ingress
    );
    toml
}

/// `count` distinct free ports on loopback, held together while they are picked so none is
/// handed out twice. They are released before this returns; a node that loses one to another
/// process fails to start and the cluster starts again on fresh ones.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("no free ports on loopback")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Where a cluster's nodes listen and their config files, in node order.
#[derive(Debug, Clone)]
pub struct ClusterLayout {
    pub ports: Vec<NodePorts>,
    pub config_files: Vec<PathBuf>,
}

/// A running cluster.
pub struct RestateCluster {
    /// In order: `n1` (the node that provisioned the cluster) first.
    pub nodes: Vec<RestateServer>,
    pub layout: ClusterLayout,
    /// When the last node reported healthy.
    pub healthy_at: Instant,
}

impl RestateCluster {
    /// Starts `nodes` nodes of `binary` with their config files and logs in `dir`
    /// (`restate-n1.toml`, `restate-n1.log`, …) and `options.env` for every node, and waits
    /// until all report healthy. Serving takes longer: see [`wait_until_serving`]. Starts again
    /// on fresh ports when another process took one of them.
    pub async fn start(
        binary: &Path,
        nodes: usize,
        dir: &Path,
        options: &ServerOptions,
    ) -> Result<Self> {
        check_nodes(nodes).map_err(anyhow::Error::msg)?;
        if options.ports.is_some() {
            return Self::start_once(binary, nodes, dir, options).await;
        }
        let mut last_error = None;
        for _ in 0..3 {
            match Self::start_once(binary, nodes, dir, options).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    async fn start_once(
        binary: &Path,
        count: usize,
        dir: &Path,
        options: &ServerOptions,
    ) -> Result<Self> {
        let ports: Vec<NodePorts> = match options.ports {
            // Fixed: node n at n1's ports plus n - 1.
            Some(first) => (0..count as u16)
                .map(|i| NodePorts {
                    admin: first.admin + i,
                    ingress: first.ingress + i,
                    node: first.node + i,
                })
                .collect(),
            None => free_ports(3 * count)?
                .chunks(3)
                .map(|p| NodePorts {
                    admin: p[0],
                    ingress: p[1],
                    node: p[2],
                })
                .collect(),
        };
        let mut nodes = Vec::with_capacity(count);
        let mut config_files = Vec::with_capacity(count);
        for (index, p) in ports.iter().enumerate() {
            let name = node_name(index);
            let config_file = dir.join(format!("restate-{name}.toml"));
            std::fs::write(&config_file, node_config(index, &ports))
                .with_context(|| format!("cannot write {}", config_file.display()))?;
            let node_options = ServerOptions {
                env: options.env.clone(),
                ports: None,
                log_path: Some(dir.join(format!("restate-{name}.log"))),
            };
            let urls = (
                format!("http://127.0.0.1:{}", p.admin),
                format!("http://127.0.0.1:{}", p.ingress),
            );
            // All nodes start before any is waited for: n1 waits for the others to form the
            // metadata store's majority.
            nodes.push(RestateServer::spawn_node(
                binary,
                &config_file,
                urls,
                server_settings(count),
                &node_options,
            )?);
            config_files.push(config_file);
        }
        let mut failure = None;
        for (index, node) in nodes.iter_mut().enumerate() {
            if let Err(e) = node.wait_until_healthy().await {
                failure = Some(e.context(format!("cluster node {}", node_name(index))));
                break;
            }
        }
        if let Some(e) = failure {
            for node in nodes {
                node.stop().await;
            }
            return Err(e);
        }
        Ok(Self {
            nodes,
            layout: ClusterLayout {
                ports,
                config_files,
            },
            healthy_at: Instant::now(),
        })
    }

    pub async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

/// Waits until each node's ingress serves a real invocation: POST `path` with `body` (under an
/// idempotency key per node, so a retry joins the same invocation instead of starting another)
/// answers 2xx. Until then the answers are 404 (the registration has not reached that node yet),
/// 503, or nothing within the request's timeout (no partition leader yet). Returns how long it
/// took from `since`. The error names the node, its last answer and its log's end.
pub async fn wait_until_serving(
    nodes: &[&RestateServer],
    path: &str,
    body: &Value,
    since: Instant,
    timeout: Duration,
) -> Result<Duration> {
    let deadline = Instant::now() + timeout;
    let body = serde_json::to_vec(body)?;
    for (index, node) in nodes.iter().enumerate() {
        let ingress = IngressClient::new(&node.ingress_url, None)
            .with_timeout(Duration::from_secs(20).min(timeout));
        let key = format!("fanout-cluster-probe-{}", node_name(index));
        loop {
            let last = match ingress
                .post(path, "application/json", body.clone(), Some(&key))
                .await
            {
                Ok(answer) if (200..300).contains(&answer.status) => break,
                Ok(answer) => format!("HTTP {}: {}", answer.status, answer.message()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the cluster's node {} ({}) did not serve a first invocation ({path}) within \
                     {timeout:?} of its nodes reporting healthy; its last answer: {last}. A \
                     cluster serves once partition leaders are elected, 7–12 s after start on a \
                     quiet machine. Its log ends with:\n{}",
                    node_name(index),
                    node.ingress_url,
                    log_tail(&node.log_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(since.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(n: u16) -> Vec<NodePorts> {
        (0..n)
            .map(|i| NodePorts {
                admin: 9070 + i,
                ingress: 8080 + i,
                node: 5122 + i,
            })
            .collect()
    }

    #[test]
    fn only_the_first_node_provisions_and_every_node_lists_all_three() {
        let ports = ports(3);
        for index in 0..3 {
            let config = node_config(index, &ports);
            let has = |line: &str| config.lines().any(|l| l == line);
            let i = index as u16;
            for line in [
                format!("node-name = \"n{}\"", index + 1),
                format!("cluster-name = \"{CLUSTER_NAME}\""),
                format!("auto-provision = {}", index == 0),
                "default-replication = 2".into(),
                "default-provider = \"replicated\"".into(),
                "addresses = [\"http://127.0.0.1:5122/\", \"http://127.0.0.1:5123/\", \
                 \"http://127.0.0.1:5124/\"]"
                    .into(),
                format!("advertised-address = \"http://127.0.0.1:{}/\"", 5122 + i),
                format!("bind-address = \"127.0.0.1:{}\"", 9070 + i),
                format!("bind-address = \"127.0.0.1:{}\"", 8080 + i),
            ] {
                assert!(has(&line), "{line} missing from:\n{config}");
            }
            // The admin and ingress addresses sit under their own tables.
            let admin = config.find("[admin]").unwrap();
            let ingress = config.find("[ingress]").unwrap();
            assert!(config[admin..ingress].contains(&format!("127.0.0.1:{}", 9070 + i)));
            assert!(config[ingress..].contains(&format!("127.0.0.1:{}", 8080 + i)));
        }
    }

    #[test]
    fn three_nodes_split_what_one_server_spends_on_invocations_and_records() {
        let one = server_settings(1);
        let three = server_settings(3);
        let get = |settings: &[(&str, String)], key: &str| {
            settings
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(&one, "RESTATE_WORKER__INVOKER__MEMORY_LIMIT"), "64 MiB");
        assert_eq!(
            get(&three, "RESTATE_WORKER__INVOKER__MEMORY_LIMIT"),
            "21 MiB"
        );
        assert_eq!(
            get(&three, "RESTATE_BIFROST__RECORD_CACHE_MEMORY_SIZE"),
            "10 MiB"
        );
        // RocksDB's minimum and the cluster-wide partition count stay.
        for key in [
            "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE",
            "RESTATE_DEFAULT_NUM_PARTITIONS",
            "MALLOC_CONF",
        ] {
            assert_eq!(get(&one, key), get(&three, key));
        }
    }

    #[test]
    fn cluster_sizes_that_cannot_survive_a_loss_are_refused_with_a_reason() {
        assert!(check_nodes(1).is_ok());
        assert!(check_nodes(3).is_ok());
        assert!(check_nodes(0).is_err());
        assert!(check_nodes(2).unwrap_err().contains("--nodes 3"));
        assert!(check_nodes(MAX_NODES + 1).unwrap_err().contains("at most"));
    }
}
