//! The backend check: the test certificate of the reference page ("Kong Mesh validates the
//! connection by issuing a test certificate"), extended. [`check_backend`] resolves the conf,
//! reaches Vault, authenticates and issues a certificate for [`CHECK_SERVICE`];
//! [`inspect_test_certificate`] (pure, fuzzed) refuses a backend whose certificates would
//! silently be shorter than `dpCert.rotation.expiration`, lack serverAuth/clientAuth or the
//! requested URI SANs, or do not chain to a self-signed root that Vault returns, and warns when
//! they lack a Key Usage extension. Every outcome is a step of the [`VaultCheckReport`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::client::{AuthMode, VaultIssuer};
use super::error::VaultError;
use super::issued::{IssueRequest, IssuedCert};
use super::timeouts::Timeouts;
use crate::datasource::SecretLookup;
use crate::model::{Backend, BackendConf, KeyGeneration, SERVICE_TAG};
use crate::x509;

/// The service name of the test certificate issued by [`check_backend`].
pub const CHECK_SERVICE: &str = "kmesh-ca-check";

/// One step of [`check_backend`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    /// The backend field to blame when the step failed (e.g. `conf.fromCp.role`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The outcome of [`check_backend`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VaultCheckReport {
    pub mesh: String,
    pub backend: String,
    pub ok: bool,
    pub checks: Vec<CheckResult>,
    pub warnings: Vec<String>,
    /// The check failed because Vault could not be reached or is not serving (exit code 3).
    pub unreachable: bool,
    /// Serial of the test certificate, when one was issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl VaultCheckReport {
    pub fn new(mesh: &str, backend: &str) -> Self {
        Self {
            mesh: mesh.to_string(),
            backend: backend.to_string(),
            ok: true,
            checks: Vec::new(),
            warnings: Vec::new(),
            unreachable: false,
            serial: None,
        }
    }

    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.checks.push(CheckResult {
            name: name.to_string(),
            passed: true,
            detail: detail.into(),
            field: None,
        });
    }

    fn fail(&mut self, name: &str, detail: impl Into<String>, field: Option<String>) {
        self.ok = false;
        self.checks.push(CheckResult {
            name: name.to_string(),
            passed: false,
            detail: detail.into(),
            field,
        });
    }

    fn fail_err(&mut self, name: &str, err: &VaultError) {
        if err.is_unreachable() {
            self.unreachable = true;
        }
        self.fail(name, err.to_string(), err.field());
    }

    /// The failed steps.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// One line: what failed (each failed step's detail), or that the test certificate was
    /// issued and checked.
    pub fn summary(&self) -> String {
        let prefix = format!("vault backend {:?} of mesh {:?}", self.backend, self.mesh);
        if self.ok {
            let serial = self.serial.as_deref().unwrap_or("?");
            let mut s = format!("{prefix}: test certificate {serial} issued and checked");
            if !self.warnings.is_empty() {
                s.push_str(&format!(
                    " ({} warning(s): {})",
                    self.warnings.len(),
                    self.warnings.join("; ")
                ));
            }
            s
        } else {
            let reasons: Vec<String> = self
                .failures()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            format!("{prefix} refused: {}", reasons.join("; "))
        }
    }
}

