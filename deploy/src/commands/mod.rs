//! One module per `fanout` verb; `main.rs` only parses arguments and dispatches here.

pub mod demo;
pub mod invoke;
pub mod local;
pub mod register;
