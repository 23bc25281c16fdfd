//! The demo and every drill, run through the library functions the `scenarios` binary calls, with
//! small sizes and the EC role (fast issuance), against a real OpenBao and the real `global` and
//! `zone` binaries on loopback. Each test asserts the scenario's own verdict (every step PASS)
//! and the steps that carry its point. One more test runs the real binary's demo without
//! `--once`, interrupts it like Ctrl-C, and checks that no process is left behind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scenarios::report::Report;

fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn assert_passed(report: &Report, steps: &[&str]) {
    assert!(
        report.passed(),
        "{} failed:\n{}\n{}",
        report.title,
        report.summary(),
        report
            .failures()
            .iter()
            .map(|s| format!("--- {}\n{}", s.name, s.detail))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for name in steps {
        assert!(
            report
                .steps
                .iter()
                .any(|s| s.name.starts_with(name) && s.passed),
            "step {name:?} did not run:\n{}",
            report.summary()
        );
    }
    eprintln!(
        "{}: {} steps passed in {:.1}s",
        report.title,
        report.steps.len(),
        report.elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_reaches_the_cross_zone_handshake() {
    init();
    let opts = scenarios::demo::DemoOptions {
        zones: 2,
        proxies: 1,
        once: true,
        ec: true,
        intermediate: true,
        ..Default::default()
    };
    let report = scenarios::demo::run(opts, std::future::pending())
        .await
        .unwrap();
    assert_passed(
        &report,
        &[
            "OpenBao with the page's Vault steps",
            "the page's Mesh and Secret applied",
            "zones online (global get zones)",
            "proxy web-z1 (zone-1) certificate",
            "proxy web-z2 (zone-2) certificate",
            "dataplanes (global get dataplanes)",
            "cross-zone mTLS handshake: web-z1 → web-z2",
        ],
    );
    let zones = report.step("zones online (global get zones)").unwrap();
    assert!(
        zones.detail.contains("default/vault-1=ok"),
        "{}",
        zones.detail
    );
    let cert = report.step("proxy web-z1 (zone-1) certificate").unwrap();
    for want in [
        "CN=web.mesh",
        "spiffe://default/web",
        "kuma://version/v1",
        "chain verifies to ca.pem: yes",
    ] {
        assert!(cert.detail.contains(want), "{want}: {}", cert.detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_with_the_workload_api() {
    init();
    let opts = scenarios::demo::DemoOptions {
        zones: 2,
        proxies: 1,
        once: true,
        ec: true,
        workload_api: true,
        ..Default::default()
    };
    let report = scenarios::demo::run(opts, std::future::pending())
        .await
        .unwrap();
    assert_passed(
        &report,
        &[
            "the page's Mesh and Secret applied",
            "proxy web-z1 (zone-1) certificate",
            "cross-zone mTLS handshake: web-z1 → web-z2",
            "py-spiffe fetches web-z1's X.509-SVID (Workload API)",
            "spiffe-tls mTLS across zones: web-z1 → web-z2",
        ],
    );
    let cert = report.step("proxy web-z1 (zone-1) certificate").unwrap();
    assert!(
        cert.detail.contains("URI SANs spiffe://default/web;"),
        "one URI SAN: {}",
        cert.detail
    );
    let fetched = report
        .step("py-spiffe fetches web-z1's X.509-SVID (Workload API)")
        .unwrap();
    assert!(
        fetched
            .detail
            .contains("made (never sent to the zone): True"),
        "{}",
        fetched.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_with_two_replicas_on_postgresql() {
    init();
    let opts = scenarios::demo::DemoOptions {
        zones: 2,
        proxies: 1,
        once: true,
        backend: testkit::cluster::BackendKind::Builtin,
        replicas: 2,
        ..Default::default()
    };
    let report = scenarios::demo::run(opts, std::future::pending())
        .await
        .unwrap();
    assert_passed(
        &report,
        &[
            "PostgreSQL",
            "global",
            "zones online (global get zones)",
            "dataplanes (global get dataplanes)",
            "cross-zone mTLS handshake: web-z1 → web-z2",
        ],
    );
    let global = report.step("global").unwrap();
    assert!(
        global.detail.starts_with("2 replicas on PostgreSQL"),
        "{}",
        global.detail
    );
    let zone = report.step("zone zone-1").unwrap();
    assert!(
        zone.detail.contains("--global-address grpcs://"),
        "{}",
        zone.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_gives_each_broken_backend_its_verdict_and_stores_nothing() {
    init();
    let report = scenarios::drills::dry_run::run(scenarios::drills::dry_run::DryRunOptions {
        common: scenarios::drills::CommonArgs {
            ec: true,
            dir: None,
        },
    })
    .await
    .unwrap();
    assert_passed(
        &report,
        &[
            "validate: good",
            "apply --dry-run: good",
            "validate: wrong token",
            "apply --dry-run: wrong token",
            "validate: missing role",
            "apply --dry-run: missing role",
            "validate: TTL above max_ttl",
            "apply --dry-run: TTL above max_ttl",
            "validate: SAN not allowed",
            "apply --dry-run: SAN not allowed",
            "validate: bad CA cert",
            "apply --dry-run: bad CA cert",
            "validate: unreachable address",
            "apply --dry-run: unreachable address",
            "nothing stored",
        ],
    );
    let unreachable = report.step("validate: unreachable address").unwrap();
    assert!(
        unreachable.detail.starts_with("exit 3"),
        "{}",
        unreachable.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_damage_never_reaches_the_zones() {
    init();
    let report =
        scenarios::drills::store_damage::run(scenarios::drills::store_damage::StoreDamageOptions {
            offsets: 4,
            common: scenarios::drills::CommonArgs::default(),
        })
        .await
        .unwrap();
    assert_passed(
        &report,
        &[
            "damaged store files: refused or served whole",
            "store restored alone from the older backup: refused",
            "store wiped, keys and manifest kept: refused",
            "whole data directory restored from the backup",
            "operator accepts with --accept-store-rollback",
            "global export --include-secrets",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_zone_loses_nothing_and_issues_nothing_twice() {
    init();
    let report = scenarios::drills::failover_zone::run(
        scenarios::drills::failover_zone::FailoverZoneOptions {
            proxies: 20,
            max_concurrent: 2,
            common: scenarios::drills::CommonArgs {
                ec: true,
                dir: None,
            },
        },
    )
    .await
    .unwrap();
    assert_passed(
        &report,
        &[
            "zone-1 killed (SIGKILL) mid-issuance",
            "global marks the zone offline",
            "zone restarted: its store is intact",
            "global marks the zone online again",
            "every proxy reconnects and holds a certificate",
            "no certificate lost or issued twice without need",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_global_zones_keep_issuing_and_resync() {
    init();
    let report = scenarios::drills::failover_global::run(
        scenarios::drills::failover_global::FailoverGlobalOptions {
            zones: 2,
            proxies: 1,
            expiration: "10s".into(),
            common: scenarios::drills::CommonArgs {
                ec: true,
                dir: None,
            },
        },
    )
    .await
    .unwrap();
    assert_passed(
        &report,
        &[
            "global killed (SIGKILL)",
            "zone-1 issues to a new proxy while global is down",
            "certificates renewed while global is down",
            "zone-2 restarted while global is down works from its store",
            "global back on the same ports and data dir",
            "zones reconnect and resync",
            "global lists every dataplane",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_replica_moves_zones_and_loses_no_acknowledged_write() {
    init();
    let report = scenarios::drills::failover_replica::run(
        scenarios::drills::failover_replica::FailoverReplicaOptions {
            writers: 20,
            kills: 3,
            proxies: 2,
            common: scenarios::drills::CommonArgs {
                ec: true,
                dir: None,
            },
        },
    )
    .await
    .unwrap();
    assert_passed(
        &report,
        &[
            "cluster up",
            "writers running",
            "SIGKILL of replica",
            "SIGSTOP of replica",
            "PostgreSQL restarted",
            "replica",
            "writers stopped: no acknowledged write lost",
            "global lists every dataplane again",
        ],
    );
    let kept = report.step("writers stopped").unwrap();
    assert!(kept.detail.contains("0 lost; "), "{}", kept.detail);
    assert!(kept.detail.contains("3 SIGKILLs"), "{}", kept.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_outage_proxies_keep_certificates_and_zones_recover() {
    init();
    let report =
        scenarios::drills::vault_outage::run(scenarios::drills::vault_outage::VaultOutageOptions {
            zones: 2,
            proxies: 1,
            expiration: "20s".into(),
            common: scenarios::drills::CommonArgs {
                ec: true,
                dir: None,
            },
        })
        .await
        .unwrap();
    assert_passed(
        &report,
        &[
            "Vault stopped",
            "proxies keep their certificates past the rotation point",
            "zones report the outage to global",
            "Vault back",
            "zones recover by themselves",
            "trust bundles switch to the new root",
            "cross-zone mTLS with the new certificates",
        ],
    );
    let outage = report.step("zones report the outage to global").unwrap();
    assert!(
        outage.detail.contains("cannot reach Vault"),
        "{}",
        outage.detail
    );
}

/// Processes whose command line contains `pattern` (`pgrep -f`).
fn pgrep(pattern: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", "--", pattern])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn demo_stays_up_until_ctrl_c_and_leaves_no_process_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_scenarios"))
        .args(["demo", "--ec", "--zones", "2", "--proxies", "1", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Up: the checks passed and it waits for Ctrl-C.
    let started = Instant::now();
    let mut seen = String::new();
    let mut bao_port = None;
    let mut gui = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(180).saturating_sub(started.elapsed()))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("the demo did not come up:\n{seen}")
            });
        if let Some(rest) = line.split("bao server -dev at http://127.0.0.1:").nth(1) {
            bao_port = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .map(str::to_string);
        }
        if let Some(rest) = line.trim_start().strip_prefix("GUI") {
            gui = rest.split_whitespace().next().map(str::to_string);
        }
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    assert!(seen.contains("all 10 steps passed"), "{seen}");
    let bao = format!(
        "dev-listen-address=127.0.0.1:{}",
        bao_port.expect("the demo printed OpenBao's address")
    );
    let dir_pattern = dir.display().to_string();
    let running = pgrep(&dir_pattern);
    // global, 2 zones, 2 proxies.
    assert!(running.len() >= 5, "{running:?}");
    assert_eq!(pgrep(&bao).len(), 1, "OpenBao is not running");
    // The GUI's address among "Where things are", and global serves it there.
    let gui = gui.expect("the demo printed the GUI's address");
    let page = http_get(&gui);
    assert!(
        page.starts_with("HTTP/1.1 200")
            && page.contains("content-security-policy: default-src 'self'"),
        "{gui}: {page}"
    );

    // Ctrl-C.
    testkit::proc::signal_pid(child.id(), libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("stopped 6 processes"), "{out}");
    let left = pgrep(&dir_pattern);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let left = pgrep(&bao);
    assert!(left.is_empty(), "OpenBao left behind: {left:?}");
    assert!(Path::new(&dir).join("global").join("global.log").exists());
}

/// `GET url` (`http://127.0.0.1:PORT/PATH`) over a plain socket: the answer's head and body.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}
