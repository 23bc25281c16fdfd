//! The sled backend of `store::Store` (zones, and global by default): opening (waiting briefly
//! for the lock of a store just closed in this process; a store sled cannot read, or panics on,
//! is `StoreError::Damaged`), and getting well again after a failed write. sled applies a write in
//! memory before it flushes it, and after an I/O error (a full disk) it refuses every later write
//! until it is opened again (which itself needs room on the disk). So after a failed write: what
//! it changed is hidden from reads (the previous values are served in its place), writes are
//! refused saying why (`failing`: `/readyz`, 507 answers, a zone's report), and every second a
//! probe looks for room on the disk; once there is, the database is opened again from what is on
//! disk, the store's index made to match it, and writes go on by themselves.
//!
//! sled keeps superseded values in its log until it reclaims their segments, so once records
//! written in plain text were sealed (`store_sealing`), the database is rewritten whole into
//! fresh files and swapped in (`rewrite_copy`, `finish_rewrite`), which leaves no plain copy in
//! the store's directory; a start interrupted in the middle of a swap finishes it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::StoreError;

/// How long `open` waits for sled's lock on a store just closed.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// How often a failing store looks for room on its disk.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Room on the disk (bytes) before the database is opened again: a few of sled's segments.
const MIN_FREE: u64 = 2 * 1024 * 1024;

pub(crate) const RESOURCES: &str = "resources";
pub(crate) const META: &str = "meta";

/// The open database and its two trees.
#[derive(Clone)]
pub(crate) struct Handles {
    pub db: sled::Db,
    pub resources: sled::Tree,
    pub meta: sled::Tree,
}

impl Handles {
    fn of(db: sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            resources: db.open_tree(RESOURCES)?,
            meta: db.open_tree(META)?,
            db,
        })
    }
}

/// Encoded resource key -> the value it had before a failed write (`None`: absent).
pub(crate) type Hidden = std::collections::BTreeMap<Vec<u8>, Option<sled::IVec>>;

/// What the store does once the database was opened again (make its index match).
type OnReopen = Box<dyn Fn(&Handles) + Send + Sync>;

/// The sled database of a store, reopened after a failed write.
pub(crate) struct Sled {
    /// The data directory (`<dir>/store` holds sled's files); `None`: a temporary store.
    dir: Option<PathBuf>,
    handles: RwLock<Option<Handles>>,
    /// Why writes fail, while they do.
    failing: watch::Sender<Option<String>>,
    /// What failed writes changed in memory, with the values reads see instead.
    hidden: RwLock<Hidden>,
    probing: Mutex<bool>,
    on_reopen: Mutex<Option<OnReopen>>,
}

impl Sled {
    /// Opens (or creates) the database of the store in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<(Arc<Self>, Handles), StoreError> {
        let open_err = |e: std::io::Error| StoreError::Open {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        crate::file::private_dir(dir).map_err(open_err)?;
        finish_rewrite(dir).map_err(open_err)?;
        let handles = open_handles(dir)?;
        // sled creates its files with the process's umask: readable by no one else, whatever it.
        crate::file::restrict_tree(&dir.join("store")).map_err(open_err)?;
        Ok((
            Self::with(Some(dir.to_path_buf()), handles.clone()),
            handles,
        ))
    }

    /// A database in memory only (unit tests).
    pub(crate) fn temporary() -> Result<(Arc<Self>, Handles), StoreError> {
        let handles = Handles::of(sled::Config::new().temporary(true).open()?)?;
        Ok((Self::with(None, handles.clone()), handles))
    }

    fn with(dir: Option<PathBuf>, handles: Handles) -> Arc<Self> {
        Arc::new(Self {
            dir,
            handles: RwLock::new(Some(handles)),
            failing: watch::channel(None).0,
            hidden: RwLock::new(Hidden::new()),
            probing: Mutex::new(false),
            on_reopen: Mutex::new(None),
        })
    }

