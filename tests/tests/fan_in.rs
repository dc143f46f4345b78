//! The fan-in ledger on Lambda: the coordinator is invoked at most three times (start, the
//! split step's acknowledgement, fan-in) whatever the width and the completion order, where
//! awaiting in order costs a resume per straggling result.

use fanout::report::COORDINATOR_PATH;
use fanout_tests::{Harness, Mode};
use serde_json::{Value, json};

/// `n` subtasks whose results arrive over about two seconds, in index order or reversed.
fn spread(n: usize, reversed: bool) -> (String, String) {
    let at = |i: usize| 2_000 * i / n;
    let items: Vec<String> = (1..=n)
        .map(|i| format!("s{i}@{}", if reversed { at(n - i) } else { at(i) }))
        .collect();
    let results: Vec<String> = items.iter().map(|i| format!("{i}: DONE")).collect();
    (items.join(","), results.join(","))
}

/// Runs `description` with the fan-in `strategy`; returns the coordinator's Lambda
/// invocations as (request bytes, decoded journal bytes).
async fn run(
    h: &Harness,
    strategy: &str,
    description: &str,
    expected: &str,
) -> Vec<(usize, usize)> {
    let before = h.records().len();
    let response = reqwest::Client::new()
        .post(format!("{}/worker/run", h.stack.ingress_url))
        .header("x-fanout-fan-in", strategy)
        .json(&json!({ "description": description }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "description": expected }));
    h.records()[before..]
        .iter()
        .filter(|r| r.path.as_deref() == Some(COORDINATOR_PATH))
        .map(|r| (r.request_bytes, r.request_body_bytes.unwrap_or(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_wakes_at_most_three_times_in_any_completion_order() {
    let h = Harness::start(Mode::Lambda).await;
    for reversed in [false, true] {
        let (description, expected) = spread(200, reversed);
        let coordinator = run(&h, "ledger", &description, &expected).await;
        assert!(
            (2..=3).contains(&coordinator.len()),
            "ledger, reversed={reversed}: the coordinator was invoked {} times",
            coordinator.len()
        );
        // What Restate shipped to the coordinator in all its invocations, against the final
        // journal it shipped last.
        let shipped: usize = coordinator.iter().map(|(_, body)| body).sum();
        let final_journal = coordinator.iter().map(|(_, body)| *body).max().unwrap();
        assert!(
            shipped <= 3 * final_journal,
            "{shipped} bytes shipped for a final journal of {final_journal}"
        );
    }
    // The same spread-out run awaiting in order: results trickling in index order wake the
    // coordinator again and again. This is what the ledger saves.
    let (description, expected) = spread(200, false);
    let in_order = run(&h, "in-order", &description, &expected).await;
    assert!(
        in_order.len() > 3,
        "awaiting in order took only {} invocations; the test no longer tells the strategies apart",
        in_order.len()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_strategy_is_refused_with_the_choices() {
    let h = Harness::start(Mode::Http).await;
    let response = reqwest::Client::new()
        .post(format!("{}/worker/run", h.stack.ingress_url))
        .header("x-fanout-fan-in", "fastest")
        .json(&json!({ "description": "a,b" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("\"ledger\" or \"in-order\""), "{message}");
    h.stop().await;
}
