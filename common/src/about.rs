//! What this build and process are, said once for both control planes: the product name, the
//! version, the git commit the binary was built from (`commit`, the one place that reads it), the
//! host name, and the `GET /` index both APIs answer with ([`Index`]), as Kuma's API does.

use serde::{Deserialize, Serialize};

/// The product's name, as `GET /` says it.
pub const PRODUCT: &str = "kmesh";

/// The version of this build (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this build was made from, as a build script sets `KMESH_COMMIT` at compile time;
/// `unknown` when it was built outside git (or without the build script).
pub fn commit() -> &'static str {
    option_env!("KMESH_COMMIT")
        .filter(|c| !c.trim().is_empty())
        .unwrap_or("unknown")
}

/// This host's name: the kernel's, else `$HOSTNAME`, else `unknown`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Which control plane answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Global,
    Zone,
}

/// `GET /` of both APIs: what answers there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Index {
    /// Always `kmesh`.
    pub product: String,
    pub version: String,
    /// The git commit of the build, `unknown` outside git.
    pub commit: String,
    /// `global` or `zone`.
    pub mode: Mode,
    pub hostname: String,
    /// Where the web GUI is served (`/gui/` on global; `null` on a zone, which has none).
    pub gui: Option<String>,
}

impl Index {
    /// The index of this process in `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            product: PRODUCT.into(),
            version: VERSION.into(),
            commit: commit().into(),
            mode,
            hostname: hostname(),
            gui: (mode == Mode::Global).then(|| "/gui/".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_product_version_and_mode() {
        let v = serde_json::to_value(Index::new(Mode::Zone)).unwrap();
        assert_eq!(v["product"], "kmesh");
        assert_eq!(v["mode"], "zone");
        assert_eq!(v["version"], VERSION);
        assert!(!v["commit"].as_str().unwrap().is_empty());
        assert_eq!(v["gui"], serde_json::Value::Null);
        let v = serde_json::to_value(Index::new(Mode::Global)).unwrap();
        assert_eq!(v["mode"], "global");
        assert_eq!(v["gui"], "/gui/");
    }
}
