//! Certificate inspection with x509-parser: PEM bundles to DER certificates, a [`CertSummary`] of
//! what matters for a proxy certificate (serial, CN, SANs, validity, CA flag, key usage, extended
//! key usage, key algorithm), chain verification ([`verify_chain`]: every signature, validity now,
//! the issuers' CA flags, ending at one of the given self-signed roots, with the failing link named
//! in the error) and a check that a private key belongs to a certificate. Used by the Vault check
//! and by tests; nothing here ever prints key material.

use std::fmt;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// Why PEM or DER could not be read as certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("not valid PEM: {0}")]
    Pem(String),
    #[error("no CERTIFICATE block in the PEM data")]
    NoCertificate,
    #[error("certificate {index} of the bundle is not a valid X.509 certificate: {reason}")]
    Der { index: usize, reason: String },
}

/// Why a chain did not verify. Each variant names the certificate (by subject) at the failing link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("cannot parse the {what}: {reason}")]
    Parse { what: String, reason: String },
    #[error("no trust anchor was given: the chain needs at least one self-signed root")]
    NoRoots,
    #[error("certificate {subject:?} is not valid now (valid from {not_before} to {not_after})")]
    NotValidNow {
        subject: String,
        not_before: String,
        not_after: String,
    },
    #[error("no issuer found for {subject:?}: none of the given certificates is {issuer:?}")]
    NoIssuer { subject: String, issuer: String },
    #[error(
        "the signature of {subject:?} does not verify with the key of its issuer {issuer:?}: {reason}"
    )]
    BadSignature {
        subject: String,
        issuer: String,
        reason: String,
    },
    #[error("{issuer:?} signed {subject:?} but is not a CA (basicConstraints CA:true is missing)")]
    IssuerNotCa { subject: String, issuer: String },
    #[error("{issuer:?} signed {subject:?} but its key usage does not allow keyCertSign")]
    IssuerCannotSign { subject: String, issuer: String },
    #[error("the root {subject:?} is not self-signed: {reason}")]
    RootNotSelfSigned { subject: String, reason: String },
    #[error("the chain from {leaf:?} does not end at any of the given roots within {max} links")]
    TooLong { leaf: String, max: usize },
}

/// Names of the Key Usage bits set, in RFC 5280 order, with Go's spelling (`DigitalSignature`).
pub type KeyUsageNames = Vec<&'static str>;

/// What matters about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertSummary {
    /// Serial number in lower-case hex bytes separated by `:` (as Vault prints it).
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub is_ca: bool,
    /// Subject equals issuer and the certificate's own key verifies its signature.
    pub self_signed: bool,
    /// `None` when the certificate has no Key Usage extension.
    pub key_usage: Option<KeyUsageNames>,
    pub server_auth: bool,
    pub client_auth: bool,
    /// e.g. `EC P-256`, `RSA 2048`.
    pub key_algorithm: String,
}

impl CertSummary {
    /// `not_after - not_before`, in seconds.
    pub fn lifetime_secs(&self) -> i64 {
        self.not_after - self.not_before
    }
}

/// The DER of every `CERTIFICATE` block of a PEM bundle, in order (other blocks are ignored).
pub fn pem_to_ders(pem_text: &str) -> Result<Vec<Vec<u8>>, X509Error> {
    let blocks = pem::parse_many(pem_text).map_err(|e| X509Error::Pem(e.to_string()))?;
    let ders: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    if ders.is_empty() {
        return Err(X509Error::NoCertificate);
    }
    for (index, der) in ders.iter().enumerate() {
        parse(der).map_err(|reason| X509Error::Der { index, reason })?;
    }
    Ok(ders)
}

/// PEM text of one DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing data after the certificate".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// A short name for a certificate in messages: its CN, else its subject, else its serial.
fn display_name(cert: &X509Certificate<'_>) -> String {
    if let Some(cn) = common_name(cert) {
        return cn;
    }
    let subject = cert.subject().to_string();
    if !subject.is_empty() {
        return subject;
    }
    format!("serial {}", cert.raw_serial_as_string())
}

