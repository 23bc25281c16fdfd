//! What a proxy's files say: the certificate (`cert.pem`: leaf then chain), whether `key.pem`
//! belongs to it, the trust bundle (`ca.pem`), and whether the chain verifies to it — read with
//! `common::x509` and printed the way the demo and drills show them.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use common::clock::now_unix;
use common::x509::CertSummary;

/// `1h30m`, `20s`, `2d3h`: a short human duration (its two most significant units).
pub fn human_secs(secs: i64) -> String {
    if secs < 0 {
        return format!("-{}", human_secs(-secs));
    }
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    // The two most significant units: 1d2h, 23h59m, 4m10s, 20s.
    let mut out = String::new();
    let mut shown = 0;
    for (v, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if shown == 2 || (shown == 1 && v == 0) {
            break;
        }
        if v > 0 || shown == 1 {
            out.push_str(&format!("{v}{u}"));
            shown += 1;
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// A proxy's identity as its agent wrote it.
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    pub leaf: CertSummary,
    /// `cert.pem` as written (leaf then chain).
    pub cert_pem: String,
    /// `ca.pem` as written.
    pub ca_pem: String,
    /// The certificates of `ca.pem`.
    pub anchors: Vec<CertSummary>,
    /// `key.pem` is the private key of the leaf.
    pub key_matches: bool,
    /// The chain of `cert.pem` verifies to `ca.pem` now (`Err`: why not).
    pub verifies: Result<(), String>,
}

impl ProxyIdentity {
    /// Reads `cert.pem`, `key.pem` and `ca.pem` from an agent's output directory.
    pub fn read(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let cert_pem = read("cert.pem")?;
        let key_pem = read("key.pem")?;
        let ca_pem = read("ca.pem")?;
        let leaf = common::x509::summarize_pem(&cert_pem)
            .map_err(|e| anyhow!("cert.pem does not parse: {e}"))?;
        let anchors = common::x509::summarize_bundle(&ca_pem)
            .map_err(|e| anyhow!("ca.pem does not parse: {e}"))?;
        let key_matches = common::x509::private_key_matches_cert(&cert_pem, &key_pem);
        let verifies =
            common::x509::verify_chain_pem(&cert_pem, &[], &[&ca_pem]).map_err(|e| e.to_string());
        Ok(Self {
            leaf,
            cert_pem,
            ca_pem,
            anchors,
            key_matches,
            verifies,
        })
    }

    pub fn serial(&self) -> &str {
        &self.leaf.serial
    }

    /// Valid now, key matching, chain verifying to the trust bundle.
    pub fn usable(&self) -> bool {
        let now = now_unix();
        self.key_matches
            && self.verifies.is_ok()
            && self.leaf.not_before <= now + 5
            && now < self.leaf.not_after
    }

    /// Does the chain verify to `root_pem` (e.g. Vault's root CA)?
    pub fn chains_to(&self, root_pem: &str) -> bool {
        common::x509::verify_chain_pem(&self.cert_pem, &[], &[root_pem]).is_ok()
    }

    /// Does `ca.pem` hold the certificate `root_pem`?
    pub fn trusts(&self, root_pem: &str) -> bool {
        let Ok(want) = common::x509::pem_to_ders(root_pem) else {
            return false;
        };
        let Ok(have) = common::x509::pem_to_ders(&self.ca_pem) else {
            return false;
        };
        want.iter().all(|w| have.contains(w))
    }

    /// Subject, URI SANs and expiry on the first line; serial, issuer, key and chain after.
    pub fn describe(&self) -> String {
        let l = &self.leaf;
        let subject = if l.subject.is_empty() {
            "(empty subject)".to_string()
        } else {
            l.subject.clone()
        };
        format!(
            "{subject}; URI SANs {}; expires {} (in {})\nserial {}; issuer {}; key {}; chain verifies to ca.pem: {}",
            l.uri_sans.join(", "),
            common::clock::rfc3339(l.not_after).unwrap_or_else(|| l.not_after.to_string()),
            human_secs(l.not_after - now_unix()),
            short_serial(&l.serial),
            l.issuer,
            l.key_algorithm,
            match &self.verifies {
                Ok(()) => "yes".to_string(),
                Err(e) => format!("NO ({e})"),
            }
        )
    }
}

/// The first and last bytes of a serial (`3a:1f:…:9c`), enough to tell certificates apart.
pub fn short_serial(serial: &str) -> String {
    let parts: Vec<&str> = serial.split(':').collect();
    if parts.len() <= 6 {
        return serial.to_string();
    }
    format!(
        "{}:…:{}",
        parts[..3].join(":"),
        parts[parts.len() - 3..].join(":")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(20), "20s");
        assert_eq!(human_secs(86400 + 3600 + 61), "1d1h");
        assert_eq!(human_secs(86400 + 61), "1d");
        assert_eq!(human_secs(86399), "23h59m");
        assert_eq!(human_secs(-90), "-1m30s");
    }

    #[test]
    fn short_serials() {
        assert_eq!(short_serial("01:02"), "01:02");
        assert_eq!(
            short_serial("01:02:03:04:05:06:07:08"),
            "01:02:03:…:06:07:08"
        );
    }
}
