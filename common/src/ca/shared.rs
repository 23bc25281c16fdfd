//! What every CA the control plane holds shares: the key pair ([`CaKeyPair`], its key never in
//! `Debug`), the error ([`CaError`], never with key material), random 128-bit serials and their
//! hex, and certificate lifetimes bounded by what X.509 can carry.

use std::fmt;

/// A CA certificate (PEM; possibly a bundle: the CA certificate first, then its chain) with its
/// private key (PEM). The key is private to this struct: read it with [`CaKeyPair::key_pem`];
/// `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct CaKeyPair {
    pub cert_pem: String,
    key_pem: String,
}

impl CaKeyPair {
    /// Wraps PEM text as read from Secrets or data sources; nothing is checked here (see
    /// [`validate_provided`] and [`CaSigner::new`]).
    pub fn new(cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    /// The private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

impl fmt::Debug for CaKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKeyPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why a CA could not be generated or could not issue. Messages never include key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("unsupported RSA key size {0}: must be 2048, 3072 or 4096")]
    UnsupportedRsaBits(u32),
    #[error("invalid certificate lifetime: {0}")]
    InvalidLifetime(String),
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    #[error("signing the certificate failed: {0}")]
    Signing(String),
    #[error("invalid CA certificate: {0}")]
    InvalidCaCert(String),
    #[error("invalid CA private key: {0}")]
    InvalidCaKey(String),
    #[error("the CA private key does not match the CA certificate's public key")]
    KeyMismatch,
    #[error("the CA certificate expired at {0}")]
    CaExpired(String),
    #[error("the CA certificate is not valid before {0}")]
    CaNotYetValid(String),
    #[error("the proxy has no kuma.io/service tag")]
    MissingService,
    #[error("invalid URI SAN {uri:?}: {reason}")]
    InvalidSan { uri: String, reason: String },
    /// `dpCert.uriSans: spiffe` and a proxy that cannot have one SPIFFE ID.
    #[error("{0}")]
    NotAnSvid(String),
    #[error("invalid common name {name:?}: {reason}")]
    InvalidCommonName { name: String, reason: String },
    #[error(
        "the CA certificate's subject cannot be reproduced as the issuer name of the certificates it \
         signs ({0}); multi-valued RDNs, repeated attribute types and unusual string types are not supported"
    )]
    IssuerName(String),
}

/// Formats unix seconds as RFC 3339 UTC (`2025-01-31T12:00:00Z`) for messages, or says
/// `unix time N` when out of range.
pub(crate) fn fmt_unix(secs: i64) -> String {
    crate::clock::rfc3339(secs).unwrap_or_else(|| format!("unix time {secs}"))
}

/// A random positive 128-bit certificate serial number: 16 random bytes with the top bit set, so
/// it is never zero and always exactly 128 bits long (DER adds one leading zero octet).
pub(crate) fn random_serial() -> [u8; 16] {
    use rand::RngCore;
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] |= 0x80;
    serial
}

/// Lowercase hex of a serial number's magnitude, leading zero octets stripped (`openssl x509
/// -serial` prints the same digits in uppercase).
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}

/// `now + d` as a certificate time, refusing durations that overflow or pass the year 9999 (the
/// last year X.509 GeneralizedTime can carry).
pub(crate) fn add_lifetime(
    now: time::OffsetDateTime,
    d: std::time::Duration,
) -> Result<time::OffsetDateTime, CaError> {
    if d.as_secs() == 0 {
        return Err(CaError::InvalidLifetime(
            "must be at least one second".to_string(),
        ));
    }
    let too_long = || CaError::InvalidLifetime(format!("{}s is too long", d.as_secs()));
    let secs = i64::try_from(d.as_secs()).map_err(|_| too_long())?;
    let end = now
        .unix_timestamp()
        .checked_add(secs)
        .ok_or_else(too_long)?;
    let t = time::OffsetDateTime::from_unix_timestamp(end).map_err(|_| too_long())?;
    if t.year() > 9999 {
        return Err(too_long());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_key() {
        let pair = CaKeyPair::new("CERT", "-----BEGIN PRIVATE KEY-----\nSECRET\n");
        let dbg = format!("{pair:?}");
        assert!(dbg.contains("CERT"));
        assert!(!dbg.contains("SECRET"));
        assert!(dbg.contains("<redacted>"));
        assert_eq!(pair.key_pem(), "-----BEGIN PRIVATE KEY-----\nSECRET\n");
    }

    #[test]
    fn serials_are_positive_128_bit_and_distinct() {
        let a = random_serial();
        let b = random_serial();
        assert_ne!(a, b);
        assert!(a[0] & 0x80 != 0);
        assert_eq!(serial_hex(&a).len(), 32);
    }

    #[test]
    fn serial_hex_strips_leading_zeros() {
        assert_eq!(serial_hex(&[0, 0x9f, 0x01]), "9f01");
        assert_eq!(serial_hex(&[0]), "00");
        assert_eq!(serial_hex(&[0x12]), "12");
    }

    #[test]
    fn formats_time() {
        assert_eq!(fmt_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_unix(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn lifetime_bounds() {
        let now = crate::clock::now_utc();
        assert!(matches!(
            add_lifetime(now, std::time::Duration::ZERO),
            Err(CaError::InvalidLifetime(_))
        ));
        assert!(matches!(
            add_lifetime(now, std::time::Duration::from_secs(10_000 * 365 * 86_400)),
            Err(CaError::InvalidLifetime(_))
        ));
        assert!(add_lifetime(now, std::time::Duration::from_secs(u64::MAX)).is_err());
        let t = add_lifetime(now, std::time::Duration::from_secs(60)).unwrap();
        assert_eq!(t.unix_timestamp() - now.unix_timestamp(), 60);
    }
}
