//! Certificate signing requests of `dpCert.keyGeneration: proxy`: the proxy's agent makes a new key
//! of the backend's `keyType` and a CSR holding nothing but that key ([`generate`]); the zone checks
//! what arrives ([`check`]: it parses, its signature verifies with its own key — proof that the
//! sender holds the key —, and the key is of the type asked for). The names a CSR asks for are
//! never used: the zone decides a certificate's subject and SANs; a CSR that asks for any is
//! refused (a Vault role with `use_csr_sans`/`use_csr_common_name` would otherwise copy them).
//! The private key never leaves the agent; `Debug` of [`Generated`] never shows it.

use std::fmt;

use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::model::KeyType;

/// Largest CSR accepted (an RSA-4096 request is about 1.2 KB).
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// Why a CSR was not made or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("cannot generate a {0} key: {1}")]
    Generate(&'static str, String),
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("the CSR cannot be read: {0}")]
    Parse(String),
    #[error("the CSR's signature does not verify with its own key (no proof the sender holds it)")]
    Signature,
    #[error("the CSR's key is {found}, but the backend's dpCert.keyType is {wanted}")]
    KeyType { found: String, wanted: &'static str },
    #[error(
        "the CSR asks for names ({0}): the zone decides a proxy's names, send a CSR without subject and extensions"
    )]
    AsksForNames(String),
}

/// A key and its CSR, made on the proxy's host.
pub struct Generated {
    pub key_pem: String,
    pub csr_der: Vec<u8>,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generated")
            .field("csr_bytes", &self.csr_der.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The PEM form of a CSR's DER (`CERTIFICATE REQUEST`), as Vault takes it.
pub fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()))
}

/// A new key of `key_type` and a CSR for it, empty but for the key.
pub fn generate(key_type: KeyType) -> Result<Generated, CsrError> {
    use rcgen::{KeyPair, RsaKeySize};
    let err = |e: rcgen::Error| CsrError::Generate(key_type.as_str(), e.to_string());
    let key = match key_type {
        KeyType::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    }
    .map_err(err)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(err)?;
    Ok(Generated {
        key_pem: key.serialize_pem(),
        csr_der: csr.der().to_vec(),
    })
}

/// A CSR the zone accepted: its DER and PEM, and its key as rcgen signs for it.
#[derive(Clone)]
pub struct CheckedCsr {
    pub der: Vec<u8>,
    pub pem: String,
    pub public_key: rcgen::PublicKey,
}

impl fmt::Debug for CheckedCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedCsr")
            .field("bytes", &self.der.len())
            .finish_non_exhaustive()
    }
}

/// The key type of a public key, in `dpCert.keyType` words when it is one of them.
fn key_type_of(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<String, String> {
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let curve = crate::x509::ec_curve(spki);
            Ok(match (curve.as_deref(), point.key_size()) {
                (Some(crate::x509::OID_P256), _) => KeyType::EcP256.as_str().to_string(),
                (_, bits) => format!("an EC key of {bits} bits"),
            })
        }
        Ok(PublicKey::RSA(rsa)) => Ok(match rsa.key_size() {
            2048 => KeyType::Rsa2048.as_str().to_string(),
            4096 => KeyType::Rsa4096.as_str().to_string(),
            bits => format!("rsa-{bits}"),
        }),
        Ok(_) => Ok(format!(
            "a key of algorithm {}",
            spki.algorithm.algorithm.to_id_string()
        )),
        Err(e) => Err(format!("its public key: {e}")),
    }
}

/// Checks a CSR from a proxy's agent against the backend's `wanted` key type.
pub fn check(der: &[u8], wanted: KeyType) -> Result<CheckedCsr, CsrError> {
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge);
    }
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| CsrError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Parse(format!(
            "{} bytes after the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    let found = key_type_of(&info.subject_pki).map_err(CsrError::Parse)?;
    if found != wanted.as_str() {
        return Err(CsrError::KeyType {
            found,
            wanted: wanted.as_str(),
        });
    }
    let mut asked = Vec::new();
    if info.subject.iter_attributes().next().is_some() {
        asked.push(format!("subject {}", info.subject));
    }
    if let Some(exts) = csr.requested_extensions()
        && exts.count() > 0
    {
        asked.push("extensions".to_string());
    }
    if !asked.is_empty() {
        return Err(CsrError::AsksForNames(asked.join(", ")));
    }
    // Verifies the signature (once: rcgen does it while reading the key it signs for).
    let params = rcgen::CertificateSigningRequestParams::from_der(&der.to_vec().into()).map_err(
        |e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CsrError::Signature,
            e => CsrError::Parse(e.to_string()),
        },
    )?;
    let pem = pem_of(der);
    Ok(CheckedCsr {
        der: der.to_vec(),
        pem,
        public_key: params.public_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_csr_passes_its_check_and_nothing_else_does() {
        for kt in [KeyType::EcP256, KeyType::Rsa2048] {
            let g = generate(kt).unwrap();
            assert!(!format!("{g:?}").contains("PRIVATE"));
            let c = check(&g.csr_der, kt).unwrap();
            assert!(c.pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
            // Another key type than the backend's.
            let other = if kt == KeyType::EcP256 {
                KeyType::Rsa2048
            } else {
                KeyType::EcP256
            };
            let e = check(&g.csr_der, other).unwrap_err();
            assert!(matches!(e, CsrError::KeyType { .. }), "{e}");
        }
        let g = generate(KeyType::EcP256).unwrap();
        // A flipped byte in the signature: no proof of possession.
        let mut bad = g.csr_der.clone();
        let n = bad.len();
        bad[n - 3] ^= 0x55;
        assert!(matches!(
            check(&bad, KeyType::EcP256),
            Err(CsrError::Signature | CsrError::Parse(_))
        ));
        assert!(matches!(
            check(b"garbage", KeyType::EcP256),
            Err(CsrError::Parse(_))
        ));
        assert_eq!(
            check(&vec![0u8; MAX_CSR_BYTES + 1], KeyType::EcP256).unwrap_err(),
            CsrError::TooLarge
        );
        // A CSR that asks for names is refused.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["admin.example".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "admin");
        let asking = p.serialize_request(&key).unwrap();
        let e = check(asking.der(), KeyType::EcP256).unwrap_err();
        assert!(matches!(e, CsrError::AsksForNames(_)), "{e}");
    }
}
