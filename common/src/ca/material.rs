//! Reading CA material: PEM certificate bundles and PEM private keys (PKCS#8, PKCS#1 RSA, SEC1 EC),
//! matching a key to a certificate, and describing a public key. Reasons returned here are meant for
//! users and never include key bytes.

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

/// The DER of every certificate in a PEM bundle, in order. Refuses anything that is not a
/// `CERTIFICATE` block (naming only the block's label), and certificates that do not parse.
pub(crate) fn cert_ders(pem_bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem_blocks(pem_bytes)?;
    if blocks.is_empty() {
        return Err(
            "no PEM-encoded certificate found (expected -----BEGIN CERTIFICATE-----)".to_string(),
        );
    }
    let mut out = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let n = i + 1;
        match block.tag() {
            "CERTIFICATE" => {}
            tag if tag.contains("PRIVATE KEY") => {
                return Err(format!(
                    "PEM block {n} is a private key ({tag}); the certificate data must hold certificates only (the key belongs in conf.key)"
                ));
            }
            tag => {
                return Err(format!("PEM block {n} is {tag:?}, expected CERTIFICATE"));
            }
        }
        let der = block.contents();
        match X509Certificate::from_der(der) {
            Ok(([], _)) => out.push(der.to_vec()),
            Ok(_) => {
                return Err(format!(
                    "certificate {n} is not a valid X.509 certificate: trailing data after the DER structure"
                ));
            }
            Err(e) => {
                return Err(format!(
                    "certificate {n} is not a valid X.509 certificate: {e}"
                ));
            }
        }
    }
    Ok(out)
}

/// The PEM blocks of a document. Errors name only the kind of problem: the pem crate's messages
/// can quote the offending text, which may be key material.
fn pem_blocks(pem_bytes: &[u8]) -> Result<Vec<pem::Pem>, String> {
    pem::parse_many(pem_bytes).map_err(|e| {
        let kind = match e {
            pem::PemError::MismatchedTags(_, _) => "mismatched BEGIN/END labels",
            pem::PemError::MalformedFraming => "malformed framing",
            pem::PemError::MissingBeginTag => "missing BEGIN line",
            pem::PemError::MissingEndTag => "missing END line",
            pem::PemError::MissingData => "no data between BEGIN and END",
            pem::PemError::InvalidData(_) => "invalid base64 data",
            pem::PemError::InvalidHeader(_) => "invalid header",
            pem::PemError::NotUtf8(_) => "not UTF-8",
        };
        format!("not valid PEM: {kind}")
    })
}

/// Parses an already checked DER certificate.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))
}

/// Re-encodes DER certificates as one PEM bundle (LF line endings).
pub(crate) fn certs_pem<'a>(ders: impl IntoIterator<Item = &'a Vec<u8>>) -> String {
    ders.into_iter()
        .map(|der| {
            pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        })
        .collect()
}

/// The private key of a PEM document: exactly one `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY`
/// (PKCS#1) or `EC PRIVATE KEY` (SEC1) block; `EC PARAMETERS` blocks (as `openssl ecparam -genkey`
/// writes) are skipped. Encrypted keys are refused.
pub(crate) fn private_key(pem_bytes: &[u8]) -> Result<KeyPair, String> {
    const EXPECTED: &str = "expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY";
    let blocks = pem_blocks(pem_bytes)?;
    let mut keys = Vec::new();
    for block in &blocks {
        let der = block.contents().to_vec();
        let key = match block.tag() {
            "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(
                    "the private key is encrypted; provide it unencrypted (e.g. `openssl pkey -in key.pem -out plain.pem`)"
                        .to_string(),
                );
            }
            "EC PARAMETERS" => continue,
            tag => {
                return Err(format!("unexpected PEM block {tag:?}: {EXPECTED}"));
            }
        };
        keys.push(key);
    }
    let key = match keys.len() {
        0 => return Err(format!("no PEM-encoded private key found ({EXPECTED})")),
        1 => keys.remove(0),
        n => return Err(format!("{n} private keys found, expected exactly one")),
    };
    KeyPair::try_from(&key).map_err(|_| {
        "the private key could not be parsed: it is malformed or of an unsupported kind \
         (supported: RSA 2048-8192 bits, ECDSA P-256/P-384/P-521, Ed25519)"
            .to_string()
    })
}

