//! Who may do what on global's API: the one place that decides every route's right. A request's
//! caller is the admin (the admin token file, or a user token of group `admin`), a user of group
//! `operator` (with the meshes it may change) or `viewer`, or anonymous. A route needs one
//! [`Need`]; [`check`] says whether the caller has it, and if not, why: 401 when the caller must
//! authenticate, 403 naming the missing right when it is authenticated but not allowed.
//!
//! As SPEC.md defines the groups: admin may do everything; operator writes, deletes and reads the
//! Secrets of its meshes only and reads everything else but Secrets; viewer reads meshes, zones,
//! dataplanes and replicas, never Secrets or tokens. Reads of meshes, zones, dataplanes and
//! replicas are open to anonymous loopback clients; health and metrics are open to all.
//!
//! Pure: no I/O, no HTTP types beyond the method, so that a table-driven test can cover every
//! route for every caller.

use axum::http::Method;
use common::tokens::{Group, UserClaim};

/// Who sent a request, as the authorization middleware found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token of `<data-dir>/admin-token`.
    Admin,
    /// A valid user token.
    User(UserClaim),
    /// No token; `loopback`: the request came from a loopback address.
    Anonymous { loopback: bool },
}

impl Caller {
    /// May read everything and see `inline` values unredacted.
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(u) => u.group == Group::Admin,
            Caller::Anonymous { .. } => false,
        }
    }

    /// The audit log's actor: `admin`, `NAME (GROUP)`, or `anonymous`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::User(u) => format!("{} ({})", u.name, u.group),
            Caller::Anonymous { .. } => "anonymous".into(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Caller::Admin => "the admin".into(),
            Caller::User(u) if u.group == Group::Operator => format!(
                "user {:?} (group operator of {})",
                u.name,
                if u.meshes.is_empty() {
                    "no mesh".to_string()
                } else {
                    u.meshes
                        .iter()
                        .map(|m| format!("{m:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            Caller::User(u) => format!("user {:?} (group {})", u.name, u.group),
            Caller::Anonymous { .. } => "an anonymous caller".into(),
        }
    }
}

/// The right a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The index (`GET /`), health, readiness and metrics: anyone.
    Open,
    /// Reads of meshes, zones, dataplanes and replicas (and unknown paths): any user, and
    /// anonymous loopback clients.
    Read,
    /// The Secrets of a mesh: admin, or an operator of that mesh.
    ReadSecrets(String),
    /// Writes and deletes of a mesh and its Secrets: admin, or an operator of that mesh.
    Write(String),
    /// A batch (`POST /apply`): admin or any operator here; the handler checks each resource's
    /// mesh with [`Need::Write`].
    WriteBatch,
    /// What only an admin does (tokens, signing keys, zone records, exporting Secrets).
    Admin(&'static str),
}

/// The right `method` on `path` (with `query`) needs.
pub fn need(method: &Method, path: &str, query: &str) -> Need {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (read, segments.as_slice()) {
        (true, [""] | ["healthz"] | ["readyz"] | ["metrics"]) => Need::Open,
        (true, ["meshes", mesh, "secrets", ..]) => Need::ReadSecrets(mesh.to_string()),
        (false, ["meshes", mesh, "secrets", _]) => Need::Write(mesh.to_string()),
        (false, ["meshes", mesh]) => Need::Write(mesh.to_string()),
        (false, ["apply"]) => Need::WriteBatch,
        (true, ["export"]) if exports_secrets(query) => Need::Admin("export Secrets"),
        (_, ["tokens", ..]) => Need::Admin("manage tokens and signing keys"),
        (false, ["zones", _]) => Need::Admin("delete zone records"),
        (true, _) => Need::Read,
        (false, _) => Need::Admin("change this"),
    }
}

fn exports_secrets(query: &str) -> bool {
    query
        .split('&')
        .any(|kv| matches!(kv, "includeSecrets=true" | "includeSecrets=1"))
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401: no (valid) token where one is needed.
    Unauthenticated(String),
    /// 403: a valid token without the right; the message names the right.
    Forbidden(String),
}

/// Whether `caller` has the right `need`.
pub fn check(caller: &Caller, need: &Need) -> Result<(), Denied> {
    if *need == Need::Open || caller.is_admin() {
        return Ok(());
    }
    let user = match caller {
        Caller::Anonymous { loopback } => {
            return match need {
                Need::Read if *loopback => Ok(()),
                _ => Err(Denied::Unauthenticated(format!(
                    "this request needs a token: send Authorization: Bearer <token> (the admin token of <data-dir>/admin-token, or a user token from `global generate user-token`){}",
                    if *need == Need::Read {
                        "; reads without a token are open to loopback clients only"
                    } else {
                        ""
                    }
                ))),
            };
        }
        Caller::User(u) => u,
        Caller::Admin => return Ok(()),
    };
    let operator_of =
        |mesh: &str| user.group == Group::Operator && user.meshes.iter().any(|m| m == mesh);
    let allowed = match need {
        Need::Open | Need::Read => true,
        Need::ReadSecrets(mesh) | Need::Write(mesh) => operator_of(mesh),
        Need::WriteBatch => user.group == Group::Operator,
        Need::Admin(_) => false,
    };
    if allowed {
        return Ok(());
    }
    let right = match need {
        Need::ReadSecrets(mesh) => format!(
            "reading the Secrets of mesh {mesh:?} needs group admin, or group operator of mesh {mesh:?}"
        ),
        Need::Write(mesh) => format!(
            "changing mesh {mesh:?} or its Secrets needs group admin, or group operator of mesh {mesh:?}"
        ),
        Need::WriteBatch => "applying resources needs group admin or operator".into(),
        Need::Admin(what) => format!("to {what} needs group admin"),
        Need::Open | Need::Read => unreachable!("allowed above"),
    };
    Err(Denied::Forbidden(format!(
        "{} may not do this: {right}",
        caller.describe()
    )))
}

/// What only an admin may write, whatever the route allows: a Mesh with `file:` data sources
/// (they read files of global's host). `Err` names the first such field.
pub fn check_file_sources(caller: &Caller, mesh: &common::model::Mesh) -> Result<(), Denied> {
    if caller.is_admin() {
        return Ok(());
    }
    match common::datasource::file_sources(mesh).first() {
        None => Ok(()),
        Some((field, _)) => Err(Denied::Forbidden(format!(
            "{} may not do this: mesh {:?} has a file: data source ({field}), which reads files of global's host; only group admin may write it",
            caller.describe(),
            mesh.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(group: Group, meshes: &[&str]) -> Caller {
        Caller::User(UserClaim {
            name: "alice".into(),
            group,
            meshes: meshes.iter().map(|m| m.to_string()).collect(),
        })
    }

    #[test]
    fn anonymous_reads_are_open_on_loopback_only() {
        let local = Caller::Anonymous { loopback: true };
        let remote = Caller::Anonymous { loopback: false };
        let meshes = need(&Method::GET, "/meshes", "");
        assert_eq!(check(&local, &meshes), Ok(()));
        assert!(matches!(
            check(&remote, &meshes),
            Err(Denied::Unauthenticated(_))
        ));
        let secrets = need(&Method::GET, "/meshes/default/secrets", "");
        assert!(matches!(
            check(&local, &secrets),
            Err(Denied::Unauthenticated(_))
        ));
        for m in [Method::PUT, Method::DELETE] {
            let write = need(&m, "/meshes/default", "");
            assert!(matches!(
                check(&local, &write),
                Err(Denied::Unauthenticated(_))
            ));
        }
        assert_eq!(check(&remote, &need(&Method::GET, "/healthz", "")), Ok(()));
        assert_eq!(check(&remote, &need(&Method::GET, "/", "")), Ok(()));
        assert!(matches!(
            check(&remote, &need(&Method::GET, "/openapi.json", "")),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn forbidden_names_the_missing_right() {
        let viewer = user(Group::Viewer, &[]);
        let Err(Denied::Forbidden(m)) = check(&viewer, &need(&Method::PUT, "/meshes/default", ""))
        else {
            panic!("a viewer must not write");
        };
        assert!(m.contains("group operator of mesh \"default\""), "{m}");
        assert!(m.contains("user \"alice\" (group viewer)"), "{m}");
        let op = user(Group::Operator, &["a"]);
        let Err(Denied::Forbidden(m)) = check(&op, &need(&Method::GET, "/meshes/b/secrets", ""))
        else {
            panic!("an operator of a reads no Secret of b");
        };
        assert!(m.contains("operator of \"a\""), "{m}");
    }

    #[test]
    fn file_sources_are_admin_only() {
        let mesh: common::model::Mesh = match common::parse::parse_body(
            br#"{"type":"Mesh","name":"m","mtls":{"enabledBackend":"v","backends":[{"name":"v","type":"provided","conf":{"cert":{"file":"/x/cert.pem"},"key":{"secret":"k"}}}]}}"#,
        )
        .unwrap()
        {
            common::model::Resource::Mesh(m) => m,
            _ => unreachable!(),
        };
        let op = user(Group::Operator, &["m"]);
        let Err(Denied::Forbidden(m)) = check_file_sources(&op, &mesh) else {
            panic!("an operator may not write file: sources");
        };
        assert!(m.contains("mtls.backends[0].conf.cert.file"), "{m}");
        assert!(check_file_sources(&Caller::Admin, &mesh).is_ok());
        assert!(check_file_sources(&user(Group::Admin, &[]), &mesh).is_ok());
    }
}
