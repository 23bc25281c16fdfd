//! The admin token of global: created once in `<data-dir>/admin-token` (mode 0600), sent as
//! `Authorization: Bearer TOKEN`; it may do everything (`crate::rights` decides who may do what).
//! Also the once-a-minute memory of refused sources, so a brute force does not flood the log.

use std::path::Path;

use axum::http::HeaderMap;

/// The admin token, compared in constant time. `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// Reads `<dir>/admin-token`, creating it with a fresh random token on first start.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("admin-token");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok(Self(s.trim().to_string())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let token = random_token();
        common::file::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)?;
        Ok(Self(token))
    }

    /// Whether the request carries this token.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return false;
        };
        let Ok(value) = value.to_str() else {
            return false;
        };
        let Some(presented) = value.strip_prefix("Bearer ") else {
            return false;
        };
        constant_time_eq(presented.trim().as_bytes(), self.0.as_bytes())
    }
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t1 = AdminToken::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let t2 = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(t1.0, t2.0);
        assert!(!format!("{t1:?}").contains(&t1.0));
        let mut h = HeaderMap::new();
        assert!(!t1.matches(&h));
        h.insert("authorization", format!("Bearer {}", t1.0).parse().unwrap());
        assert!(t1.matches(&h));
        h.insert("authorization", "Bearer nope".parse().unwrap());
        assert!(!t1.matches(&h));
    }
}

/// Remembers when something was last said per source address, to say it at most once a minute
/// (bounded: past 10,000 sources the oldest are forgotten).
#[derive(Clone, Default)]
pub struct OncePerMinute(
    std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<Option<std::net::IpAddr>, std::time::Instant>>,
    >,
);

impl OncePerMinute {
    const PERIOD: std::time::Duration = std::time::Duration::from_secs(60);
    const MAX: usize = 10_000;

    /// Whether `source` was not said for a minute (and it is now).
    pub fn first_in_a_while(&self, source: Option<std::net::IpAddr>) -> bool {
        let now = std::time::Instant::now();
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= Self::MAX {
            seen.retain(|_, t| now.duration_since(*t) < Self::PERIOD);
        }
        match seen.get(&source) {
            Some(t) if now.duration_since(*t) < Self::PERIOD => false,
            _ => {
                if seen.len() < Self::MAX {
                    seen.insert(source, now);
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod once_tests {
    #[test]
    fn a_source_is_said_once_a_minute() {
        let log = super::OncePerMinute::default();
        let a = Some("10.0.0.1".parse().unwrap());
        assert!(log.first_in_a_while(a));
        assert!(!log.first_in_a_while(a));
        assert!(log.first_in_a_while(Some("10.0.0.2".parse().unwrap())));
    }
}
