//! What both control planes' Prometheus registries share: registering a metric in one call and
//! the text exposition `GET /metrics` serves. The metrics themselves belong to each crate.

use prometheus_client::registry::{Metric, Registry};

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