fn key_algorithm(cert: &X509Certificate<'_>) -> String {
    use x509_parser::public_key::PublicKey;
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => "EC P-256".to_string(),
            384 => "EC P-384".to_string(),
            521 => "EC P-521".to_string(),
            n => format!("EC {n}"),
        },
        _ => match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.3.101.112" => "Ed25519".to_string(),
            "1.3.101.113" => "Ed448".to_string(),
            other => format!("OID {other}"),
        },
    }
}

fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
}

/// The summary of one DER certificate.
pub fn summarize_der(der: &[u8]) -> Result<CertSummary, X509Error> {
    let cert = parse(der).map_err(|reason| X509Error::Der { index: 0, reason })?;
    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uri_sans.push(u.to_string()),
                GeneralName::DNSName(d) => dns_sans.push(d.to_string()),
                _ => {}
            }
        }
    }
    let key_usage = match cert.key_usage() {
        Ok(Some(ku)) => {
            let ku = ku.value;
            let bits: [(bool, &'static str); 9] = [
                (ku.digital_signature(), "DigitalSignature"),
                (ku.non_repudiation(), "ContentCommitment"),
                (ku.key_encipherment(), "KeyEncipherment"),
                (ku.data_encipherment(), "DataEncipherment"),
                (ku.key_agreement(), "KeyAgreement"),
                (ku.key_cert_sign(), "CertSign"),
                (ku.crl_sign(), "CRLSign"),
                (ku.encipher_only(), "EncipherOnly"),
                (ku.decipher_only(), "DecipherOnly"),
            ];
            Some(bits.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect())
        }
        _ => None,
    };
    let (server_auth, client_auth) = match cert.extended_key_usage() {
        Ok(Some(eku)) => (
            eku.value.server_auth || eku.value.any,
            eku.value.client_auth || eku.value.any,
        ),
        _ => (false, false),
    };
    Ok(CertSummary {
        serial: cert.raw_serial_as_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        common_name: common_name(&cert),
        uri_sans,
        dns_sans,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        self_signed: is_self_signed(&cert),
        key_usage,
        server_auth,
        client_auth,
        key_algorithm: key_algorithm(&cert),
    })
}

/// The summary of the first certificate of a PEM bundle.
pub fn summarize_pem(pem_text: &str) -> Result<CertSummary, X509Error> {
    let ders = pem_to_ders(pem_text)?;
    summarize_der(&ders[0])
}

/// The summaries of every certificate of a PEM bundle.
pub fn summarize_bundle(pem_text: &str) -> Result<Vec<CertSummary>, X509Error> {
    pem_to_ders(pem_text)?
        .iter()
        .map(|d| summarize_der(d))
        .collect()
}

/// Is this DER certificate self-signed (subject = issuer, and its own key verifies it)?
pub fn der_is_self_signed(der: &[u8]) -> bool {
    parse(der).map(|c| is_self_signed(&c)).unwrap_or(false)
}

/// The longest chain [`verify_chain`] follows.
pub const MAX_CHAIN_LEN: usize = 10;

/// Verifies that `leaf` chains, through zero or more of `intermediates`, to one of `roots`: each
/// signature verifies with the issuer's key, every certificate on the path is valid now, every
/// issuer is a CA (and has keyCertSign when it has a Key Usage extension), and the path ends at a
/// certificate of `roots`, which must be self-signed. Intermediates equal to a root are fine.
pub fn verify_chain(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
) -> Result<(), ChainError> {
    verify_chain_at(leaf, intermediates, roots, ASN1Time::now())
}

fn parse_named<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, ChainError> {
    parse(der).map_err(|reason| ChainError::Parse {
        what: what.to_string(),
        reason,
    })
}

