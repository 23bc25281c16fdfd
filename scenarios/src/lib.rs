//! Multi-process runs of the whole system on loopback: a harness for the real binaries
//! (`harness`), a deployment as the reference page sets it up (`cluster`), the demo (`demo`), the
//! failover and validation drills (`drills`), benchmarks (`bench`), and what they share: reading
//! proxies' certificates (`certs`), a real mTLS handshake with `openssl` (`tls`) and PASS/FAIL
//! reporting (`report`). The `scenarios` binary is a thin command line over these; the drills are
//! also run by `cargo test` (tests/drills.rs).

pub mod bench;
pub mod certs;
pub mod cluster;
pub mod demo;
pub mod drills;
pub mod harness;
pub mod report;
pub mod tls;
