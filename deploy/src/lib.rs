//! # fanout (the toolkit)
//!
//! Everything around the handler: the local stack it runs on, the Lambda stand-in that lets the
//! real `bootstrap` run without AWS, and the verbs of the `fanout` command line.
//!
//! | module | responsibility |
//! |---|---|
//! | [`tools`] | where restate-server and the handler binary come from |
//! | [`process`] | child processes killed by pid when dropped; free ports |
//! | [`restate_server`] | a real restate-server on loopback with a temp base dir |
//! | [`admin`] | Restate's admin API: register, list, delete, SQL introspection |
//! | [`ingress`] | Restate's ingress: start a fan-out, get its result |
//! | [`standin`] | the local Lambda: Invoke API, Runtime API, instances, metering |
//! | [`stack`] | restate-server + handler (HTTP or Lambda) registered: the local stack |
//! | [`report`] | per-invocation tables and summaries from the stand-in's metering |
//! | [`commands`] | one module per CLI verb (`local`, `demo`, `register`, `invoke`) |

pub mod admin;
pub mod commands;
pub mod ingress;
pub mod process;
pub mod report;
pub mod restate_server;
pub mod stack;
pub mod standin;
pub mod tools;
