//! The web GUI of global at `/gui/` (SPEC.md "Web GUI"): a static shell (`assets/index.html`), one
//! plain script (`assets/app.js`) and one stylesheet, compiled into the binary, so `cargo build`
//! needs no npm and the GUI loads nothing from any other host. It owns those assets, the routes
//! that serve them and the headers they carry (a strict Content-Security-Policy: everything from
//! this origin, no inline script or style, no framing). It holds no data and reads nothing itself:
//! the script reads global's own JSON API (`/zones`, `/meshes`, `/meshes/{mesh}/dataplanes`,
//! `/replicas`) from the browser, sending the token typed into its sign-in form (kept in the
//! tab's `sessionStorage` only) as `Authorization: Bearer`, so every read passes the API's one
//! authorization middleware and the GUI grants nothing the API would not. That is why its routes
//! are mounted beside that middleware rather than behind it: a reader who must sign in first
//! gets the sign-in form, not a 401 instead of the page.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the GUI lives.
pub const PREFIX: &str = "/gui/";

/// Everything the pages load comes from this origin; no inline script or style (the shell has
/// none), no plugins, no `<base>`, forms only to this origin, never inside another site's frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");

/// The files under `/gui/assets/`: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("assets/icon.svg")),
];

/// The GUI's routes: the pages (each the same shell; the script draws the page its path names),
/// the assets, and a 404 page for anything else under `/gui/`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/gui", get(|| async { Redirect::permanent(PREFIX) }))
        .route("/gui/", get(page))
        .route("/gui/replicas", get(page))
        .route("/gui/meshes/{name}", get(page))
        .route("/gui/zones/{name}", get(page))
        .route("/gui/assets/{file}", get(asset))
        .route("/gui/{*rest}", get(not_found))
        .layer(axum::middleware::map_response(secure_headers))
}

async fn page() -> Response {
    html(StatusCode::OK)
}

/// Any other path under `/gui/`: the shell with 404, whose script says there is no such page.
async fn not_found() -> Response {
    html(StatusCode::NOT_FOUND)
}

fn html(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such GUI asset\n",
        )
            .into_response(),
    }
}

/// The headers of every GUI answer: the policy above, no MIME sniffing, no referrer, and
/// revalidation on each load (the assets change with the binary).
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    for (name, value) in set {
        headers.insert(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Request;
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = router::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn every_page_is_the_shell_with_the_policy() {
        for path in [
            "/gui/",
            "/gui/replicas",
            "/gui/meshes/default",
            "/gui/zones/zone-1",
        ] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers["content-type"], "text/html; charset=utf-8");
            assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assert_eq!(headers["x-frame-options"], "DENY");
            assert_eq!(body, INDEX_HTML);
        }
        let (status, headers, body) = get("/gui/meshes/default/secrets").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
        assert_eq!(body, INDEX_HTML);
        let (status, headers, _) = get("/gui").await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(headers["location"], "/gui/");
    }

    #[tokio::test]
    async fn assets_have_their_types_and_nothing_else_is_served() {
        let (status, headers, body) = get("/gui/assets/app.js").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
        assert!(body.contains("sessionStorage"));
        let (_, headers, _) = get("/gui/assets/style.css").await;
        assert_eq!(headers["content-type"], "text/css; charset=utf-8");
        let (_, headers, _) = get("/gui/assets/icon.svg").await;
        assert_eq!(headers["content-type"], "image/svg+xml");
        for path in [
            "/gui/assets/../mod.rs",
            "/gui/assets/index.html",
            "/gui/assets/",
        ] {
            let (status, _, _) = get(path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    /// What the policy forbids is not in the assets to begin with: no inline script, style or
    /// event handler in the shell, and nothing that names another host.
    #[test]
    fn the_assets_need_nothing_the_policy_forbids() {
        let lower = INDEX_HTML.to_lowercase();
        for (i, _) in lower.match_indices("<script") {
            let tag = &lower[i..i + lower[i..].find('>').unwrap()];
            assert!(tag.contains(" src=\""), "inline script in the shell: {tag}");
        }
        assert!(!lower.contains("<style"), "inline style in the shell");
        assert!(!lower.contains(" style="), "style attribute in the shell");
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                !lower[i + 1 + name.len()..].starts_with('='),
                "event handler attribute {name} in the shell"
            );
        }
        let js = ASSETS[0].2;
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "localStorage",
            "document.cookie",
            ".style.",
            "setAttribute('style'",
        ] {
            assert!(!js.contains(forbidden), "app.js uses {forbidden}");
        }
        for (name, _, body) in ASSETS.iter().chain([&("index.html", "", INDEX_HTML)]) {
            let others: Vec<&str> = body
                .split(['"', '\'', '(', ')', ' ', '\n'])
                .filter(|w| w.contains("://"))
                .filter(|w| *w != "http://www.w3.org/2000/svg")
                .collect();
            assert!(others.is_empty(), "{name} names another host: {others:?}");
            assert!(!body.contains("@import"), "{name} imports");
            assert!(!body.contains("url("), "{name} loads a url()");
        }
    }
}
