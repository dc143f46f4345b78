//! One lane of a fan-out: up to `window` calls in flight, the next one started the moment any
//! of them finishes. The fan-in ledger runs several lanes (`worker/runShard`, see
//! [`crate::fan_in`]); the select-any strategy runs one inside the coordinator.
//!
//! A call carries a *piece*: one subtask (`runSubtask`) or, with a batch size above 1, up to
//! that many in one executor invocation (`runBatch`), each with its position and its label. The
//! window counts calls, so a cap of C with batches of K keeps up to C×K subtasks in flight in
//! C executor invocations, as Step Functions' `MaxConcurrency` counts batches.
//!
//! The lane encodes its calls' bodies and decodes their answers itself (the SDK passes bytes):
//! that makes a call to either handler, and an attach to a call handed over by an earlier
//! invocation, one future type that a single select waits over.

use crate::fan_in::{
    self, Claim, ClaimRequest, Gathered, InFlight, Indexed, Member, Piece, TooManyFailures,
};
use crate::job::Job;
use crate::payload::{ItemResult, Payload};
use crate::source::{self, Sink};
use bytes::Bytes;
use fanout_contract::names;
use restate_sdk::context::macro_support::SealedDurableFuture;
use restate_sdk::context::{Request, RequestTarget};
use restate_sdk::prelude::*;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;

/// What a lane starts with.
pub(crate) struct LaneSetup<'a, S> {
    /// The service whose `runSubtask` (or `runBatch`) runs the subtasks.
    pub executor: &'a str,
    /// A run of items: claims grant ranges, which the lane reads itself.
    pub sink: Option<&'a Sink>,
    /// Claimed subtasks not started yet, in index order.
    pub pending: Vec<Indexed<S>>,
    /// Calls handed over by an earlier invocation of the lane: attached to, not made again.
    pub in_flight: Vec<InFlight>,
    /// At most this many calls in flight.
    pub window: usize,
    /// Subtasks per call: 1 calls `runSubtask`, more call `runBatch`.
    pub batch: usize,
    pub tolerated: usize,
    /// The ledger to claim more subtasks from (its key) and this lane's number.
    pub claim_from: Option<(&'a str, usize)>,
    /// The ledger has nothing left to claim.
    pub exhausted: bool,
    /// Hand over to a fresh invocation after this many calls (or
    /// [`fan_in::HAND_OVER_BYTES`] of calls and answers, whichever comes first).
    pub hand_over_after: Option<usize>,
    /// Once nothing is left to start, await the last calls in order instead of waking for
    /// each completion.
    pub drain_in_order: bool,
}

impl<'a, S> LaneSetup<'a, S> {
    /// One lane with every subtask and nobody to claim from or hand over to: the select-any
    /// strategy, run by the coordinator itself.
    pub fn alone(
        pending: Vec<Indexed<S>>,
        window: usize,
        batch: usize,
        tolerated: usize,
        executor: &'a str,
    ) -> Self {
        Self {
            executor,
            sink: None,
            pending,
            in_flight: Vec::new(),
            window,
            batch,
            tolerated,
            claim_from: None,
            exhausted: true,
            hand_over_after: None,
            // The peer baseline waits as the reference TypeScript code does, to the end.
            drain_in_order: false,
        }
    }
}

/// How a lane's invocation ended.
pub(crate) enum LaneEnd<S, O> {
    /// Every subtask it had, or could claim, finished.
    Finished(Gathered<O>),
    /// It made enough calls: the rest goes to a fresh invocation.
    HandOver(HandOver<S, O>),
    /// More subtasks failed than the run tolerates; what was in flight is cancelled.
    TooManyFailures(TooManyFailures),
    /// The ledger says the run already failed; what was in flight is cancelled.
    Closed,
}

pub(crate) struct HandOver<S, O> {
    pub gathered: Gathered<O>,
    pub pending: Vec<Indexed<S>>,
    pub in_flight: Vec<InFlight>,
    pub exhausted: bool,
}

