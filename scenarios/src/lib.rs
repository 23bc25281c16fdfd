//! Multi-process runs of the whole system on loopback, built on the test kit's harness
//! (`testkit::cluster`): the demo (`demo`), the failover and validation drills (`drills`),
//! benchmarks (`bench`) and PASS/FAIL reporting (`report`). The `scenarios` binary is a thin
//! command line over these; the drills are also run by `cargo test` (tests/drills.rs).

pub mod bench;
pub mod demo;
pub mod drills;
pub mod report;
