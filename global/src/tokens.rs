//! Zone and dataplane tokens as global uses them: the tokens themselves (JWTs signed with global's
//! Ed25519 key, and their verification) live in `common::tokens`, re-exported here, so that zones
//! verify dataplane tokens with the same code; the public key reaches zones over the sync stream
//! (`kds`). Issuing them over HTTP is `api::tokens`; the names a token request carries are checked
//! here, by the API and the command line alike.

pub use common::tokens::{
    Claims, DATAPLANE_SCOPE, DEFAULT_VALIDITY, DataplaneClaim, KEY_FILE, KeySet, TokenError,
    TokenSigner, TokenVerifier, ZONE_SCOPE, ZoneClaim, check_zone_name,
};

/// Checks the mesh and dataplane names of a dataplane token request, naming each bad field.
pub fn check_dataplane_names(mesh: &str, name: &str) -> Result<(), common::ValidationErrors> {
    let mut errs = common::ValidationErrors::new();
    common::validate::validate_mesh_name("mesh", mesh, &mut errs);
    common::validate::validate_object_name("name", name, &mut errs);
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_names_are_checked() {
        assert!(check_dataplane_names("default", "web-1").is_ok());
        let errs = check_dataplane_names("Bad_Mesh", "").unwrap_err();
        let fields: Vec<&str> = errs.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["mesh", "name"]);
    }
}
