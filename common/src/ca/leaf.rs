//! Proxy (leaf) certificates issued from a CA whose key the control plane holds (builtin or
//! provided), shaped as Kuma's: a fresh EC P-256 key per certificate, empty subject unless a common
//! name is asked for, random 128-bit serial, NotBefore now−10s, key usages digitalSignature,
//! keyEncipherment and keyAgreement, EKU serverAuth + clientAuth, and URI SANs
//! `spiffe://<mesh>/<service>` per `kuma.io/service` value then `kuma://<tag>/<value>` per tag value.
//! [`CaSigner`] parses a CA once and issues many certificates; [`issue_leaf`] is the one-shot form.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use super::material::{cert_ders, certs_pem, key_matches, parse_cert, private_key, signature_ok};
use super::shared::{CaError, CaKeyPair, add_lifetime, fmt_unix, random_serial, serial_hex};
use crate::model::SERVICE_TAG;

/// How far a leaf's NotBefore is set in the past (Kuma's), for clock skew.
const BACKDATE: time::Duration = time::Duration::seconds(10);

/// What to put in a proxy certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    pub mesh: String,
    /// All tags of the proxy, `kuma.io/service` included (see `Dataplane::tags`).
    pub tags: BTreeMap<String, Vec<String>>,
    /// The rendered `commonName` template, if any; the subject is empty otherwise.
    pub common_name: Option<String>,
    pub lifetime: Duration,
    /// `dpCert.uriSans` of the backend.
    pub uri_sans: crate::model::UriSans,
}

/// The URI SANs of a proxy certificate, in a deterministic order: `spiffe://<mesh>/<service>` for
/// each distinct `kuma.io/service` value (sorted), then `kuma://<tag>/<value>` for each tag (sorted)
/// and each of its distinct values (sorted). Shared with the vault backend, which sends them as
/// `uri_sans`.
pub fn leaf_uri_sans(mesh: &str, tags: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    kuma_uri_sans(mesh, tags)
}

/// The URI SANs of a proxy certificate in the backend's style (`dpCert.uriSans`): Kuma's (see
/// [`leaf_uri_sans`]), or for `spiffe` exactly one, the SPIFFE ID `spiffe://<mesh>/<service>` —
/// refused, naming why, for a proxy that registers more than one service (an X.509-SVID carries
/// one SPIFFE ID).
pub fn uri_sans_for(
    style: crate::model::UriSans,
    mesh: &str,
    tags: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, String> {
    match style {
        crate::model::UriSans::Kuma => Ok(kuma_uri_sans(mesh, tags)),
        crate::model::UriSans::Spiffe => {
            let mut services: Vec<&String> = tags.get(SERVICE_TAG).into_iter().flatten().collect();
            services.sort();
            services.dedup();
            match services.as_slice() {
                [one] => Ok(vec![format!("spiffe://{mesh}/{one}")]),
                [] => Err(format!(
                    "no {SERVICE_TAG} tag: an X.509-SVID needs one service"
                )),
                many => Err(format!(
                    "the proxy registers {} values of {SERVICE_TAG} but dpCert.uriSans: spiffe issues X.509-SVIDs, which carry exactly one SPIFFE ID: register one service",
                    many.len()
                )),
            }
        }
    }
}

fn kuma_uri_sans(mesh: &str, tags: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let sorted = |values: &Vec<String>| {
        let mut v = values.clone();
        v.sort();
        v.dedup();
        v
    };
    let mut out = Vec::new();
    if let Some(services) = tags.get(SERVICE_TAG) {
        for s in sorted(services) {
            out.push(format!("spiffe://{mesh}/{s}"));
        }
    }
    for (tag, values) in tags {
        for v in sorted(values) {
            out.push(format!("kuma://{tag}/{v}"));
        }
    }
    out
}

/// Whether `san` is a URI SAN this project may put in a certificate: an RFC 3986 URI of scheme
/// `spiffe` or `kuma`, with a host, a path of segments neither empty nor `.`/`..`, no query and no
/// fragment, made of unreserved characters, `/` and `:` only; a `spiffe` path also without `:`
/// (the SPIFFE ID rules). Tags are validated to this when a proxy registers; this is the last check
/// before a certificate is asked for.
pub fn uri_san_is_valid(san: &str) -> bool {
    let Some((scheme, rest)) = san.split_once("://") else {
        return false;
    };
    let spiffe = scheme == "spiffe";
    if !(spiffe || scheme == "kuma") {
        return false;
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let unreserved = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if host.is_empty() || !host.chars().all(unreserved) || host == "." || host == ".." {
        return false;
    }
    path.is_empty() && !spiffe
        || !path.is_empty()
            && path.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.chars().all(|c| unreserved(c) || (c == ':' && !spiffe))
            })
}

