//! What is asked of Vault and what it answers: [`IssueRequest`], [`IssuedCert`] (whose roots,
//! intermediates and chain are read from Vault's `ca_chain`/`issuing_ca`; `Debug` never shows
//! the private key), [`TokenInfo`], and the raw JSON of an issue answer.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::x509;

/// A certificate request to `<pki>/issue/<role>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    pub uri_sans: Vec<String>,
    pub common_name: Option<String>,
    pub ttl: Duration,
}

/// What Vault says about the token in use (`auth/token/lookup-self`, `renew-self`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenInfo {
    /// Remaining lifetime; zero for a token that never expires.
    pub ttl: Duration,
    pub renewable: bool,
}

/// A certificate issued by Vault. `Debug` never shows the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub certificate_pem: String,
    pub private_key_pem: String,
    /// `rsa`, `ec`, ...
    pub private_key_type: String,
    pub issuing_ca_pem: String,
    /// The issuer's chain as Vault returns it (`ca_chain`): intermediate(s), then the root when
    /// the PKI was set up with it.
    pub ca_chain_pem: Vec<String>,
    /// As Vault prints it: lower-case hex bytes separated by `:`.
    pub serial: String,
    /// Unix seconds of `notAfter`, as Vault reports it.
    pub expiration: Option<i64>,
    /// Vault's `warnings`.
    pub warnings: Vec<String>,
    /// How far Vault's clock is from this host's, from the answer's `Date` header (when it had
    /// one).
    pub vault_clock: Option<crate::clock::Skew>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("expiration", &self.expiration)
            .field("private_key_pem", &"<redacted>")
            .field("private_key_type", &self.private_key_type)
            .field("ca_chain_len", &self.ca_chain_pem.len())
            .field("warnings", &self.warnings)
            .field("vault_clock", &self.vault_clock)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The DER of every CA certificate Vault returned (`ca_chain`, then `issuing_ca`), without
    /// duplicates.
    fn ca_ders(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for pem_text in self
            .ca_chain_pem
            .iter()
            .chain(std::iter::once(&self.issuing_ca_pem))
        {
            if let Ok(ders) = x509::pem_to_ders(pem_text) {
                for d in ders {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
            }
        }
        out
    }

    /// The self-signed roots among the CA certificates Vault returned: the trust anchors of the
    /// mesh (PEM, one certificate each). Empty when the PKI was given an intermediate without its
    /// root.
    pub fn root_pems(&self) -> Vec<String> {
        self.ca_ders()
            .into_iter()
            .filter(|d| x509::der_is_self_signed(d))
            .map(|d| x509::der_to_pem(&d))
            .collect()
    }

    /// The CA certificates that are not self-signed roots (PEM, one certificate each).
    pub fn intermediate_pems(&self) -> Vec<String> {
        self.ca_ders()
            .into_iter()
            .filter(|d| !x509::der_is_self_signed(d))
            .map(|d| x509::der_to_pem(&d))
            .collect()
    }

    /// The leaf followed by its intermediates (no root): what a proxy presents.
    pub fn chain_pem(&self) -> String {
        let mut out = self.certificate_pem.trim_end().to_string();
        out.push('\n');
        for p in self.intermediate_pems() {
            out.push_str(p.trim_end());
            out.push('\n');
        }
        out
    }

    /// The leaf's summary.
    pub fn summary(&self) -> Result<x509::CertSummary, x509::X509Error> {
        x509::summarize_pem(&self.certificate_pem)
    }
}

/// Vault's answer to `<pki>/issue/<role>`.
#[derive(Deserialize)]
pub(super) struct IssueAnswer {
    pub data: Option<IssueData>,
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

/// The `data` of [`IssueAnswer`].
#[derive(Deserialize)]
pub(super) struct IssueData {
    pub certificate: String,
    #[serde(default)]
    pub issuing_ca: String,
    #[serde(default)]
    pub ca_chain: Option<Vec<String>>,
    /// Absent from `sign` answers (the key stayed with whoever made the CSR).
    #[serde(default)]
    pub private_key: String,
    #[serde(default)]
    pub private_key_type: String,
    #[serde(default)]
    pub serial_number: String,
    #[serde(default)]
    pub expiration: Option<i64>,
}
