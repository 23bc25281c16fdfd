//! Benchmarks (`scenarios bench ...`): figures printed as tables, recorded in BENCHMARKS.md with
//! the command that produced them.

pub mod api;
pub mod api_tls;
pub mod issue;
pub mod rotation;
pub mod secrets;
pub mod sync;
pub mod zones;
