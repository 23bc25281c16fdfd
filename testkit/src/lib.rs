//! The test kit: what serves only tests and scenarios, never a production binary. A real OpenBao
//! and the reference page's Vault steps (`openbao`), a fault-injecting proxy to put in front of it
//! (`faults`), child processes in their own process groups (`proc`), the workspace's binaries
//! (`bins`), polling (`wait`), a JSON client and metrics text (`api`), a router's routes read from
//! its source (`routes`), and THE multi-process
//! harness every test and scenario uses (`cluster`: OpenBao + global + zones + proxies on
//! loopback), with what reads the proxies' files (`certs`) and a real mTLS exchange with the
//! `openssl` command (`openssl`); disks broken on purpose (`disk`); a raw zone on the sync stream (`kds`);
//! the real py-spiffe client and schemathesis in virtualenvs of their own (`python`,
//! `schemathesis`); a real headless Chromium behind a proxy that records every host it asks for
//! (`browser`); an operator's own PKI for the listeners that take one (`pki`); what looks for
//! secrets in every log and answer of a test (`leaks`); checks over a binary's whole command tree
//! (`cli_tree`).

pub mod api;
pub mod bins;
pub mod browser;
pub mod certs;
pub mod cli_tree;
pub mod cluster;
pub mod disk;
pub mod faketime;
pub mod faults;
pub mod kds;
pub mod leaks;
pub mod openbao;
pub mod openssl;
pub mod pki;
pub mod postgres;
pub mod proc;
pub mod python;
pub mod routes;
pub mod schemathesis;
pub mod spiffe;
pub mod wait;
