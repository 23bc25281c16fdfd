//! The vocabulary of the global<->zone sync stream, defined once for both sides: which resource
//! kinds are synced, in which order, their names on the wire, and the metadata a zone names itself
//! with. The message bound is `limits::SYNC_MESSAGE_BYTES`.

use crate::model::Kind;

/// The kinds global sends to zones, in the order a zone subscribes and applies them: Secrets
/// before the Meshes that use them.
pub const SYNCED_KINDS: [Kind; 2] = [Kind::Secret, Kind::Mesh];

/// Optional metadata in which a zone names itself; global checks it against the zone's token.
pub const ZONE_NAME_HEADER: &str = "x-zone-name";

/// The synced kind named `s` on the wire (`DiscoveryRequest.type`), or `None`.
pub fn parse_kind(s: &str) -> Option<Kind> {
    SYNCED_KINDS.into_iter().find(|k| k.as_str() == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_and_nothing_else_parses() {
        for k in SYNCED_KINDS {
            assert_eq!(parse_kind(k.as_str()), Some(k));
        }
        assert_eq!(parse_kind("Dataplane"), None);
        assert_eq!(parse_kind("mesh"), None);
    }
}
