//! The global control plane: the source of truth for Meshes and Secrets. It admits resources
//! (validation plus real backend checks, then an optimistic commit: `admission`), stores them in
//! sled or PostgreSQL (replicas), serves the HTTP API (`api`; over HTTPS too: `https`) and, through the sync server (`kds`), streams them to zones.
//! `run` is the whole server; the `global` binary only parses flags and calls it (`cli`), and
//! tests call it with port-0 listeners.

pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod authority;
pub mod cli;
pub mod gui;
pub mod https;
pub mod kds;
pub mod metrics;
pub mod replicas;
pub mod rights;
pub mod server;
pub mod shared;
pub mod store_guard;
pub mod tokens;

pub use https::{ApiTls, ApiTlsEndpoint};
pub use server::{GlobalConfig, GlobalError, KdsEndpoint, Listeners, StoreKind, run};
