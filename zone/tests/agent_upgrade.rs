//! An agent of this release against a zone of the release before, which serves the identity
//! stream's `Stream` but not `Session` (agents are often upgraded before their zones): the agent
//! is told UNIMPLEMENTED, says once that its reports cannot reach that zone, and gets and writes
//! its identity over `Stream`. The older zone is stood in for by a TLS gRPC server that answers
//! as that release did (one bundle of a test CA); everything on the agent's side is the real
//! agent.

use std::time::Duration;

use futures::stream::BoxStream;
use proto::dpid::dataplane_identity_server::{DataplaneIdentity, DataplaneIdentityServer};
use proto::dpid::{AgentMessage, IdentityRequest, IdentityResponse};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// A CA, a server certificate for 127.0.0.1 and a proxy leaf, all from rcgen.
struct Pki {
    ca_pem: String,
    server: (String, String),
    leaf: (String, String),
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "older zone CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let signed = |sans: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    Pki {
        ca_pem: ca_cert.pem(),
        server: signed(vec!["127.0.0.1".into()]),
        leaf: signed(vec![]),
    }
}

/// The identity service as the previous release served it: `Stream` only.
struct OlderZone {
    bundle: IdentityResponse,
}

#[tonic::async_trait]
impl DataplaneIdentity for OlderZone {
    type StreamStream = BoxStream<'static, Result<IdentityResponse, Status>>;
    type SessionStream = BoxStream<'static, Result<IdentityResponse, Status>>;

    async fn stream(
        &self,
        request: Request<IdentityRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        assert_eq!(request.get_ref().name, "web-1");
        let bundle = self.bundle.clone();
        // One bundle, then the stream stays open as a zone's does.
        let s = futures::stream::once(async move { Ok(bundle) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(s)))
    }

    async fn session(
        &self,
        _: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        // What tonic answers for a method the server does not know.
        Err(Status::unimplemented(""))
    }
}

use futures::StreamExt;

#[tokio::test]
async fn an_agent_falls_back_to_the_older_stream_of_an_older_zone() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let ca_file = dir.path().join("zone-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "any").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let zone = OlderZone {
        bundle: IdentityResponse {
            generation: 1,
            cert_chain_pem: pki.leaf.0.clone(),
            key_pem: Some(pki.leaf.1.clone()),
            trust_bundle_pem: pki.ca_pem.clone(),
            backend: "ca-1".into(),
            serial: "01".into(),
            ..Default::default()
        },
    };
    let server = Server::builder()
        .tls_config(
            ServerTlsConfig::new().identity(Identity::from_pem(&pki.server.0, &pki.server.1)),
        )
        .unwrap()
        .add_service(DataplaneIdentityServer::new(zone))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let server = tokio::spawn(server);

    let out = dir.path().join("out");
    let log = dir.path().join("proxy.log");
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_zone"))
        .args([
            "proxy",
            "--zone-address",
            &format!("grpcs://127.0.0.1:{port}"),
        ])
        .arg("--zone-ca-file")
        .arg(&ca_file)
        .arg("--token-file")
        .arg(&token_file)
        .args(["--mesh", "default", "--name", "web-1", "--service", "web"])
        .arg("--out-dir")
        .arg(&out)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let written = loop {
        if let Ok(cert) = std::fs::read_to_string(out.join("cert.pem"))
            && cert.trim() == pki.leaf.0.trim()
        {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = agent.kill();
    let _ = agent.wait();
    server.abort();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        written,
        "the agent wrote nothing from the older zone\n{text}"
    );
    assert!(
        text.contains("the zone predates reports from agents"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("key.pem")).unwrap().trim(),
        pki.leaf.1.trim()
    );
}
