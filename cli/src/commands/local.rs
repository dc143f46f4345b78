//! `fanout local`: the local stack, up until Ctrl-C.

use crate::commands::args::{HandlerArgs, parse_env};
use crate::ports::Ports;
use crate::stack::{HandlerMode, Layout, LocalStack, RequestIdentity, StackOptions};
use anyhow::Result;
use clap::ValueEnum;
use std::path::PathBuf;

/// Start restate-server and the handler (as a local Lambda by default), register it, and stay
/// up until Ctrl-C.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    handler: HandlerArgs,
    /// Where logs and metering are kept.
    #[arg(long, default_value = ".fanout/local")]
    state_dir: PathBuf,
    /// Concurrent executions allowed to the local Lambda function (429 beyond).
    #[arg(long, default_value_t = 1000)]
    concurrency_limit: usize,
    /// Restate nodes: 1 runs a single restate-server; 3 (up to 7) a Restate cluster on
    /// loopback, replication 2, which keeps serving when a node dies.
    #[arg(long, default_value_t = 1, value_parser = parse_nodes)]
    nodes: usize,
    /// An environment variable for the handler (its instances on the stand-in, or its
    /// process), as a function's configuration sets it; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// single: one deployment serves everything; split: the coordinator and the executors as
    /// deployments of their own (FANOUT_SERVE), the executors in --mode.
    #[arg(long, value_enum, default_value = "single")]
    layout: LayoutArg,
    /// With --layout split: how the coordinator runs (default: as --mode). `--mode lambda
    /// --coordinator-mode http` is the coordinator on a long-running host, executors on Lambda.
    #[arg(long, value_enum)]
    coordinator_mode: Option<HandlerMode>,
    /// Where the stack listens. 8080 (the default): Restate's own ports, which fanout invoke,
    /// status and attach default to: ingress 8080, admin 9070 (web UI at /ui/), node 5122,
    /// the handler over HTTP 9080 (split executors 9081), the Lambda endpoint 9000; with
    /// --nodes 3 node n adds n-1 to the first three. Another number moves them all with the
    /// ingress (18080: admin 19070, node 15122, handler 19080, Lambda 19000). auto: free ports.
    #[arg(long, default_value = "8080", value_name = "INGRESS_PORT|auto", value_parser = crate::ports::parse)]
    ports: Ports,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    Single,
    Split,
}

fn parse_nodes(raw: &str) -> Result<usize, String> {
    let nodes = raw
        .parse()
        .map_err(|_| format!("--nodes takes a number of nodes (1, or 3 to 7), not {raw:?}"))?;
    crate::restate_cluster::check_nodes(nodes)?;
    Ok(nodes)
}

