//! Shared core of the control planes: the resource model and its validation, data sources, the CA
//! backends (builtin, provided, vault), the sled-backed resource store, and a launcher for a real
//! OpenBao server used by tests and scenarios.

pub mod backoff;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod datasource;
pub mod duration;
pub mod error;
pub mod faults;
pub mod file;
pub mod http;
pub mod limits;
pub mod model;
pub mod openbao;
pub mod parse;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod table;
pub mod template;
pub mod tls;
pub mod tokens;
pub mod validate;
pub mod vault;
pub mod x509;

pub use error::{FieldError, ValidationErrors};
