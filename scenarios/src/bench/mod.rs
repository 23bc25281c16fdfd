//! Benchmarks (`scenarios bench ...`): figures printed as tables, recorded in BENCHMARKS.md with
//! the command that produced them.

pub mod issue;
pub mod sync;
