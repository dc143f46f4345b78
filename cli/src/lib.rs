//! # fanout (the toolkit)
//!
//! Everything around the handler: the local stack it runs on (restate-server and the handler,
//! over HTTP or behind the local Lambda of the `fanout-standin` crate), and the verbs of the
//! `fanout` command line.
//!
//! | module | responsibility |
//! |---|---|
//! | [`tools`] | where restate-server and the handler binary come from |
//! | [`restate_server`] | a real restate-server on loopback with a temp base dir |
//! | [`restate_cluster`] | a Restate cluster of N such servers on loopback, one config file each; waits until it serves |
//! | [`identity`] | Restate's request identity: the signing key pair, its `publickeyv1_` form |
//! | [`aws`] | AWS config from the standard chain; SDK errors turned into causes and fixes |
//! | [`admin`] | Restate's admin API: register, list, delete, SQL introspection |
//! | [`ingress`] | Restate's ingress: start a fan-out, get its result |
//! | [`items`] | runs of items: local items checked and staged in S3, results fetched back; the local S3 store (moto) |
//! | [`observe`] | a fan-out's progress and per-subtask detail from SQL introspection; bar/plain display |
//! | [`ports`] | where the local stack listens: Restate's default ports (or a moved set, or free ones); a taken one named with its holder |
//! | [`stack`] | restate-server + handler (HTTP or Lambda) registered: the local stack |
//! | [`report`] | per-invocation tables and summaries from the stand-in's metering |
//! | [`exit`] | the exit codes of every verb, one table |
//! | [`outcome`] | what the verbs that follow a run share: endpoints, output format, the outcome report |
//! | [`commands`] | one module per CLI verb, each owning its `Args` and `run` (`build`, `deploy`, `register`, `prune`, `local`, `demo`, `bench`, `invoke`, `attach`, `status`, `cancel`, `runs`) |

pub mod admin;
pub mod aws;
pub mod commands;
pub mod exit;
pub mod identity;
pub mod ingress;
pub mod items;
pub mod observe;
pub mod outcome;
pub mod ports;
pub mod report;
pub mod restate_cluster;
pub mod restate_server;
pub mod stack;
pub mod tools;
