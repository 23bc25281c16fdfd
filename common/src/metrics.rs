//! What both control planes' Prometheus registries share: the `kmesh_` prefix ([`registry`]),
//! registering a metric in one call, the text exposition `GET /metrics` serves, and the metrics
//! both have: `kmesh_build_info{version,commit}` and the request durations of their HTTP APIs,
//! `kmesh_http_request_duration_seconds{route,method,status}` ([`HttpMetrics`], fed by the
//! [`track_requests`] middleware; `route` is the router's pattern, never the raw path, so the
//! label sets stay few). Names follow Prometheus: units before `_total`
//! (`kmesh_sync_sent_bytes_total`). The other metrics belong to each crate.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The prefix of every metric of both control planes.
pub const PREFIX: &str = "kmesh";

/// A registry whose metrics are all named `kmesh_*`, holding `kmesh_build_info`.
pub fn registry() -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    let info = register(
        &mut r,
        "build_info",
        "The version and git commit of this build (always 1)",
        Family::<BuildLabels, Gauge>::default(),
    );
    info.get_or_create(&BuildLabels {
        version: crate::about::VERSION.to_string(),
        commit: crate::about::commit().to_string(),
    })
    .set(1);
    r
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The router's pattern (`/meshes/{name}`), or `unmatched`.
    pub route: String,
    /// One of the methods the APIs know, or `OTHER`.
    pub method: String,
    pub status: u16,
}

/// Buckets of API request durations, in seconds: 1 ms to 30 s (a write waits for Vault).
const REQUEST_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// The request durations of an HTTP API.
#[derive(Clone)]
pub struct HttpMetrics {
    pub durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    /// Registers `http_request_duration_seconds` in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let durations = register(
            r,
            "http_request_duration_seconds",
            "HTTP API requests by route (the router's pattern), method and status, and how long they took",
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                request_histogram,
            ),
        );
        Self { durations }
    }

    /// Counts one request.
    pub fn observe(&self, route: &str, method: &axum::http::Method, status: u16, seconds: f64) {
        use axum::http::Method;
        let method = match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::OPTIONS => "OPTIONS",
            _ => "OTHER",
        };
        self.durations
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .observe(seconds);
    }
}

/// Middleware timing every request of an API into `kmesh_http_request_duration_seconds`, labelled
/// with the route pattern that matched (axum's `MatchedPath`), `unmatched` otherwise. Layered with
/// `Router::layer`, which runs after routing.
pub async fn track_requests(
    axum::extract::State(metrics): axum::extract::State<HttpMetrics>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let start = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    metrics.observe(
        &route,
        &method,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

/// Registers `metric` under `name` with its help text and returns it (the registry keeps a clone).
pub fn register<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// The Prometheus text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn the_registry_names_kmesh_and_holds_the_build() {
        let mut r = super::registry();
        let http = super::HttpMetrics::register(&mut r);
        http.observe("/meshes/{name}", &axum::http::Method::GET, 200, 0.003);
        http.observe(
            "/x",
            &axum::http::Method::from_bytes(b"BREW").unwrap(),
            404,
            0.0,
        );
        let text = super::encode(&r);
        assert!(
            text.contains(&format!(
                "kmesh_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                crate::about::VERSION,
                crate::about::commit()
            )),
            "{text}"
        );
        assert!(
            text.contains("kmesh_http_request_duration_seconds_count{route=\"/meshes/{name}\",method=\"GET\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("method=\"OTHER\""), "{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            assert!(line.starts_with("# TYPE kmesh_"), "{line}");
        }
    }

    #[test]
    fn a_registered_counter_shows_in_the_exposition() {
        let mut r = prometheus_client::registry::Registry::with_prefix("t");
        let c = super::register(
            &mut r,
            "things",
            "Things counted",
            Counter::<u64>::default(),
        );
        c.inc();
        let text = super::encode(&r);
        assert!(text.contains("t_things_total 1"), "{text}");
    }
}
