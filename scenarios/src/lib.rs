//! Multi-process runs of the whole system on loopback: a harness for the real binaries
//! (`harness`), benchmarks (`bench`) and the reporting they share (`report`). The `scenarios`
//! binary is a thin command line over these.

pub mod bench;
pub mod cluster;
pub mod harness;
pub mod report;
