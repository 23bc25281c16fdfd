//! The Vault steps of the reference page ("Configure Vault"), with the same commands; the mesh,
//! mount and role names are parameters. All run through a [`BaoCli`] (root token, optionally a
//! namespace).

use super::{BaoCli, BaoError, io_err};

fn field<'a>(v: &'a serde_json::Value, path: &[&str], args: &str) -> Result<&'a str, BaoError> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().ok_or_else(|| BaoError::Output {
        args: args.to_string(),
        reason: format!("no string at .{}", path.join(".")),
    })
}

fn scratch() -> Result<tempfile::TempDir, BaoError> {
    tempfile::tempdir().map_err(io_err("cannot create a temporary directory"))
}

/// Step 1, "Root CA": a PKI at `pki` holding a root CA for `mesh`
/// (`secrets enable -path=PKI pki`, `secrets tune -max-lease-ttl=87600h PKI`,
/// `write -field=certificate PKI/root/generate/internal common_name=... uri_sans=spiffe://MESH
/// ttl=87600h`). Returns the root certificate (PEM).
pub fn setup_root_ca(cli: &BaoCli, mesh: &str, pki: &str) -> Result<String, BaoError> {
    cli.run(&["secrets", "enable", &format!("-path={pki}"), "pki"])?;
    cli.run(&["secrets", "tune", "-max-lease-ttl=87600h", pki])?;
    let cert = cli.run(&[
        "write",
        "-field=certificate",
        &format!("{pki}/root/generate/internal"),
        &format!("common_name=Kong Mesh {mesh}"),
        &format!("uri_sans=spiffe://{mesh}"),
        "ttl=87600h",
    ])?;
    Ok(cert.trim().to_string() + "\n")
}

/// Step 1, "Intermediate CA": an organization root CA at `root_pki` (`secrets enable
/// -path=ROOT pki`, tune, `root/generate/internal common_name="Organization CA"`), the mesh's
/// PKI at `pki` with an intermediate CA (`intermediate/generate/internal`) signed by the root
/// (`root/sign-intermediate csr=@... format=pem_bundle ttl=43800h`), and the signed
/// intermediate set with the root appended (`bundle.pem` = intermediate, an empty line, root;
/// `intermediate/set-signed certificate=@bundle.pem`). Returns the root certificate (PEM).
pub fn setup_intermediate_ca(
    cli: &BaoCli,
    mesh: &str,
    pki: &str,
    root_pki: &str,
) -> Result<String, BaoError> {
    let tmp = scratch()?;
    cli.run(&["secrets", "enable", &format!("-path={root_pki}"), "pki"])?;
    cli.run(&["secrets", "tune", "-max-lease-ttl=87600h", root_pki])?;
    let ca_pem = cli.run(&[
        "write",
        "-field=certificate",
        &format!("{root_pki}/root/generate/internal"),
        "common_name=Organization CA",
        "ttl=87600h",
    ])?;
    let ca_path = tmp.path().join("ca.pem");
    std::fs::write(&ca_path, &ca_pem).map_err(io_err("cannot write ca.pem"))?;

    cli.run(&["secrets", "enable", &format!("-path={pki}"), "pki"])?;
    let args = [
        "write",
        "-format=json",
        &format!("{pki}/intermediate/generate/internal"),
        &format!("common_name=Kong Mesh Mesh {mesh}"),
        &format!("uri_sans=spiffe://{mesh}"),
    ];
    let out = cli.run_json(&args)?;
    let csr = field(&out, &["data", "csr"], &args.join(" "))?;
    let csr_path = tmp.path().join("pki_intermediate.csr");
    std::fs::write(&csr_path, format!("{csr}\n"))
        .map_err(io_err("cannot write pki_intermediate.csr"))?;

    let args = [
        "write",
        "-format=json",
        &format!("{root_pki}/root/sign-intermediate"),
        &format!("csr=@{}", csr_path.display()),
        "format=pem_bundle",
        "ttl=43800h",
    ];
    let out = cli.run_json(&args)?;
    let intermediate = field(&out, &["data", "certificate"], &args.join(" "))?;

    // cat intermediate.cert.pem > bundle.pem; echo "" >> bundle.pem; cat ca.pem >> bundle.pem
    let bundle = format!("{intermediate}\n\n{ca_pem}");
    let bundle_path = tmp.path().join("bundle.pem");
    std::fs::write(&bundle_path, bundle).map_err(io_err("cannot write bundle.pem"))?;
    cli.run(&[
        "write",
        &format!("{pki}/intermediate/set-signed"),
        &format!("certificate=@{}", bundle_path.display()),
    ])?;
    Ok(ca_pem.trim().to_string() + "\n")
}

