//! The `provided` backend: the user supplies a CA certificate (optionally followed by its chain) and
//! its key through the `conf.cert` / `conf.key` data sources. Global checks them on create/update, as
//! Kuma does: the PEM parses, the key matches, the certificate is a CA with keyCertSign and without
//! keyAgreement (X509-SVID), it is currently valid, and a certificate it signs verifies. Zones trust
//! what they receive.

use std::fmt;

use super::leaf::CaSigner;
use super::material::{
    cert_ders, describe_key, key_matches, parse_cert, private_key, rsa_bits, signature_ok,
};
use super::shared::{CaError, CaKeyPair, fmt_unix, serial_hex};

/// A provided CA that expires sooner than this gets a warning.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// The smallest RSA key a provided CA may have (what the crypto backend signs and verifies with).
const MIN_RSA_BITS: usize = 2048;

/// What was found in an accepted provided CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidedInfo {
    /// Subject of the CA certificate, e.g. `CN=my-ca, O=acme`.
    pub subject: String,
    pub serial_hex: String,
    /// Validity of the CA certificate, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// `RSA 2048`, `ECDSA P-256`, ...
    pub key_algorithm: String,
    /// Certificates in the bundle (1 for a lone CA certificate).
    pub chain_len: usize,
    /// Non-fatal findings, e.g. expiry within 30 days.
    pub warnings: Vec<String>,
}

impl fmt::Display for ProvidedInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CA {:?} ({}, serial {}), valid until {}",
            self.subject,
            self.key_algorithm,
            self.serial_hex,
            fmt_unix(self.not_after)
        )?;
        if self.chain_len > 1 {
            write!(f, ", with {} chain certificate(s)", self.chain_len - 1)?;
        }
        Ok(())
    }
}

/// Which data source a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProvidedField {
    Cert,
    Key,
}

impl ProvidedField {
    /// The field name below `conf`: `cert` or `key`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProvidedField::Cert => "cert",
            ProvidedField::Key => "key",
        }
    }
}

/// One reason a provided CA is refused, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidedProblem {
    pub field: ProvidedField,
    pub reason: String,
}

impl fmt::Display for ProvidedProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field.as_str(), self.reason)
    }
}

/// Checks a provided CA (see the module doc); on refusal returns every reason found. The reasons
/// do not name the field; [`validate_provided_detailed`] does.
pub fn validate_provided(cert_pem: &[u8], key_pem: &[u8]) -> Result<ProvidedInfo, Vec<String>> {
    validate_provided_detailed(cert_pem, key_pem)
        .map_err(|problems| problems.into_iter().map(|p| p.reason).collect())
}