/// Keeps up to `window` calls in flight and starts the next pending piece the moment any
/// finishes (a select on any, not an in-order wait, so a slow subtask holds only its own
/// slot). Pending subtasks run in index order; a lane claims more from its ledger while it
/// still has some, so a claim's round trip never leaves a slot empty.
///
/// The calls and the claim are different future types, so the select is made over their
/// notification handles (what the SDK's `DurableFuturesUnordered` does inside); keeping each
/// call's own future is what lets the lane read its invocation id to hand it over or cancel it.
pub(crate) async fn run_lane<J: Job>(
    ctx: &Context<'_>,
    job: &J,
    setup: LaneSetup<'_, J::Subtask>,
) -> Result<LaneEnd<J::Subtask, J::Outcome>, TerminalError> {
    let LaneSetup {
        executor,
        sink,
        pending,
        in_flight,
        window,
        batch,
        tolerated,
        claim_from,
        mut exhausted,
        hand_over_after,
        drain_in_order,
    } = setup;
    let window = window.max(1);
    let batch = batch.max(1);
    // The first index travels as a header so that `fanout status` can put a lane's calls,
    // made in the order they were claimed, back in input order.
    let call = |piece: &Piece, body: Bytes| {
        let handler = if piece.batch {
            names::RUN_BATCH
        } else {
            names::RUN_SUBTASK
        };
        let request: Request<'_, Bytes, Bytes> =
            ctx.request(RequestTarget::service(executor, handler), body);
        request
            .header(fan_in::INDEX_HEADER.to_owned(), piece.first().to_string())
            .call()
    };
    // A lane invocation's journal holds its calls' bodies and their answers; past either
    // bound a fresh invocation takes over, so a resume never replays an unbounded journal.
    let due = |made: usize, carried: usize| {
        hand_over_after.is_some_and(|limit| made >= limit || carried >= fan_in::HAND_OVER_BYTES)
    };
    let too_heavy =
        |carried: usize| hand_over_after.is_some() && carried >= fan_in::HAND_OVER_BYTES;
    let mut pending: VecDeque<_> = pending.into();
    let mut calls = Vec::new();
    let mut attached: Vec<_> = in_flight
        .into_iter()
        .map(|flight| {
            let attach = ctx
                .invocation_handle(flight.invocation.clone())
                .attach::<Bytes>();
            (flight, attach)
        })
        .collect();
    let mut claim = None;
    let (mut made, mut carried) = (0, 0);
    let mut gathered = Gathered::default();
    loop {
        // The count bound is checked once per turn, so a lane's first burst fills its whole
        // window (a drain lane's window is all it holds); the byte bound stops any burst.
        let due_before = due(made, carried);
        while !due_before && !too_heavy(carried) && calls.len() + attached.len() < window {
            let Some((piece, body)) = next_piece(job, &mut pending, batch)? else {
                break;
            };
            carried += body.len();
            let started = call(&piece, body);
            calls.push((piece, started));
            made += 1;
        }
        // Once the lane has made enough calls, it makes no more: a fresh invocation (whose
        // journal starts empty) takes over as soon as no claim is outstanding.
        let hand_over_due = due(made, carried);
        let more_to_start = !pending.is_empty() || !exhausted;
        if hand_over_due && claim.is_none() && more_to_start {
            let mut in_flight: Vec<InFlight> = attached.into_iter().map(|(f, _)| f).collect();
            in_flight.extend(in_flight_calls(&calls).await?);
            return Ok(LaneEnd::HandOver(HandOver {
                gathered,
                pending: pending.into(),
                in_flight,
                exhausted,
            }));
        }
        if let Some((ledger, lane)) = claim_from
            && claim.is_none()
            && !hand_over_due
            && !exhausted
            && pending.len() <= fan_in::low_water(window * batch)
        {
            let request: Request<'_, _, Payload<Claim<J::Subtask>>> = ctx.request(
                RequestTarget::object(names::LEDGER, ledger, names::CLAIM),
                Payload(ClaimRequest {
                    lane,
                    // In subtasks: a grant fills the lane's calls whole.
                    window: window * batch,
                    range: sink.is_some(),
                }),
            );
            claim = Some(request.call());
        }
        if drain_in_order && pending.is_empty() && exhausted && claim.is_none() {
            // Nothing left to start: a completion frees a slot nobody needs, so waking for
            // each one would only cost replays. Await the rest in order, which resumes the
            // lane only when the earliest outstanding call is done.
            return drain::<J, _, _>(ctx, calls, attached, gathered, tolerated).await;
        }
        let handles: Vec<_> = calls
            .iter()
            .map(|(_, c)| (c.handle(), c.inner_context()))
            .chain(
                attached
                    .iter()
                    .map(|(_, a)| (a.handle(), a.inner_context())),
            )
            .chain(claim.iter().map(|c| (c.handle(), c.inner_context())))
            .collect();
        let Some(context) = handles.first().map(|(_, context)| context.clone()) else {
            return Ok(LaneEnd::Finished(gathered));
        };
        let handles = handles.into_iter().map(|(handle, _)| handle).collect();
        let position = match context.select(handles).await {
            Ok(position) => position,
            Err(cancelled) => {
                // The SDK cancelled the calls this invocation made (the claim too); the calls
                // it attached to were made by an earlier one, and Restate cannot know them.
                cancel_attached(ctx, attached);
                return Err(cancelled);
            }
        };
        let (piece, answer) = if position < calls.len() {
            let (piece, call) = calls.swap_remove(position);
            (piece, call.await)
        } else if position < calls.len() + attached.len() {
            let (flight, attach) = attached.swap_remove(position - calls.len());
            (flight.piece, attach.await)
        } else {
            let answer = claim.take().expect("the claim was selected").await?.0;
            if answer.closed {
                cancel_all(ctx, &calls, attached).await?;
                return Ok(LaneEnd::Closed);
            }
            exhausted = answer.subtasks.is_empty() && answer.range.is_none();
            pending.extend(answer.subtasks);
            if let (Some(sink), Some(range)) = (sink, answer.range) {
                pending.extend(read_granted::<J::Subtask>(ctx, sink, range).await?);
            }
            continue;
        };
        carried += answer.as_ref().map_or(0, Bytes::len);
        if let Err(too_many) = add_piece(&mut gathered, piece, answer, tolerated) {
            // The run is lost: what is still running is work nobody will use.
            cancel_all(ctx, &calls, attached).await?;
            return Ok(LaneEnd::TooManyFailures(too_many));
        }
    }
}

