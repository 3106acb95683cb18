//! jepsen-lite: Jepsen-style testing of a Starling cluster as a black box.
//!
//! It starts real `starling serve` processes (each in its own network
//! namespace when it can), drives them with its own XMPP clients and the
//! admin API, injects faults, records everything in a history and checks it.
//!
//! # Layout
//! - [`history`]: the record of a run (`history.jsonl`) and its clock.
//! - [`results`]: what the checkers found (`results.json`).
//! - [`checker`]: total-queue, linearizability of account creation, roster
//!   agreement, convergence, availability and latency. Pure functions of a
//!   history.
//! - [`report`]: the HTML report with its SVG plots, and the matrix table.
#![forbid(unsafe_code)]

pub mod checker;
pub mod history;
pub mod report;
pub mod results;
