//! The Vault side of `auth.approle` and `auth.jwt`, with the commands an operator types (the
//! README's walk-through shows the same): enabling an auth method at a mount, an AppRole role
//! with its token TTLs and policies, its role ID and a secret ID (and destroying one), JWT auth
//! trusting static public keys (`jwt_validation_pubkeys`) with a role, revoking tokens by
//! accessor; and [`JwtSigner`], which signs JWTs with a static Ed25519 key (EdDSA) made in the
//! test. All run through a [`BaoCli`] (root token, optionally a namespace).

use std::time::Duration;

use super::{BaoCli, BaoError};

/// The TTLs of the tokens a role's logins give (`token_ttl`, `token_max_ttl`), as Vault writes
/// them (`20s`, `1h`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTtls {
    pub ttl: String,
    pub max_ttl: String,
}

impl TokenTtls {
    pub fn new(ttl: &str, max_ttl: &str) -> Self {
        Self {
            ttl: ttl.to_string(),
            max_ttl: max_ttl.to_string(),
        }
    }

    fn args(&self) -> [String; 2] {
        [
            format!("token_ttl={}", self.ttl),
            format!("token_max_ttl={}", self.max_ttl),
        ]
    }
}

/// `vault auth enable -path=MOUNT METHOD`, unless an auth method is mounted there already.
pub fn enable_auth(cli: &BaoCli, method: &str, mount: &str) -> Result<(), BaoError> {
    let auths = cli.run_json(&["auth", "list", "-format=json"])?;
    if auths.get(format!("{mount}/")).is_some() {
        return Ok(());
    }
    cli.run(&["auth", "enable", &format!("-path={mount}"), method])
        .map(|_| ())
}

/// AppRole auth at `mount` and its role `role`: `vault write auth/MOUNT/role/ROLE
/// token_policies=P token_ttl=... token_max_ttl=...`.
pub fn create_approle(
    cli: &BaoCli,
    mount: &str,
    role: &str,
    policies: &[&str],
    ttls: &TokenTtls,
) -> Result<(), BaoError> {
    enable_auth(cli, "approle", mount)?;
    let path = format!("auth/{mount}/role/{role}");
    let policies = format!("token_policies={}", policies.join(","));
    let ttls = ttls.args();
    cli.run(&["write", &path, &policies, &ttls[0], &ttls[1]])
        .map(|_| ())
}

/// `vault read -field=role_id auth/MOUNT/role/ROLE/role-id`.
pub fn approle_role_id(cli: &BaoCli, mount: &str, role: &str) -> Result<String, BaoError> {
    let out = cli.run(&[
        "read",
        "-field=role_id",
        &format!("auth/{mount}/role/{role}/role-id"),
    ])?;
    Ok(out.trim().to_string())
}

/// `vault write -f -field=secret_id auth/MOUNT/role/ROLE/secret-id`: a new secret ID.
pub fn approle_secret_id(cli: &BaoCli, mount: &str, role: &str) -> Result<String, BaoError> {
    let out = cli.run(&[
        "write",
        "-f",
        "-field=secret_id",
        &format!("auth/{mount}/role/{role}/secret-id"),
    ])?;
    Ok(out.trim().to_string())
}

/// `vault write auth/MOUNT/role/ROLE/secret-id/destroy secret_id=...`: logins with it are refused
/// from now on (tokens it gave live on).
pub fn destroy_secret_id(
    cli: &BaoCli,
    mount: &str,
    role: &str,
    secret_id: &str,
) -> Result<(), BaoError> {
    cli.run_stdin(
        &[
            "write",
            &format!("auth/{mount}/role/{role}/secret-id/destroy"),
            "-",
        ],
        serde_json::json!({ "secret_id": secret_id })
            .to_string()
            .as_bytes(),
    )
    .map(|_| ())
}

/// JWT auth at `mount` trusting JWTs signed by the keys of `public_pems` (SPKI PEM), replacing
/// the keys it trusted before: `vault write auth/MOUNT/config jwt_validation_pubkeys=...`.
pub fn configure_jwt(cli: &BaoCli, mount: &str, public_pems: &[&str]) -> Result<(), BaoError> {
    enable_auth(cli, "jwt", mount)?;
    cli.run_stdin(
        &["write", &format!("auth/{mount}/config"), "-"],
        serde_json::json!({ "jwt_validation_pubkeys": public_pems })
            .to_string()
            .as_bytes(),
    )
    .map(|_| ())
}

