//! The routes of an axum router as its source declares them (`.route("/meshes/{name}",
//! put(..).get(..))`): each pattern with its methods, so that a test can hold a table or a
//! description (rights, `/openapi.json`) against every route, and a new route cannot go unseen.

/// One `.route(...)` of a router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// As the router names it: `/meshes/{name}`.
    pub pattern: String,
    /// Lower case: `get`, `put`, `post`, `delete`, `patch`.
    pub methods: Vec<String>,
}

const METHODS: [&str; 6] = ["get", "put", "post", "delete", "patch", "head"];

/// The routes declared in the router source `src` (the text of a `.rs` file).
pub fn routes_of(src: &str) -> Vec<Route> {
    src.split(".route(")
        .skip(1)
        .filter_map(|chunk| {
            let chunk = chunk
                .split(".fallback(")
                .next()
                .unwrap_or(chunk)
                .trim_start();
            let rest = chunk.strip_prefix('"')?;
            let end = rest.find('"')?;
            let pattern = rest[..end].to_string();
            let body = &rest[end + 1..];
            let methods = METHODS
                .iter()
                .filter(|m| {
                    body.match_indices(&format!("{m}(")).any(|(i, _)| {
                        !body[..i]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_')
                    })
                })
                .map(|m| m.to_string())
                .collect();
            Some(Route { pattern, methods })
        })
        .collect()
}

/// The routes of the router in the source file at `path`.
pub fn routes_in(path: &str) -> Vec<Route> {
    let src = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the router's source {path}: {e}"));
    routes_of(&src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_their_methods() {
        let src = r#"
        Router::new()
            .route("/", get(index))
            .route(
                "/meshes/{name}",
                put(put_mesh).get(get_mesh).delete(delete_mesh),
            )
            .route("/tokens/signing-keys/{kid}", axum::routing::delete(tokens::retire_signing_key))
            .route("/apply", post(apply_batch))
            .fallback(|| async { get(x) })
        "#;
        let routes = routes_of(src);
        let r = |p: &str, m: &[&str]| Route {
            pattern: p.into(),
            methods: m.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            routes,
            vec![
                r("/", &["get"]),
                r("/meshes/{name}", &["get", "put", "delete"]),
                r("/tokens/signing-keys/{kid}", &["delete"]),
                r("/apply", &["post"]),
            ]
        );
    }
}
