//! Where `fanout local` listens: Restate's default ports, so that `fanout invoke`, `status`
//! and `attach` (which default to them too) reach it with no flags, or free ports for tests.
//!
//! | what | port (`--ports 8080`, the default) | `--ports BASE` |
//! |---|---|---|
//! | Restate ingress | 8080 | BASE |
//! | Restate admin API (and the web UI at `/ui/`) | 9070 | BASE + 990 |
//! | Restate node-to-node | 5122 | BASE − 2958 |
//! | the handler over HTTP (`--mode http`) | 9080 | BASE + 1000 |
//! | the executors over HTTP (`--layout split`) | 9081 | BASE + 1001 |
//! | the local Lambda endpoint (`AWS_ENDPOINT_URL_LAMBDA`) | 9000 | BASE + 920 |
//! | the local S3 store, moto (`AWS_ENDPOINT_URL_S3`; [`crate::items`]) | 9002 | BASE + 922 |
//!
//! Those are Restate's own defaults (restate-server and its SDKs' HTTP endpoints), and 9000 is
//! where AWS's Lambda runtime interface emulator and `cargo lambda watch` listen. A cluster's
//! node `n` (`--nodes 3`) listens on n1's ingress, admin and node ports plus `n − 1`: n2 on
//! 8081, 9071 and 5123. `--ports auto` takes free ports instead, as the tests and the bench do
//! so that several stacks run side by side.

use anyhow::Result;
use std::fmt::Write as _;

/// Where the local stack listens: fixed ports, or free ones picked at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ports {
    /// Free ports on loopback (`--ports auto`): the tests, the bench and `fanout demo`.
    #[default]
    Auto,
    /// These ports (`--ports 8080`, the default of `fanout local`).
    Fixed(LocalPorts),
}

/// The fixed ports of a local stack; a cluster's further nodes add their index to the first
/// three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPorts {
    pub ingress: u16,
    pub admin: u16,
    pub node: u16,
    /// The HTTP handler; the executors of a split layout over HTTP take the next port.
    pub handler: u16,
    /// The local Lambda stand-in's endpoint.
    pub lambda: u16,
}

/// Restate's default ingress port: `--ports` names the ingress port, every other one keeps its
/// distance from it.
pub const DEFAULT_INGRESS: u16 = 8080;

impl LocalPorts {
    /// Restate's defaults: ingress 8080, admin 9070, node 5122, handler 9080; Lambda 9000.
    pub const RESTATE_DEFAULTS: LocalPorts = LocalPorts {
        ingress: DEFAULT_INGRESS,
        admin: 9070,
        node: 5122,
        handler: 9080,
        lambda: 9000,
    };

    /// The defaults moved so that the ingress is on `ingress`; every port must stay within
    /// 1024..=65535 for up to `max_nodes` nodes.
    pub fn with_ingress_at(ingress: u16, max_nodes: usize) -> Result<Self, String> {
        let shift = i32::from(ingress) - i32::from(DEFAULT_INGRESS);
        let defaults = Self::RESTATE_DEFAULTS;
        let moved = |port: u16| i32::from(port) + shift;
        let span = max_nodes.saturating_sub(1) as i32;
        let lowest = moved(defaults.node);
        // The executors' port (handler + 1) is the highest.
        let highest = moved(defaults.handler + 1).max(moved(defaults.admin) + span);
        if lowest < 1024 || highest > 65535 {
            return Err(format!(
                "--ports {ingress} puts the stack's ports at {lowest} to {highest}, outside \
                 1024-65535 (the ingress at {ingress}, the others at their distance from \
                 Restate's 8080: node {lowest}, admin {}, handler {}); give a number from {} to \
                 {}, or auto",
                moved(defaults.admin),
                moved(defaults.handler),
                i32::from(DEFAULT_INGRESS) + 1024 - i32::from(defaults.node),
                65535 - (highest - i32::from(ingress)),
            ));
        }
        let at = |port: u16| moved(port) as u16;
        Ok(Self {
            ingress,
            admin: at(defaults.admin),
            node: at(defaults.node),
            handler: at(defaults.handler),
            lambda: at(defaults.lambda),
        })
    }

    /// Node `index`'s (0 is n1) ingress, admin and node-to-node ports.
    pub fn of_node(&self, index: usize) -> (u16, u16, u16) {
        let step = index as u16;
        (self.ingress + step, self.admin + step, self.node + step)
    }
}

