//! The generated code of the global<->zone sync protocol (`proto/kds.proto`, package
//! `kmesh.sync.v1`): messages, the tonic server trait `zone_sync_server::ZoneSync` and the
//! client `zone_sync_client::ZoneSyncClient`. No logic lives here; the only hand-written code is the `Debug` of
//! `Resource`, which must never print a payload (Secret data travels in it).

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

pub use sync::v1 as kds;
