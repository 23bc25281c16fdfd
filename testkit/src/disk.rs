//! Breaking disks on purpose: copying data directories (a backup, a restore), flipping bytes at
//! an offset of a file, cutting a file short, listing a store's files, and a small tmpfs that
//! fills up ([`Tmpfs`]: mounted as root, unmounted on drop).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Copies `from` to `to` with `cp -a` (modes kept), replacing `to`.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(to);
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    if !st.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

/// Flips every bit of the 8 bytes at `offset` (fewer at the end of the file), so the file surely
/// changes there.
pub fn flip_bytes(file: &Path, offset: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let mut buf = [0u8; 8];
    f.seek(SeekFrom::Start(offset))?;
    let n = f.read(&mut buf)?;
    for b in &mut buf[..n] {
        *b ^= 0xFF;
    }
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&buf[..n])?;
    Ok(())
}

/// Cuts `file` to `numerator/denominator` of its length.
pub fn cut_short(file: &Path, numerator: u64, denominator: u64) -> Result<()> {
    let len = std::fs::metadata(file)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)?
        .set_len(len * numerator / denominator.max(1))?;
    Ok(())
}

/// Every non-empty regular file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else if std::fs::metadata(&p)?.len() > 0 {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `per_file` offsets spread over each non-empty file under `dir` (3 for files of at most 4 KiB),
/// as (path relative to `dir`, offset).
pub fn spread_offsets(dir: &Path, per_file: u64) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for f in files_under(dir)? {
        let len = std::fs::metadata(&f)?.len();
        let n = if len > 4096 { per_file.max(1) } else { 3 };
        for k in 0..n {
            let rel = f.strip_prefix(dir)?.to_path_buf();
            out.push((rel, (len * k / n + 7 * k).min(len.saturating_sub(1))));
        }
    }
    Ok(out)
}

/// A tmpfs of a given size mounted on a directory (as root), unmounted (lazily) on drop: a disk
/// that fills up.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` KiB on `dir` (created). Needs root.
    pub fn mount(dir: &Path, size_kib: u64) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs on {} failed (root is needed): {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Fills the disk with `<dir>/filler` until a write fails for lack of space; returns the
    /// bytes written.
    pub fn fill(&self) -> Result<u64> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler())?;
        let block = vec![0xA5u8; 4096];
        let mut n = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let _ = f.sync_all();
        Ok(n)
    }

    /// Frees what `fill` took.
    pub fn free(&self) -> Result<()> {
        std::fs::remove_file(self.filler())?;
        Ok(())
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Whether this process runs as root (mounting a tmpfs needs it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