/// A proxy certificate with its key. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedLeaf {
    /// The leaf certificate, then the CA's intermediates (empty for a self-signed CA), PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The CA certificate bundle the leaf chains to (the proxies' trust bundle), PEM.
    pub ca_pem: String,
    /// The serial number, lowercase hex without separators.
    pub serial_hex: String,
    /// Validity, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl IssuedLeaf {
    /// When the certificate should be renewed: at 4/5 of its lifetime, as Kuma does (unix seconds).
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 4 / 5
    }
}

impl fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A CA ready to issue: its certificate and key parsed and checked to match, and its subject
/// checked to be reproducible as the issuer name of the certificates it signs (by issuing and
/// verifying a probe certificate). Cheap to share (`Send + Sync`); `Debug` omits the key.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the bundle's certificates that are not self-signed: sent after the leaf.
    chain_pem: String,
    ca_pem: String,
    ca_subject: String,
    ca_not_before: i64,
    ca_not_after: i64,
}

impl fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaSigner")
            .field("ca_subject", &self.ca_subject)
            .field("ca_not_after", &self.ca_not_after)
            .finish_non_exhaustive()
    }
}

impl CaSigner {
    /// Parses `ca` (the first certificate of `cert_pem` is the issuing CA, the rest its chain),
    /// checks that the key matches it, and issues and verifies a probe certificate.
    pub fn new(ca: &CaKeyPair) -> Result<Self, CaError> {
        let ders = cert_ders(ca.cert_pem.as_bytes()).map_err(CaError::InvalidCaCert)?;
        let key = private_key(ca.key_pem().as_bytes()).map_err(CaError::InvalidCaKey)?;
        let ca_der = &ders[0];
        let ca_cert = parse_cert(ca_der).map_err(CaError::InvalidCaCert)?;
        if !key_matches(ca_cert.public_key(), &key) {
            return Err(CaError::KeyMismatch);
        }
        let mut chain = Vec::new();
        for der in &ders {
            let c = parse_cert(der).map_err(CaError::InvalidCaCert)?;
            if c.subject().as_raw() != c.issuer().as_raw() {
                chain.push(der);
            }
        }
        let issuer = Issuer::from_ca_cert_der(&ca_der.as_slice().into(), key)
            .map_err(|e| CaError::IssuerName(e.to_string()))?;
        let signer = CaSigner {
            issuer,
            chain_pem: certs_pem(chain),
            ca_pem: certs_pem(&ders),
            ca_subject: ca_cert.subject().to_string(),
            ca_not_before: ca_cert.validity().not_before.timestamp(),
            ca_not_after: ca_cert.validity().not_after.timestamp(),
        };
        signer.probe(ca_cert.subject().as_raw(), ca_cert.public_key())?;
        Ok(signer)
    }

    /// Issues one certificate and checks it names the CA as issuer byte for byte and that its
    /// signature verifies under the CA's public key.
    fn probe(
        &self,
        ca_subject_raw: &[u8],
        ca_spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    ) -> Result<(), CaError> {
        let req = LeafRequest {
            mesh: "probe".to_string(),
            tags: BTreeMap::from([(SERVICE_TAG.to_string(), vec!["probe".to_string()])]),
            common_name: None,
            lifetime: Duration::from_secs(60),
            uri_sans: crate::model::UriSans::Kuma,
        };
        let leaf = self.issue(&req)?;
        let ders = cert_ders(leaf.cert_pem.as_bytes()).map_err(CaError::Signing)?;
        let cert = parse_cert(&ders[0]).map_err(CaError::Signing)?;
        if cert.issuer().as_raw() != ca_subject_raw {
            return Err(CaError::IssuerName(format!(
                "CA subject {:?} was re-encoded as {:?}",
                self.ca_subject,
                cert.issuer().to_string()
            )));
        }
        signature_ok(&cert, Some(ca_spki))
            .map_err(|e| CaError::Signing(format!("probe certificate: {e}")))
    }

    /// The CA certificate bundle (trust bundle for proxies), PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA's NotAfter, unix seconds: leaves are never valid beyond it.
    pub fn ca_not_after(&self) -> i64 {
        self.ca_not_after
    }