fn check_valid(cert: &X509Certificate<'_>, now: ASN1Time) -> Result<(), ChainError> {
    if cert.validity().is_valid_at(now) {
        Ok(())
    } else {
        Err(ChainError::NotValidNow {
            subject: display_name(cert),
            not_before: cert.validity().not_before.to_string(),
            not_after: cert.validity().not_after.to_string(),
        })
    }
}

/// [`verify_chain`] at the unix second `at` instead of now (a caller that judged the leaf's
/// validity itself, with a leeway, checks the rest of the chain at a time the leaf is valid).
pub fn verify_chain_at_unix(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    at: i64,
) -> Result<(), ChainError> {
    let at = ASN1Time::from_timestamp(at).map_err(|e| ChainError::Parse {
        what: "the time to verify at".to_string(),
        reason: e.to_string(),
    })?;
    verify_chain_at(leaf, intermediates, roots, at)
}

fn verify_chain_at(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: ASN1Time,
) -> Result<(), ChainError> {
    if roots.is_empty() {
        return Err(ChainError::NoRoots);
    }
    let leaf_cert = parse_named(leaf, "leaf certificate")?;
    let inters = intermediates
        .iter()
        .enumerate()
        .map(|(i, d)| parse_named(d, &format!("intermediate certificate {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let root_certs = roots
        .iter()
        .enumerate()
        .map(|(i, d)| parse_named(d, &format!("root certificate {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    for root in &root_certs {
        if root.subject().as_raw() != root.issuer().as_raw() {
            return Err(ChainError::RootNotSelfSigned {
                subject: display_name(root),
                reason: format!("its issuer is {:?}", root.issuer().to_string()),
            });
        }
        if let Err(e) = root.verify_signature(None) {
            return Err(ChainError::RootNotSelfSigned {
                subject: display_name(root),
                reason: format!("its signature does not verify with its own key: {e}"),
            });
        }
    }

    let mut current = &leaf_cert;
    check_valid(current, now)?;
    for _ in 0..MAX_CHAIN_LEN {
        if root_certs.iter().any(|r| r.as_raw() == current.as_raw()) {
            return Ok(());
        }
        // Candidates: roots first (so the path ends as early as it can), then intermediates.
        let candidates = root_certs
            .iter()
            .map(|c| (c, true))
            .chain(inters.iter().map(|c| (c, false)))
            .filter(|(c, _)| c.subject().as_raw() == current.issuer().as_raw())
            .filter(|(c, _)| c.as_raw() != current.as_raw());
        let mut last_err = None;
        let mut next = None;
        for (cand, is_root) in candidates {
            match current.verify_signature(Some(cand.public_key())) {
                Ok(()) => {
                    next = Some((cand, is_root));
                    break;
                }
                Err(e) => {
                    last_err = Some(ChainError::BadSignature {
                        subject: display_name(current),
                        issuer: display_name(cand),
                        reason: e.to_string(),
                    })
                }
            }
        }
        let Some((issuer, is_root)) = next else {
            return Err(last_err.unwrap_or_else(|| ChainError::NoIssuer {
                subject: display_name(current),
                issuer: current.issuer().to_string(),
            }));
        };
        if !issuer.is_ca() {
            return Err(ChainError::IssuerNotCa {
                subject: display_name(current),
                issuer: display_name(issuer),
            });
        }
        if let Ok(Some(ku)) = issuer.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(ChainError::IssuerCannotSign {
                subject: display_name(current),
                issuer: display_name(issuer),
            });
        }
        check_valid(issuer, now)?;
        if is_root {
            return Ok(());
        }
        current = issuer;
    }
    Err(ChainError::TooLong {
        leaf: display_name(&leaf_cert),
        max: MAX_CHAIN_LEN,
    })
}

/// Like [`verify_chain`], from PEM: the first certificate of `leaf_pem` is the leaf, and any
/// further certificates there are added to the intermediates.
pub fn verify_chain_pem(
    leaf_pem: &str,
    intermediates_pem: &[&str],
    roots_pem: &[&str],
) -> Result<(), ChainError> {
    let to_ders = |what: &str, pem_text: &str| {
        pem_to_ders(pem_text).map_err(|e| ChainError::Parse {
            what: what.to_string(),
            reason: e.to_string(),
        })
    };
    let mut leaf = to_ders("leaf certificate", leaf_pem)?;
    let leaf_der = leaf.remove(0);
    let mut inters = leaf;
    for p in intermediates_pem {
        inters.extend(to_ders("intermediate certificates", p)?);
    }
    let mut roots = Vec::new();
    for p in roots_pem {
        roots.extend(to_ders("root certificates", p)?);
    }
    verify_chain(&leaf_der, &inters, &roots)
}

/// Does the private key (PEM: PKCS#8, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) belong
/// to the certificate (the first of `cert_pem`)? False when either cannot be read.
pub fn private_key_matches_cert(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(ders) = pem_to_ders(cert_pem) else {
        return false;
    };
    let Ok(cert) = parse(&ders[0]) else {
        return false;
    };
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else {
        return false;
    };
    use rcgen::PublicKeyData;
    key.subject_public_key_info() == cert.public_key().raw
}

/// The private key of `key_pem` (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1
/// `RSA PRIVATE KEY`; EC P-256/P-384/P-521, RSA or Ed25519) as unencrypted PKCS#8 DER, the form
/// the SPIFFE Workload API hands to workloads. Errors say what is wrong, never key bytes.
pub fn private_key_pkcs8_der(key_pem: &str) -> Result<Vec<u8>, String> {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::signature;
    // The pem crate's messages may quote the text: only the kind of failure is said.
    let block = pem::parse(key_pem).map_err(|_| "the private key is not valid PEM".to_string())?;
    let der = block.contents();
    match block.tag() {
        "PRIVATE KEY" => rcgen::KeyPair::try_from(der)
            .map(|_| der.to_vec())
            .map_err(|_| "the PKCS#8 private key cannot be read".to_string()),
        "EC PRIVATE KEY" => [
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
        ]
        .into_iter()
        .find_map(|alg| signature::EcdsaKeyPair::from_private_key_der(alg, der).ok())
        .ok_or_else(|| "the EC private key is not one of P-256, P-384, P-521".to_string())?
        .to_pkcs8v1()
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| "the EC private key cannot be written as PKCS#8".to_string()),
        "RSA PRIVATE KEY" => {
            let key = signature::RsaKeyPair::from_der(der)
                .map_err(|e| format!("the RSA private key cannot be read: {e}"))?;
            AsDer::<Pkcs8V1Der<'static>>::as_der(&key)
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| "the RSA private key cannot be written as PKCS#8".to_string())
        }
        other => Err(format!(
            "a PEM block {other:?} is not a private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)"
        )),
    }
}

/// Key algorithm OIDs of a SubjectPublicKeyInfo, and the EC curves this project meets.
pub(crate) const OID_RSA: &str = "1.2.840.113549.1.1.1";
pub(crate) const OID_EC: &str = "1.2.840.10045.2.1";
pub(crate) const OID_ED25519: &str = "1.3.101.112";
pub(crate) const OID_P256: &str = "1.2.840.10045.3.1.7";
pub(crate) const OID_P384: &str = "1.3.132.0.34";

/// The named curve of an EC public key (its OID), if it names one.
pub(crate) fn ec_curve(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<String> {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string())
}

/// What an agent signs to prove that it holds the key of the certificate it presents: bound to
/// the mesh, the dataplane name, the time and the leaf itself.
pub fn possession_message(mesh: &str, name: &str, unix: i64, leaf_der: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    format!(
        "kmesh-possession-v1|{mesh}|{name}|{unix}|{}",
        hex::encode(Sha256::digest(leaf_der))
    )
    .into_bytes()
}

/// Signs `msg` with the private key in `key_pem` (PKCS#8, SEC1 or PKCS#1; EC, RSA or Ed25519), as
/// [`verify_possession`] checks it.
pub fn sign_possession(key_pem: &str, msg: &[u8]) -> Result<Vec<u8>, String> {
    use rcgen::SigningKey;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| format!("unusable key: {e}"))?;
    key.sign(msg).map_err(|e| format!("cannot sign: {e}"))
}

/// Checks `sig` over `msg` with the public key of the leaf `leaf_der`: ECDSA P-256 (SHA-256) or
/// P-384 (SHA-384), RSA PKCS#1 v1.5 with SHA-256, or Ed25519.
pub fn verify_possession(leaf_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), String> {
    use aws_lc_rs::signature;
    let cert = parse(leaf_der)?;
    let spki = cert.public_key();
    let curve = ec_curve(spki);
    let alg: &'static dyn signature::VerificationAlgorithm = match (
        spki.algorithm.algorithm.to_id_string().as_str(),
        curve.as_deref(),
    ) {
        (OID_EC, Some(OID_P256)) => &signature::ECDSA_P256_SHA256_ASN1,
        (OID_EC, Some(OID_P384)) => &signature::ECDSA_P384_SHA384_ASN1,
        (OID_RSA, _) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (OID_ED25519, _) => &signature::ED25519,
        (oid, _) => return Err(format!("a key of algorithm {oid} is not supported")),
    };
    signature::UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(msg, sig)
        .map_err(|_| "the signature does not verify with the certificate's key".to_string())
}

