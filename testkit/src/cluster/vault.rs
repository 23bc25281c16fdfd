//! OpenBao set up with the reference page's Vault steps ([`Vault`]: PKI mount, root or
//! intermediate CA, role, policy, token; again after a restart) and the Meshes of the page as
//! YAML: vault backend (with its token Secret), builtin, provided.

use anyhow::{Context, Result};
use base64::Engine;

use crate::openbao::seed::{self, RoleOptions};
use crate::openbao::{BaoCli, BaoServer};

pub const MESH: &str = "default";
pub const PKI: &str = "kmesh-pki-default";
pub const ROLE: &str = "dataplane-proxies";

/// OpenBao set up with the reference page's steps.
pub struct Vault {
    pub server: BaoServer,
    /// The token of step 4 (policy `kmesh-default-dataplane-proxies`).
    pub token: String,
    /// The root CA certificate (what proxies' chains verify to).
    pub root_pem: String,
    intermediate: bool,
    ec_role: bool,
    token_id: Option<String>,
}

impl Vault {
    pub async fn start(intermediate: bool, ec_role: bool) -> Result<Self> {
        Self::start_with(intermediate, ec_role, None).await
    }

    pub async fn start_with(
        intermediate: bool,
        ec_role: bool,
        token_id: Option<String>,
    ) -> Result<Self> {
        let server = BaoServer::start().await.context("starting OpenBao")?;
        let admin = server.admin();
        let tid = token_id.clone();
        let (token, root_pem) = tokio::task::spawn_blocking(move || {
            Self::configure(&admin, intermediate, ec_role, tid.as_deref())
        })
        .await??;
        Ok(Self {
            server,
            token,
            root_pem,
            intermediate,
            ec_role,
            token_id,
        })
    }

    /// The page's steps 1–4 against a (fresh) server. Returns (token, root PEM).
    pub fn configure(
        cli: &BaoCli,
        intermediate: bool,
        ec_role: bool,
        token_id: Option<&str>,
    ) -> Result<(String, String)> {
        let root_pem = if intermediate {
            seed::setup_intermediate_ca(cli, MESH, PKI, "pki")?
        } else {
            seed::setup_root_ca(cli, MESH, PKI)?
        };
        let opts = if ec_role {
            RoleOptions::seed_ec(MESH)
        } else {
            RoleOptions::seed(MESH)
        };
        seed::create_role(cli, PKI, ROLE, &opts)?;
        let token = match token_id {
            None => seed::create_policy_and_token(cli, MESH, PKI, ROLE)?,
            Some(id) => {
                let policy = seed::write_policy(cli, MESH, PKI, ROLE)?;
                let out = cli.run_json(&[
                    "token",
                    "create",
                    "-format=json",
                    &format!("-id={id}"),
                    &format!("-policy={policy}"),
                ])?;
                out["auth"]["client_token"]
                    .as_str()
                    .context("no auth.client_token from `token create`")?
                    .to_string()
            }
        };
        Ok((token, root_pem))
    }

    /// After `server.stop()`: the server again on the same address, and — since a dev server
    /// keeps nothing — the page's steps again (a new root CA; the same token when `token_id` was
    /// set). Returns the new root CA.
    pub async fn start_again(&mut self) -> Result<String> {
        self.server
            .start_again()
            .await
            .context("restarting OpenBao")?;
        let admin = self.server.admin();
        let (intermediate, ec_role, tid) = (self.intermediate, self.ec_role, self.token_id.clone());
        let (token, root_pem) = tokio::task::spawn_blocking(move || {
            Self::configure(&admin, intermediate, ec_role, tid.as_deref())
        })
        .await??;
        self.token = token;
        self.root_pem = root_pem.clone();
        Ok(root_pem)
    }

    pub fn addr(&self) -> String {
        self.server.addr()
    }

    /// Readies the role for `dpCert.keyGeneration: proxy` ([`Self::names_from_requests`]) and
    /// returns a token allowed only to sign CSRs with it ([`Self::sign_policy_token`]).
    pub fn sign_only(&self) -> Result<String> {
        self.names_from_requests()?;
        self.sign_policy_token()
    }