/// A role of the JWT auth at `mount` for JWTs with audience `audience` (the subject names the
/// login): `vault write auth/MOUNT/role/ROLE role_type=jwt user_claim=sub bound_audiences=AUD
/// token_policies=P token_ttl=... token_max_ttl=...`.
pub fn create_jwt_role(
    cli: &BaoCli,
    mount: &str,
    role: &str,
    audience: &str,
    policies: &[&str],
    ttls: &TokenTtls,
) -> Result<(), BaoError> {
    let path = format!("auth/{mount}/role/{role}");
    let audience = format!("bound_audiences={audience}");
    let policies = format!("token_policies={}", policies.join(","));
    let ttls = ttls.args();
    cli.run(&[
        "write",
        &path,
        "role_type=jwt",
        "user_claim=sub",
        &audience,
        &policies,
        &ttls[0],
        &ttls[1],
    ])
    .map(|_| ())
}

/// `vault write auth/token/revoke-accessor accessor=...` for each accessor; tokens that expired
/// already are skipped. Returns how many were revoked.
pub fn revoke_accessors(cli: &BaoCli, accessors: &[String]) -> Result<usize, BaoError> {
    let mut revoked = 0;
    for a in accessors {
        match cli.run_stdin(
            &["write", "auth/token/revoke-accessor", "-"],
            serde_json::json!({ "accessor": a }).to_string().as_bytes(),
        ) {
            Ok(_) => revoked += 1,
            Err(BaoError::Cli { stderr, .. }) if stderr.contains("invalid accessor") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(revoked)
}

/// Signs JWTs with a static Ed25519 key made for the test (algorithm `EdDSA`), as an identity
/// provider whose public key Vault's JWT auth is given.
pub struct JwtSigner {
    key: jsonwebtoken::EncodingKey,
    public_pem: String,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner").finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// A signer with a new Ed25519 key.
    pub fn generate() -> Result<Self, BaoError> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| BaoError::Binary(format!("cannot make an Ed25519 key: {e}")))?;
        let key = jsonwebtoken::EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes())
            .map_err(|e| BaoError::Binary(format!("cannot use the Ed25519 key: {e}")))?;
        Ok(Self {
            key,
            public_pem: pair.public_key_pem(),
        })
    }

    /// The public key (SPKI PEM): what `jwt_validation_pubkeys` takes.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// A JWT with these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, BaoError> {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            claims,
            &self.key,
        )
        .map_err(|e| BaoError::Binary(format!("cannot sign a JWT: {e}")))
    }

    /// A JWT for `subject` and `audience`, valid from now for `valid_for`.
    pub fn token(
        &self,
        subject: &str,
        audience: &str,
        valid_for: Duration,
    ) -> Result<String, BaoError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.sign(&serde_json::json!({
            "iss": "testkit",
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + valid_for.as_secs(),
        }))
    }
}

/// What [`mesh_pki`] made: the PKI mount, its root CA (PEM) and the policy allowing issuance.
#[derive(Debug, Clone)]
pub struct MeshPki {
    pub pki: String,
    pub root_pem: String,
    pub policy: String,
}

/// The reference page's steps for `mesh` in the namespace of `cli`: a PKI `kmesh-pki-<mesh>`
/// with a root CA, the page's role `dataplane-proxies` (EC keys) and the page's policy
/// `kmesh-<mesh>-dataplane-proxies` — what an AppRole or JWT role then grants instead of a token.
pub fn mesh_pki(cli: &BaoCli, mesh: &str) -> Result<MeshPki, BaoError> {
    let pki = format!("kmesh-pki-{mesh}");
    let root_pem = super::seed::setup_root_ca(cli, mesh, &pki)?;
    super::seed::create_role(
        cli,
        &pki,
        "dataplane-proxies",
        &super::seed::RoleOptions::seed_ec(mesh),
    )?;
    let policy = super::seed::write_policy(cli, mesh, &pki, "dataplane-proxies")?;
    Ok(MeshPki {
        pki,
        root_pem,
        policy,
    })
}
