//! How a command fails: a message and the exit code of SPEC.md it ends the process with.

pub use common::cli::exit;

/// A command failure carrying its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self {
            code: exit::REFUSED,
            message: message.into(),
        }
    }
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            message: message.into(),
        }
    }
    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        Self {
            code: exit::UNREACHABLE,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::refused(format!("{e:#}"))
    }
}