pub async fn run(args: Args) -> Result<u8> {
    let handler = &args.handler;
    let mut stack_options = StackOptions::new(handler.mode, handler.binary()?);
    stack_options.state_dir = Some(args.state_dir.clone());
    stack_options.lambda.concurrency_limit = args.concurrency_limit;
    // Runs of items (`fanout invoke --items`) read and write a local S3 store, when moto is
    // installed (`make tools-aws`).
    stack_options.s3 = crate::items::local_store_available();
    if handler.unsigned {
        stack_options.identity = RequestIdentity::Unsigned;
    }
    stack_options.nodes = args.nodes;
    stack_options.ports = args.ports;
    if args.nodes > 1 {
        println!(
            "starting a {}-node Restate cluster; it serves once partition leaders are elected, \
             10-20 s from now…",
            args.nodes
        );
    }
    if let Some(ms) = handler.max_subtask_ms {
        stack_options
            .handler_env
            .push(("FANOUT_MAX_SUBTASK_MS".into(), ms.to_string()));
    }
    for (name, value) in args.env {
        stack_options.handler_env.retain(|(k, _)| *k != name);
        stack_options.handler_env.push((name, value));
    }
    stack_options.layout = match args.layout {
        LayoutArg::Single => Layout::Single,
        LayoutArg::Split => Layout::Split {
            coordinator: args.coordinator_mode.unwrap_or(handler.mode),
        },
    };
    // Ctrl-C while it starts (a cluster takes 10-20 s) stops what has started: dropping the
    // half-built stack kills its processes by pid, where the default SIGINT would leave them.
    let stack = tokio::select! {
        stack = LocalStack::start(stack_options) => stack?,
        _ = fanout_standin::process::stop_requested() => {
            println!("stopped before the stack was up");
            return Ok(crate::exit::OK);
        }
    };
    println!("fanout local stack is up");
    println!("  ingress:     {}", stack.ingress_url);
    println!("  admin:       {}", stack.server.admin_url);
    println!(
        "  UI:          {}  (Restate's web UI: each invocation, its journal and retries)",
        ui_url(&stack.server.admin_url)
    );
    if let (Some(standin), Some(arn)) = (&stack.standin, &stack.function_arn) {
        println!(
            "  lambda:      {} (AWS_ENDPOINT_URL_LAMBDA)",
            standin.endpoint_url()
        );
        println!("  registered:  {arn}");
        println!("  metering:    {}", stack.metering_path.display());
    }
    println!("  deployment:  {}", stack.deployment.id);
    if let Some(executors) = &stack.executor_deployment {
        println!(
            "  split:       the deployment above is the coordinator (worker/run); the executors \
             (executor/runSubtask) are {}{}",
            executors.id,
            match &stack.executor_function_arn {
                Some(arn) => format!(", function {arn}"),
                None => " over HTTP".into(),
            }
        );
    }
    match (&stack.identity_keys, &stack.signing_key_pem) {
        (Some(keys), Some(pem)) => {
            println!("  signed:      restate-server signs with {}", pem.display());
            println!("               the handler serves only requests signed for {keys}");
        }
        _ => println!(
            "  UNSIGNED:    the handler serves any caller that reaches it (--unsigned); \
             restart without it to sign"
        ),
    }
    match &stack.s3 {
        Some(s3) => println!(
            "  s3:          {} (AWS_ENDPOINT_URL_S3), bucket {}: fanout invoke --items \
             items.jsonl --results results.jsonl stages and fetches through it",
            s3.endpoint_url,
            crate::items::LOCAL_BUCKET
        ),
        None => println!(
            "  s3:          none (moto_server is not installed: `make tools-aws`); runs of items \
             need S3"
        ),
    }
    println!("  handler log: {}", stack.handler_log_path.display());
    println!("  server log:  {}", stack.server.log_path.display());
    if let Some(cluster) = &stack.cluster {
        println!(
            "\n{}-node Restate cluster \"{}\", replication {}; any node's ingress and admin API \
             serve the whole cluster:",
            cluster.ports.len(),
            crate::restate_cluster::CLUSTER_NAME,
            crate::restate_cluster::REPLICATION
        );
        for (index, (node, ports)) in stack.nodes().iter().zip(&cluster.ports).enumerate() {
            let name = crate::restate_cluster::node_name(index);
            println!(
                "  {name}: ingress {}  admin {}  node {}",
                node.ingress_url,
                node.admin_url,
                ports.node_address()
            );
            println!(
                "      config {}  log {}",
                cluster.config_files[index].display(),
                node.log_path.display()
            );
        }
        if let Some(served) = stack.first_served {
            println!(
                "  first invocation served through every node {:.1} s after all reported healthy",
                served.as_secs_f64()
            );
        }
    }
    println!(
        "\nTry (the reference job's task; a job of your own takes its own, e.g. its example.json \
         with --json @example.json): curl {}/worker/run --json '{{\"description\": \"get out of \
         bed,shower,make coffee,have breakfast\"}}'",
        stack.ingress_url
    );
    if let Some(standin) = &stack.standin {
        println!(
            "\nDeploy to it like to AWS (a full local release loop):\n  export \
             AWS_ENDPOINT_URL_LAMBDA={} AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local \
             AWS_REGION=us-east-1 RESTATE_ADMIN_URL={}\n  fanout build --arch x86_64 && fanout \
             deploy --function-name fanout-dev --arch x86_64 --role \
             arn:aws:iam::000000000000:role/local --register{}",
            standin.endpoint_url(),
            stack.server.admin_url,
            match &stack.identity_keys {
                Some(keys) => format!(" --identity-keys {keys}"),
                None => String::new(),
            }
        );
    }
    println!(
        "\nPoint fanout (invoke, attach, status, runs, cancel, register, prune) at it from another \
         shell{}:\n  export RESTATE_INGRESS_URL={} RESTATE_ADMIN_URL={}",
        match args.ports {
            Ports::Fixed(ports) if ports == crate::ports::LocalPorts::RESTATE_DEFAULTS => {
                " (on Restate's default ports it already does: the export is for scripts)"
            }
            _ => "",
        },
        stack.ingress_url,
        stack.server.admin_url
    );
    println!("Ctrl-C stops everything.");
    fanout_standin::process::stop_requested().await;
    println!("stopping…");
    stack.stop().await;
    Ok(crate::exit::OK)
}

/// Restate's web UI, which restate-server serves on its admin port.
pub fn ui_url(admin_url: &str) -> String {
    format!("{}/ui/", admin_url.trim_end_matches('/'))
}
