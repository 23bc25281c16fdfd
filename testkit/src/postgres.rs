//! A private PostgreSQL server per test: [`PgServer::start`] runs `initdb` into a fresh temporary
//! directory, starts `postgres` on a free loopback port with its Unix socket inside that directory,
//! waits until it is ready and creates the database `kmesh`. [`PgServer::stop`],
//! [`PgServer::start_again`] and [`PgServer::kill`] drive "PostgreSQL restarts" drills on the same
//! port and data, and dropping the value (also while a test unwinds from a panic) stops the server
//! at once and removes the directory. The binaries come from [`bin_dir`]: `$PG_BIN`, else the highest
//! `/usr/lib/postgresql/*/bin`, else (as root, with apt-get) the `postgresql` package is installed
//! under a cross-process lock. As root, the server runs as the `postgres` OS user via `runuser`.
//! The server runs with `fsync=off`: a killed server loses nothing committed (the kernel still holds
//! the writes), only a crash of the machine would. Linux only. Beside its data directory a server
//! keeps the Secrets key file global replicas on it share ([`secrets_key_file_for`]: the harness
//! passes it as `--secrets-key-file`).

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

/// The Debian package that brings the server binaries.
const PACKAGE: &str = "postgresql";
/// What a directory of server binaries must hold.
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// Serialises `apt-get install` across parallel test binaries.
const INSTALL_LOCK: &str = "/tmp/kmesh-pg-install.lock";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a start (pg_ctl start plus readiness) may take.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 20;
const DATABASE: &str = "kmesh";
/// Prefix of each server's temporary directory, and the file in it naming the owning process.
const DIR_PREFIX: &str = "kmesh-pg-";
const OWNER_FILE: &str = "owner.pid";
/// How many fresh ports `start` tries when another process grabbed the chosen one first.
const PORT_ATTEMPTS: usize = 5;
/// Client environment that could point psql or pg_ctl elsewhere.
const PG_ENV: [&str; 11] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGDATA",
    "PGSSLMODE",
];

static BIN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
/// The Secrets key file of each running server of this process, by URL (see
/// [`secrets_key_file_for`]).
static KEY_FILES: Mutex<std::collections::BTreeMap<String, PathBuf>> =
    Mutex::new(std::collections::BTreeMap::new());

/// The Secrets key file global replicas on the server at `url` share (`global run
/// --secrets-key-file`), when that server was started by this process: 32 random bytes in
/// base64, 0600, in the server's directory (outside its data directory), removed with it.
pub fn secrets_key_file_for(url: &str) -> Option<PathBuf> {
    KEY_FILES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(url)
        .cloned()
}
static REAP: Once = Once::new();

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `$PG_BIN` if set, else the highest
/// `/usr/lib/postgresql/*/bin` holding all three; else, when root and apt-get exists, it installs
/// the `postgresql` package (once per machine, under a lock file) and looks again; else an error
/// naming the package to install. The answer is cached for the process.
pub fn bin_dir() -> Result<PathBuf> {
    let mut cached = BIN_DIR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = cached.as_ref() {
        return Ok(dir.clone());
    }
    let dir = find_or_install()?;
    *cached = Some(dir.clone());
    Ok(dir)
}

