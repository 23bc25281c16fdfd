//! An operator's own PKI, made the way an operator would with rcgen: a root CA and a server
//! certificate it signs for the names asked, written to PEM files — what the tests of
//! `global run --api-tls-cert` and `zone run --dp-tls-cert` serve instead of the generated
//! identities, and what their clients trust.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files of one operator PKI.
#[derive(Debug, Clone)]
pub struct OperatorPki {
    /// The root CA (`<prefix>-ca.pem`): what clients are given to trust.
    pub ca: PathBuf,
    /// The server certificate (`<prefix>-cert.pem`).
    pub cert: PathBuf,
    /// Its key (`<prefix>-key.pem`, 0600).
    pub key: PathBuf,
}

impl OperatorPki {
    /// A new root CA named `common_name` and a server certificate for `names` (DNS names or IP
    /// addresses), subject `<common_name> server`, written to `dir/<prefix>-{ca,cert,key}.pem`.
    pub fn create(dir: &Path, prefix: &str, common_name: &str, names: &[&str]) -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, common_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        leaf.distinguished_name
            .push(DnType::CommonName, format!("{common_name} server"));
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf.signed_by(&key, &issuer)?;
        std::fs::create_dir_all(dir)?;
        let pki = Self {
            ca: dir.join(format!("{prefix}-ca.pem")),
            cert: dir.join(format!("{prefix}-cert.pem")),
            key: dir.join(format!("{prefix}-key.pem")),
        };
        std::fs::write(&pki.ca, ca_cert.pem())?;
        std::fs::write(&pki.cert, cert.pem())?;
        crate::proc::write_private(&pki.key, key.serialize_pem().as_bytes())?;
        Ok(pki)
    }

    /// The CA's PEM.
    pub fn ca_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.ca)?)
    }
}
