//! Zone and dataplane tokens as global uses them: the tokens themselves (JWTs signed with global's
//! Ed25519 key, and their verification) live in `common::tokens`, re-exported here, so that zones
//! verify dataplane tokens with the same code; the public key reaches zones over the sync stream
//! (`kds`). Issuing them over HTTP is `api::tokens`; the names a token request carries are checked
//! here, by the API and the command line alike.

pub use common::tokens::{
    Claims, DATAPLANE_SCOPE, DEFAULT_VALIDITY, DataplaneClaim, KEY_FILE, KeySet, TokenError,
    TokenSigner, TokenVerifier, ZONE_SCOPE, ZoneClaim, check_zone_name,
};

/// Checks a dataplane token request and makes its claim, naming each bad field: the mesh and
/// dataplane names, exactly one of a service and "any service", and the bound tags (by the rules
/// of a proxy's tags; `kuma.io/service` is given as the service, `kuma.io/zone` is the zone's).
pub fn dataplane_claim(
    mesh: &str,
    name: &str,
    service: Option<&str>,
    tags: &std::collections::BTreeMap<String, String>,
    any_service: bool,
) -> Result<common::tokens::DataplaneClaim, common::ValidationErrors> {
    use common::model::SERVICE_TAG;
    let mut errs = common::ValidationErrors::new();
    common::validate::validate_mesh_name("mesh", mesh, &mut errs);
    common::validate::validate_object_name("name", name, &mut errs);
    match (service, any_service) {
        (Some(_), true) => errs.push(
            "service",
            "give a service or anyService, not both",
        ),
        (None, false) => errs.push(
            "service",
            "required: the kuma.io/service the proxy may register (or anyService to let it register any)",
        ),
        (Some(s), false) => {
            let mut tag = common::ValidationErrors::new();
            common::validate::validate_tag("", SERVICE_TAG, s, &mut tag);
            for e in tag.errors {
                errs.push("service", e.reason);
            }
        }
        (None, true) => {}
    }
    for (k, v) in tags {
        if k == SERVICE_TAG || k == ZONE_TAG {
            errs.push(
                common::parse::key_path("tags", k),
                if k == SERVICE_TAG {
                    "give the service as service, not as a tag"
                } else {
                    "kuma.io/zone is set by the zone the proxy connects to"
                },
            );
        } else {
            common::validate::validate_tag("tags", k, v, &mut errs);
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut claim = match service {
        Some(s) => common::tokens::DataplaneClaim::bound(mesh, name, s),
        None => common::tokens::DataplaneClaim::any_service(mesh, name),
    };
    claim.tags = tags.clone();
    Ok(claim)
}

/// The tag a zone sets on each of its proxies.
pub const ZONE_TAG: &str = "kuma.io/zone";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_claims_are_checked() {
        let none = Default::default();
        let c = dataplane_claim("default", "web-1", Some("web"), &none, false).unwrap();
        assert_eq!(c.service.as_deref(), Some("web"));
        assert!(
            dataplane_claim("default", "web-1", None, &none, true)
                .unwrap()
                .any_service
        );
        let errs = dataplane_claim("Bad_Mesh", "", None, &none, false).unwrap_err();
        let fields: Vec<&str> = errs.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["mesh", "name", "service"]);
        let tags = [
            ("kuma.io/zone".to_string(), "z".to_string()),
            ("version".to_string(), "v 1".to_string()),
        ]
        .into();
        let errs = dataplane_claim("m", "n", Some("a/b"), &tags, false).unwrap_err();
        let fields: Vec<&str> = errs.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["service", "tags[\"kuma.io/zone\"]", "tags.version"],
            "{errs}"
        );
    }
}