fn find_or_install() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if let Some(missing) = SERVER_TOOLS.iter().find(|t| !dir.join(t).is_file()) {
            bail!("PG_BIN={} holds no `{missing}`", dir.display());
        }
        return Ok(dir);
    }
    if let Some(dir) = find_installed() {
        return Ok(dir);
    }
    let hint = format!(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found under \
         /usr/lib/postgresql/*/bin: install the `{PACKAGE}` package \
         (`apt-get install -y {PACKAGE}`) or set PG_BIN to their directory"
    );
    if !is_root() || find_in_path("apt-get").is_none() {
        bail!("{hint}");
    }
    let _lock = FileLock::acquire(Path::new(INSTALL_LOCK), INSTALL_TIMEOUT)?;
    // Another test binary may have installed it while this one waited for the lock.
    if let Some(dir) = find_installed() {
        return Ok(dir);
    }
    apt_install().with_context(|| hint.clone())?;
    find_installed().ok_or_else(|| anyhow!("`apt-get install -y {PACKAGE}` succeeded, yet: {hint}"))
}

/// The highest-versioned `/usr/lib/postgresql/VERSION/bin` holding every server tool.
fn find_installed() -> Option<PathBuf> {
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let name = entry.file_name();
        let Some(version) = name
            .to_string_lossy()
            .split('.')
            .map(|part| part.parse::<u64>().ok())
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        let complete = SERVER_TOOLS.iter().all(|t| bin.join(t).is_file());
        if complete && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// `apt-get install -y postgresql`; when that fails (typically: no package lists yet), one
/// `apt-get update` and a second try.
fn apt_install() -> Result<()> {
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        run(&mut cmd)
    };
    let install = ["install", "-y", "--no-install-recommends", PACKAGE];
    if apt(&install).is_ok() {
        return Ok(());
    }
    apt(&["update"])?;
    apt(&install).map(drop)
}

/// A lock file made with `create_new`, holding the owner's pid; removed on drop. A lock whose
/// owner is gone (or that stayed empty for a minute) is taken over.
struct FileLock(PathBuf);

impl FileLock {
    fn acquire(path: &Path, timeout: Duration) -> Result<FileLock> {
        let deadline = Instant::now() + timeout;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    let _ = writeln!(file, "{}", std::process::id());
                    return Ok(FileLock(path.to_path_buf()));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(path).unwrap_or_default();
                    let stale = match holder.trim().parse::<u32>() {
                        Ok(pid) => !pid_alive(pid),
                        Err(_) => age(path).is_some_and(|a| a > Duration::from_secs(60)),
                    };
                    if stale {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "waited {timeout:?} for {} (held by pid {}); remove it if stale",
                            path.display(),
                            holder.trim()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A private PostgreSQL server, stopped (immediately) and deleted on drop.
pub struct PgServer {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Removes `root` when dropped, after `Drop for PgServer` has stopped the server.
    _dir: tempfile::TempDir,
}

impl PgServer {
    /// initdb into a fresh temporary directory, start on a free loopback port, wait until ready
    /// (20 s at most) and create the database `kmesh`.
    pub fn start() -> Result<PgServer> {
        let bin = bin_dir()?;
        let as_postgres = is_root();
        // As root, the directory must be reachable by the postgres user: $TMPDIR may not be.
        let base = if as_postgres {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        REAP.call_once(|| reap_orphans(&base, &bin, as_postgres));
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(&base)
            .with_context(|| format!("creating a temporary directory in {}", base.display()))?;
        let root = dir.path().to_path_buf();
        fs::write(root.join(OWNER_FILE), format!("{}\n", std::process::id()))?;
        let sock = root.join("sock");
        fs::create_dir(&sock)?;
        if as_postgres {
            let (uid, gid) = postgres_ids()?;
            for path in [&root, &sock] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown postgres {}", path.display()))?;
            }
        }
        let mut server = PgServer {
            bin,
            data: root.join("data"),
            sock,
            log: root.join("server.log"),
            root,
            port: 0,
            as_postgres,
            _dir: dir,
        };
        server.initdb()?;
        let mut attempt = 1;
        loop {
            server.port = free_port()?;
            let log_before = fs::metadata(&server.log).map(|m| m.len()).unwrap_or(0);
            match server.launch() {
                Ok(()) => break,
                Err(_) if attempt < PORT_ATTEMPTS && server.port_clash_since(log_before) => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        server
            .psql_in("postgres", &format!("CREATE DATABASE {DATABASE}"))
            .context("creating the database")?;
        let key_file = server.root.join("secrets.key");
        common::sealing::SecretsKey::load_or_generate(&key_file)
            .context("making the replicas' Secrets key file")?;
        KEY_FILES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server.url(), key_file);
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/kmesh` (trust authentication, no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Secrets key file of the global replicas on this server (see [`secrets_key_file_for`]).
    pub fn secrets_key_file(&self) -> PathBuf {
        self.root.join("secrets.key")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether a postmaster claims the data directory (its `postmaster.pid` exists).
    pub fn is_running(&self) -> bool {
        self.data.join("postmaster.pid").exists()
    }

    /// Fast shutdown (`pg_ctl stop -m fast`): the data stays for [`PgServer::start_again`].
    /// A no-op when the server is not running.
    pub fn stop(&mut self) -> Result<()> {
        self.halt("fast")
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`), like a crash: the next start recovers
    /// from the WAL. A no-op when the server is not running.
    pub fn kill(&mut self) -> Result<()> {
        self.halt("immediate")
    }

    /// Start again on the same port and data after [`PgServer::stop`] or [`PgServer::kill`].
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!(
                "PostgreSQL on port {} is already running ({} exists)",
                self.port,
                self.data.join("postmaster.pid").display()
            );
        }
        self.launch()
    }

    /// Runs `sql` (one or more statements) with `psql -X -q -At -v ON_ERROR_STOP=1` in the
    /// database `kmesh`; returns the rows printed (`|`-separated columns, one row a line, no
    /// command tags), without the final newline.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_in(DATABASE, sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.client("psql"));
        clean_env(&mut cmd);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                database,
                "-f",
                "-",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("psql on port {}", self.port);
        let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {what}"))?;
        let _ = writer.join();
        if !out.status.success() {
            let err = anyhow!(
                "{what} failed ({}): {}\nSQL: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                sql.trim()
            );
            return Err(self.with_log(err));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned())
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = self.server_cmd("initdb");
        cmd.arg("-D").arg(&self.data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            // As production servers should be: a damaged page is an error, never read as data.
            "--data-checksums",
        ]);
        run(&mut cmd).map(drop).context("initdb")
    }

    /// `pg_ctl start -w` on `self.port`, then `pg_isready` until ready; on failure the server is
    /// stopped again and the error carries the log's tail.
    fn launch(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.sock.display()
        );
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .arg("-o")
            .arg(options)
            .args(["-w", "-t"])
            .arg(READY_TIMEOUT.as_secs().to_string())
            .arg("start");
        let result = run(&mut cmd).and_then(|_| self.wait_ready(deadline));
        if let Err(e) = result {
            let err =
                self.with_log(e.context(format!("starting PostgreSQL on port {}", self.port)));
            let _ = self.halt("immediate");
            return Err(err);
        }
        Ok(())
    }

    fn wait_ready(&self, deadline: Instant) -> Result<()> {
        loop {
            let mut cmd = Command::new(self.client("pg_isready"));
            clean_env(&mut cmd);
            cmd.args([
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            if cmd.status().context("running pg_isready")?.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("not ready within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn halt(&mut self, mode: &str) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "20", "stop"]);
        run(&mut cmd)
            .map(drop)
            .map_err(|e| self.with_log(e.context(format!("pg_ctl stop -m {mode}"))))
    }

    /// Last resort when `pg_ctl stop` failed: SIGKILL the pid in `postmaster.pid`.
    fn kill_postmaster(&self) {
        let pid = fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
        if let Some(pid) = pid
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Did the log grow, since byte `offset`, by a failure to bind the port?
    fn port_clash_since(&self, offset: u64) -> bool {
        let log = fs::read(&self.log).unwrap_or_default();
        let new = log.get(offset as usize..).unwrap_or_default();
        String::from_utf8_lossy(new).contains("Address already in use")
    }

    /// A server tool, run as the postgres user when we are root, inside the server's directory.
    fn server_cmd(&self, tool: &str) -> Command {
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            cmd
        } else {
            Command::new(self.bin.join(tool))
        };
        clean_env(&mut cmd);
        cmd.current_dir(&self.root).env("LC_ALL", "C");
        cmd
    }

    /// A client tool: the server's own version if it has one, else from `$PATH`.
    fn client(&self, tool: &str) -> PathBuf {
        let own = self.bin.join(tool);
        if own.is_file() {
            own
        } else {
            PathBuf::from(tool)
        }
    }

    fn with_log(&self, err: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "{err:#}\n--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.log.display(),
            log_tail(&self.log, LOG_TAIL_LINES)
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.is_running() && self.halt("immediate").is_err() {
            self.kill_postmaster();
        }
        KEY_FILES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.url());
        // `_dir` then removes the directory.
    }
}

/// The last `n` lines of a log file, or a note that it cannot be read.
fn log_tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// Servers whose test process died without unwinding (SIGKILL, abort, timeout) left their
/// directory behind, maybe with a running server: stop those and remove their directories.
fn reap_orphans(base: &Path, bin: &Path, as_postgres: bool) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let root = entry.path();
        let Ok(owner) = fs::read_to_string(root.join(OWNER_FILE)) else {
            continue; // being set up right now, or not ours
        };
        match owner.trim().parse::<u32>() {
            Ok(pid) if !pid_alive(pid) => {}
            _ => continue,
        }
        let data = root.join("data");
        if data.join("postmaster.pid").exists() {
            let mut cmd = if as_postgres {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
                cmd
            } else {
                Command::new(bin.join("pg_ctl"))
            };
            cmd.current_dir(&root).arg("-D").arg(&data).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "20",
                "stop",
            ]);
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        let _ = fs::remove_dir_all(&root);
    }
}

/// Runs a command to completion; a failure names the command and carries its output.
fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn clean_env(cmd: &mut Command) {
    for var in PG_ENV {
        cmd.env_remove(var);
    }
}

fn free_port() -> Result<u16> {
    match crate::proc::free_port() {
        0 => bail!("no free loopback port"),
        port => Ok(port),
    }
}

fn is_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
    {
        // Uid: real effective saved filesystem
        return line.split_whitespace().nth(2) == Some("0");
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The uid and gid of the `postgres` OS user.
fn postgres_ids() -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let from_passwd = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    });
    if let Some(ids) = from_passwd {
        return Ok(ids);
    }
    let id = |flag: &str| -> Result<u32> {
        let out = run(Command::new("id").args([flag, "postgres"]))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    id("-u")
        .and_then(|uid| Ok((uid, id("-g")?)))
        .context("no `postgres` OS user: install the `postgresql` package, which creates it")
}

/// Whether process `pid` exists and is not a zombie (a killed test binary stays one until its
/// parent, often a lazy init, reaps it).
fn pid_alive(pid: u32) -> bool {
    if Path::new("/proc/self/stat").exists() {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        return !matches!(state, Some('Z' | 'X') | None);
    }
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn age(path: &Path) -> Option<Duration> {
    let modified = fs::metadata(path).ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lock_excludes_and_takes_over_stale_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
        let err = FileLock::acquire(&path, Duration::from_millis(300))
            .err()
            .unwrap();
        assert!(err.to_string().contains("held by pid"), "{err}");
        drop(held);
        assert!(!path.exists());
        fs::write(&path, "999999999\n").unwrap(); // a pid that cannot exist
        let _taken = FileLock::acquire(&path, Duration::from_millis(300)).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn bin_dir_is_the_highest_complete_version() {
        let dir = bin_dir().unwrap();
        assert!(SERVER_TOOLS.iter().all(|t| dir.join(t).is_file()));
    }
}
