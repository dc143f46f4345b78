//! `fanout runs`: the recent fan-outs with their status, width and counts, newest first,
//! filtered by status, from the real server's introspection.

use fanout_tests::{Harness, Mode};
use serde_json::Value;
use std::time::Duration;

/// Starts `task` without waiting and returns its invocation id.
async fn send(h: &Harness, task: &str) -> String {
    let started = h
        .fanout(&["invoke", task, "--send", "--output", "json"])
        .await;
    assert_eq!(started.code, Some(0), "{started:?}");
    started.json()["invocationId"].as_str().unwrap().to_owned()
}

fn runs(listed: &Value) -> Vec<(String, String, Option<u64>, u64)> {
    listed["runs"]
        .as_array()
        .expect("a list of runs")
        .iter()
        .map(|r| {
            (
                r["invocationId"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
                r["width"].as_u64(),
                r["done"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_lists_recent_fan_outs_newest_first_by_status() {
    let h = Harness::start(Mode::Http).await;
    let done = h
        .fanout(&["invoke", "a,b", "--output", "json", "--progress", "none"])
        .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let succeeded = done.json()["invocationId"].as_str().unwrap().to_owned();
    let cancelled = send(&h, "c@60000,d@60000,e@10").await;
    h.query_until(
        "SELECT count(*) AS n FROM sys_invocation WHERE completion_result = 'success' \
         AND target = 'worker/runSubtask'",
        Duration::from_secs(30),
        |rows| rows[0]["n"].as_u64() == Some(3),
    )
    .await;
    let cancel = h.fanout(&["cancel", &cancelled]).await;
    assert_eq!(cancel.code, Some(0), "{cancel:?}");
    let going = send(&h, "f@60000").await;

    let all = h.fanout(&["runs", "--output", "json"]).await;
    assert_eq!(all.code, Some(0), "{all:?}");
    let listed = runs(&all.json());
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(
        (&listed[1], &listed[2]),
        (
            &(cancelled.clone(), "cancelled".into(), Some(3), 1),
            &(succeeded.clone(), "completed".into(), Some(2), 2)
        )
    );
    assert_eq!(listed[0].0, going);
    assert_ne!(listed[0].1, "completed", "{listed:?}");

    let only = |status: &str| {
        let h = &h;
        let status = status.to_owned();
        async move {
            let listed = h
                .fanout(&["runs", "--status", &status, "--output", "json"])
                .await;
            assert_eq!(listed.code, Some(0), "{listed:?}");
            runs(&listed.json())
                .into_iter()
                .map(|r| r.0)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(only("cancelled").await, std::slice::from_ref(&cancelled));
    assert_eq!(only("succeeded").await, std::slice::from_ref(&succeeded));
    assert_eq!(only("running").await, std::slice::from_ref(&going));
    assert!(only("failed").await.is_empty());

    let newest = h.fanout(&["runs", "--limit", "1"]).await;
    let lines: Vec<&str> = newest.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one run: {newest:?}");
    assert!(lines[0].starts_with("invocation") && lines[1].starts_with(&going));
    let none = h.fanout(&["runs", "--status", "failed"]).await;
    assert_eq!(none.code, Some(0));
    assert!(none.stderr.contains("no runs with that status"), "{none:?}");
    h.stop().await;
}