    /// Issues a proxy certificate for `req` with a new key. NotAfter is `now + lifetime`, cut to
    /// the CA's own NotAfter, so a leaf never outlives its CA.
    pub fn issue(&self, req: &LeafRequest) -> Result<IssuedLeaf, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::KeyGeneration(e.to_string()))?;
        let key_pem = key.serialize_pem();
        self.sign_key(req, &key, key_pem)
    }

    /// Signs a proxy certificate for `req` for the key of a checked CSR (`keyGeneration: proxy`):
    /// the names are `req`'s, never the CSR's. The result has no key (`key_pem` is empty).
    pub fn sign_csr(
        &self,
        req: &LeafRequest,
        csr: &crate::csr::CheckedCsr,
    ) -> Result<IssuedLeaf, CaError> {
        self.sign_key(req, &csr.public_key, String::new())
    }

    fn sign_key(
        &self,
        req: &LeafRequest,
        public_key: &impl rcgen::PublicKeyData,
        key_pem: String,
    ) -> Result<IssuedLeaf, CaError> {
        let now = crate::clock::now_utc();
        let not_before = now - BACKDATE;
        let mut not_after = add_lifetime(now, req.lifetime)?;
        if now.unix_timestamp() < self.ca_not_before {
            return Err(CaError::CaNotYetValid(fmt_unix(self.ca_not_before)));
        }
        if now.unix_timestamp() >= self.ca_not_after {
            return Err(CaError::CaExpired(fmt_unix(self.ca_not_after)));
        }
        if not_after.unix_timestamp() > self.ca_not_after {
            not_after = time::OffsetDateTime::from_unix_timestamp(self.ca_not_after)
                .map_err(|e| CaError::InvalidCaCert(e.to_string()))?;
        }
        if req.tags.get(SERVICE_TAG).is_none_or(|s| s.is_empty()) {
            return Err(CaError::MissingService);
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = req.common_name.as_deref().filter(|cn| !cn.is_empty()) {
            if cn.chars().count() > 64 {
                return Err(CaError::InvalidCommonName {
                    name: cn.to_string(),
                    reason: "longer than 64 characters (the X.509 upper bound)".to_string(),
                });
            }
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = uri_sans_for(req.uri_sans, &req.mesh, &req.tags)
            .map_err(CaError::NotAnSvid)?
            .into_iter()
            .map(|uri| match uri.clone().try_into() {
                Ok(_) if !uri_san_is_valid(&uri) => Err(CaError::InvalidSan {
                    uri,
                    reason: "not a URI this CA signs: a dot segment, a query or fragment, or a character outside letters, digits and . - _ / :".into(),
                }),
                Ok(ia5) => Ok(SanType::URI(ia5)),
                Err(e) => Err(CaError::InvalidSan {
                    uri,
                    reason: rcgen::Error::to_string(&e),
                }),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = not_before;
        params.not_after = not_after;

        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(IssuedLeaf {
            cert_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem,
            ca_pem: self.ca_pem.clone(),
            serial_hex: serial_hex(&serial),
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        })
    }
}

/// Issues one proxy certificate from `ca` (see [`CaSigner::issue`]). To issue many, build a
/// [`CaSigner`] once: it parses the CA key (costly for RSA) and signs a probe certificate.
pub fn issue_leaf(ca: &CaKeyPair, req: &LeafRequest) -> Result<IssuedLeaf, CaError> {
    CaSigner::new(ca)?.issue(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    fn tags(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    fn ec_ca() -> CaKeyPair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "ec-ca");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Org");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let now = crate::clock::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(30);
        let cert = params.self_signed(&key).unwrap();
        CaKeyPair::new(cert.pem(), key.serialize_pem())
    }

    #[test]
    fn uri_sans_are_sorted_deduplicated_and_service_first() {
        let t = tags(&[
            ("version", &["v2", "v1", "v1"]),
            ("kuma.io/service", &["web", "api"]),
            ("kuma.io/zone", &["east"]),
        ]);
        assert_eq!(
            leaf_uri_sans("default", &t),
            vec![
                "spiffe://default/api",
                "spiffe://default/web",
                "kuma://kuma.io/service/api",
                "kuma://kuma.io/service/web",
                "kuma://kuma.io/zone/east",
                "kuma://version/v1",
                "kuma://version/v2",
            ]
        );
    }

    #[test]
    fn a_csr_is_signed_for_its_key_with_the_names_of_the_request() {
        let ca = ec_ca();
        let signer = CaSigner::new(&ca).unwrap();
        let g = crate::csr::generate(crate::model::KeyType::EcP256).unwrap();
        let csr = crate::csr::check(&g.csr_der, crate::model::KeyType::EcP256).unwrap();
        let req = LeafRequest {
            mesh: "m1".into(),
            tags: tags(&[("kuma.io/service", &["web"])]),
            common_name: Some("web.mesh".into()),
            lifetime: Duration::from_secs(600),
            uri_sans: crate::model::UriSans::Spiffe,
        };
        let leaf = signer.sign_csr(&req, &csr).unwrap();
        assert!(leaf.key_pem.is_empty(), "no key leaves the signer");
        assert!(crate::x509::private_key_matches_cert(
            &leaf.cert_pem,
            &g.key_pem
        ));
        let s = crate::x509::summarize_pem(&leaf.cert_pem).unwrap();
        assert_eq!(s.uri_sans, vec!["spiffe://m1/web".to_string()]);
        assert_eq!(s.common_name.as_deref(), Some("web.mesh"));
    }

    #[test]
    fn a_spiffe_style_leaf_is_an_x509_svid() {
        let ca = ec_ca();
        let signer = CaSigner::new(&ca).unwrap();
        let mut req = LeafRequest {
            mesh: "m1".into(),
            tags: tags(&[("kuma.io/service", &["web"]), ("team", &["a"])]),
            common_name: None,
            lifetime: Duration::from_secs(3600),
            uri_sans: crate::model::UriSans::Spiffe,
        };
        let leaf = signer.issue(&req).unwrap();
        let s = crate::x509::summarize_pem(&leaf.cert_pem).unwrap();
        assert_eq!(s.uri_sans, vec!["spiffe://m1/web".to_string()]);
        assert!(!s.is_ca);
        assert!(s.key_usage.unwrap().contains(&"DigitalSignature"));
        // Two services cannot make one SPIFFE ID.
        req.tags = tags(&[("kuma.io/service", &["web", "api"])]);
        let e = signer.issue(&req).unwrap_err();
        assert!(matches!(e, CaError::NotAnSvid(_)), "{e}");
        assert!(e.to_string().contains("exactly one SPIFFE ID"), "{e}");
    }

    #[test]
    fn issues_kuma_shaped_leaf_from_ec_ca() {
        let ca = ec_ca();
        let signer = CaSigner::new(&ca).unwrap();
        let req = LeafRequest {
            mesh: "m1".into(),
            tags: tags(&[("kuma.io/service", &["web"]), ("team", &["a"])]),
            common_name: None,
            lifetime: Duration::from_secs(3600),
            uri_sans: crate::model::UriSans::Kuma,
        };
        let leaf = signer.issue(&req).unwrap();
        assert_eq!(leaf.not_after - leaf.not_before, 3610);
        assert_eq!(leaf.renew_at(), leaf.not_before + 2888);
        assert_eq!(leaf.ca_pem, ca.cert_pem);
        let der = pem::parse(&leaf.cert_pem).unwrap();
        let (_, cert) = X509Certificate::from_der(der.contents()).unwrap();
        assert!(cert.subject().as_raw().len() <= 2, "empty subject");
        assert_eq!(
            hex::encode(cert.raw_serial()).trim_start_matches("00"),
            leaf.serial_hex
        );
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "SAN must be critical with an empty subject");
        let uris: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            uris,
            vec![
                "spiffe://m1/web",
                "kuma://kuma.io/service/web",
                "kuma://team/a"
            ]
        );
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && ku.key_agreement());
        assert!(!ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.is_ca());
        let ca_der = pem::parse(&ca.cert_pem).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(ca_der.contents()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        assert!(!format!("{leaf:?}").contains(&leaf.key_pem));
    }

    #[test]
    fn common_name_and_clamping_and_refusals() {
        let signer = CaSigner::new(&ec_ca()).unwrap();
        let mut req = LeafRequest {
            mesh: "m1".into(),
            tags: tags(&[("kuma.io/service", &["web"])]),
            common_name: Some("web.mesh".into()),
            lifetime: Duration::from_secs(365 * 86_400),
            uri_sans: crate::model::UriSans::Kuma,
        };
        let leaf = signer.issue(&req).unwrap();
        assert_eq!(
            leaf.not_after,
            signer.ca_not_after(),
            "cut to the CA's NotAfter"
        );
        let der = pem::parse(&leaf.cert_pem).unwrap();
        let (_, cert) = X509Certificate::from_der(der.contents()).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=web.mesh");

        req.common_name = Some("x".repeat(65));
        assert!(matches!(
            signer.issue(&req),
            Err(CaError::InvalidCommonName { .. })
        ));
        req.common_name = None;
        req.tags = tags(&[("team", &["a"])]);
        assert_eq!(signer.issue(&req), Err(CaError::MissingService));
        req.tags = tags(&[("kuma.io/service", &["wéb"])]);
        assert!(matches!(
            signer.issue(&req),
            Err(CaError::InvalidSan { .. })
        ));
        req.tags = tags(&[("kuma.io/service", &["web"])]);
        req.lifetime = Duration::ZERO;
        assert!(matches!(
            signer.issue(&req),
            Err(CaError::InvalidLifetime(_))
        ));
    }

    #[test]
    fn mismatched_key_refused() {
        let ca = ec_ca();
        let other = ec_ca();
        let mixed = CaKeyPair::new(ca.cert_pem.clone(), other.key_pem().to_string());
        assert_eq!(CaSigner::new(&mixed).unwrap_err(), CaError::KeyMismatch);
    }

    #[test]
    fn signer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CaSigner>();
    }
}