/// Whether `key` is the private half of the public key in `spki`.
pub(crate) fn key_matches(spki: &SubjectPublicKeyInfo<'_>, key: &KeyPair) -> bool {
    // Both sides are the content of the SPKI's BIT STRING: PKCS#1 RSAPublicKey for RSA, the
    // uncompressed point for EC, the raw 32 bytes for Ed25519.
    spki.subject_public_key.data.as_ref() == key.der_bytes()
}

use crate::x509::{OID_EC, OID_ED25519, OID_P256, OID_P384, OID_RSA, ec_curve};

/// `RSA 2048`, `ECDSA P-256`, `Ed25519`, or the algorithm's OID.
pub(crate) fn describe_key(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        OID_RSA => match rsa_bits(spki) {
            Some(bits) => format!("RSA {bits}"),
            None => "RSA".to_string(),
        },
        OID_EC => match ec_curve(spki).as_deref() {
            Some(OID_P256) => "ECDSA P-256".to_string(),
            Some(OID_P384) => "ECDSA P-384".to_string(),
            Some("1.3.132.0.35") => "ECDSA P-521".to_string(),
            Some(other) => format!("ECDSA (curve {other})"),
            None => "ECDSA".to_string(),
        },
        OID_ED25519 => "Ed25519".to_string(),
        other => format!("key algorithm {other}"),
    }
}

/// The RSA modulus size of `spki` in bits, if it is an RSA key.
pub(crate) fn rsa_bits(spki: &SubjectPublicKeyInfo<'_>) -> Option<usize> {
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Some(bit_len(rsa.modulus)),
        _ => None,
    }
}

/// Checks `cert`'s signature under `issuer` (its own key when `None`). A signature algorithm the
/// crypto backend cannot verify (e.g. ECDSA with SHA-512) counts as verified: only a signature
/// that is checked and wrong is an error.
pub(crate) fn signature_ok(
    cert: &X509Certificate<'_>,
    issuer: Option<&SubjectPublicKeyInfo<'_>>,
) -> Result<(), String> {
    match cert.verify_signature(issuer) {
        Ok(()) | Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => Ok(()),
        Err(e) => Err(format!("signature does not verify ({e})")),
    }
}

/// Bit length of a big-endian unsigned integer.
pub(crate) fn bit_len(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_len(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_len(&[0x01]), 1);
        assert_eq!(bit_len(&[0x00]), 0);
        assert_eq!(bit_len(&[]), 0);
    }

    #[test]
    fn cert_bundle_refusals() {
        assert!(
            cert_ders(b"garbage")
                .unwrap_err()
                .contains("no PEM-encoded certificate")
        );
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = cert_ders(key_only.as_bytes()).unwrap_err();
        assert!(err.contains("is a private key"), "{err}");
        assert!(!err.contains("AAAA"));
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            cert_ders(bad.as_bytes())
                .unwrap_err()
                .contains("certificate 1 is not a valid X.509")
        );
    }

    #[test]
    fn key_refusals_name_no_key_material() {
        assert!(
            private_key(b"nothing")
                .unwrap_err()
                .contains("no PEM-encoded private key")
        );
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nQUJD\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(
            private_key(enc.as_bytes())
                .unwrap_err()
                .contains("encrypted")
        );
        let junk = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n";
        let err = private_key(junk.as_bytes()).unwrap_err();
        assert!(err.contains("could not be parsed"), "{err}");
        assert!(!err.contains("U0VDUkVU"));
    }

    #[test]
    fn parses_generated_keys_and_matches() {
        let key = KeyPair::generate().unwrap();
        let parsed = private_key(key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(parsed.der_bytes(), key.der_bytes());
        let two = format!("{}{}", key.serialize_pem(), key.serialize_pem());
        assert!(
            private_key(two.as_bytes())
                .unwrap_err()
                .contains("2 private keys")
        );

        let params = rcgen::CertificateParams::new(vec!["x.test".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let x = parse_cert(cert.der()).unwrap();
        assert!(key_matches(x.public_key(), &key));
        assert!(!key_matches(x.public_key(), &KeyPair::generate().unwrap()));
        assert_eq!(describe_key(x.public_key()), "ECDSA P-256");
        let ders = cert_ders(cert.pem().as_bytes()).unwrap();
        assert_eq!(ders, vec![cert.der().to_vec()]);
        assert_eq!(certs_pem(&ders), cert.pem());
    }
}