    /// Sets what runs after the database was opened again.
    pub(crate) fn on_reopen(&self, f: OnReopen) {
        *self.on_reopen.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// The values reads see in place of what failed writes changed (empty when none failed).
    pub(crate) fn hidden(&self) -> std::sync::RwLockReadGuard<'_, Hidden> {
        self.hidden.read().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err` saying why while writes fail (they are refused before sled is asked).
    pub(crate) fn writable(&self) -> Result<(), StoreError> {
        match self.failing.borrow().as_ref() {
            None => Ok(()),
            Some(why) => Err(StoreError::DiskFull {
                path: self.path(),
                reason: format!("writes are refused until the disk has room again ({why})"),
            }),
        }
    }

    /// The path named in messages.
    pub(crate) fn path(&self) -> String {
        self.dir.as_ref().map_or("(in memory)".into(), |d| {
            d.join("store").display().to_string()
        })
    }

    /// The database as it stands; reopened first when a failed reopen left none.
    pub(crate) fn handles(&self) -> Result<Handles, StoreError> {
        if let Some(h) = self
            .handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(h.clone());
        }
        self.reopen()
    }

    /// A named tree of the database.
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.handles()?.db.open_tree(name)?)
    }

    /// Why writes fail now (`None`: they do not), and a receiver of every change of it.
    pub(crate) fn failing(&self) -> watch::Receiver<Option<String>> {
        self.failing.subscribe()
    }

    /// Flushes what was applied in memory to disk.
    pub(crate) async fn flush(&self, h: &Handles) -> Result<(), StoreError> {
        h.db.flush_async().await?;
        Ok(())
    }

    /// After a write failed with `e` (`before`: the encoded keys it changed, with their values
    /// before it): what it changed in memory is hidden from reads, writes are refused until the
    /// probe finds room again, and the error to answer is returned (`DiskFull` for a full disk).
    pub(crate) fn write_failed(
        self: &Arc<Self>,
        e: sled::Error,
        before: Vec<(Vec<u8>, Option<sled::IVec>)>,
    ) -> StoreError {
        let error = match &e {
            sled::Error::Io(io) if is_disk_full(io) => StoreError::DiskFull {
                path: self.path(),
                reason: io.to_string(),
            },
            _ => StoreError::Sled(e),
        };
        {
            let mut hidden = self.hidden.write().unwrap_or_else(|e| e.into_inner());
            for (k, v) in before {
                hidden.entry(k).or_insert(v);
            }
        }
        if self.dir.is_none() {
            return error;
        }
        let already = self.failing.borrow().is_some();
        self.failing.send_replace(Some(error.to_string()));
        if !already {
            tracing::error!(store = %self.path(), error = %error, "a write to the store failed: writes are refused until the disk has room again");
        }
        self.start_probe();
        error
    }

    /// Opens the database again (every handle of the old one dropped first).
    fn reopen(&self) -> Result<Handles, StoreError> {
        let dir = self.dir.as_ref().ok_or_else(|| StoreError::Open {
            path: self.path(),
            reason: "a temporary store cannot be opened again".into(),
        })?;
        let mut slot = self.handles.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        let handles = open_handles(dir)?;
        *slot = Some(handles.clone());
        Ok(handles)
    }

    /// Every second, on the runtime: once the disk has room, opens the database again from
    /// disk, drops what was hidden, and lets writes go on.
    fn start_probe(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut probing = self.probing.lock().unwrap_or_else(|e| e.into_inner());
            if *probing {
                return;
            }
            *probing = true;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(sled) = weak.upgrade() else { return };
                match sled.recover() {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(store = %sled.path(), error = %e, "the store cannot be opened again yet");
                    }
                }
            }
            if let Some(sled) = weak.upgrade() {
                *sled.probing.lock().unwrap_or_else(|e| e.into_inner()) = false;
            }
        });
    }

    /// When the disk has room: the database opened again, what was hidden dropped, the store
    /// told, writes allowed. `Ok(false)` while there is no room yet.
    fn recover(&self) -> Result<bool, StoreError> {
        let Some(dir) = &self.dir else {
            return Ok(true);
        };
        let free = fs2::available_space(dir).unwrap_or(0);
        if free < MIN_FREE {
            return Ok(false);
        }
        *self.handles.write().unwrap_or_else(|e| e.into_inner()) = None;
        let handles = self.reopen()?;
        self.hidden
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if let Some(f) = self
            .on_reopen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f(&handles);
        }
        self.failing.send_replace(None);
        tracing::info!(store = %self.path(), free_bytes = free, "the store's disk has room again: store opened again from disk, writes resume");
        Ok(true)
    }
}

/// Whether an I/O error says the disk (or the quota) is full.
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122))
        || e.kind() == std::io::ErrorKind::StorageFull
        || e.to_string().contains("No space left on device")
}

/// Opens sled's files under `dir`, waiting up to `LOCK_WAIT` for a lock held a moment longer by
/// a database just dropped (sled's I/O threads finish its last writes); damaged files are
/// `StoreError::Damaged`.
fn open_handles(dir: &Path) -> Result<Handles, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let damaged = |reason: String| StoreError::Damaged {
        path: dir.join("store").display().to_string(),
        reason,
    };
    loop {
        // sled panics on some damaged files (a store cut short): that is a damaged store too.
        let opened = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(dir.join("store"))
                .mode(sled::Mode::HighThroughput)
                .open()
                .and_then(Handles::of)
        })
        .map_err(|p| damaged(panic_text(p)))?;
        match opened {
            Ok(h) => return Ok(h),
            // sled says so only in the text of an `ErrorKind::Other`.
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if is_damage(&e) => return Err(damaged(e.to_string())),
            Err(e) => {
                return Err(StoreError::Open {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
}

/// Anything but an I/O failure means the files are not a store sled can read.
pub(crate) fn is_damage(e: &sled::Error) -> bool {
    matches!(
        e,
        sled::Error::Corruption { .. }
            | sled::Error::Unsupported(_)
            | sled::Error::ReportableBug(_)
    )
}

/// The message of a caught panic.
pub(crate) fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    let text = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into());
    format!("the storage engine failed reading it ({text})")
}

/// Where a rewrite copies the database, and where the copy waits, complete, to be swapped in.
const REWRITING: &str = "store.rewriting";
const REWRITTEN: &str = "store.rewritten";
/// Where the database replaced by its copy goes before it is deleted.
const REPLACED: &str = "store.replaced";

/// The first half of a rewrite of the database of the store in `dir` (open as `h`): every tree
/// copied into fresh files (`store.rewriting`), checked against the original (sled's checksum of
/// every tree, key and value), and renamed `store.rewritten` once complete. The caller then
/// drops every handle of the database and calls [`finish_rewrite`], which swaps the copy in.
pub(crate) fn rewrite_copy(dir: &Path, h: &Handles) -> Result<(), StoreError> {
    let copying = dir.join(REWRITING);
    let io = |e: std::io::Error| StoreError::Open {
        path: copying.display().to_string(),
        reason: e.to_string(),
    };
    if copying.exists() {
        std::fs::remove_dir_all(&copying).map_err(io)?;
    }
    {
        let copy = sled::Config::new()
            .path(&copying)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        for name in h.db.tree_names() {
            let from = h.db.open_tree(&name)?;
            let to = copy.open_tree(&name)?;
            for item in from.iter() {
                let (k, v) = item?;
                to.insert(k, v)?;
            }
        }
        copy.flush()?;
        let (ours, theirs) = (h.db.checksum()?, copy.checksum()?);
        if ours != theirs {
            drop(copy);
            let _ = std::fs::remove_dir_all(&copying);
            return Err(StoreError::Open {
                path: copying.display().to_string(),
                reason: format!(
                    "the copy differs from the store (checksums {theirs:08x} and {ours:08x})"
                ),
            });
        }
    }
    crate::file::restrict_tree(&copying).map_err(io)?;
    std::fs::rename(&copying, dir.join(REWRITTEN)).map_err(io)?;
    Ok(())
}

/// Swaps a complete copy (`store.rewritten`) in for `store` and deletes the old files; also what
/// every open does first, so a start that stopped in the middle of a swap is finished. An
/// incomplete copy (`store.rewriting`) is deleted: the store it was made from is still in place.
pub(crate) fn finish_rewrite(dir: &Path) -> std::io::Result<()> {
    let (store, copying, copied, replaced) = (
        dir.join("store"),
        dir.join(REWRITING),
        dir.join(REWRITTEN),
        dir.join(REPLACED),
    );
    if copying.exists() {
        std::fs::remove_dir_all(&copying)?;
    }
    if copied.exists() {
        if store.exists() {
            if replaced.exists() {
                std::fs::remove_dir_all(&replaced)?;
            }
            std::fs::rename(&store, &replaced)?;
        }
        std::fs::rename(&copied, &store)?;
        tracing::info!(store = %store.display(), "the store's files were rewritten");
    }
    if replaced.exists() && store.exists() {
        std::fs::remove_dir_all(&replaced)?;
    }
    Ok(())
}