/// A [`CertSummary`] in one line, for logs and reports.
impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "serial {} CN {:?} URI SANs {:?} valid {}..{} {}",
            self.serial,
            self.common_name.as_deref().unwrap_or(""),
            self.uri_sans,
            self.not_before,
            self.not_after,
            self.key_algorithm
        )
    }
}

#[cfg(test)]
mod possession_tests {
    use super::*;

    #[test]
    fn only_the_key_of_the_certificate_proves_possession() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_RSA_SHA256] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec![])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let msg = possession_message("m", "web-1", 100, cert.der());
            let sig = sign_possession(&key.serialize_pem(), &msg).unwrap();
            verify_possession(cert.der(), &msg, &sig).unwrap();
            let other = possession_message("m", "web-2", 100, cert.der());
            assert!(verify_possession(cert.der(), &other, &sig).is_err());
            let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let forged = sign_possession(&stranger.serialize_pem(), &msg).unwrap();
            assert!(verify_possession(cert.der(), &msg, &forged).is_err());
        }
    }
}

#[cfg(test)]
mod pkcs8_tests {
    use super::*;
    use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
    use aws_lc_rs::signature::{self, KeyPair as _};

    #[test]
    fn sec1_and_pkcs1_keys_become_pkcs8_of_the_same_key() {
        // SEC1 (`EC PRIVATE KEY`), as Vault writes it.
        let ec =
            signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let sec1: EcPrivateKeyRfc5915Der<'static> = ec.private_key().as_der().unwrap();
        let pem_text = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.as_ref().to_vec()));
        let pkcs8 = private_key_pkcs8_der(&pem_text).unwrap();
        let back =
            signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8)
                .unwrap();
        assert_eq!(back.public_key().as_ref(), ec.public_key().as_ref());

        // PKCS#1 (`RSA PRIVATE KEY`): the inner key of a PKCS#8 document.
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let outer = x509_parser::der_parser::parse_der(rsa.serialized_der())
            .unwrap()
            .1;
        let seq = outer.as_sequence().unwrap();
        let pkcs1 = seq[2].as_slice().unwrap().to_vec();
        let pem_text = pem::encode(&pem::Pem::new("RSA PRIVATE KEY", pkcs1));
        let pkcs8 = private_key_pkcs8_der(&pem_text).unwrap();
        let back = signature::RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
        let cert = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .self_signed(&rsa)
            .unwrap();
        let leaf = parse(cert.der()).unwrap();
        assert_eq!(
            back.public_key().as_ref(),
            leaf.public_key().subject_public_key.data.as_ref()
        );

        // PKCS#8 stays as it is.
        let p8 = rcgen::KeyPair::generate().unwrap();
        assert_eq!(
            private_key_pkcs8_der(&p8.serialize_pem()).unwrap(),
            p8.serialize_der()
        );
    }

    #[test]
    fn what_is_not_a_private_key_is_refused_without_quoting_it() {
        let cert = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let e = private_key_pkcs8_der(&cert.pem()).unwrap_err();
        assert!(e.contains("\"CERTIFICATE\" is not a private key"), "{e}");
        let e = private_key_pkcs8_der(
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(!e.contains("c2VjcmV0"), "{e}");
        assert!(
            private_key_pkcs8_der("secret")
                .unwrap_err()
                .contains("not valid PEM")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    fn ca(name: &str) -> (rcgen::Certificate, KeyPair, CertificateParams) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.clone().self_signed(&key).unwrap();
        (cert, key, p)
    }

    #[test]
    fn summary_and_chain() {
        let (root, root_key, root_params) = ca("root");
        let root_issuer = Issuer::new(root_params, &root_key);
        let inter_key = KeyPair::generate().unwrap();
        let mut ip = CertificateParams::new(Vec::<String>::new()).unwrap();
        ip.distinguished_name.push(DnType::CommonName, "inter");
        ip.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ip.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let inter = ip.clone().signed_by(&inter_key, &root_issuer).unwrap();
        let inter_issuer = Issuer::new(ip, &inter_key);

        let leaf_key = KeyPair::generate().unwrap();
        let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
        lp.distinguished_name = rcgen::DistinguishedName::new();
        lp.subject_alt_names = vec![SanType::URI("spiffe://m/s".try_into().unwrap())];
        lp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = lp.signed_by(&leaf_key, &inter_issuer).unwrap();

        let s = summarize_der(leaf.der()).unwrap();
        assert_eq!(s.uri_sans, vec!["spiffe://m/s"]);
        assert!(s.server_auth && !s.client_auth && !s.is_ca && !s.self_signed);
        assert_eq!(s.key_algorithm, "EC P-256");
        assert!(s.key_usage.is_none());
        assert!(summarize_der(root.der()).unwrap().self_signed);

        let inters = vec![inter.der().to_vec()];
        let roots = vec![root.der().to_vec()];
        verify_chain(leaf.der(), &inters, &roots).unwrap();
        // Missing intermediate: the link from the leaf is named.
        let err = verify_chain(leaf.der(), &[], &roots).unwrap_err();
        assert!(matches!(err, ChainError::NoIssuer { .. }), "{err}");
        // The intermediate is not a root.
        let err = verify_chain(leaf.der(), &[], &inters).unwrap_err();
        assert!(matches!(err, ChainError::RootNotSelfSigned { .. }), "{err}");
        // Another root with the same name does not verify the intermediate.
        let (other_root, _, _) = ca("root");
        let err = verify_chain(leaf.der(), &inters, &[other_root.der().to_vec()]).unwrap_err();
        assert!(matches!(err, ChainError::BadSignature { .. }), "{err}");
        assert!(err.to_string().contains("inter"), "{err}");

        assert!(private_key_matches_cert(
            &leaf.pem(),
            &leaf_key.serialize_pem()
        ));
        assert!(!private_key_matches_cert(
            &leaf.pem(),
            &root_key.serialize_pem()
        ));
        let bundle = format!("{}\n{}", leaf.pem(), root.pem());
        assert_eq!(pem_to_ders(&bundle).unwrap().len(), 2);
        verify_chain_pem(
            &format!("{}{}", leaf.pem(), inter.pem()),
            &[],
            &[&root.pem()],
        )
        .unwrap();
    }
}
