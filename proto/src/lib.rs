//! The generated code of the global<->zone sync protocol (`proto/kds.proto`, package
//! `kmesh.sync.v1`: messages, the tonic server trait `zone_sync_server::ZoneSync` and the client
//! `zone_sync_client::ZoneSyncClient`) and of the proxy identity stream (`proto/identity.proto`,
//! package `kmesh.identity.v1`: `dataplane_identity_server::DataplaneIdentity` and
//! `dataplane_identity_client::DataplaneIdentityClient`). No logic lives here; the only
//! hand-written code is the `Debug` of `Resource` and `IdentityResponse`, which must never print a
//! payload (Secret data) or a private key.

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

pub use identity::v1 as dpid;
pub use sync::v1 as kds;