/// Takes the next call's subtasks off the front of `pending` with the call's body: one
/// subtask, or with batches up to `batch` of them within [`fan_in::BATCH_BYTES`] of body (a
/// single larger subtask still goes, alone). A batch holds consecutive positions only, so its
/// first position (the `x-fanout-index` header) places every result it answers, for
/// `fanout status` and `fanout redrive`. `None` when nothing is pending.
fn next_piece<J: Job>(
    job: &J,
    pending: &mut VecDeque<Indexed<J::Subtask>>,
    batch: usize,
) -> Result<Option<(Piece, Bytes)>, TerminalError> {
    let encode = |index: usize, item: &J::Subtask| {
        serde_json::to_vec(item).map_err(|e| {
            TerminalError::new(format!("subtask {index} cannot be encoded as JSON: {e}"))
        })
    };
    if batch == 1 {
        let Some(Indexed { index, item }) = pending.pop_front() else {
            return Ok(None);
        };
        let body = encode(index, &item)?;
        let member = Member {
            index,
            label: job.subtask_label(&item),
        };
        return Ok(Some((Piece::one(member), body.into())));
    }
    let mut members = Vec::new();
    let mut body = b"[".to_vec();
    while members.len() < batch {
        let Some(next) = pending.pop_front() else {
            break;
        };
        let encoded = encode(next.index, &next.item)?;
        let follows = members
            .last()
            .is_none_or(|last: &Member| last.index + 1 == next.index);
        // The body so far, a separating comma, this item and the closing bracket.
        let grown = body.len() + 1 + encoded.len() + 1;
        let fits = members.is_empty() || grown <= fan_in::BATCH_BYTES;
        if !(follows && fits) {
            pending.push_front(next);
            break;
        }
        if !members.is_empty() {
            body.push(b',');
        }
        body.extend_from_slice(&encoded);
        members.push(Member {
            index: next.index,
            label: job.subtask_label(&next.item),
        });
    }
    if members.is_empty() {
        return Ok(None);
    }
    body.push(b']');
    Ok(Some((Piece::batch(members), body.into())))
}

