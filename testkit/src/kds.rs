//! A raw zone on global's sync stream, for tests that play a zone (or a hostile one): its own
//! token and TLS connection, subscriptions and ACKs as a zone sends them, and any status report
//! the test crafts.

use std::time::Duration;

use anyhow::{Context, Result};
use proto::sync::v1 as kds;
use proto::sync::v1::zone_sync_client::ZoneSyncClient;
use proto::sync::v1::{global_message, zone_message};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// One stream to global, as zone `name`.
pub struct RawZone {
    tx: mpsc::Sender<kds::ZoneMessage>,
    inbound: tonic::Streaming<kds::GlobalMessage>,
}

impl RawZone {
    /// Dials global's sync server on `port` (trusting `ca_pem`) with `token` as zone `name`, and
    /// subscribes to every synced kind with nothing held.
    pub async fn connect(port: u16, ca_pem: &[u8], name: &str, token: &str) -> Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
            .tls_config(
                ClientTlsConfig::new()
                    .domain_name("127.0.0.1")
                    .ca_certificate(Certificate::from_pem(ca_pem)),
            )?
            .connect()
            .await
            .context("dialing global's sync server")?;
        let (tx, rx) = mpsc::channel(16);
        for kind in common::sync::SYNCED_KINDS {
            tx.send(kds::ZoneMessage {
                message: Some(zone_message::Message::Request(kds::DiscoveryRequest {
                    r#type: kind.as_str().to_string(),
                    ..Default::default()
                })),
            })
            .await?;
        }
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        request
            .metadata_mut()
            .insert(common::sync::ZONE_NAME_HEADER, name.parse()?);
        let inbound = ZoneSyncClient::new(channel)
            .max_decoding_message_size(common::limits::SYNC_MESSAGE_BYTES)
            .sync(request)
            .await?
            .into_inner();
        Ok(Self { tx, inbound })
    }

    /// Sends a status report.
    pub async fn report(&self, status: kds::ZoneStatus) -> Result<()> {
        self.tx
            .send(kds::ZoneMessage {
                message: Some(zone_message::Message::Status(status)),
            })
            .await?;
        Ok(())
    }

    /// The next response from global, acknowledged as soon as it is read; `None` when global
    /// ended the stream.
    pub async fn next(&mut self) -> Result<Option<kds::DiscoveryResponse>> {
        loop {
            let Some(msg) = self.inbound.message().await? else {
                return Ok(None);
            };
            if let Some(global_message::Message::Response(resp)) = msg.message {
                self.tx
                    .send(kds::ZoneMessage {
                        message: Some(zone_message::Message::Request(kds::DiscoveryRequest {
                            r#type: resp.r#type.clone(),
                            response_nonce: resp.nonce.clone(),
                            ..Default::default()
                        })),
                    })
                    .await?;
                return Ok(Some(resp));
            }
        }
    }

    /// Reads (and acknowledges) responses for `wait`; returns how many came.
    pub async fn ack_for(&mut self, wait: Duration) -> Result<usize> {
        let mut n = 0;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(r) = tokio::time::timeout_at(deadline, self.next()).await {
            if r?.is_none() {
                break;
            }
            n += 1;
        }
        Ok(n)
    }
}
