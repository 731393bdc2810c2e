//! osstune-eval: the two questions a user asks after fine-tuning a coding agent.
//!
//! 1. Does it still solve problems? [`suite`] reads a TOML task suite, [`extract`] takes the
//!    code out of an answer's `final` channel, [`sandbox`] runs it as an untrusted child
//!    process, and [`grade`] turns keywords + execution into PASS/FAIL with retries on
//!    execution errors, as the recipe's model card grades its 13-task benchmark. [`report`]
//!    writes the table, `results.json` and `report.md`, and compares two runs.
//! 2. Does it act like the agent in the logs? [`trace`] scores a generated continuation of a
//!    held-out session sample: Harmony well-formedness, tool calls against the declared tools
//!    and their JSON schemas ([`schema`]), first action vs the reference, clean turn end.
//!
//! Nothing here loads a model: answers come from a [`grade::Responder`] (the binary's model
//! glue, or [`replay`] for recorded answers), so everything is testable without one.

pub mod extract;
pub mod grade;
pub mod replay;
pub mod report;
pub mod sandbox;
pub mod schema;
pub mod suite;
pub mod trace;