/// Adds the result of each subtask of a finished call to `gathered`.
fn add_piece<O: DeserializeOwned>(
    gathered: &mut Gathered<O>,
    piece: Piece,
    answer: Result<Bytes, TerminalError>,
    tolerated: usize,
) -> Result<(), TooManyFailures> {
    let results = piece_results::<O>(&piece, answer);
    for (member, result) in piece.members.into_iter().zip(results) {
        gathered.add(member.index, || member.label, result, tolerated)?;
    }
    Ok(())
}

/// Each subtask's result from a call's answer, in the piece's order. A call that failed as a
/// whole (its invocation failed, or was cancelled) fails each of its subtasks with its error;
/// a batch answers one result per subtask, so one subtask's failure is its own.
fn piece_results<O: DeserializeOwned>(
    piece: &Piece,
    answer: Result<Bytes, TerminalError>,
) -> Vec<Result<O, TerminalError>> {
    let count = piece.members.len();
    let each = |error: TerminalError| (0..count).map(|_| Err(error.clone())).collect();
    let unreadable = |e: serde_json::Error| {
        TerminalError::new_with_code(
            500,
            format!("the executor's answer does not have the job's outcome shape: {e}"),
        )
    };
    let body = match answer {
        Ok(body) => body,
        Err(error) => return each(error),
    };
    if !piece.batch {
        return vec![serde_json::from_slice(&body).map_err(unreadable)];
    }
    match serde_json::from_slice::<Vec<ItemResult<O>>>(&body) {
        Ok(results) if results.len() == count => {
            results.into_iter().map(ItemResult::into_result).collect()
        }
        Ok(results) => each(TerminalError::new_with_code(
            500,
            format!(
                "a batch of {count} subtasks answered with {} results",
                results.len()
            ),
        )),
        Err(e) => each(unreadable(e)),
    }
}

/// Awaits a lane's last calls one after the other and ends it.
async fn drain<J, C, A>(
    ctx: &Context<'_>,
    calls: Vec<(Piece, C)>,
    attached: Vec<(InFlight, A)>,
    mut gathered: Gathered<J::Outcome>,
    tolerated: usize,
) -> Result<LaneEnd<J::Subtask, J::Outcome>, TerminalError>
where
    J: Job,
    C: CallFuture<Response = Bytes>,
    A: restate_sdk::context::DurableFuture<Output = Result<Bytes, TerminalError>>,
{
    let mut calls: VecDeque<_> = calls.into();
    let mut attached: VecDeque<_> = attached.into();
    loop {
        let (piece, answer) = if let Some((flight, attach)) = attached.pop_front() {
            if let Err(cancelled) = done_unless_cancelled(&attach).await {
                attached.push_front((flight, attach));
                cancel_attached(ctx, attached.into());
                return Err(cancelled);
            }
            (flight.piece, attach.await)
        } else if let Some((piece, call)) = calls.pop_front() {
            // Cancelled: the SDK cancels the lane's own calls.
            done_unless_cancelled(&call).await?;
            (piece, call.await)
        } else {
            return Ok(LaneEnd::Finished(gathered));
        };
        if let Err(too_many) = add_piece(&mut gathered, piece, answer, tolerated) {
            let calls: Vec<_> = calls.into();
            cancel_all(ctx, &calls, attached.into()).await?;
            return Ok(LaneEnd::TooManyFailures(too_many));
        }
    }
}

