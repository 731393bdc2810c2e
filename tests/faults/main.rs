//! Fault-injection suite: hostile and careless inputs thrown at the release binary on tiny
//! models (the fixtures and the `init-tiny` preset), each asserting the promised behaviour —
//! a clear `error:` naming the culprit and exit status 1, nothing overwritten, nothing
//! silently passed — so the fixes of issue 14 stay fixed.
//!
//! Run alone with `cargo test --release --test faults`.

mod common;

mod adapters;
mod generate;
mod load;
mod merge;
mod readme;
mod train;