    /// Has the role take a signed certificate's names from the request, never from the CSR
    /// (`use_csr_sans=false`, `use_csr_common_name=false`; both default to true).
    pub fn names_from_requests(&self) -> Result<()> {
        self.server.admin().run(&[
            "patch",
            &format!("{PKI}/roles/{ROLE}"),
            "use_csr_sans=false",
            "use_csr_common_name=false",
        ])?;
        Ok(())
    }

    /// A token whose policy allows only `<pki>/sign/<role>`.
    pub fn sign_policy_token(&self) -> Result<String> {
        let admin = self.server.admin();
        let policy = format!(
            "path \"{PKI}/sign/{ROLE}\" {{\n  capabilities = [\"create\", \"update\"]\n}}\n"
        );
        admin.run_stdin(
            &["policy", "write", "kmesh-sign-only", "-"],
            policy.as_bytes(),
        )?;
        Ok(crate::openbao::seed::create_token(
            &admin,
            &["kmesh-sign-only"],
        )?)
    }
}

/// The page's Universal Mesh `default` with a vault backend, as YAML (the page's comments kept):
/// [`VaultMesh::new`] gives the page's values (mount [`PKI`], role [`ROLE`], token from Secret
/// `token-1`, no `tls.caCert`), the setters change one of them.
#[derive(Debug, Clone)]
pub struct VaultMesh<'a> {
    pub address: &'a str,
    pub expiration: &'a str,
    pub pki: &'a str,
    pub role: &'a str,
    /// The YAML of the token data source (e.g. `secret: token-1`).
    pub auth_token: &'a str,
    /// The Secret holding `tls.caCert`, if any.
    pub ca_cert_secret: Option<&'a str>,
}

impl<'a> VaultMesh<'a> {
    pub fn new(address: &'a str, expiration: &'a str) -> Self {
        Self {
            address,
            expiration,
            pki: PKI,
            role: ROLE,
            auth_token: "secret: token-1  # can be file, secret or inlineString",
            ca_cert_secret: None,
        }
    }

    pub fn pki(mut self, pki: &'a str) -> Self {
        self.pki = pki;
        self
    }

    pub fn role(mut self, role: &'a str) -> Self {
        self.role = role;
        self
    }

    pub fn auth_token(mut self, auth_token: &'a str) -> Self {
        self.auth_token = auth_token;
        self
    }

    pub fn ca_cert_secret(mut self, secret: &'a str) -> Self {
        self.ca_cert_secret = Some(secret);
        self
    }

    /// The Mesh document (no `---`, no Secrets).
    pub fn yaml(&self) -> String {
        let Self {
            address,
            expiration,
            pki,
            role,
            auth_token,
            ..
        } = self;
        let ca_cert = self
            .ca_cert_secret
            .map(|s| format!("          caCert:\n            secret: {s}\n"))
            .unwrap_or_default();
        format!(
            r#"type: Mesh
name: {MESH}
mtls:
  enabledBackend: vault-1
  backends:
  - name: vault-1
    type: vault
    dpCert:
      rotation:
        expiration: {expiration} # must be lower than max_ttl in Vault role
    conf:
      fromCp:
        address: {address}
        agentAddress: "" # optional
        namespace: "" # optional
        pki: {pki} # name of the configured PKI
        role: {role} # name of the role that will be used to generate data plane proxy certificates
        commonName: '{{{{ tag "kuma.io/service" }}}}.mesh' # optional
        tls:
{ca_cert}          skipVerify: false # if set to true, caCert is optional. Set to true only for development
          serverName: "" # verify sever name
        auth: # only one auth options is allowed so it's either "token" or "tls"
          token:
            {auth_token}
"#
        )
    }
}

/// A Universal Mesh `mesh` with one vault backend `vault-1` at `address`, in Vault namespace
/// `namespace` (none when empty), issuing from PKI `pki` with role [`ROLE`], certificates of
/// `expiration`; `auth` is the YAML of the auth block below `auth:` (e.g. an `approle:` mapping),
/// each line indented by two spaces.
pub fn vault_auth_mesh(
    mesh: &str,
    address: &str,
    namespace: &str,
    pki: &str,
    expiration: &str,
    auth: &str,
) -> String {
    let auth: String = auth.lines().map(|l| format!("          {l}\n")).collect();
    format!(
        "type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: vault-1\n  backends:\n  - name: vault-1\n    type: vault\n    dpCert:\n      rotation:\n        expiration: {expiration}\n    conf:\n      fromCp:\n        address: {address}\n        namespace: \"{namespace}\"\n        pki: {pki}\n        role: {ROLE}\n        auth:\n{auth}"
    )
}

