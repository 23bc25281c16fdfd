//! The routes of an axum router as its source declares them (`.route("/meshes/{name}",
//! put(..).get(..))`): each pattern with its methods, so that a test can hold a table or a
//! description (rights, `/openapi.json`: [`check_description`]) against every route, and a new
//! route cannot go unseen.

use serde_json::Value;

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

/// Every (method, path) an OpenAPI description lists, sorted.
pub fn described(spec: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            out.push((method.clone(), path.clone()));
        }
    }
    out.sort();
    out
}

/// Checks that `spec` (an API's `/openapi.json`) is OpenAPI 3.1 and describes exactly the routes
/// of the router in the source file at `source`, each operation with its errors as
/// `application/problem+json`; panics naming what is missing or extra.
pub fn check_description(spec: &Value, source: &str) {
    assert!(
        spec["openapi"].as_str().unwrap_or("").starts_with("3.1"),
        "not OpenAPI 3.1: {}",
        spec["openapi"]
    );
    let mut routed: Vec<(String, String)> = routes_in(source)
        .into_iter()
        .flat_map(|r| r.methods.into_iter().map(move |m| (m, r.pattern.clone())))
        .collect();
    routed.sort();
    assert!(routed.len() > 5, "routes read from {source}: {routed:?}");
    let described = described(spec);
    let missing: Vec<_> = routed.iter().filter(|r| !described.contains(r)).collect();
    let extra: Vec<_> = described.iter().filter(|d| !routed.contains(d)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes of {source} not described: {missing:?}; described but not routed: {extra:?}"
    );
    for (method, path) in &described {
        let op = &spec["paths"][path][method];
        assert!(
            op["responses"]["default"]["content"]["application/problem+json"]["schema"]["$ref"]
                .as_str()
                .is_some_and(|r| r.starts_with("#/components/schemas/")),
            "{method} {path} does not describe its errors: {op}"
        );
    }
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
