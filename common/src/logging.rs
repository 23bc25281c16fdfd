//! The logs of both control planes and the proxy agent: the `--log-level` and `--log-format`
//! flags ([`LogArgs`]), and the one subscriber they set up ([`init`]): to stderr, as text (colour
//! codes only when stderr is a terminal and `NO_COLOR` is unset, so a log redirected to a file
//! holds plain text) or as JSON (one object per line: `timestamp`, `level`, `target`, `message`
//! and the event's fields flattened beside them). `RUST_LOG`, when set, is the filter (finer than
//! a level); else `--log-level` (default `info`). The first line names the binary, its version and
//! the git commit it was built from.

use std::io::IsTerminal;

use clap::ValueEnum;

/// `--log-level`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `--log-format`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and the event's fields.
    Json,
}

/// The log flags of `global run`, `zone run` and `zone proxy`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// How much to log: error, warn, info (default), debug or trace. RUST_LOG, when set, is used
    /// instead (it can set levels per module).
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// How to write log lines on stderr: text, or json (one object per line with timestamp,
    /// level, target, message and the event's fields).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

/// The filter: `RUST_LOG` when set and valid, else the level (default `info`).
fn filter(args: &LogArgs) -> tracing_subscriber::EnvFilter {
    let level = args.log_level.unwrap_or(LogLevel::Info).directive();
    match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&text)
            .unwrap_or_else(|e| {
                eprintln!("warning: RUST_LOG={text:?} is not a filter ({e}); using {level}");
                tracing_subscriber::EnvFilter::new(level)
            }),
        _ => tracing_subscriber::EnvFilter::new(level),
    }
}

/// Whether text logs get colour codes: only on a terminal, and never with `NO_COLOR` set.
pub fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Sets up the process's logs on stderr as `args` say, then logs the first line: `binary`, its
/// version and commit. Does nothing when a subscriber is already set.
pub fn init(binary: &str, args: &LogArgs) {
    let filter = filter(args);
    let installed = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(colour_on_stderr())
            .try_init()
            .is_ok(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init()
            .is_ok(),
    };
    if installed {
        tracing::info!(
            target: "kmesh",
            version = crate::cli::PACKAGE_VERSION,
            commit = crate::cli::COMMIT,
            "{binary} {} (commit {}) starting",
            crate::cli::PACKAGE_VERSION,
            crate::cli::COMMIT
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_filter_directives() {
        for level in LogLevel::value_variants() {
            let name = level.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(level.directive(), name);
            tracing_subscriber::EnvFilter::try_new(level.directive()).unwrap();
        }
    }
}
