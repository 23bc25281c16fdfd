//! The `builtin` backend: global generates a self-signed RSA root per mesh and backend when the Mesh
//! is created, as Kuma does (CN = mesh name, URI SAN `spiffe://<mesh>`, keyCertSign + cRLSign), but
//! with a random serial instead of Kuma's 0. The pair is stored as the mesh Secrets named by
//! [`builtin_secret_names`] and reaches zones through the sync stream.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    RsaKeySize, SanType, SerialNumber,
};

use super::shared::{CaError, CaKeyPair, add_lifetime, random_serial};
use crate::model::BuiltinConf;

/// Lifetime of a builtin CA when `conf.caCert.expiration` is not set: 10 years (Kuma's).
pub const DEFAULT_CA_EXPIRATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// RSA key size of a builtin CA when `conf.caCert.RSAbits` is not set (Kuma's).
pub const DEFAULT_RSA_BITS: u32 = 2048;

/// The RSA key sizes a builtin CA can be generated with.
pub const SUPPORTED_RSA_BITS: [u32; 3] = [2048, 3072, 4096];

/// How far NotBefore is set in the past, for clock skew between control planes and proxies.
const BACKDATE: time::Duration = time::Duration::minutes(1);

/// The names of the Secrets (in the same mesh) holding a builtin CA's certificate and key:
/// `<mesh>.ca-builtin-cert-<backend>` and `<mesh>.ca-builtin-key-<backend>`, as Kuma names them.
pub fn builtin_secret_names(mesh: &str, backend: &str) -> (String, String) {
    (
        format!("{mesh}.ca-builtin-cert-{backend}"),
        format!("{mesh}.ca-builtin-key-{backend}"),
    )
}

fn rsa_key_size(bits: u32) -> Result<RsaKeySize, CaError> {
    match bits {
        2048 => Ok(RsaKeySize::_2048),
        3072 => Ok(RsaKeySize::_3072),
        4096 => Ok(RsaKeySize::_4096),
        other => Err(CaError::UnsupportedRsaBits(other)),
    }
}

/// Generates the self-signed root CA of a builtin backend of `mesh`: RSA (`conf.caCert.RSAbits`,
/// default 2048), SHA-256 signature, CN = mesh, URI SAN `spiffe://<mesh>`, CA:TRUE, key usages
/// keyCertSign, cRLSign and digitalSignature, a random positive 128-bit serial, valid from one
/// minute ago for `conf.caCert.expiration` (default 10 years). The key is PKCS#8 PEM.
///
/// RSA key generation is slow (tens of milliseconds for 2048 bits, up to seconds for 4096): call it
/// from a blocking context.
pub fn generate_builtin_ca(mesh: &str, conf: &BuiltinConf) -> Result<CaKeyPair, CaError> {
    let ca_cert = conf.ca_cert.clone().unwrap_or_default();
    let key_size = rsa_key_size(ca_cert.rsa_bits.unwrap_or(DEFAULT_RSA_BITS))?;
    let lifetime = ca_cert
        .expiration
        .map(|e| e.as_duration())
        .unwrap_or(DEFAULT_CA_EXPIRATION);
    let now = crate::clock::now_utc();
    let not_after = add_lifetime(now, lifetime)?;

    let spiffe = format!("spiffe://{mesh}");
    let uri = spiffe
        .clone()
        .try_into()
        .map_err(|e: rcgen::Error| CaError::InvalidSan {
            uri: spiffe,
            reason: e.to_string(),
        })?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, mesh);
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.not_before = now - BACKDATE;
    params.not_after = not_after;

    let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, key_size)
        .map_err(|e| CaError::KeyGeneration(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Signing(e.to_string()))?;
    Ok(CaKeyPair::new(cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;
    use crate::model::BuiltinCaCert;
    use x509_parser::prelude::{FromDer, X509Certificate};

    #[test]
    fn secret_names_follow_kuma() {
        assert_eq!(
            builtin_secret_names("default", "ca-1"),
            (
                "default.ca-builtin-cert-ca-1".to_string(),
                "default.ca-builtin-key-ca-1".to_string()
            )
        );
    }

    #[test]
    fn refuses_unsupported_rsa_bits_before_generating() {
        for bits in [0, 1024, 2047, 8192] {
            let conf = BuiltinConf {
                ca_cert: Some(BuiltinCaCert {
                    expiration: None,
                    rsa_bits: Some(bits),
                }),
            };
            assert_eq!(
                generate_builtin_ca("m", &conf),
                Err(CaError::UnsupportedRsaBits(bits))
            );
        }
        for bits in SUPPORTED_RSA_BITS {
            assert!(rsa_key_size(bits).is_ok());
        }
    }

    #[test]
    fn refuses_absurd_expiration() {
        let conf = BuiltinConf {
            ca_cert: Some(BuiltinCaCert {
                expiration: Some(HumanDuration::from_duration(Duration::from_secs(
                    8000 * 365 * 86_400,
                ))),
                rsa_bits: None,
            }),
        };
        assert!(matches!(
            generate_builtin_ca("m", &conf),
            Err(CaError::InvalidLifetime(_))
        ));
    }

    #[test]
    fn default_ca_shape() {
        let pair = generate_builtin_ca("default", &BuiltinConf::default()).unwrap();
        assert!(pair.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let der = pem::parse(&pair.cert_pem).unwrap();
        let (_, cert) = X509Certificate::from_der(der.contents()).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=default");
        assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
        assert!(cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert!(!ku.key_agreement());
        let v = cert.validity();
        let life = v.not_after.timestamp() - v.not_before.timestamp();
        assert_eq!(life, DEFAULT_CA_EXPIRATION.as_secs() as i64 + 60);
        assert_eq!(
            super::super::material::describe_key(cert.public_key()),
            "RSA 2048"
        );
        assert_eq!(
            cert.raw_serial().len(),
            17,
            "128-bit serial with a leading zero octet"
        );
        cert.verify_signature(None).unwrap();
    }
}
