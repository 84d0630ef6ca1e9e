//! Process plumbing shared by the PostgreSQL and mosquitto helpers: who we run as, signals
//! without libc, bounded waits, and the reaper that cleans up after a killed test binary.

use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether the test process runs with effective uid 0.
pub fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        use std::os::unix::fs::MetadataExt as _;
        // /proc/self is owned by the process's effective uid.
        if let Ok(meta) = fs::metadata("/proc/self") {
            return meta.uid() == 0;
        }
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// uid and gid of a system user, from `getent passwd` (falls back to /etc/passwd).
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let line = Command::new("getent")
        .args(["passwd", name])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .or_else(|| {
            fs::read_to_string("/etc/passwd").ok().and_then(|all| {
                all.lines()
                    .find(|l| l.split(':').next() == Some(name))
                    .map(str::to_string)
            })
        })?;
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// Sends `sig` (a name such as "INT", "TERM", "KILL") to `pid` through the shell's `kill`
/// builtin, so no libc dependency is needed. Returns whether the signal was delivered.
pub fn signal(pid: u32, sig: &str) -> bool {
    kill(sig, &pid.to_string())
}

/// Sends `sig` to every process of the process group `pgid` (a server started with
/// `process_group(0)`: the group's id is its pid). Returns whether the signal was delivered.
pub fn signal_group(pgid: u32, sig: &str) -> bool {
    kill(sig, &format!("-{pgid}"))
}

/// `kill -s SIG -- TARGET` (a pid, or `-pgid` for a group).
fn kill(sig: &str, target: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" -- \"$2\" 2>/dev/null",
            "sh",
            sig,
            target,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Waits up to `timeout` for `child` to exit; returns whether it did (and was reaped).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return true, // not our child any more / already reaped
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Signals `child` with `sig`, waits up to `grace`, then SIGKILLs and reaps it.
pub fn stop_child(child: &mut Child, sig: &str, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if sig != "KILL" && signal(child.id(), sig) && wait_exit(child, grace) {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Records the current server pid where the reaper reads it ("" when no server runs).
pub fn write_pid_file(path: &Path, pid: Option<u32>) {
    let text = pid.map(|p| format!("{p}\n")).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    let mut f =
        fs::File::create(&tmp).unwrap_or_else(|e| panic!("create pid file {}: {e}", tmp.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write pid file {}: {e}", tmp.display()));
    drop(f);
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename pid file to {}: {e}", path.display()));
}

/// The reaper script. Arguments: test pid, directory, pid file, stop signal.
///
/// It waits while the test process lives and the directory exists. If the directory is gone,
/// the owner's `Drop` already cleaned up. Otherwise the test binary died without dropping
/// (a static, a panic=abort, SIGKILL): stop the server whose pid is in the pid file (the stop
/// signal, then SIGKILL after 5 s) and remove the directory. The pid file is rewritten on every
/// (re)start, so the reaper follows restarts.
const REAPER: &str = r#"
testpid=$1; dir=$2; pidfile=$3; sig=$4
# A zombie counts as gone: the server's new parent (init) may be slow to reap it.
alive() { kill -0 "$1" 2>/dev/null && ! grep -qs ') Z ' "/proc/$1/stat"; }
while alive "$testpid" && [ -d "$dir" ]; do sleep 0.5; done
[ -d "$dir" ] || exit 0
pid=
[ -f "$pidfile" ] && read -r pid < "$pidfile"
if [ -n "$pid" ]; then
  kill -s "$sig" "$pid" 2>/dev/null
  i=0
  while [ "$i" -lt 100 ] && alive "$pid"; do sleep 0.05; i=$((i+1)); done
  kill -s KILL "$pid" 2>/dev/null
fi
rm -rf "$dir"
"#;

/// A background `sh` that cleans up `dir` and the server in `pid_file` once the test process
/// is gone. It runs as the test user (root in CI, so it can remove the postgres-owned dir), in
/// its own process group (a terminal's Ctrl-C does not kill it), with no stdio (it never holds
/// cargo's output pipe open). Not PR_SET_PDEATHSIG: that fires when the spawning *thread*
/// exits, which would kill shared servers mid-run.
pub struct Reaper {
    child: Child,
}

impl Reaper {
    /// `stop_signal`: how to stop the server quickly when its data is about to be deleted
    /// ("QUIT" for PostgreSQL: immediate shutdown, no checkpoint; "TERM" for mosquitto).
    pub fn spawn(dir: &Path, pid_file: &Path, stop_signal: &str) -> Reaper {
        let child = Command::new("sh")
            .args(["-c", REAPER, "reaper"])
            .arg(std::process::id().to_string())
            .arg(dir)
            .arg(pid_file)
            .arg(stop_signal)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn the cleanup reaper (sh)");
        Reaper { child }
    }
}

impl Drop for Reaper {
    /// Called after the owner cleaned up itself: the reaper has nothing left to do. Kill and
    /// reap it so no zombie stays behind for the rest of the test binary.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Last `max_lines` lines of a log file, for panic messages.
pub fn log_tail(path: &Path, max_lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(max_lines);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Opens `path` for appending, as the child's stdout/stderr.
pub fn append_log(path: &Path) -> (fs::File, fs::File) {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log file {}: {e}", path.display()));
    let g = f
        .try_clone()
        .unwrap_or_else(|e| panic!("clone log file handle {}: {e}", path.display()));
    (f, g)
}

/// The first existing executable among `candidates`.
pub fn first_existing(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|p| p.is_file())
}

/// `name` in each PATH entry.
pub fn in_path(name: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default()
}

/// Whether a TCP connection to 127.0.0.1:`port` succeeds right now.
pub fn tcp_accepts(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
