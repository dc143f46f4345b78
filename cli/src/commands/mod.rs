//! One module per `fanout` verb; `main.rs` only parses arguments and dispatches here.

pub mod attach;
pub mod bench;
pub mod build;
pub mod cancel;
pub mod demo;
pub mod deploy;
pub mod invoke;
pub mod local;
pub mod new;
pub mod prune;
pub mod register;
pub mod runs;
pub mod status;
