//! Reuse: a reconnecting proxy's presented chain is kept (no issuance, `key_pem: None`) when it
//! chains to the backend's anchors, carries the SANs and common name of its tags, was issued
//! under the current backend conf and is before its rotation point.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::records::CertMeta;
use super::table::{AnchorSet, Snap};
use super::{DpKey, IdentityManager, policy, source};

impl IdentityManager {
    /// Checks a presented chain; returns the metadata to keep it under, or why not.
    pub(super) fn evaluate(
        &self,
        presented: &str,
        set: &AnchorSet,
        snap: &Snap,
    ) -> Result<CertMeta, String> {
        let ders = common::x509::pem_to_ders(presented).map_err(|e| e.to_string())?;
        let leaf = &ders[0];
        let s = common::x509::summarize_der(leaf).map_err(|e| e.to_string())?;
        let want: BTreeSet<String> =
            common::ca::uri_sans_for(snap.backend.uri_sans(), &snap.bid.0, &snap.tags)?
                .into_iter()
                .collect();
        let got: BTreeSet<String> = s.uri_sans.iter().cloned().collect();
        if want != got {
            return Err(format!("URI SANs {got:?} are not {want:?}"));
        }
        if let Some(cn) = source::expected_common_name(&snap.backend, &snap.tags)
            && s.common_name.as_deref() != Some(cn.as_str())
        {
            return Err(format!("common name is not {cn:?}"));
        }
        let mut inters: Vec<Vec<u8>> = ders[1..].to_vec();
        inters.extend(set.others.iter().cloned());
        common::x509::verify_chain(leaf, &inters, &set.roots).map_err(|e| e.to_string())?;
        let ttl = snap.ttl.as_secs() as i64;
        match &snap.record_cert {
            Some(r) if r.serial == s.serial => {
                if r.backend_gen != snap.backend_gen {
                    return Err("issued under another backend configuration".into());
                }
            }
            _ => {
                let lifetime = s.not_after - s.not_before;
                if lifetime > ttl + 120 || lifetime < ttl - 120 {
                    return Err(format!(
                        "its lifetime {lifetime}s is not the configured {ttl}s"
                    ));
                }
            }
        }
        let now = self.clock.now_unix();
        let fraction = self.config.rotation_fraction;
        if now >= policy::rotate_at_unix(s.not_before, s.not_after, snap.ttl, fraction, 0.0) {
            return Err("past its rotation point".into());
        }
        let rotate_at = policy::rotate_at_unix(
            s.not_before,
            s.not_after,
            snap.ttl,
            fraction,
            policy::rotation_jitter(),
        )
        .max(now);
        Ok(CertMeta {
            serial: s.serial,
            backend: snap.backend.name.clone(),
            backend_type: snap.type_str.to_string(),
            backend_gen: snap.backend_gen.clone(),
            anchors_id: String::new(),
            not_before: s.not_before,
            not_after: s.not_after,
            tags_hash: snap.tags_hash.clone(),
            rotate_at,
        })
    }

    pub(super) fn install_reused(
        &self,
        key: &DpKey,
        snap: &Snap,
        anchors_id: &str,
        mut meta: CertMeta,
        presented: String,
    ) -> bool {
        let mut st = self.lock();
        match st.still_applies(key, snap) {
            None => return false,
            Some(false) => {
                // Things moved while we looked: decide again (the proxy still holds that chain).
                if let Some(c) = st.proxies.get_mut(key).and_then(|p| p.conn.as_mut()) {
                    c.presented = Some(presented);
                }
                return true;
            }
            Some(true) => {}
        }
        meta.anchors_id = anchors_id.to_string();
        self.counters.reused.fetch_add(1, Ordering::Relaxed);
        self.metrics().reused.inc();
        self.install(st, key, meta, presented, None);
        false
    }
}
