//! The generated code of the global<->zone sync protocol (`proto/kds.proto`, package
//! `kmesh.sync.v1`: messages, the tonic server trait `zone_sync_server::ZoneSync` and the client
//! `zone_sync_client::ZoneSyncClient`) and of the proxy identity stream (`proto/identity.proto`,
//! package `kmesh.identity.v1`: `dataplane_identity_server::DataplaneIdentity` and
//! `dataplane_identity_client::DataplaneIdentityClient`) and of the SPIFFE Workload API
//! (`proto/workload.proto`, no package, as the standard defines it: `workload::X509SVID` and the
//! others, `spiffe_workload_api_server::SpiffeWorkloadApi` serving the service `SpiffeWorkloadAPI`,
//! and `spiffe_workload_api_client::SpiffeWorkloadApiClient`). No logic lives here; the only
//! hand-written code is the `Debug` of `Resource`, `IdentityResponse` and `X509SVID`, which must
//! never print a payload (Secret data) or a private key.

#[allow(clippy::all, clippy::pedantic)]
pub mod sync {
    pub mod v1 {
        tonic::include_proto!("kmesh.sync.v1");

        impl std::fmt::Debug for Resource {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Resource")
                    .field("mesh", &self.mesh)
                    .field("name", &self.name)
                    .field("version", &self.version)
                    .field("payload", &format_args!("<{} bytes>", self.payload.len()))
                    .finish()
            }
        }
    }
}

#[allow(clippy::all, clippy::pedantic)]
pub mod identity {
    pub mod v1 {
        tonic::include_proto!("kmesh.identity.v1");

        impl std::fmt::Debug for IdentityResponse {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("IdentityResponse")
                    .field("generation", &self.generation)
                    .field("backend", &self.backend)
                    .field("serial", &self.serial)
                    .field("not_before_unix", &self.not_before_unix)
                    .field("not_after_unix", &self.not_after_unix)
                    .field(
                        "key_pem",
                        &self.key_pem.as_ref().map(|_| format_args!("<redacted>")),
                    )
                    .finish_non_exhaustive()
            }
        }
    }
}

/// The SPIFFE Workload API. The standard's proto has no package: its generated file is `_.rs`.
#[allow(clippy::all, clippy::pedantic)]
pub mod workload {
    tonic::include_proto!("_");

    impl std::fmt::Debug for X509svid {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("X509SVID")
                .field("spiffe_id", &self.spiffe_id)
                .field(
                    "x509_svid",
                    &format_args!("<{} bytes>", self.x509_svid.len()),
                )
                .field("x509_svid_key", &format_args!("<redacted>"))
                .field("bundle", &format_args!("<{} bytes>", self.bundle.len()))
                .field("hint", &self.hint)
                .finish()
        }
    }
}

pub use identity::v1 as dpid;
pub use sync::v1 as kds;
