//! A user's own job plugged into the worker through the `Job` seam, served in-process and
//! driven through a real restate-server: the Restate plumbing is untouched by the job.

use fanout::admin::{AdminClient, DeploymentTarget, RegisterOptions};
use fanout::ingress::IngressClient;
use fanout::restate_server::{RestateServer, ServerOptions};
use fanout_handler::{InvalidInput, Job, Worker, http_endpoint};
use fanout_standin::process::free_port;
use restate_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Measures words: one subtask per word, the aggregate lists lengths and their total.
struct WordLengths;

#[derive(Deserialize)]
struct Words {
    words: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Lengths {
    lengths: Vec<usize>,
    total: usize,
}

impl Job for WordLengths {
    type Task = Words;
    type Subtask = String;
    type Outcome = usize;
    type Output = Lengths;

    fn split(&self, task: Words) -> Result<Vec<String>, InvalidInput> {
        if task.words.iter().any(|w| w.is_empty()) {
            return Err(InvalidInput::new("words must not be empty"));
        }
        Ok(task.words)
    }

    async fn execute(&self, ctx: &mut Context<'_>, word: String) -> Result<usize, HandlerError> {
        // A durable step, as a real job would use for its side effect.
        Ok(ctx
            .run(|| async move { Ok(word.chars().count() as u64) })
            .name("measure")
            .await? as usize)
    }

    fn aggregate(&self, lengths: Vec<usize>) -> Lengths {
        Lengths {
            total: lengths.iter().sum(),
            lengths,
        }
    }

    fn subtask_label(&self, word: &String) -> String {
        word.clone()
    }
}

#[test]
fn a_custom_job_splits_and_aggregates_without_restate() {
    let job = WordLengths;
    let words = job
        .split(Words {
            words: vec!["fan".into(), "out".into()],
        })
        .unwrap();
    assert_eq!(words, ["fan", "out"]);
    assert_eq!(job.aggregate(vec![3, 3]).total, 6);
    assert!(
        job.split(Words {
            words: vec!["".into()]
        })
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_job_runs_through_restate_unchanged_plumbing() {
    let port = free_port().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let endpoint = tokio::spawn(http_endpoint::serve(
        Worker::new(WordLengths).endpoint(),
        addr,
    ));
    let server = RestateServer::start(
        &fanout::tools::restate_server().unwrap(),
        &ServerOptions::default(),
    )
    .await
    .unwrap();
    let admin = AdminClient::new(&server.admin_url, None);
    let deployment = admin
        .register(
            &DeploymentTarget::Http {
                uri: format!("http://127.0.0.1:{port}"),
            },
            &RegisterOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        deployment.services.iter().any(|s| s.name == "worker"),
        "{:?}",
        deployment.services
    );

    let ingress = IngressClient::new(&server.ingress_url, None);
    let ok = ingress
        .run(&json!({"words": ["durable", "fan", "out"]}), None)
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body, json!({"lengths": [7, 3, 3], "total": 13}));

    let bad = ingress
        .run(&json!({"words": ["", "x"]}), None)
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.message(), "words must not be empty");

    // This job never says it can aggregate failures, so a tolerant run is refused up front.
    let tolerant = ingress
        .clone()
        .with_header("x-fanout-failure-policy", "tolerate:1")
        .run(&json!({"words": ["a", "b"]}), None)
        .await
        .unwrap();
    assert_eq!(tolerant.status, 400, "{:?}", tolerant.body);
    assert!(
        tolerant
            .message()
            .contains("this job cannot aggregate failed subtasks"),
        "{}",
        tolerant.message()
    );

    server.stop().await;
    endpoint.abort();
}