/// A Secret of `mesh` holding `data`.
pub fn secret_yaml(mesh: &str, name: &str, data: &str) -> String {
    format!(
        "type: Secret\nname: {name}\nmesh: {mesh}\ndata: {}\n",
        b64(data)
    )
}

/// The page's Universal Mesh (vault backend) for `address`; `auth_token` is the YAML of the
/// token data source (e.g. `secret: token-1`).
pub fn vault_mesh(address: &str, expiration: &str, auth_token: &str) -> String {
    VaultMesh::new(address, expiration)
        .auth_token(auth_token)
        .yaml()
}

/// The token Secret `token-1` of mesh `default`.
pub fn token_secret(token: &str) -> String {
    format!(
        "type: Secret\nname: token-1\nmesh: {MESH}\ndata: {}\n",
        b64(token)
    )
}

/// Standard base64 of `s` (a Secret's `data`).
pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The page's Universal Mesh (vault backend, token from Secret `token-1`) and that Secret.
pub fn vault_mesh_yaml(address: &str, token: &str, expiration: &str) -> String {
    format!(
        "{}---\n{}",
        VaultMesh::new(address, expiration).yaml(),
        token_secret(token)
    )
}

/// A Mesh with a builtin backend.
pub fn builtin_mesh_yaml(mesh: &str, expiration: &str) -> String {
    format!(
        "type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: {expiration}\n"
    )
}

/// A Mesh with a provided backend whose CA (generated here) is given as two Secrets.
pub fn provided_mesh_yaml(mesh: &str, expiration: &str) -> Result<String> {
    let ca = common::ca::generate_builtin_ca(mesh, &Default::default())?;
    Ok(format!(
        "type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: provided\n    dpCert:\n      rotation:\n        expiration: {expiration}\n    conf:\n      cert:\n        secret: provided-ca-cert\n      key:\n        secret: provided-ca-key\n---\ntype: Secret\nname: provided-ca-cert\nmesh: {mesh}\ndata: {}\n---\ntype: Secret\nname: provided-ca-key\nmesh: {mesh}\ndata: {}\n",
        b64(&ca.cert_pem),
        b64(ca.key_pem())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_with_an_approle_login_parses() {
        let yaml = vault_auth_mesh(
            "m1",
            "http://127.0.0.1:8200",
            "team-a",
            "kmesh-pki-m1",
            "10s",
            "approle:\n  roleId: { secret: role-id }\n  secretId: { secret: secret-id }\n",
        );
        let r = common::parse::parse_documents(&yaml).unwrap();
        let common::model::Resource::Mesh(m) = &r[0] else {
            panic!("{yaml}")
        };
        let common::model::BackendConf::Vault(v) = m.backends()[0].typed_conf().unwrap() else {
            panic!("{yaml}")
        };
        let fc = v.from_cp.unwrap();
        assert_eq!(fc.namespace, "team-a");
        assert!(fc.auth.unwrap().approle.is_some(), "{yaml}");
    }

    #[test]
    fn the_pages_vault_mesh_with_its_secrets() {
        let yaml = vault_mesh_yaml("http://127.0.0.1:8200", "tok", "24h");
        assert!(yaml.starts_with("type: Mesh\nname: default\n"), "{yaml}");
        assert!(
            yaml.contains("        tls:\n          skipVerify: false"),
            "{yaml}"
        );
        assert!(yaml.ends_with(
            "            secret: token-1  # can be file, secret or inlineString\n---\ntype: Secret\nname: token-1\nmesh: default\ndata: dG9r\n"
        ));
        let ca = VaultMesh::new("http://a", "1h")
            .ca_cert_secret("sec-1")
            .role("r")
            .yaml();
        assert!(
            ca.contains("        tls:\n          caCert:\n            secret: sec-1\n          skipVerify: false"),
            "{ca}"
        );
        assert!(ca.contains("        role: r # name of the role"), "{ca}");
    }
}