/// [`validate_provided`], with each problem attributed to `cert` or `key`.
pub fn validate_provided_detailed(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<ProvidedInfo, Vec<ProvidedProblem>> {
    let now = crate::clock::now_unix();
    validate_at(cert_pem, key_pem, now)
}

fn validate_at(
    cert_pem: &[u8],
    key_pem: &[u8],
    now: i64,
) -> Result<ProvidedInfo, Vec<ProvidedProblem>> {
    let mut problems = Vec::new();
    let mut cert_problem = |reason: String| {
        problems.push(ProvidedProblem {
            field: ProvidedField::Cert,
            reason,
        })
    };

    let ders = cert_ders(cert_pem).map_err(&mut cert_problem).ok();
    let key = private_key(key_pem);

    let mut info = None;
    if let Some(ders) = &ders {
        match parse_cert(&ders[0]) {
            Err(e) => cert_problem(e),
            Ok(ca) => {
                for reason in ca_rules(&ca, now) {
                    cert_problem(reason);
                }
                for reason in chain_rules(ders, now) {
                    cert_problem(reason);
                }
                let v = ca.validity();
                let not_after = v.not_after.timestamp();
                let mut warnings = Vec::new();
                let left = not_after - now;
                if left > 0 && left < EXPIRY_WARNING.as_secs() as i64 {
                    warnings.push(format!(
                        "the CA certificate expires in {} day(s), at {}: proxy certificates cannot outlive it",
                        (left + 86_399) / 86_400,
                        fmt_unix(not_after)
                    ));
                }
                info = Some(ProvidedInfo {
                    subject: ca.subject().to_string(),
                    serial_hex: serial_hex(ca.raw_serial()),
                    not_before: v.not_before.timestamp(),
                    not_after,
                    key_algorithm: describe_key(ca.public_key()),
                    chain_len: ders.len(),
                    warnings,
                });
            }
        }
    }

    match (&key, &ders) {
        (Err(reason), _) => problems.push(ProvidedProblem {
            field: ProvidedField::Key,
            reason: reason.clone(),
        }),
        (Ok(key), Some(ders)) => {
            if let Ok(ca) = parse_cert(&ders[0])
                && !key_matches(ca.public_key(), key)
            {
                problems.push(ProvidedProblem {
                    field: ProvidedField::Key,
                    reason: "the private key does not match the certificate's public key"
                        .to_string(),
                });
            }
        }
        (Ok(_), None) => {}
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    // Everything checked so far holds: prove a certificate signed with this pair verifies.
    let pair = CaKeyPair::new(
        String::from_utf8_lossy(cert_pem).into_owned(),
        String::from_utf8_lossy(key_pem).into_owned(),
    );
    if let Err(e) = CaSigner::new(&pair) {
        let field = match e {
            CaError::InvalidCaKey(_) | CaError::KeyMismatch => ProvidedField::Key,
            _ => ProvidedField::Cert,
        };
        return Err(vec![ProvidedProblem {
            field,
            reason: format!("cannot issue certificates with this CA: {e}"),
        }]);
    }
    info.ok_or_else(|| {
        vec![ProvidedProblem {
            field: ProvidedField::Cert,
            reason: "no certificate found".to_string(),
        }]
    })
}

/// Kuma's rules for the CA certificate itself (X509-SVID), plus validity at `now`.
fn ca_rules(ca: &x509_parser::certificate::X509Certificate<'_>, now: i64) -> Vec<String> {
    let mut out = Vec::new();
    match ca.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => out.push(
            "basic constraint 'CA' must be set to 'true' (see X509-SVID: 4.1. Basic Constraints)"
                .to_string(),
        ),
        Err(e) => out.push(format!("the basicConstraints extension is invalid: {e}")),
    }
    match ca.key_usage() {
        Ok(Some(ku)) => {
            if !ku.value.key_cert_sign() {
                out.push(
                    "key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)"
                        .to_string(),
                );
            }
            if ku.value.key_agreement() {
                out.push(
                    "key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)"
                        .to_string(),
                );
            }
        }
        Ok(None) => out.push(
            "key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage); the certificate has no key usage extension"
                .to_string(),
        ),
        Err(e) => out.push(format!("the keyUsage extension is invalid: {e}")),
    }
    out.extend(validity_rule(ca, now, "the CA certificate"));
    let weak = rsa_bits(ca.public_key()).filter(|bits| *bits < MIN_RSA_BITS);
    if let Some(bits) = weak {
        out.push(format!(
            "the CA's RSA key has {bits} bits: at least {MIN_RSA_BITS} are required"
        ));
    }
    out
}

fn validity_rule(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    now: i64,
    what: &str,
) -> Option<String> {
    let v = cert.validity();
    if now >= v.not_after.timestamp() {
        Some(format!(
            "{what} has expired: it was valid until {} (now {})",
            fmt_unix(v.not_after.timestamp()),
            fmt_unix(now)
        ))
    } else if now < v.not_before.timestamp() {
        Some(format!(
            "{what} is not valid yet: it is valid from {} (now {})",
            fmt_unix(v.not_before.timestamp()),
            fmt_unix(now)
        ))
    } else {
        None
    }
}

/// The rest of the bundle must be the CA's chain, in order: each certificate issued (and signed) by
/// the next, each a CA, each currently valid, the last one a self-signed root. Proxies are given
/// the bundle as their trust anchors, and TLS stacks (OpenSSL, BoringSSL, rustls/webpki) verify up
/// to a root: an intermediate alone would leave every proxy unable to verify its peers.
fn chain_rules(ders: &[Vec<u8>], now: i64) -> Vec<String> {
    let mut out = Vec::new();
    let certs: Vec<_> = match ders.iter().map(|d| parse_cert(d)).collect() {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    if let Some(last) = certs.last() {
        let n = certs.len();
        let what = if n == 1 {
            "the CA certificate".to_string()
        } else {
            format!("certificate {n} of the bundle")
        };
        if last.subject().as_raw() != last.issuer().as_raw() {
            out.push(format!(
                "the bundle does not end with a self-signed root: {what} ({}) is issued by {}; proxies trust the mesh's root, so give the CA certificate followed by its chain up to and including the root",
                last.subject(),
                last.issuer()
            ));
        } else if rsa_bits(last.public_key()).is_none_or(|bits| bits >= MIN_RSA_BITS) {
            // (A weak RSA key is refused on its own, and cannot be verified with.) The root's
            // self-signature must really verify: the zone recognises roots that way, so a root
            // whose signature cannot be checked would be no trust anchor to it.
            match last.verify_signature(None) {
                Ok(()) => {}
                Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {
                    out.push(format!(
                        "{what} is self-issued but its signature cannot be verified: its signature algorithm ({}) is unknown or differs from the one its body names; use RSA (SHA-256/384/512), ECDSA (P-256/P-384) or Ed25519",
                        last.signature_algorithm.algorithm
                    ))
                }
                Err(e) => out.push(format!(
                    "{what} is self-issued but its signature does not verify ({e}): it is not a valid root"
                )),
            }
        }
    }
    for (i, pair) in certs.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        let (n, m) = (i + 1, i + 2);
        if child.issuer().as_raw() != parent.subject().as_raw() {
            out.push(format!(
                "certificate {m} of the bundle ({}) is not the issuer of certificate {n} (issued by {}): the bundle must be the CA certificate followed by its chain, in order",
                parent.subject(),
                child.issuer()
            ));
        } else if let Err(e) = signature_ok(child, Some(parent.public_key())) {
            out.push(format!(
                "certificate {n} of the bundle is not signed by certificate {m}: {e}"
            ));
        }
        if !parent.is_ca() {
            out.push(format!(
                "certificate {m} of the bundle ({}) is not a CA",
                parent.subject()
            ));
        }
        out.extend(validity_rule(
            parent,
            now,
            &format!("certificate {m} of the bundle"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    fn ca(usages: Vec<KeyUsagePurpose>, is_ca: IsCa, days: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "test-ca");
        p.is_ca = is_ca;
        p.key_usages = usages;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(days);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn good_ca() -> (String, String) {
        ca(
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            IsCa::Ca(BasicConstraints::Unconstrained),
            365,
        )
    }

    #[test]
    fn accepts_good_ca_and_describes_it() {
        let (c, k) = good_ca();
        let info = validate_provided(c.as_bytes(), k.as_bytes()).unwrap();
        assert_eq!(info.subject, "CN=test-ca");
        assert_eq!(info.key_algorithm, "ECDSA P-256");
        assert_eq!(info.chain_len, 1);
        assert!(info.warnings.is_empty());
        assert!(info.to_string().contains("test-ca"));
    }

    #[test]
    fn warns_when_expiring_soon() {
        let (c, k) = ca(
            vec![KeyUsagePurpose::KeyCertSign],
            IsCa::Ca(BasicConstraints::Unconstrained),
            10,
        );
        let info = validate_provided(c.as_bytes(), k.as_bytes()).unwrap();
        assert_eq!(info.warnings.len(), 1, "{:?}", info.warnings);
        assert!(
            info.warnings[0].contains("expires in 10 day(s)"),
            "{:?}",
            info.warnings
        );
    }

    #[test]
    fn refuses_by_kuma_rules() {
        let (c, k) = ca(vec![KeyUsagePurpose::DigitalSignature], IsCa::NoCa, 365);
        let err = validate_provided(c.as_bytes(), k.as_bytes()).unwrap_err();
        assert!(
            err.iter().any(|r| r.contains("'CA' must be set")),
            "{err:?}"
        );
        assert!(
            err.iter().any(|r| r.contains("'keyCertSign' must be set")),
            "{err:?}"
        );

        let (c, k) = ca(
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::KeyAgreement],
            IsCa::Ca(BasicConstraints::Unconstrained),
            365,
        );
        let err = validate_provided(c.as_bytes(), k.as_bytes()).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].contains("'keyAgreement' must NOT be set"));
    }

    #[test]
    fn validity_is_checked_against_now() {
        let (c, k) = good_ca();
        let in_a_while = time::OffsetDateTime::now_utc().unix_timestamp() + 400 * 86_400;
        let err = validate_at(c.as_bytes(), k.as_bytes(), in_a_while).unwrap_err();
        assert!(err[0].reason.contains("has expired"), "{err:?}");
        let long_ago = 0;
        let err = validate_at(c.as_bytes(), k.as_bytes(), long_ago).unwrap_err();
        assert!(err[0].reason.contains("not valid yet"), "{err:?}");
    }

    #[test]
    fn problems_are_attributed_to_fields() {
        let (c, _) = good_ca();
        let (_, other_key) = good_ca();
        let err = validate_provided_detailed(c.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].field, ProvidedField::Key);
        assert!(err[0].reason.contains("does not match"));

        let err = validate_provided_detailed(b"junk", b"junk").unwrap_err();
        assert_eq!(
            err.iter().map(|p| p.field).collect::<Vec<_>>(),
            vec![ProvidedField::Cert, ProvidedField::Key]
        );
    }

    #[test]
    fn bundle_must_be_a_chain() {
        let (c1, k1) = good_ca();
        let (c2, _) = good_ca();
        let bundle = format!("{c1}{c2}");
        let err = validate_provided(bundle.as_bytes(), k1.as_bytes()).unwrap_err();
        assert!(
            err.iter()
                .any(|r| r.contains("is not signed by certificate 2")),
            "{err:?}"
        );
    }
}
