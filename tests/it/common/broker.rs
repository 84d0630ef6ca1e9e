//! A real mosquitto broker per test (it starts in milliseconds), configured like
//! deploy/mosquitto/mosquitto.conf where it matters for delivery: unlimited queues and
//! in-flight window, persistence on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::process::{self, Reaper};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const PORT_ATTEMPTS: usize = 5;

/// mosquitto on 127.0.0.1:`port()`, anonymous access, persistence in its temp dir.
///
/// Layout of the temp dir: `mosquitto.conf`, `mosquitto.db` (written at a clean stop and every
/// 60 s), `mosquitto.log`, `server.pid` (for the reaper).
pub struct Broker {
    port: u16,
    extra_config: String,
    child: Option<Child>,
    // Field order matters for Drop: the reaper goes before the dir is removed.
    reaper: Option<Reaper>,
    dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts TCP connections.
    pub fn start() -> Broker {
        Broker::start_with_config("")
    }

    /// Like [`Broker::start`], with `extra` appended to the generated config (later lines win
    /// for global options, e.g. `max_queued_messages 10`).
    pub fn start_with_config(extra: &str) -> Broker {
        let bin = mosquitto_bin();
        let dir = tempfile::Builder::new()
            .prefix("enalysis-it-mqtt-")
            .tempdir()
            .expect("create a temp dir for mosquitto");
        let pid_file = dir.path().join("server.pid");
        process::write_pid_file(&pid_file, None);
        let reaper = Reaper::spawn(dir.path(), &pid_file, "TERM");
        let mut broker = Broker {
            port: 0,
            extra_config: extra.to_string(),
            child: None,
            reaper: Some(reaper),
            dir: Some(dir),
        };
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            broker.port = super::free_port();
            match broker.try_start(&bin) {
                Ok(()) => return broker,
                Err(e) => last_err = e,
            }
        }
        panic!("mosquitto did not start after {PORT_ATTEMPTS} attempts: {last_err}");
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir exists until drop").path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("mosquitto.log")
    }

    /// The persistence file (`mosquitto.db`), written at a clean stop and at every autosave.
    pub fn persistence_file(&self) -> PathBuf {
        self.dir().join("mosquitto.db")
    }

    /// When the persistence file was last written, if it exists. mosquitto writes a new file
    /// and renames it over the old one, so a later time means a complete, later snapshot.
    pub fn saved_at(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.persistence_file())
            .and_then(|m| m.modified())
            .ok()
    }

    /// Last lines of the broker log (for assertion messages).
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log_path(), lines)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Clean stop (SIGTERM): mosquitto saves its persistence file, so persistent sessions and
    /// their queued messages survive into the next [`Broker::resume`]. Returns once the
    /// process is gone and the port is closed. No-op when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, "TERM", Duration::from_secs(10));
        }
        process::write_pid_file(&self.pid_file(), None);
    }

    /// Crash (SIGKILL): nothing is saved; what survives is the last autosave, if any.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, "KILL", Duration::ZERO);
        }
        process::write_pid_file(&self.pid_file(), None);
    }

    /// Starts the broker again: same port, same config, same persistence file. No-op when
    /// running. (Named `resume` because `Broker::start()` is the constructor.)
    pub fn resume(&mut self) {
        if self.is_running() {
            return;
        }
        let bin = mosquitto_bin();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_start(&bin) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("mosquitto did not start again on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// [`Broker::stop`] then [`Broker::resume`].
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    fn pid_file(&self) -> PathBuf {
        self.dir().join("server.pid")
    }

    fn write_config(&self) -> PathBuf {
        let dir = self.dir().display().to_string();
        let user = if process::running_as_root() {
            // Otherwise mosquitto drops to user `mosquitto`, who cannot write our temp dir.
            "user root\n"
        } else {
            ""
        };
        let config = format!(
            "# Written by the test harness.\n\
             {user}\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {dir}/\n\
             persistence_file mosquitto.db\n\
             autosave_interval 60\n\
             max_queued_messages 0\n\
             max_queued_bytes 0\n\
             max_inflight_messages 0\n\
             persistent_client_expiration 7d\n\
             message_size_limit 4194304\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n\
             log_timestamp_format %H:%M:%S\n\
             {extra}\n",
            port = self.port,
            extra = self.extra_config,
        );
        let path = self.dir().join("mosquitto.conf");
        std::fs::write(&path, config).expect("write mosquitto.conf");
        path
    }

    fn try_start(&mut self, bin: &Path) -> Result<(), String> {
        let config = self.write_config();
        let (out, err) = process::append_log(&self.dir().join("mosquitto.stderr"));
        let mut child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(bin)
                .arg("-c")
                .arg(&config)
                .current_dir(self.dir())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("spawn {}: {e}", bin.display()))?
        };
        process::write_pid_file(&self.pid_file(), Some(child.id()));
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                process::write_pid_file(&self.pid_file(), None);
                return Err(format!(
                    "mosquitto exited with {status} while starting on port {}; log tail:\n{}\n{}",
                    self.port,
                    self.log_tail(20),
                    process::log_tail(&self.dir().join("mosquitto.stderr"), 20)
                ));
            }
            if process::tcp_accepts(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                process::stop_child(&mut child, "KILL", Duration::ZERO);
                process::write_pid_file(&self.pid_file(), None);
                return Err(format!(
                    "mosquitto on port {} not accepting connections after {:?}; log tail:\n{}",
                    self.port,
                    START_TIMEOUT,
                    self.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        drop(self.reaper.take());
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("warning: could not remove {}: {e}", path.display());
            }
        }
    }
}

/// `$MOSQUITTO_BIN`, PATH, /usr/sbin, /usr/local/sbin.
fn mosquitto_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("MOSQUITTO_BIN") {
            candidates.push(p.into());
        }
        candidates.extend(process::in_path("mosquitto"));
        candidates.push("/usr/sbin/mosquitto".into());
        candidates.push("/usr/local/sbin/mosquitto".into());
        candidates.push("/opt/homebrew/sbin/mosquitto".into());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|p| seen.insert(p.clone()));
        process::first_existing(candidates.clone()).ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "mosquitto not found (looked in {}): apt-get install -y mosquitto, or set \
                 MOSQUITTO_BIN",
                looked.join(", ")
            )
        })
    });
    match found {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}
