//! Shared core of the control planes: the resource model and its validation, data sources, the CA
//! backends (builtin, provided, vault) and the sled-backed resource store. What serves only tests
//! and scenarios (the OpenBao runner, the fault-injecting proxy, the multi-process harness) lives
//! in the `testkit` crate.

pub mod about;
pub mod backoff;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod coordination;
pub mod csr;
pub mod datasource;
pub mod duration;
pub mod error;
pub mod file;
pub mod http;
pub mod integrity;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod page;
pub mod parse;
pub mod sealing;
pub mod shutdown;
pub mod store;
mod store_pg;
mod store_records;
mod store_sealing;
mod store_sled;
pub mod sync;
pub mod table;
pub mod template;
pub mod tls;
pub mod tokens;
pub mod validate;
pub mod vault;
pub mod x509;

pub use error::{FieldError, ValidationErrors};
