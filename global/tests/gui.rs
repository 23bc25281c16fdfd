//! The web GUI at `/gui/`, in a real headless Chromium (Debian's `chromium` over WebDriver,
//! `testkit::browser`) against a real cluster: OpenBao set up with the reference page's steps,
//! the `global` and `zone` binaries, proxies. What the rendered pages show is asserted, not the
//! HTML served:
//!
//! - the overview lists both zones online with each zone's own Vault check, the mesh with its
//!   enabled backend and the count of dataplanes; the mesh page lists every dataplane with its
//!   zone and the serial its proxy holds on disk, and draws the timeline (one SVG row, rotation
//!   marker and expiry marker per certificate); the zone page its sync state per type and its
//!   dataplanes; the replicas page this global, alive and leading;
//! - with OpenBao stopped, the overview (refreshing by itself, never reloaded) shows every zone's
//!   Vault check failing with the reason the zone reported; a zone that stops is shown offline;
//! - a reader who is not on loopback (the browser's connections come from the host's own
//!   non-loopback address) gets the sign-in form, is refused with a wrong token, reads with the
//!   admin token kept in the tab's session storage only (no cookie, no local storage), and signs
//!   out; when global goes away the page keeps what it last read and says so;
//! - nothing is requested from any other host: every request of the browser goes through a proxy
//!   that records the host of each (and never connects to another); the check is shown to work by
//!   a page of another host that it does record. The pages at a phone's width fit its width.
//!
//! Screenshots of each page are written under the test's directory, or to `$KMESH_GUI_SCREENSHOTS`
//! when set (`docs/gui/` holds the ones the README shows). Without Chromium the tests say SKIPPED.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::browser::{self, Browser, BrowserOptions};
use testkit::cluster::*;
use testkit::wait::wait_for;

/// How long a page may take to show a change (it refreshes every 5 s).
const SHOWN: Duration = Duration::from_secs(30);