/// Waits until `future` is done, or until this invocation is cancelled, which is then the
/// error. Awaiting a call alone cannot tell the two apart: a cancelled invocation sees its calls
/// end with the same 409 that a subtask cancelled on its own gives, and a tolerant run would
/// count it as one more failure and go on starting subtasks.
pub(crate) async fn done_unless_cancelled<F: SealedDurableFuture>(
    future: &F,
) -> Result<(), TerminalError> {
    future
        .inner_context()
        .select(vec![future.handle()])
        .await
        .map(|_| ())
}

/// A lane's own calls in flight, as a successor can attach to them.
async fn in_flight_calls<C: CallFuture>(
    calls: &[(Piece, C)],
) -> Result<Vec<InFlight>, TerminalError> {
    let mut in_flight = Vec::with_capacity(calls.len());
    for (piece, call) in calls {
        let handle = call.invocation_handle().await?;
        in_flight.push(InFlight {
            piece: piece.clone(),
            invocation: handle.invocation_id().to_owned(),
        });
    }
    Ok(in_flight)
}

/// Cancels a lane's calls in flight, made by it or handed over to it.
async fn cancel_all<C: CallFuture, A>(
    ctx: &Context<'_>,
    calls: &[(Piece, C)],
    attached: Vec<(InFlight, A)>,
) -> Result<(), TerminalError> {
    for (_, call) in calls {
        call.invocation_handle().await?.cancel();
    }
    cancel_attached(ctx, attached);
    Ok(())
}

/// Cancels the calls a lane took over from an earlier invocation of it.
fn cancel_attached<A>(ctx: &Context<'_>, attached: Vec<(InFlight, A)>) {
    for (flight, _) in attached {
        ctx.invocation_handle(flight.invocation).cancel();
    }
}

/// Reads items `[start, end)` of a run from a source in a journaled step, so a replay takes
/// them from the journal, not from S3.
pub(crate) async fn read_granted<S>(
    ctx: &Context<'_>,
    sink: &Sink,
    (start, end): (usize, usize),
) -> Result<Vec<Indexed<S>>, TerminalError>
where
    S: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    if start >= end {
        return Ok(Vec::new());
    }
    let sink = sink.clone();
    let Payload(items) = ctx
        .run(|| async move { Ok(Payload(source::read_items::<S>(&sink, start, end).await?)) })
        .name(format!("read items {start}..{end}"))
        .await?;
    Ok(items)
}

