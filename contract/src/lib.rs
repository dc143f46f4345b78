//! # fanout-contract: the wire between the handler and its clients
//!
//! Everything a client of a fanout deployment and the deployment itself must agree on, defined
//! once: the handler (`fanout-handler`) serves these names and reads these headers; the CLI
//! (`fanout`) sends them and finds runs by them in Restate's introspection.
//!
//! | module | what |
//! |---|---|
//! | [`names`] | services, handlers and journal step names (`worker/run`, `split task`, …) |
//! | [`headers`] | the `x-fanout-*` request headers a run takes |
//! | [`policy`] | how a run behaves: fan-in strategy, concurrency cap, failure policy (their syntax and the handler's env vars) |
//! | [`layout`] | what one deployment serves (`FANOUT_SERVE`): everything, the coordinator or the executors |
//! | [`identity`] | the `FANOUT_IDENTITY_KEYS` list of Restate request identity keys |
//!
//! The reference contract (`worker`, `run`, `runSubtask`, the request and response payloads and
//! the log lines) never changes; the rest is fanout's own and versioned with it.

pub mod headers;
pub mod identity;
pub mod layout;
pub mod names;
pub mod policy;