fn browser_or_skip(test: &str) -> bool {
    match browser::available() {
        Ok(_) => true,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn screenshots(tmp: &Path) -> PathBuf {
    std::env::var_os("KMESH_GUI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.join("screenshots"))
}

/// What the overview shows, once it has drawn data: each zone row (status, checks) and the tiles.
const OVERVIEW: &str = r#"
if (document.body.dataset.page !== 'overview' || document.body.dataset.state !== 'ready') return null;
return {
  refreshes: Number(document.body.dataset.refreshes),
  zones: [...document.querySelectorAll('tr.zone-row')].map(r => ({
    zone: r.dataset.zone,
    status: r.dataset.status,
    text: r.innerText,
    checks: [...r.querySelectorAll('li.check')].map(c => ({
      mesh: c.dataset.mesh, backend: c.dataset.backend, ok: c.dataset.ok === 'true', text: c.innerText,
      reason: (c.querySelector('.reason') || {}).innerText || null })),
  })),
  failing: [...document.querySelectorAll('li.failing-check')].map(li => ({
    zone: li.dataset.zone, mesh: li.dataset.mesh, backend: li.dataset.backend, text: li.innerText })),
  stats: Object.fromEntries([...document.querySelectorAll('.stat')].map(s => [s.id, s.innerText])),
  meshes: [...document.querySelectorAll('#meshes tbody tr')].map(r => ({ mesh: r.dataset.mesh, text: r.innerText })),
};
"#;

/// What the mesh page shows: dataplane rows, timeline elements, backends.
const MESH_PAGE: &str = r#"
if (document.body.dataset.page !== 'mesh' || document.body.dataset.state !== 'ready') return null;
const svg = document.querySelector('svg.timeline');
return {
  dataplanes: [...document.querySelectorAll('tr[data-dp]')].map(r => ({
    name: r.dataset.dp, zone: r.dataset.zone, text: r.innerText,
    serial: (r.querySelector('.serial') || {}).innerText || null })),
  timeline: svg ? {
    rows: svg.querySelectorAll('g.tl-row').length,
    rotations: svg.querySelectorAll('circle.tl-rotation').length,
    expiries: svg.querySelectorAll('path.tl-expiry').length,
    now: svg.querySelectorAll('line.tl-now').length,
    width: Number(svg.getAttribute('width')),
    labels: [...svg.querySelectorAll('g.tl-row')].map(g => g.dataset.dp),
  } : null,
  backends: [...document.querySelectorAll('#backends tbody tr')].map(r => r.innerText),
  text: document.body.innerText,
};
"#;

/// The page fits the window's width (no sideways scrolling).
const FITS: &str = "return document.documentElement.scrollWidth <= window.innerWidth + 1 \
    ? true : {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth}";

async fn no_other_host(b: &Browser, page: &str) {
    let other = b.other_origins().await.unwrap();
    assert!(other.is_empty(), "{page} refers to other hosts: {other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gui_shows_zones_vault_checks_and_certificates_as_they_change() {
    if !browser_or_skip("the_gui_shows_zones_vault_checks_and_certificates_as_they_change") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let shots = screenshots(root);
    let mut c = Cluster::start(
        root,
        ClusterOptions {
            zones: 2,
            ec_role: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.wait_zones_ready(Duration::from_secs(60)).await.unwrap();
    for (zone, name, service) in [
        ("zone-1", "web-1", "web"),
        ("zone-1", "backend-1", "backend"),
        ("zone-2", "web-2", "web"),
    ] {
        c.start_proxy(zone, &ProxySpec::new(MESH, name, service))
            .await
            .unwrap();
    }
    let mut on_disk = std::collections::BTreeMap::new();
    for p in &c.proxies {
        let leaf = p
            .wait_leaf(root, None, Duration::from_secs(60))
            .await
            .unwrap();
        on_disk.insert(p.name.clone(), leaf.serial);
    }
    // Global has every certificate, with its next rotation, before the pages are read.
    let api_dps = wait_for("global to list the 3 certificates", root, || async {
        let v = c
            .global
            .api
            .get_ok("/meshes/default/dataplanes")
            .await
            .ok()?;
        let items = v["items"].as_array()?.clone();
        let done = items.len() == 3
            && items.iter().all(|d| {
                d["certificate"]["serial"].as_str()
                    == on_disk
                        .get(d["name"].as_str().unwrap_or(""))
                        .map(|s| s.as_str())
                    && d["certificate"]["rotation"].is_string()
            });
        done.then_some(items)
    })
    .await;

    let gui = c.global.url("/gui/");
    let allowed = vec![format!("127.0.0.1:{}", c.global.api_port)];
    let b = Browser::start(&root.join("browser"), BrowserOptions::new(&allowed))
        .await
        .unwrap();

    let origin = c.global.url("");
    // The check of "nothing from another host" sees a request to another host (which the proxy
    // answers itself).
    b.goto("http://gui-test.invalid/").await.unwrap();
    let control = |u: &String| u.starts_with("http://gui-test.invalid/");
    let elsewhere = b.page_requests_elsewhere(&origin).await.unwrap();
    assert!(
        elsewhere.contains(&"http://gui-test.invalid/".to_string()),
        "{elsewhere:?}"
    );
    assert!(elsewhere.iter().all(control), "{elsewhere:?}");
    assert!(
        b.proxy
            .foreign()
            .iter()
            .any(|r| r.authority.starts_with("gui-test.invalid")),
        "{:?}",
        b.proxy.foreign()
    );
    b.proxy.clear();

    // Overview, on loopback: read without signing in.
    b.goto(&gui).await.unwrap();
    let overview = b
        .wait_value(
            "the overview with both zones online and their Vault checks OK",
            SHOWN,
            OVERVIEW,
            |v| {
                let zones = v["zones"].as_array().cloned().unwrap_or_default();
                zones.len() == 2
                    && zones.iter().all(|z| {
                        z["status"] == "online"
                            && z["checks"].as_array().is_some_and(|c| {
                                c.len() == 1 && c[0]["ok"] == true && c[0]["backend"] == "vault-1"
                            })
                    })
            },
        )
        .await
        .unwrap();
    for z in overview["zones"].as_array().unwrap() {
        let text = z["text"].as_str().unwrap();
        assert!(
            text.contains("Online") && text.contains("default / vault-1") && text.contains("OK"),
            "{z}"
        );
    }
    assert_eq!(
        overview["stats"]["stat-zones"]
            .as_str()
            .unwrap()
            .lines()
            .nth(1),
        Some("2 of 2"),
        "{overview}"
    );
    assert!(
        overview["stats"]["stat-dataplanes"]
            .as_str()
            .unwrap()
            .contains("3\n3 connected · 3 with a certificate"),
        "{overview}"
    );
    assert_eq!(overview["failing"], Value::Array(vec![]));
    let mesh_row = overview["meshes"][0]["text"].as_str().unwrap();
    assert!(
        mesh_row.starts_with("default")
            && mesh_row.contains("vault-1")
            && mesh_row.contains("3 (3 connected)"),
        "{mesh_row}"
    );
    assert_eq!(
        b.eval(FITS).await.unwrap(),
        true,
        "the overview fits 1280 px"
    );
    no_other_host(&b, "the overview").await;
    b.screenshot(&shots.join("overview.png"), false)
        .await
        .unwrap();

    // The mesh: each dataplane with its zone and the serial its proxy holds, the timeline.
    b.goto(&c.global.url("/gui/meshes/default")).await.unwrap();
    let mesh = b
        .wait_value("the mesh page with 3 dataplanes", SHOWN, MESH_PAGE, |v| {
            v["dataplanes"].as_array().is_some_and(|d| d.len() == 3)
        })
        .await
        .unwrap();
    for row in mesh["dataplanes"].as_array().unwrap() {
        let name = row["name"].as_str().unwrap();
        let api = api_dps.iter().find(|d| d["name"] == name).unwrap();
        assert_eq!(row["zone"], api["zone"], "{row}");
        assert_eq!(
            row["serial"].as_str(),
            Some(on_disk[name].as_str()),
            "{row}"
        );
        let text = row["text"].as_str().unwrap();
        assert!(
            text.contains("Connected") && text.contains("vault-1"),
            "{text}"
        );
        assert!(
            text.contains("in 23 h") || text.contains("in 24 h"),
            "expiry in about a day: {text}"
        );
    }
    let tl = &mesh["timeline"];
    assert_eq!(
        (
            tl["rows"].as_u64(),
            tl["rotations"].as_u64(),
            tl["expiries"].as_u64(),
            tl["now"].as_u64()
        ),
        (Some(3), Some(3), Some(3), Some(1)),
        "{tl}"
    );
    assert!(
        mesh["backends"][0].as_str().unwrap().contains("Enabled"),
        "{mesh}"
    );
    // The last validation at global: the Vault test certificate's check of vault-1.
    let text = mesh["text"].as_str().unwrap();
    let validation = text
        .split("Last validation at global")
        .nth(1)
        .unwrap_or_default();
    assert!(
        validation.contains("vault-1") && validation.contains("Passed"),
        "{text}"
    );
    // Never a credential: the Vault token is in a Secret the page names, not shows.
    let vault_token = c.vault.as_ref().unwrap().token.clone();
    assert!(!mesh["text"].as_str().unwrap().contains(&vault_token));
    assert!(
        mesh["text"]
            .as_str()
            .unwrap()
            .contains("token from Secret token-1")
    );
    no_other_host(&b, "the mesh page").await;
    b.screenshot(&shots.join("mesh.png"), false).await.unwrap();

    // A phone's width: the same page, as cards, within the width.
    b.resize(390, 844).await.unwrap();
    b.wait_value("the mesh page to fit 390 px", SHOWN, FITS, |v| *v == true)
        .await
        .unwrap();
    b.wait_value("the timeline drawn for 390 px", SHOWN, MESH_PAGE, |v| {
        v["timeline"]["rows"] == 3 && v["timeline"]["width"].as_u64().is_some_and(|w| w <= 390)
    })
    .await
    .unwrap();
    b.screenshot(&shots.join("mesh-phone.png"), true)
        .await
        .unwrap();
    b.goto(&gui).await.unwrap();
    b.wait_for("the overview at 390 px", SHOWN, OVERVIEW)
        .await
        .unwrap();
    assert_eq!(
        b.eval(FITS).await.unwrap(),
        true,
        "the overview fits 390 px"
    );
    b.screenshot(&shots.join("overview-phone.png"), true)
        .await
        .unwrap();
    b.resize(1280, 800).await.unwrap();

    // A zone: its sync state per type and its dataplanes.
    b.goto(&c.global.url("/gui/zones/zone-1")).await.unwrap();
    let zone = b
        .wait_value(
            "zone-1's page",
            SHOWN,
            r#"if (document.body.dataset.state !== 'ready') return null;
               return { sync: [...document.querySelectorAll('#sync tbody tr')].map(r => r.innerText),
                        dps: [...document.querySelectorAll('tr[data-dp]')].map(r => r.dataset.dp),
                        checks: [...document.querySelectorAll('#checks tr.check')].map(r => r.innerText),
                        connection: document.querySelector('#connection').innerText };"#,
            |v| v["dps"].as_array().is_some_and(|d| d.len() == 2),
        )
        .await
        .unwrap();
    let sync = zone["sync"].as_array().unwrap();
    for t in ["Mesh", "Secret"] {
        assert!(
            sync.iter().any(|r| {
                let r = r.as_str().unwrap();
                r.starts_with(t) && r.contains("In sync")
            }),
            "{t}: {sync:?}"
        );
    }
    assert_eq!(zone["dps"], serde_json::json!(["backend-1", "web-1"]));
    assert!(zone["checks"][0].as_str().unwrap().contains("OK"), "{zone}");
    assert!(
        zone["connection"].as_str().unwrap().contains("Online"),
        "{zone}"
    );
    no_other_host(&b, "the zone page").await;
    b.screenshot(&shots.join("zone.png"), false).await.unwrap();

    // Replicas.
    b.goto(&c.global.url("/gui/replicas")).await.unwrap();
    let replicas = b
        .wait_for(
            "the replicas page",
            SHOWN,
            r#"if (document.body.dataset.state !== 'ready') return null;
               return [...document.querySelectorAll('tr[data-replica]')].map(r => r.innerText);"#,
        )
        .await
        .unwrap();
    let replicas = replicas.as_array().unwrap();
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    let r = replicas[0].as_str().unwrap();
    assert!(
        r.contains("Alive") && r.contains("Leader") && r.contains("zone-1, zone-2"),
        "{r}"
    );
    b.screenshot(&shots.join("replicas.png"), false)
        .await
        .unwrap();

    // Vault stops. A new proxy in each zone makes each zone try Vault at once; the overview,
    // left open, shows both zones' checks failing, each with the reason that zone reported.
    b.goto(&gui).await.unwrap();
    let before = b.wait_for("the overview", SHOWN, OVERVIEW).await.unwrap();
    c.vault.as_mut().unwrap().server.stop();
    for (zone, name) in [("zone-1", "web-3"), ("zone-2", "web-4")] {
        c.start_proxy(zone, &ProxySpec::new(MESH, name, "web"))
            .await
            .unwrap();
    }
    let down = b
        .wait_value(
            "both zones' Vault checks failing on the overview",
            SHOWN,
            OVERVIEW,
            |v| {
                v["failing"].as_array().is_some_and(|f| f.len() == 2)
                    && v["zones"].as_array().is_some_and(|z| {
                        z.iter().all(|z| {
                            z["checks"][0]["ok"] == false && z["checks"][0]["reason"].is_string()
                        })
                    })
            },
        )
        .await
        .unwrap();
    assert!(
        down["refreshes"].as_u64() > before["refreshes"].as_u64(),
        "it refreshed by itself"
    );
    for z in down["zones"].as_array().unwrap() {
        let name = z["zone"].as_str().unwrap();
        let reported = c.global.zone(name).await.unwrap();
        let error = reported["vault"][0]["error"].as_str().unwrap().to_string();
        let shown = z["checks"][0]["reason"].as_str().unwrap();
        let lower = shown.to_lowercase();
        assert!(
            lower.contains("connect") || lower.contains("refused") || lower.contains("unreachable"),
            "{name}: {shown}"
        );
        // What the zone reported, as it reported it (it may have been reported again since).
        assert!(
            error.to_lowercase().contains("connect") || error.contains(shown),
            "{name}: shown {shown:?}, reported {error:?}"
        );
        assert!(z["text"].as_str().unwrap().contains("Failing"), "{z}");
        let failing = down["failing"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["zone"] == name)
            .unwrap();
        assert!(
            failing["text"].as_str().unwrap().contains(&format!(
                "Zone {name} cannot use backend vault-1 of mesh default"
            )),
            "{failing}"
        );
    }
    assert!(
        down["stats"]["stat-checks"]
            .as_str()
            .unwrap()
            .contains("2 failing"),
        "{down}"
    );
    b.screenshot(&shots.join("overview-vault-down.png"), false)
        .await
        .unwrap();

    // zone-2 stops: shown offline, by itself.
    c.zone_mut("zone-2").unwrap().proc.kill9();
    let offline = b
        .wait_value("zone-2 offline on the overview", SHOWN, OVERVIEW, |v| {
            v["zones"].as_array().is_some_and(|z| {
                z.iter()
                    .any(|z| z["zone"] == "zone-2" && z["status"] == "offline")
                    && z.iter()
                        .any(|z| z["zone"] == "zone-1" && z["status"] == "online")
            })
        })
        .await
        .unwrap();
    let z2 = offline["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == "zone-2")
        .unwrap();
    assert!(
        z2["text"].as_str().unwrap().contains("Offline")
            && z2["text"].as_str().unwrap().contains("last seen"),
        "{z2}"
    );
    assert_eq!(
        offline["stats"]["stat-zones"]
            .as_str()
            .unwrap()
            .lines()
            .nth(1),
        Some("1 of 2"),
        "{offline}"
    );
    b.screenshot(&shots.join("overview-incident.png"), false)
        .await
        .unwrap();

    // No page asked anything of another host; what reached global carried no cookie and, not
    // signed in, no token.
    let elsewhere = b.page_requests_elsewhere(&origin).await.unwrap();
    assert!(
        elsewhere.iter().all(control),
        "the pages asked other hosts: {elsewhere:?}"
    );
    let requests: Vec<_> = b
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.forwarded)
        .collect();
    assert!(
        requests.iter().any(|r| r.path == "/gui/assets/app.js"),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/meshes/default/dataplanes"),
        "{requests:?}"
    );
    assert!(
        requests.iter().all(|r| !r.cookie && !r.authorization),
        "{requests:?}"
    );
    // Were a page to load a font or a stylesheet from a CDN, the check would see it, and the
    // Content-Security-Policy would keep the browser from fetching it.
    b.eval(
        "const l = document.createElement('link'); l.rel = 'stylesheet'; \
         l.href = 'https://cdn.gui-test.invalid/font.css'; document.head.appendChild(l); \
         const i = new Image(); i.src = 'http://img.gui-test.invalid/x.png'; return true;",
    )
    .await
    .unwrap();
    let elsewhere = wait_for("the injected loads to be seen", root, || async {
        let e = b.page_requests_elsewhere(&origin).await.ok()?;
        (e.iter().filter(|u| !control(u)).count() == 2).then_some(e)
    })
    .await;
    assert!(
        elsewhere.contains(&"https://cdn.gui-test.invalid/font.css".to_string()),
        "{elsewhere:?}"
    );
    assert!(
        elsewhere.contains(&"http://img.gui-test.invalid/x.png".to_string()),
        "{elsewhere:?}"
    );
    let blocked = b.proxy.foreign();
    assert!(
        !blocked
            .iter()
            .any(|r| r.authority.contains("cdn.gui-test.invalid")
                || r.authority.contains("img.gui-test.invalid")),
        "the policy let the browser fetch from another host: {blocked:?}"
    );
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_from_another_host_signs_in_with_a_token_kept_in_the_tab() {
    let test = "a_reader_from_another_host_signs_in_with_a_token_kept_in_the_tab";
    if !browser_or_skip(test) {
        return;
    }
    let Some(remote) = browser::non_loopback_address() else {
        eprintln!("SKIPPED {test}: this host has no non-loopback address to read from");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let shots = screenshots(root);
    let global = GlobalProc::start(&root.join("global")).await.unwrap();
    global
        .apply(&builtin_mesh_yaml("default", "24h"))
        .await
        .unwrap();
    let allowed = vec![format!("127.0.0.1:{}", global.api_port)];
    let b = Browser::start(
        &root.join("browser"),
        BrowserOptions::new(&allowed).from_address(remote),
    )
    .await
    .unwrap();
    let state = "return document.body.dataset.state";
    let signin = r#"if (document.body.dataset.state !== 'signin') return null;
        return document.querySelector('#signin-reason').innerText;"#;

    // The API refuses a reader from another host without a token: the page asks to sign in.
    b.goto(&global.url("/gui/")).await.unwrap();
    let why = b.wait_for("the sign-in form", SHOWN, signin).await.unwrap();
    let why = why.as_str().unwrap();
    assert!(
        why.contains("needs a token") && why.contains("401"),
        "{why}"
    );
    b.screenshot(&shots.join("signin.png"), false)
        .await
        .unwrap();

    // A wrong token is refused, and said so.
    b.type_into("#token", "not-the-token").await.unwrap();
    b.click("#sign-in-submit").await.unwrap();
    let why = b
        .wait_value("the wrong token refused", SHOWN, signin, |v| {
            v.as_str().is_some_and(|s| s.contains("did not accept"))
        })
        .await
        .unwrap();
    assert!(why.as_str().unwrap().contains("401"), "{why}");

    // The admin token reads, kept in this tab's session storage only.
    b.type_into("#token", &global.token).await.unwrap();
    b.click("#sign-in-submit").await.unwrap();
    let shown = b
        .wait_for("the overview after signing in", SHOWN, OVERVIEW)
        .await
        .unwrap();
    assert_eq!(shown["meshes"][0]["mesh"], "default", "{shown}");
    let storage = b
        .eval("return { session: Object.keys(sessionStorage).map(k => sessionStorage.getItem(k)), local: localStorage.length, cookie: document.cookie, who: document.querySelector('#session').innerText }")
        .await
        .unwrap();
    assert_eq!(
        storage["session"],
        serde_json::json!([global.token]),
        "{storage}"
    );
    assert_eq!(storage["local"], 0);
    assert_eq!(storage["cookie"], "");
    assert!(
        storage["who"].as_str().unwrap().contains("Signed in"),
        "{storage}"
    );

    // Another page of the same tab reads with it; a mesh that does not exist is said so.
    b.goto(&global.url("/gui/meshes/default")).await.unwrap();
    let mesh = b
        .wait_for("the mesh page, signed in", SHOWN, MESH_PAGE)
        .await
        .unwrap();
    assert!(
        mesh["backends"][0].as_str().unwrap().contains("builtin"),
        "{mesh}"
    );
    assert_eq!(
        mesh["timeline"],
        Value::Null,
        "no certificates, no timeline"
    );
    assert!(
        mesh["text"]
            .as_str()
            .unwrap()
            .contains("No dataplane holds a certificate yet")
    );
    b.goto(&global.url("/gui/meshes/nope")).await.unwrap();
    b.wait_value("a missing mesh", SHOWN, state, |v| *v == "missing")
        .await
        .unwrap();
    assert!(
        b.text("#not-found")
            .await
            .unwrap()
            .contains("mesh \"nope\" not found")
    );
    b.goto(&global.url("/gui/no/such/page")).await.unwrap();
    b.wait_value("no such page", SHOWN, state, |v| *v == "missing")
        .await
        .unwrap();
    assert!(b.text("main h1").await.unwrap().contains("No such page"));

    // Signing out forgets the token: the form again.
    b.goto(&global.url("/gui/")).await.unwrap();
    b.wait_for("the overview", SHOWN, OVERVIEW).await.unwrap();
    b.click("#sign-out").await.unwrap();
    b.wait_for("the sign-in form after signing out", SHOWN, signin)
        .await
        .unwrap();
    assert_eq!(b.eval("return sessionStorage.length").await.unwrap(), 0);

    // A viewer's user token reads what the API lets viewers read: the same pages.
    let viewer = global
        .api
        .write_ok(
            reqwest::Method::POST,
            "/tokens/user",
            r#"{"name":"vera","group":"viewer"}"#,
        )
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    b.type_into("#token", &viewer).await.unwrap();
    b.click("#sign-in-submit").await.unwrap();
    let shown = b
        .wait_for("the overview, signed in as a viewer", SHOWN, OVERVIEW)
        .await
        .unwrap();
    assert_eq!(shown["meshes"][0]["mesh"], "default", "{shown}");
    b.click("#sign-out").await.unwrap();
    b.wait_for("the sign-in form after the viewer signs out", SHOWN, signin)
        .await
        .unwrap();

    // Every read of data carried the token once given, nothing carried a cookie, and nothing
    // went elsewhere.
    let requests = b.proxy.requests();
    assert!(requests.iter().all(|r| !r.cookie), "{requests:?}");
    assert!(
        requests
            .iter()
            .filter(|r| r.path == "/meshes/default/dataplanes")
            .all(|r| r.authorization),
        "{requests:?}"
    );
    assert_eq!(
        b.page_requests_elsewhere(&global.url("")).await.unwrap(),
        Vec::<String>::new(),
        "the pages asked other hosts"
    );
    no_other_host(&b, "the sign-in form").await;

    // The pages themselves carry the policy.
    let resp = reqwest::get(global.url("/gui/zones/zone-1")).await.unwrap();
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.starts_with("default-src 'self';")
            && !csp.contains("unsafe")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    // Global goes away while the page is open: it keeps what it last read and says so.
    b.type_into("#token", &global.token).await.unwrap();
    b.click("#sign-in-submit").await.unwrap();
    b.wait_for("the overview, signed in again", SHOWN, OVERVIEW)
        .await
        .unwrap();
    let mut global = global;
    global.proc.kill9();
    let stale = b
        .wait_for(
            "the page to say global does not answer",
            SHOWN,
            r#"if (document.body.dataset.state !== 'stale') return null;
               return { banner: document.querySelector('#banner').innerText,
                        meshes: document.querySelectorAll('#meshes tbody tr').length };"#,
        )
        .await
        .unwrap();
    assert_eq!(stale["meshes"], 1, "{stale}");
    let banner = stale["banner"].as_str().unwrap();
    assert!(
        banner.contains("Showing what was read at") && banner.contains("trying again every 5 s"),
        "{banner}"
    );
    b.close().await.unwrap();
}