/// The parameters of step 2's `vault write PKI/roles/ROLE ...`. [`RoleOptions::seed`] gives
/// the page's values; the `Option` fields are only sent when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleOptions {
    pub allowed_uri_sans: String,
    pub key_usage: String,
    pub ext_key_usage: String,
    pub client_flag: bool,
    pub server_flag: Option<bool>,
    pub require_cn: bool,
    pub allowed_domains: String,
    pub allow_subdomains: bool,
    pub basic_constraints_valid_for_non_ca: bool,
    pub max_ttl: String,
    pub ttl: String,
    /// e.g. `ec` (the page sets none, so leaves are RSA-2048).
    pub key_type: Option<String>,
    /// Any further `key=value` parameters.
    pub extra: Vec<(String, String)>,
}

impl RoleOptions {
    /// The page's role for `mesh`.
    pub fn seed(mesh: &str) -> Self {
        Self {
            allowed_uri_sans: format!("spiffe://{mesh}/*,kuma://*"),
            key_usage: "KeyUsageKeyEncipherment,KeyUsageKeyAgreement,KeyUsageDigitalSignature"
                .to_string(),
            ext_key_usage: "ExtKeyUsageServerAuth,ExtKeyUsageClientAuth".to_string(),
            client_flag: true,
            server_flag: None,
            require_cn: false,
            allowed_domains: "mesh".to_string(),
            allow_subdomains: true,
            basic_constraints_valid_for_non_ca: true,
            max_ttl: "720h".to_string(),
            ttl: "720h".to_string(),
            key_type: None,
            extra: Vec::new(),
        }
    }

    /// The page's role with EC P-256 keys (fast issuance).
    pub fn seed_ec(mesh: &str) -> Self {
        Self::seed(mesh).key_type("ec")
    }

    pub fn key_type(mut self, key_type: &str) -> Self {
        self.key_type = Some(key_type.to_string());
        self
    }

    pub fn max_ttl(mut self, max_ttl: &str) -> Self {
        self.max_ttl = max_ttl.to_string();
        self
    }

    pub fn ttl(mut self, ttl: &str) -> Self {
        self.ttl = ttl.to_string();
        self
    }

    pub fn allowed_uri_sans(mut self, sans: &str) -> Self {
        self.allowed_uri_sans = sans.to_string();
        self
    }

    pub fn allowed_domains(mut self, domains: &str) -> Self {
        self.allowed_domains = domains.to_string();
        self
    }

    pub fn server_flag(mut self, on: bool) -> Self {
        self.server_flag = Some(on);
        self
    }

    pub fn client_flag(mut self, on: bool) -> Self {
        self.client_flag = on;
        self
    }

    pub fn key_usage(mut self, key_usage: &str) -> Self {
        self.key_usage = key_usage.to_string();
        self
    }

    pub fn ext_key_usage(mut self, ext_key_usage: &str) -> Self {
        self.ext_key_usage = ext_key_usage.to_string();
        self
    }

    pub fn param(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    #[cfg(test)]
    pub(crate) fn to_args_for_test(&self) -> Vec<String> {
        self.to_args()
    }

    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("allowed_uri_sans={}", self.allowed_uri_sans),
            format!("key_usage={}", self.key_usage),
            format!("ext_key_usage={}", self.ext_key_usage),
            format!("client_flag={}", self.client_flag),
        ];
        if let Some(s) = self.server_flag {
            args.push(format!("server_flag={s}"));
        }
        args.extend([
            format!("require_cn={}", self.require_cn),
            format!("allowed_domains={}", self.allowed_domains),
            format!("allow_subdomains={}", self.allow_subdomains),
            format!(
                "basic_constraints_valid_for_non_ca={}",
                self.basic_constraints_valid_for_non_ca
            ),
            format!("max_ttl={}", self.max_ttl),
            format!("ttl={}", self.ttl),
        ]);
        if let Some(k) = &self.key_type {
            args.push(format!("key_type={k}"));
        }
        args.extend(self.extra.iter().map(|(k, v)| format!("{k}={v}")));
        args
    }
}