/// Writes the outcomes a lane invocation gathered (successes and failures, each at its index)
/// as one part object named after the invocation, and keeps for the ledger only their count
/// and the failures (for the tally).
pub(crate) async fn write_part<J: Job>(
    ctx: &Context<'_>,
    sink: &Sink,
    mut end: LaneEnd<J::Subtask, J::Outcome>,
) -> Result<LaneEnd<J::Subtask, J::Outcome>, TerminalError> {
    let gathered = match &mut end {
        LaneEnd::Finished(gathered) => gathered,
        LaneEnd::HandOver(hand_over) => &mut hand_over.gathered,
        LaneEnd::TooManyFailures(_) | LaneEnd::Closed => return Ok(end),
    };
    if gathered.outcomes.is_empty() && gathered.failures.is_empty() {
        return Ok(end);
    }
    let (body, _) = source::part_body(&gathered.outcomes, &gathered.failures);
    let (sink, name) = (sink.clone(), ctx.invocation_id().to_owned());
    ctx.run(|| async move {
        source::write_part(&sink, &name, body).await?;
        Ok(Payload(()))
    })
    .name("write outcomes")
    .await?;
    gathered.elsewhere += gathered.outcomes.len();
    gathered.outcomes.clear();
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chores::{Chores, Description};

    fn chores(names: &[&str]) -> VecDeque<Indexed<Description>> {
        names
            .iter()
            .enumerate()
            .map(|(index, name)| Indexed {
                index,
                item: Description {
                    description: (*name).to_owned(),
                },
            })
            .collect()
    }

    #[test]
    fn a_batch_takes_up_to_its_size_in_index_order_as_one_json_array() {
        let job = Chores::default();
        let mut pending = chores(&["a", "b", "c"]);
        let (piece, body) = next_piece(&job, &mut pending, 2).unwrap().unwrap();
        assert!(piece.batch);
        let indexes: Vec<_> = piece.members.iter().map(|m| m.index).collect();
        assert_eq!(indexes, [0, 1]);
        assert_eq!(piece.members[1].label, "b");
        let sent: Vec<Description> = serde_json::from_slice(&body).unwrap();
        assert_eq!(sent[1].description, "b");
        let (last, _) = next_piece(&job, &mut pending, 2).unwrap().unwrap();
        assert_eq!(last.members.len(), 1, "the last batch takes what is left");
        assert!(last.batch, "a batch of one still goes to runBatch");
        assert!(next_piece(&job, &mut pending, 2).unwrap().is_none());
    }

    #[test]
    fn a_batch_ends_where_the_positions_jump() {
        let job = Chores::default();
        let mut pending = chores(&["a", "b", "c", "d"]);
        pending[2].index = 7;
        pending[3].index = 8;
        let (piece, _) = next_piece(&job, &mut pending, 10).unwrap().unwrap();
        assert_eq!(piece.members.len(), 2);
        let (piece, _) = next_piece(&job, &mut pending, 10).unwrap().unwrap();
        assert_eq!(piece.first(), 7);
        assert_eq!(piece.members.len(), 2);
    }

    #[test]
    fn one_subtask_per_call_goes_to_run_subtask_as_its_own_body() {
        let job = Chores::default();
        let mut pending = chores(&["shower"]);
        let (piece, body) = next_piece(&job, &mut pending, 1).unwrap().unwrap();
        assert!(!piece.batch);
        assert_eq!(&body[..], br#"{"description":"shower"}"#);
    }

    #[test]
    fn a_batch_stops_at_its_byte_bound_but_always_carries_one() {
        let job = Chores::default();
        let big = "x".repeat(fan_in::BATCH_BYTES / 2);
        let mut pending = chores(&[&big, &big, &big]);
        let (piece, body) = next_piece(&job, &mut pending, 10).unwrap().unwrap();
        assert_eq!(piece.members.len(), 1);
        assert!(body.len() <= fan_in::BATCH_BYTES);
        assert_eq!(
            pending.len(),
            2,
            "the subtask that did not fit stays first in line"
        );
        let huge = "y".repeat(fan_in::BATCH_BYTES * 2);
        let mut pending = chores(&[&huge]);
        let (piece, _) = next_piece(&job, &mut pending, 10).unwrap().unwrap();
        assert_eq!(piece.members.len(), 1);
    }

    #[test]
    fn a_batch_answer_settles_each_subtask_on_its_own() {
        let piece = Piece::batch(vec![
            Member {
                index: 4,
                label: "a".into(),
            },
            Member {
                index: 5,
                label: "b".into(),
            },
        ]);
        let answer = Bytes::from_static(
            br#"[{"ok":{"description":"a: DONE"}},{"error":{"code":422,"message":"no"}}]"#,
        );
        let mut gathered = Gathered::<Description>::default();
        add_piece(&mut gathered, piece.clone(), Ok(answer), 1).unwrap();
        assert_eq!(gathered.outcomes[0].index, 4);
        assert_eq!(gathered.failures[0].index, 5);
        assert_eq!(gathered.failures[0].subtask, "b");
        assert_eq!(gathered.failures[0].code, 422);

        let short = Bytes::from_static(br#"[{"ok":{"description":"a: DONE"}}]"#);
        let results = piece_results::<Description>(&piece, Ok(short));
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.code() == 500))
        );

        let failed = TerminalError::new_with_code(409, "cancelled");
        let results = piece_results::<Description>(&piece, Err(failed));
        assert_eq!(results.len(), 2);
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.code() == 409))
        );
    }
}