/// The most nodes `fanout local` starts on one machine; fixed ports are kept free for all of
/// them.
pub const MAX_NODES: usize = 7;

/// `--ports auto` or `--ports INGRESS_PORT`.
pub fn parse(raw: &str) -> Result<Ports, String> {
    if raw.trim().eq_ignore_ascii_case("auto") {
        return Ok(Ports::Auto);
    }
    let ingress: u16 = raw.trim().parse().map_err(|_| {
        format!(
            "--ports takes auto (free ports) or the ingress port, from which the others keep \
             Restate's distances (8080: Restate's defaults), not {raw:?}"
        )
    })?;
    LocalPorts::with_ingress_at(ingress, MAX_NODES).map(Ports::Fixed)
}

/// A port the local stack needs, with what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub port: u16,
    pub role: String,
}

/// Checks that every wanted port is free on 127.0.0.1 before anything starts; the error names
/// the first taken port, its role, the process that holds it when this user can see it, and
/// the ways out.
pub fn check_free(wanted: &[Wanted]) -> Result<()> {
    for Wanted { port, role } in wanted {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", *port)) {
            let holder = match holder_of(*port) {
                Some(holder) => format!(" by {holder}"),
                None => String::new(),
            };
            let mut message = format!(
                "port {port} ({role}) is taken{holder} ({e}). Another fanout local or Restate \
                 is probably running: stop it, or start this stack elsewhere with --ports auto \
                 (free ports; it prints the export line that points fanout at them) or --ports \
                 BASE (the ingress on BASE, e.g. --ports 18080)"
            );
            if wanted.len() > 1 {
                let _ = write!(
                    message,
                    "; this stack needs {}",
                    wanted
                        .iter()
                        .map(|w| format!("{} ({})", w.port, w.role))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            return Err(anyhow::Error::msg(message));
        }
    }
    Ok(())
}

/// The process listening on `port` (`pid 123: restate-server --base-dir …`), from /proc: the
/// listening socket's inode in /proc/net/tcp{,6}, then the process with a descriptor on it.
/// `None` where that is not readable (another user's process, not Linux).
pub fn holder_of(port: u16) -> Option<String> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    let listening = *fields.get(3)? == "0A";
                    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| fields.get(9).map(|inode| inode.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .filter(|inode| inode != "0")
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|link| targets.iter().any(|t| link.as_os_str() == t.as_str()))
        });
        if holds {
            let command = std::fs::read(entry.path().join("cmdline"))
                .map(|raw| {
                    raw.split(|b| *b == 0)
                        .filter(|part| !part.is_empty())
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let command = match command.char_indices().nth(120) {
                Some((cut, _)) => format!("{}…", &command[..cut]),
                None => command,
            };
            return Some(format!("pid {pid}: {command}"));
        }
    }
    None
}

/// The ports of one node on loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    pub admin: u16,
    pub ingress: u16,
    /// Node-to-node traffic: the metadata store, the replicated log, partition processors.
    pub node: u16,
}

impl NodePorts {
    pub fn node_address(&self) -> String {
        format!("http://127.0.0.1:{}/", self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_restates_ports_and_a_base_moves_them_together() {
        assert_eq!(
            parse("8080"),
            Ok(Ports::Fixed(LocalPorts::RESTATE_DEFAULTS))
        );
        assert_eq!(parse("auto"), Ok(Ports::Auto));
        let Ok(Ports::Fixed(moved)) = parse("18080") else {
            panic!("18080 is a base")
        };
        assert_eq!(
            moved,
            LocalPorts {
                ingress: 18080,
                admin: 19070,
                node: 15122,
                handler: 19080,
                lambda: 19000,
            }
        );
        assert_eq!(moved.of_node(2), (18082, 19072, 15124));
        for bad in ["0", "1000", "65000", "http://x", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_taken_port_is_named_with_its_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let error = check_free(&[Wanted {
            port,
            role: "Restate ingress".into(),
        }])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(&format!("port {port} (Restate ingress) is taken")),
            "{error}"
        );
        assert!(error.contains("--ports auto"), "{error}");
        // This test process holds it, and /proc says so.
        assert!(
            error.contains(&format!("pid {}", std::process::id())),
            "{error}"
        );
    }
}