/// Step 2: `vault write PKI/roles/ROLE allowed_uri_sans=... key_usage=... ...`.
pub fn create_role(
    cli: &BaoCli,
    pki: &str,
    role: &str,
    opts: &RoleOptions,
) -> Result<(), BaoError> {
    let path = format!("{pki}/roles/{role}");
    let params = opts.to_args();
    let mut args: Vec<&str> = vec!["write", &path];
    args.extend(params.iter().map(String::as_str));
    cli.run(&args).map(|_| ())
}

/// The policy name of step 3: `kmesh-MESH-ROLE`.
pub fn policy_name(mesh: &str, role: &str) -> String {
    format!("kmesh-{mesh}-{role}")
}

/// The policy HCL of step 3.
pub fn policy_hcl(pki: &str, role: &str) -> String {
    format!("path \"/{pki}/issue/{role}\"\n{{\n  capabilities = [\"create\", \"update\"]\n}}\n")
}

/// Steps 3 and 4: `vault policy write kmesh-MESH-ROLE kmesh-MESH-ROLE.hcl` with the page's
/// policy, then `vault token create -format=json -policy=kmesh-MESH-ROLE`. Returns the token.
pub fn create_policy_and_token(
    cli: &BaoCli,
    mesh: &str,
    pki: &str,
    role: &str,
) -> Result<String, BaoError> {
    let name = write_policy(cli, mesh, pki, role)?;
    create_token(cli, &[&name])
}

/// Step 3 alone: `vault policy write kmesh-MESH-ROLE kmesh-MESH-ROLE.hcl`. Returns the name.
pub fn write_policy(cli: &BaoCli, mesh: &str, pki: &str, role: &str) -> Result<String, BaoError> {
    let tmp = scratch()?;
    let name = policy_name(mesh, role);
    let hcl_path = tmp.path().join(format!("{name}.hcl"));
    std::fs::write(&hcl_path, policy_hcl(pki, role))
        .map_err(io_err("cannot write the policy file"))?;
    cli.run(&["policy", "write", &name, &hcl_path.display().to_string()])?;
    Ok(name)
}

/// `vault token create -format=json -policy=P ...`; returns `.auth.client_token`.
pub fn create_token(cli: &BaoCli, policies: &[&str]) -> Result<String, BaoError> {
    let policy_args: Vec<String> = policies.iter().map(|p| format!("-policy={p}")).collect();
    let mut args: Vec<&str> = vec!["token", "create", "-format=json"];
    args.extend(policy_args.iter().map(String::as_str));
    let out = cli.run_json(&args)?;
    // The token is not part of any error message: only the path that was missing.
    Ok(field(&out, &["auth", "client_token"], "token create")?.to_string())
}

/// Enables the `cert` auth method (at `auth/cert`, unless already enabled) and trusts
/// `ca_pem` for client certificates under `auth/cert/certs/NAME` with `policies` (comma
/// separated): the server side of the page's `auth.tls` (clientKey/clientCert).
pub fn enable_cert_auth(
    cli: &BaoCli,
    name: &str,
    ca_pem: &str,
    policies: &str,
) -> Result<(), BaoError> {
    let auths = cli.run_json(&["auth", "list", "-format=json"])?;
    if auths.get("cert/").is_none() {
        cli.run(&["auth", "enable", "cert"])?;
    }
    let tmp = scratch()?;
    let ca_path = tmp.path().join("client-ca.pem");
    std::fs::write(&ca_path, ca_pem).map_err(io_err("cannot write client-ca.pem"))?;
    cli.run(&[
        "write",
        &format!("auth/cert/certs/{name}"),
        &format!("display_name={name}"),
        &format!("policies={policies}"),
        &format!("certificate=@{}", ca_path.display()),
    ])
    .map(|_| ())
}

/// `vault namespace create NS` (in the namespace of `cli`, if any).
pub fn create_namespace(cli: &BaoCli, ns: &str) -> Result<(), BaoError> {
    cli.run(&["namespace", "create", ns]).map(|_| ())
}