/// `720h`, `90m`, `45s`.
fn human(secs: i64) -> String {
    if secs != 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// The key usages a proxy certificate should carry, in the spelling OpenBao honours.
pub const SUGGESTED_KEY_USAGE: &str = "DigitalSignature,KeyEncipherment,KeyAgreement";

/// Slack allowed between the requested and the issued lifetime (clock, rounding).
const LIFETIME_SLACK_SECS: i64 = 90;

/// Checks a vault backend of `mesh` the way Kong Mesh did on create/update, and more: resolves
/// its conf, reaches Vault (`sys/health`), authenticates, issues a test certificate for the
/// service [`CHECK_SERVICE`] with the URI SANs `spiffe://<mesh>/<svc>` and
/// `kuma://kuma.io/service/<svc>`, the `commonName` template rendered with
/// `{kuma.io/service: <svc>}`, and the TTL `dpCert.rotation.expiration`, then checks that
/// certificate:
///
/// - `clock skew`: Vault's clock (the `Date` of its answer) and this host's agree within
///   [`crate::clock::SKEW_TOLERANCE_MS`]; else the check fails naming the figure (a zone whose
///   clock is off would read every certificate as expired or not valid yet);
/// - `lifetime`: Vault silently truncates a TTL above the role's `max_ttl` (or the mount's
///   max-lease-ttl) and only warns; a shorter certificate than asked is refused, naming both;
/// - `extendedKeyUsage`: serverAuth and clientAuth (role flags `server_flag`, `client_flag`);
/// - `uriSans`: every requested URI SAN is present; `commonName`: the rendered name, if any;
/// - `chain`: the leaf verifies through Vault's `ca_chain`/`issuing_ca` up to a self-signed root
///   that Vault returns. That root is what proxies trust, so a PKI given an intermediate without
///   its root (the page's `bundle.pem` concatenates them for this reason) is refused: there would
///   be no trust anchor to hand out;
/// - `keyUsage`: a certificate without a Key Usage extension passes with a warning (the page's
///   `KeyUsage*` spellings are accepted but ignored by OpenBao).
///
/// The `auth` step logs in (`auth.tls`, `auth.approle`, `auth.jwt`, inside the namespace); a
/// refused login fails it with Vault's reason, blaming `conf.fromCp.auth.<method>`. The token of
/// that login is revoked when the check ends.
///
/// Vault's own warnings are passed through. Every request is bounded by `timeouts`. Never
/// panics; every outcome is in the report.
pub async fn check_backend(
    mesh: &str,
    backend: &Backend,
    secrets: &dyn SecretLookup,
    timeouts: Timeouts,
) -> VaultCheckReport {
    let mut report = VaultCheckReport::new(mesh, &backend.name);
    if let Some(issuer) = check_steps(&mut report, mesh, backend, secrets, timeouts).await {
        issuer.revoke_login().await;
    }
    report
}

/// The steps of [`check_backend`]; the client, once one was built.
async fn check_steps(
    report: &mut VaultCheckReport,
    mesh: &str,
    backend: &Backend,
    secrets: &dyn SecretLookup,
    timeouts: Timeouts,
) -> Option<VaultIssuer> {
    // conf
    let from_cp = match backend.typed_conf() {
        Ok(BackendConf::Vault(v)) => match v.from_cp {
            Some(f) => f,
            None => {
                report.fail(
                    "conf",
                    "conf.fromCp must be set",
                    Some("conf.fromCp".to_string()),
                );
                return None;
            }
        },
        Ok(_) => {
            report.fail(
                "conf",
                format!("backend type is {:?}, not vault", backend.type_),
                Some("type".to_string()),
            );
            return None;
        }
        Err(e) => {
            let field = if e.path.is_empty() {
                "conf".to_string()
            } else {
                format!("conf.{}", e.path)
            };
            report.fail("conf", format!("{field}: {}", e.reason), Some(field));
            return None;
        }
    };
    let issuer = match VaultIssuer::from_conf(mesh, &from_cp, secrets, timeouts) {
        Ok(i) => i,
        Err(e) => {
            report.fail_err("conf", &e);
            return None;
        }
    };
    report.pass(
        "conf",
        format!(
            "data sources resolved; requests go to {}{}",
            issuer.address(),
            issuer
                .namespace()
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default()
        ),
    );

    // connect
    match issuer.health().await {
        Ok(state) => report.pass(
            "connect",
            format!("Vault at {} is {state}", issuer.address()),
        ),
        Err(e) => {
            report.fail_err("connect", &e);
            return Some(issuer);
        }
    }

    // auth
    match issuer.auth {
        AuthMode::Cert | AuthMode::AppRole | AuthMode::Jwt => match issuer.login().await {
            Ok(lease) => report.pass("auth", login_detail(&issuer, lease)),
            Err(e) => {
                report.fail_err("auth", &e);
                return Some(issuer);
            }
        },
        AuthMode::Token => report.pass(
            "auth",
            "token from conf.fromCp.auth.token (its policy is checked by the test issue)",
        ),
        AuthMode::Agent => report.pass(
            "auth",
            format!("the Vault Agent at {} adds its own token", issuer.address()),
        ),
    }

    // issue
    let svc = CHECK_SERVICE;
    let mut tags = BTreeMap::new();
    tags.insert(SERVICE_TAG.to_string(), svc.to_string());
    let common_name = match issuer.render_common_name(&tags) {
        Ok(cn) => cn,
        Err(e) => {
            report.fail_err("issue", &e);
            return Some(issuer);
        }
    };
    let ttl = backend.dp_cert_expiration();
    let style = backend.uri_sans();
    let req = IssueRequest {
        uri_sans: crate::ca::uri_sans_for(
            style,
            mesh,
            &BTreeMap::from([(SERVICE_TAG.to_string(), vec![svc.to_string()])]),
        )
        .unwrap_or_default(),
        common_name: common_name.clone(),
        ttl,
    };
    let started = crate::clock::now_unix();
    let cert = match backend.key_generation() {
        KeyGeneration::ControlPlane => issuer.issue(&req).await,
        // Keys made on the proxy: Vault signs a CSR (the token needs `sign`, not `issue`).
        KeyGeneration::Proxy => {
            let key_type = backend.key_type();
            let made = match crate::csr::generate(key_type) {
                Ok(m) => m,
                Err(e) => {
                    report.fail("issue", e.to_string(), None);
                    return Some(issuer);
                }
            };
            let csr_pem = crate::csr::pem_of(&made.csr_der);
            match issuer.sign(&req, &csr_pem).await {
                Ok(mut c) => {
                    // Checked below like an issued certificate, with the key made here.
                    c.private_key_pem = made.key_pem;
                    Ok(c)
                }
                Err(e) => {
                    let text = e.to_string();
                    if text.contains("requires keys of type") {
                        report.fail(
                            "issue",
                            format!(
                                "{text}: proxies make {} keys (dpCert.keyType); set key_type=\"any\" (or the matching type) on role {} of {}, or change dpCert.keyType",
                                key_type.as_str(),
                                issuer.role(),
                                issuer.pki()
                            ),
                            Some("dpCert.keyType".to_string()),
                        );
                        return Some(issuer);
                    }
                    Err(e)
                }
            }
        }
    };
    let cert = match cert {
        Ok(c) => c,
        Err(e) => {
            report.fail_err("issue", &e);
            return Some(issuer);
        }
    };
    inspect_test_certificate(report, &issuer, &req, &cert, started, style);
    Some(issuer)
}

/// What the `auth` step says of a login: where, with what, and the token it gave.
fn login_detail(issuer: &VaultIssuer, lease: Option<super::login::Lease>) -> String {
    let mount = issuer.login_mount().unwrap_or_default();
    let with = match issuer.auth {
        AuthMode::Cert => "the client certificate".to_string(),
        AuthMode::AppRole => "the role ID and secret ID of auth.approle".to_string(),
        AuthMode::Jwt => format!(
            "the JWT of auth.jwt as role {}",
            issuer.login_role().unwrap_or_default()
        ),
        AuthMode::Token | AuthMode::Agent => String::new(),
    };
    let ns = issuer
        .namespace()
        .map(|n| format!(" in namespace {n}"))
        .unwrap_or_default();
    let token = match lease {
        Some(l) if l.ttl.is_zero() => " (a token that does not expire)".to_string(),
        Some(l) => format!(
            " (a token for {}, {})",
            human(l.ttl.as_secs() as i64),
            if l.renewable {
                "renewable"
            } else {
                "not renewable"
            }
        ),
        None => String::new(),
    };
    format!("logged in at auth/{mount}/login{ns} with {with}{token}")
}

/// The checks of a test certificate Vault issued for `req` (asked at unix `started`): parses,
/// key matches, lifetime as asked, extended key usages, URI SANs, common name, chain to a
/// self-signed root Vault returned, Key Usage present. Pure (no I/O), so that hostile answers
/// can be fuzzed.
pub fn inspect_test_certificate(
    report: &mut VaultCheckReport,
    issuer: &VaultIssuer,
    req: &IssueRequest,
    cert: &IssuedCert,
    started: i64,
    style: crate::model::UriSans,
) {
    let ttl = req.ttl;
    let common_name = &req.common_name;
    report.serial = Some(cert.serial.clone());
    report
        .warnings
        .extend(cert.warnings.iter().map(|w| format!("Vault: {w}")));
    let summary = match cert.summary() {
        Ok(s) => s,
        Err(e) => {
            report.fail(
                "issue",
                format!("Vault returned a certificate that cannot be parsed: {e}"),
                None,
            );
            return;
        }
    };
    if !x509::private_key_matches_cert(&cert.certificate_pem, &cert.private_key_pem) {
        report.fail(
            "issue",
            "Vault returned a private key that does not belong to the certificate",
            None,
        );
        return;
    }
    report.pass(
        "issue",
        // A `sign` answer carries no key type: the key was made here.
        if cert.private_key_type.is_empty() {
            format!(
                "test CSR ({}) signed by {}",
                summary.key_algorithm,
                issuer.sign_path()
            )
        } else {
            format!(
                "test certificate {} ({}) issued from {}",
                cert.serial,
                summary.key_algorithm,
                issuer.issue_path()
            )
        },
    );

    // clock skew: Vault's clock (its answer's Date header) against this host's. A host whose
    // clock is off would otherwise read a good certificate as too short, or not valid yet.
    let leeway = crate::clock::LEEWAY.as_secs() as i64;
    let vault_started = match cert.vault_clock {
        Some(skew) if skew.is_notable() => {
            report.fail("clock skew", skew.describe("Vault"), None);
            return;
        }
        Some(skew) => {
            report.pass(
                "clock skew",
                format!(
                    "{} (Vault's is {}{})",
                    skew.describe("Vault"),
                    if skew.ms < 0 { "-" } else { "+" },
                    crate::clock::human_ms(skew.ms)
                ),
            );
            started + skew.ms.div_euclid(1000)
        }
        None if summary.not_before > started + leeway || summary.not_after <= started => {
            report.fail(
                "clock skew",
                format!(
                    "the test certificate is valid from {} to {} but this host's clock says {}: this host's clock and Vault's disagree (fix the clocks, e.g. with NTP)",
                    crate::clock::rfc3339(summary.not_before).unwrap_or_default(),
                    crate::clock::rfc3339(summary.not_after).unwrap_or_default(),
                    crate::clock::rfc3339(started).unwrap_or_default(),
                ),
                None,
            );
            return;
        }
        None => {
            report.pass(
                "clock skew",
                "Vault's answer had no Date header; its certificate is valid by this host's clock",
            );
            started
        }
    };

    // lifetime
    let asked = ttl.as_secs() as i64;
    let got = summary.not_after - vault_started;
    if got + LIFETIME_SLACK_SECS < asked {
        let vault_said: Vec<&String> = cert
            .warnings
            .iter()
            .filter(|w| w.contains("TTL") || w.to_lowercase().contains("ttl"))
            .collect();
        let mut detail = format!(
            "Vault issued a certificate valid for {} but dpCert.rotation.expiration asks for {}: the role's max_ttl (or the PKI mount's max-lease-ttl) is lower; raise max_ttl on role {} of {} or lower the expiration",
            human(round_lifetime(got)),
            human(asked),
            issuer.role(),
            issuer.pki()
        );
        if !vault_said.is_empty() {
            let texts: Vec<&str> = vault_said.iter().map(|s| s.as_str()).collect();
            detail.push_str(&format!(" (Vault said: {})", texts.join("; ")));
        }
        report.fail(
            "lifetime",
            detail,
            Some("dpCert.rotation.expiration".to_string()),
        );
    } else {
        report.pass("lifetime", format!("valid for {} as asked", human(asked)));
    }

    // extendedKeyUsage
    let mut missing = Vec::new();
    if !summary.server_auth {
        missing.push(("serverAuth", "server_flag=true"));
    }
    if !summary.client_auth {
        missing.push(("clientAuth", "client_flag=true"));
    }
    if missing.is_empty() {
        report.pass("extendedKeyUsage", "serverAuth and clientAuth");
    } else {
        let names: Vec<&str> = missing.iter().map(|m| m.0).collect();
        let fixes: Vec<&str> = missing.iter().map(|m| m.1).collect();
        report.fail(
            "extendedKeyUsage",
            format!(
                "the test certificate lacks the extended key usage {}: proxies need both serverAuth and clientAuth for mTLS; set {} on role {} of {}",
                names.join(" and "),
                fixes.join(" "),
                issuer.role(),
                issuer.pki()
            ),
            Some("conf.fromCp.role".to_string()),
        );
    }

    // uriSans
    let absent: Vec<&String> = req
        .uri_sans
        .iter()
        .filter(|u| !summary.uri_sans.contains(u))
        .collect();
    let extra: Vec<&String> = summary
        .uri_sans
        .iter()
        .filter(|u| !req.uri_sans.contains(u))
        .collect();
    if style == crate::model::UriSans::Spiffe && absent.is_empty() && !extra.is_empty() {
        report.fail(
            "uriSans",
            format!(
                "dpCert.uriSans: spiffe needs exactly one URI SAN, the SPIFFE ID {:?}, but Vault added {extra:?}: remove them from role {} of {} (allowed_uri_sans_template, or the role's default URI SANs)",
                req.uri_sans.first().map(String::as_str).unwrap_or(""),
                issuer.role(),
                issuer.pki()
            ),
            Some("conf.fromCp.role".to_string()),
        );
    } else if absent.is_empty() {
        report.pass("uriSans", req.uri_sans.join(", "));
    } else if cert.private_key_type.is_empty() {
        // A signed CSR (keyGeneration: proxy): a role that takes names from CSRs ignores ours.
        report.fail(
            "uriSans",
            format!(
                "Vault signed the test CSR without the URI SANs asked for {absent:?} (it has {:?}): with dpCert.keyGeneration: proxy the names come from the request, never from the proxy's CSR; set use_csr_sans=false and use_csr_common_name=false on role {} of {}",
                summary.uri_sans,
                issuer.role(),
                issuer.pki()
            ),
            Some("conf.fromCp.role".to_string()),
        );
    } else {
        report.fail(
            "uriSans",
            format!(
                "Vault issued the test certificate without the URI SANs {absent:?} (it has {:?}); check role {} of {}",
                summary.uri_sans, issuer.role(), issuer.pki()
            ),
            Some("conf.fromCp.role".to_string()),
        );
    }

    // commonName
    if let Some(cn) = &common_name {
        if summary.common_name.as_deref() == Some(cn.as_str()) {
            report.pass("commonName", cn.clone());
        } else {
            report.fail(
                "commonName",
                format!(
                    "asked for common name {cn:?}, Vault issued {:?}",
                    summary.common_name.as_deref().unwrap_or("")
                ),
                Some("conf.fromCp.commonName".to_string()),
            );
        }
    }

    // chain
    let roots = cert.root_pems();
    if roots.is_empty() {
        report.fail(
            "chain",
            format!(
                "the CA chain Vault returns for {} has no self-signed root certificate, so proxies would have no trust anchor; set the signed intermediate together with its root (bundle.pem = intermediate + root, vault write {}/intermediate/set-signed certificate=@bundle.pem)",
                issuer.pki(), issuer.pki()
            ),
            Some("conf.fromCp.pki".to_string()),
        );
    } else {
        let inters = cert.intermediate_pems();
        let inter_refs: Vec<&str> = inters.iter().map(String::as_str).collect();
        let root_refs: Vec<&str> = roots.iter().map(String::as_str).collect();
        match x509::verify_chain_pem(&cert.certificate_pem, &inter_refs, &root_refs) {
            Ok(()) => report.pass(
                "chain",
                format!(
                    "verifies through {} intermediate(s) to a self-signed root",
                    inters.len()
                ),
            ),
            Err(e) => report.fail(
                "chain",
                format!("the test certificate does not verify to the CA Vault returns: {e}"),
                Some("conf.fromCp.pki".to_string()),
            ),
        }
    }

    // keyUsage; for X.509-SVIDs (dpCert.uriSans: spiffe) digitalSignature and no CA are required,
    // as SPIFFE clients refuse anything else.
    let digital_signature = summary
        .key_usage
        .as_ref()
        .is_some_and(|ku| ku.contains(&"DigitalSignature"));
    if style == crate::model::UriSans::Spiffe {
        if summary.is_ca {
            report.fail(
                "svid",
                format!(
                    "dpCert.uriSans: spiffe issues X.509-SVIDs, which must not be CA certificates, but role {} of {} issued one",
                    issuer.role(),
                    issuer.pki()
                ),
                Some("conf.fromCp.role".to_string()),
            );
        } else if !digital_signature {
            report.fail(
                "svid",
                format!(
                    "dpCert.uriSans: spiffe issues X.509-SVIDs, which SPIFFE clients accept only with the digitalSignature key usage, but the test certificate has {}: set key_usage=\"{SUGGESTED_KEY_USAGE}\" on role {} of {} (OpenBao ignores names spelled KeyUsage*, as in the reference page's role)",
                    summary
                        .key_usage
                        .as_ref()
                        .map_or("no Key Usage extension".to_string(), |k| format!("key usage {}", k.join(", "))),
                    issuer.role(),
                    issuer.pki()
                ),
                Some("conf.fromCp.role".to_string()),
            );
        } else {
            report.pass(
                "svid",
                "an X.509-SVID: one URI SAN (the SPIFFE ID), digitalSignature, not a CA",
            );
        }
    }
    match &summary.key_usage {
        Some(ku) => report.pass("keyUsage", ku.join(", ")),
        None if style == crate::model::UriSans::Spiffe => {}
        None => {
            let w = format!(
                "the test certificate has no Key Usage extension: OpenBao ignores key_usage names spelled KeyUsage* (as in the reference page's role); set key_usage=\"{SUGGESTED_KEY_USAGE}\" on role {} of {}",
                issuer.role(),
                issuer.pki()
            );
            report.pass("keyUsage", format!("warning: {w}"));
            report.warnings.push(w);
        }
    }
}

/// Rounds an issued lifetime (measured from when the request started) to the nearest minute so
/// that `720h` reads as `720h`, not `719h59m58s`.
fn round_lifetime(secs: i64) -> i64 {
    ((secs + 30) / 60) * 60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(720 * 3600), "720h");
        assert_eq!(human(90 * 60), "90m");
        assert_eq!(human(45), "45s");
        assert_eq!(human(round_lifetime(720 * 3600 - 3)), "720h");
    }
}
