//! Child processes of tests and scenarios, and the only `unsafe` of the test kit: a child started
//! in its own process group ([`ProcessGroup`]) is signalled as a group with `kill(2)` and killed
//! (the whole group) when dropped, so a failed test, a panic or Ctrl-C leaves nothing behind.
//! [`Proc`] is such a child with its stderr in a log file; [`run_bounded`] runs a command to
//! completion under a time limit. Also the small process-side helpers everybody needs: free
//! loopback ports, the tails of log files, the text of an `Output`, a private (0600) file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A free TCP port on loopback, for a child process to listen on.
///
/// Never one of the kernel's ephemeral ports (`net.ipv4.ip_local_port_range`): those are what
/// every outgoing connection (a zone's to Vault, a test's to an API) takes, so a port that was
/// free when asked can be somebody's source port before the child binds it (a CI run failed so:
/// "address already in use (--kds-addr)"). Ports below that range are handed out in turn from a
/// start that differs per process (test binaries running side by side do not walk in step),
/// never twice by one process, and only even ones: a server may also take the port after its
/// own (`bao server -dev` listens on PORT+1 for its cluster), which is never handed out then
/// (another CI run failed so, when ports were handed out one after the other). Each is checked
/// bindable, with the one after it, on 127.0.0.1 and 0.0.0.0.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (low, high) = (10_000u32, ephemeral_start().clamp(10_002, 65_535));
    // How many even ports below `high` there are from `low` on, with room for the one after.
    let pairs = (high - low) / 2;
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = std::process::id().wrapping_mul(7_919).wrapping_add(nanos) % pairs;
        let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    let free = |host: &str, port: u32| std::net::TcpListener::bind((host, port as u16)).is_ok();
    for _ in 0..pairs {
        let port = low + 2 * (NEXT.fetch_add(1, Ordering::Relaxed) % pairs);
        if [port, port + 1]
            .iter()
            .all(|&p| free("127.0.0.1", p) && free("0.0.0.0", p))
        {
            return port as u16;
        }
    }
    // Everything below the ephemeral range is taken: let the kernel choose.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The first of the kernel's ephemeral ports (Linux's default when it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The end (150 lines) of every `*.log` file under `dir`, recursively, each under a `==== path`
/// header: what a timed-out wait prints.
pub fn logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for p in entries {
        if p.extension().is_some_and(|e| e == "log") {
            out.push_str(&format!("==== {}\n", p.display()));
            // The end of long logs is what matters.
            out.push_str(&log_tail(&p, 150));
            out.push('\n');
        } else if p.is_dir() {
            out.push_str(&logs(&p));
        }
    }
    out
}

/// stdout then stderr of a finished command.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// stdout of a finished command.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of a finished command.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes a secret file with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    common::file::write_atomic(path, data, 0o600)
}

/// Sends `sig` (e.g. `libc::SIGINT`) to process `pid`: for a child a test started itself.
pub fn signal_pid(pid: u32, sig: libc::c_int) {
    kill(pid, false, sig);
}

/// Sends `sig` to `pid`, or to the process group `pid` leads when `group`.
fn kill(pid: u32, group: bool, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the process
    // group that `process_group(0)` made the child the leader of.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(target, sig);
    }
}

/// A child started in its own process group; the whole group is killed when dropped.
#[derive(Debug)]
pub struct ProcessGroup(Option<Child>);

impl ProcessGroup {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        Ok(Self(Some(cmd.spawn()?)))
    }

    /// The leader's pid, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Sends `sig` to the whole group.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            kill(pid, true, sig);
        }
    }

    /// Has the child exited? (`Some(status text)` if so.)
    pub fn exited(&mut self) -> Option<String> {
        match self.0.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Is the child there and still running?
    pub fn is_running(&mut self) -> bool {
        self.0.is_some() && self.exited().is_none()
    }

    /// SIGTERM to the group, then SIGKILL after `grace`; then SIGKILL to anything left in the
    /// group. Returns the exit status if the child was still there.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        let pid = child.id();
        kill(pid, true, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Err(_) => break None,
                Ok(None) if Instant::now() >= deadline => {
                    kill(pid, true, libc::SIGKILL);
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        // Anything else left in the group (there should be nothing).
        kill(pid, true, libc::SIGKILL);
        status
    }

    /// SIGKILL to the group at once (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            kill(child.id(), true, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM to the leader alone; its exit status if it exits within `limit` (the child is
    /// then reaped), `Err` with the reason otherwise (the child is left for `Drop` to kill).
    pub fn terminate(&mut self, limit: Duration) -> std::result::Result<ExitStatus, String> {
        let Some(child) = self.0.as_mut() else {
            return Err("not running".into());
        };
        kill(child.id(), false, libc::SIGTERM);
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.0 = None;
                    return Ok(status);
                }
                Err(e) => return Err(e.to_string()),
                Ok(None) if start.elapsed() > limit => {
                    return Err(format!("did not stop within {limit:?} of SIGTERM"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // A test may have left it stopped (SIGSTOP): SIGKILL ends a stopped process too.
            kill(child.id(), true, libc::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A named child process in its own process group, stdout discarded, stderr appended to a log
/// file, without the caller's `VAULT_ADDR`/`VAULT_TOKEN`. Dropped = killed.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    group: ProcessGroup,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open log {}", log.display()))?;
        cmd.stdout(Stdio::null())
            .stderr(file)
            .stdin(Stdio::null())
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN");
        let group =
            ProcessGroup::spawn(&mut cmd).with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.to_string(),
            group,
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.group.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.group.is_running()
    }

    /// SIGTERM, then wait up to `grace`, then SIGKILL. Returns the exit status if it exited.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.group.stop(grace)
    }

    /// SIGKILL at once (a crash).
    pub fn kill9(&mut self) {
        self.group.kill9();
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the process group.
    pub fn signal(&self, sig: libc::c_int) {
        self.group.signal(sig);
    }

    /// Stops the process with SIGTERM and panics, with the logs under `logs_dir`, unless it
    /// exits successfully within 10 s (a test's "it stops cleanly").
    pub fn terminate(&mut self, logs_dir: &Path) {
        if self.pid().is_none() {
            return;
        }
        match self.group.terminate(Duration::from_secs(10)) {
            Ok(status) => assert!(
                status.success(),
                "{} exited with {status}\n{}",
                self.name,
                logs(logs_dir)
            ),
            Err(e) => {
                self.group.kill9();
                panic!("{} {e}\n{}", self.name, logs(logs_dir));
            }
        }
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// `None` when it was killed (signal or timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// stdout then stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs a command to completion with a time limit (killed after it), capturing its output.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Result<CmdOutput> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(CmdOutput {
        code: status.and_then(|s| s.code()),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports come from below the ephemeral range, even, never twice, and the port after each is
    /// free too (where `bao server -dev` puts its cluster listener).
    #[test]
    fn free_ports_are_distinct_even_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!(p >= 10_000 && u32::from(p) + 1 < ephemeral_start(), "{p}");
            assert_eq!(p % 2, 0, "{p}");
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok(),
                "{p}"
            );
        }
    }
}
