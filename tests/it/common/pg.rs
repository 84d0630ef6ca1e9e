//! A throwaway PostgreSQL cluster per test binary (or per test, for fault tests), made from the
//! locally installed server binaries: no Docker, no sudo, no downloads.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::process::{self, Reaper};

/// How long a start may take before the harness gives up (CI machines can be slow).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts with a new port when the first one was taken between probe and bind.
const PORT_ATTEMPTS: usize = 5;

/// The login role that must authenticate with a password (scram-sha-256 over TCP); every other
/// role is trusted. See [`PgServer::password_user_url`].
pub const PASSWORD_USER: &str = "password_user";
/// That role's real password.
pub const PASSWORD_USER_PASSWORD: &str = "right-password";

/// Members of this group role must authenticate with a password over TCP, like
/// [`PASSWORD_USER`]. See [`PgServer::password_role_url`].
pub const PASSWORD_LOGIN_GROUP: &str = "password_login";

/// pg_hba.conf. `{host}` is `host` (TCP with or without TLS) or `hostssl` (TLS only: see
/// [`Hba::HostSslOnly`]). Local (Unix socket) connections are always trusted: the harness
/// itself connects that way, so it works whatever TCP demands.
const PG_HBA: &str = "\
# Written by the test harness.
local   all   all                             trust
local   replication   all                     trust
{host}  all   password_user    127.0.0.1/32   scram-sha-256
{host}  all   password_user    ::1/128        scram-sha-256
{host}  all   +password_login  127.0.0.1/32   scram-sha-256
{host}  all   +password_login  ::1/128        scram-sha-256
{host}  all   all              127.0.0.1/32   trust
{host}  all   all              ::1/128        trust
{host}  replication   all      127.0.0.1/32   trust
";

/// Who may connect over TCP to a cluster (see [`PgOptions::hba`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hba {
    /// Plain TCP or TLS, trust for every role but [`PASSWORD_USER`] and the members of
    /// [`PASSWORD_LOGIN_GROUP`] (scram-sha-256).
    #[default]
    Any,
    /// The same rules, but TCP connections only over TLS (`hostssl` lines): a plain TCP
    /// connection is refused with "no pg_hba.conf entry for host …, no encryption". Needs
    /// `ssl=on` and a certificate in the settings (see [`PgOptions::file`]).
    HostSslOnly,
}

/// How to set up a dedicated cluster: [`PgServer::dedicated_with_options`].
///
/// ```ignore
/// // PostgreSQL over TLS only, with a certificate made by the test:
/// let pg = PgServer::dedicated_with_options(
///     PgOptions::new()
///         .file("server.pem", &cert)
///         .file("server.key", &key)
///         .setting("ssl", "on")
///         .setting("ssl_cert_file", "server.pem")
///         .setting("ssl_key_file", "server.key")
///         .hba(Hba::HostSslOnly),
/// );
/// ```
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    settings: Vec<(String, String)>,
    files: Vec<(String, PathBuf)>,
    hba: Hba,
}

impl PgOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// A server setting (`postgresql.conf` name and value), passed as `-c key=value` after the
    /// harness's defaults (`listen_addresses`, `fsync=off`, `synchronous_commit`,
    /// `full_page_writes=off`, `max_connections=200`), so it overrides them: `("fsync", "on")`
    /// gives a durable server. Kept across [`PgServer::stop`]/[`PgServer::start`].
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    /// Several [`PgOptions::setting`]s at once.
    pub fn settings(mut self, settings: &[(&str, &str)]) -> Self {
        for (k, v) in settings {
            self = self.setting(k, v);
        }
        self
    }

    /// Copies `src` into the data directory as `name` before the server first starts, owned by
    /// the user the server runs as, mode 0600 (what PostgreSQL demands of `ssl_key_file`).
    /// Settings can name it by its bare `name`: relative paths are relative to the data
    /// directory.
    pub fn file(mut self, name: &str, src: &Path) -> Self {
        self.files.push((name.to_string(), src.to_path_buf()));
        self
    }

    /// Who may connect over TCP; default [`Hba::Any`].
    pub fn hba(mut self, hba: Hba) -> Self {
        self.hba = hba;
        self
    }
}

/// A PostgreSQL cluster in a temp dir, listening on 127.0.0.1:`port()`, superuser `postgres`,
/// trust authentication (except [`PASSWORD_USER`]).
///
/// Layout of the temp dir: `data/` (PGDATA), `postgres.log` (server output, appended across
/// restarts), `server.pid` (current postmaster pid, for the reaper), and the Unix socket.
pub struct PgServer {
    port: u16,
    bindir: PathBuf,
    /// `Some((uid, gid))` of the `postgres` user when the tests run as root.
    run_as: Option<(u32, u32)>,
    /// `synchronous_commit`: off for the shared cluster (speed), on for dedicated ones (see
    /// [`PgServer::dedicated`]).
    synchronous_commit: bool,
    /// Extra `-c key=value` settings, after the defaults (see [`PgOptions::setting`]).
    settings: Vec<(String, String)>,
    child: Option<Child>,
    password_user: OnceLock<()>,
    // Field order matters for Drop: the reaper goes before the dir is removed.
    reaper: Option<Reaper>,
    dir: Option<tempfile::TempDir>,
}

/// The cluster shared by every test of this binary (one `CREATE DATABASE` per test: see
/// [`fresh_db`]). It lives in a static and is never dropped: the reaper stops it and removes
/// its dir once the test binary exits. If its start failed, every caller panics with the same
/// message at once instead of retrying.
pub fn shared_pg() -> &'static PgServer {
    static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
    match SHARED.get_or_init(|| PgServer::try_new(false, PgOptions::default())) {
        Ok(pg) => pg,
        Err(e) => panic!("the shared PostgreSQL test cluster did not start: {e}"),
    }
}

impl PgServer {
    /// A cluster of its own, for tests that stop, restart or break the server.
    ///
    /// Unlike the shared cluster it runs with `synchronous_commit=on` (still `fsync=off`, so a
    /// commit costs one write(2), no disk flush): a committed transaction is in the OS page
    /// cache before the client hears "COMMIT", so [`PgServer::stop_immediate`] behaves like a
    /// crash of a durable server and loses nothing that was acknowledged. With
    /// `synchronous_commit=off` it would lose up to ~200 ms of acknowledged commits, and a
    /// "nothing lost" fault test would fail because of the harness, not the daemon.
    pub fn dedicated() -> PgServer {
        PgServer::dedicated_with_options(PgOptions::default())
    }

    /// [`PgServer::dedicated`] with extra server settings that override the harness's
    /// defaults, e.g. `PgServer::dedicated_with(&[("fsync", "on")])` for a durable server. See
    /// [`PgOptions::setting`].
    pub fn dedicated_with(settings: &[(&str, &str)]) -> PgServer {
        PgServer::dedicated_with_options(PgOptions::new().settings(settings))
    }

    /// [`PgServer::dedicated`] with settings, files in the data directory and TCP
    /// authentication rules: see [`PgOptions`].
    pub fn dedicated_with_options(options: PgOptions) -> PgServer {
        PgServer::try_new(true, options).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_new(synchronous_commit: bool, options: PgOptions) -> Result<PgServer, String> {
        PgServer::try_make(synchronous_commit, options.settings, |pg| {
            pg.initdb(options.hba)?;
            for (name, src) in &options.files {
                pg.install_file(name, src)?;
            }
            Ok(())
        })
    }

    /// A streaming standby of `primary`: `pg_basebackup -R` of it (which writes
    /// `standby.signal` and `primary_conninfo`), started on a port of its own, connecting as
    /// `application_name` (what `synchronous_standby_names` names). Same settings as the
    /// primary; `synchronous_commit=on`, like every dedicated cluster.
    pub fn standby_of(primary: &PgServer, application_name: &str) -> PgServer {
        let settings = primary.settings.clone();
        PgServer::try_make(true, settings, |pg| {
            pg.base_backup(primary, application_name)
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The temp dir, the reaper, `fill` (what goes in the data directory), then a start on a
    /// free port.
    fn try_make(
        synchronous_commit: bool,
        settings: Vec<(String, String)>,
        fill: impl FnOnce(&PgServer) -> Result<(), String>,
    ) -> Result<PgServer, String> {
        let bindir = find_bindir();
        let run_as = if process::running_as_root() {
            Some(process::lookup_user("postgres").ok_or_else(|| {
                "the tests run as root, and PostgreSQL refuses to run as root, but there is no \
                 `postgres` user to run it as: apt-get install -y postgresql (creates it), or \
                 run the tests as a normal user"
                    .to_string()
            })?)
        } else {
            None
        };
        let parent = temp_parent(run_as.is_some());
        let dir = tempfile::Builder::new()
            .prefix("enalysis-it-pg-")
            .tempdir_in(&parent)
            .map_err(|e| format!("create a temp dir for PostgreSQL: {e}"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown {} to postgres: {e}", dir.path().display()))?;
        }
        let pid_file = dir.path().join("server.pid");
        process::write_pid_file(&pid_file, None);
        // From here on the dir is cleaned up even if the test binary is killed.
        let reaper = Reaper::spawn(dir.path(), &pid_file, "QUIT");
        let mut pg = PgServer {
            port: 0,
            bindir,
            run_as,
            synchronous_commit,
            settings,
            child: None,
            password_user: OnceLock::new(),
            reaper: Some(reaper),
            dir: Some(dir),
        };
        fill(&pg)?;
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            pg.port = super::free_port();
            match pg.try_start() {
                Ok(()) => return Ok(pg),
                Err(e) => last_err = e,
            }
        }
        Err(format!(
            "PostgreSQL did not start after {PORT_ATTEMPTS} attempts: {last_err}"
        ))
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A URL for [`PASSWORD_USER`] (who must authenticate with a password) carrying `password`,
    /// to the `postgres` database. The role is created on first use; its real password is
    /// [`PASSWORD_USER_PASSWORD`], so any other value fails with "password authentication
    /// failed".
    pub fn password_user_url(&self, password: &str) -> String {
        self.password_user.get_or_init(|| {
            self.execute_blocking(
                "postgres",
                &format!(
                    "DO $$ BEGIN
                       IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PASSWORD_USER}') THEN
                         CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD_USER_PASSWORD}';
                       END IF;
                     END $$"
                ),
            );
        });
        let mut url = url::Url::parse(&self.url("postgres")).expect("our own URL parses");
        url.set_username(PASSWORD_USER)
            .expect("URL takes a username");
        url.set_password(Some(password))
            .expect("URL takes a password");
        url.to_string()
    }

    /// A key-value connection string to `db` through the Unix socket, as `postgres`, trusted
    /// whatever the TCP rules are (the harness connects this way; so can tests that need a
    /// plain connection to a TLS-only server).
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "host='{}' port={} user=postgres dbname={db}",
            self.dir()
                .display()
                .to_string()
                .replace('\\', "\\\\")
                .replace('\'', "\\'"),
            self.port
        )
    }

    /// A URL to `db` for a new superuser `role` that must authenticate with `password` over
    /// TCP (scram-sha-256: a member of [`PASSWORD_LOGIN_GROUP`]), for tests that need a
    /// password of their choosing. Creates the role, or sets its password if it exists.
    pub fn password_role_url(&self, db: &str, role: &str, password: &str) -> String {
        let ident = role.replace('"', "\"\"");
        let literal = password.replace('\'', "''");
        self.execute_blocking(
            "postgres",
            &format!(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PASSWORD_LOGIN_GROUP}') THEN
                     CREATE ROLE {PASSWORD_LOGIN_GROUP} NOLOGIN;
                   END IF;
                 END $$;
                 DO $$ BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{}') THEN
                     CREATE ROLE \"{ident}\" LOGIN SUPERUSER IN ROLE {PASSWORD_LOGIN_GROUP};
                   END IF;
                 END $$;
                 ALTER ROLE \"{ident}\" PASSWORD '{literal}';",
                role.replace('\'', "''")
            ),
        );
        let mut url = url::Url::parse(&self.url(db)).expect("our own URL parses");
        url.set_username(role).expect("URL takes a username");
        url.set_password(Some(password))
            .expect("URL takes a password");
        url.to_string()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding `data/`, `postgres.log` and the socket.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir exists until drop").path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("postgres.log")
    }

    /// Last lines of the server log (for assertion messages).
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log_path(), lines)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Fast shutdown (SIGINT: disconnect clients, checkpoint, exit), waiting until the server
    /// is gone. The port is closed when this returns. No-op when already stopped.
    pub fn stop(&mut self) {
        self.stop_with("INT");
    }

    /// Immediate shutdown (SIGQUIT): no checkpoint, like a crash; the next start runs crash
    /// recovery. On a dedicated server every acknowledged commit survives it; on the shared one
    /// (`synchronous_commit=off`) the last ~200 ms may not.
    pub fn stop_immediate(&mut self) {
        self.stop_with("QUIT");
    }

    fn stop_with(&mut self, sig: &str) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, sig, Duration::from_secs(30));
        }
        process::write_pid_file(&self.pid_file(), None);
    }

    /// Starts the server again on the same data dir and port, waiting until it accepts
    /// connections. URLs handed out before stay valid. No-op when already running.
    pub fn start(&mut self) {
        if self.is_running() {
            return;
        }
        // The old port may linger briefly; postgres sets SO_REUSEADDR, so retries are rare.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("PostgreSQL did not start again on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A crash of the whole server (SIGKILL to the postmaster and every backend: its process
    /// group), like its host dying. No-op when already stopped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::signal_group(child.id(), "KILL");
            let _ = child.wait();
        }
        process::write_pid_file(&self.pid_file(), None);
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) {
        let out = self
            .command("pg_ctl")
            .arg("promote")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60"])
            .output()
            .unwrap_or_else(|e| panic!("run pg_ctl promote: {e}"));
        assert!(
            out.status.success(),
            "pg_ctl promote failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fast stop, then start again on the same port.
    pub fn restart_fast(&mut self) {
        self.stop();
        self.start();
    }

    /// Runs `sql` (any number of statements) against `db` from synchronous code, e.g. inside
    /// a test helper that cannot await. Panics on error.
    pub fn execute_blocking(&self, db: &str, sql: &str) {
        let url = self.socket_url(db);
        let sql = sql.to_string();
        // A thread of its own: a runtime cannot be started inside the caller's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a tokio runtime for a blocking query");
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
                let conn = tokio::spawn(conn);
                client
                    .batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("run {sql:?} on {url}: {e}"));
                drop(client);
                let _ = conn.await;
            });
        })
        .join()
        .unwrap_or_else(|_| panic!("blocking query on {db} failed (see the panic above)"));
    }

    fn pid_file(&self) -> PathBuf {
        self.dir().join("server.pid")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        // The postgres user may not be able to enter the caller's cwd (e.g. /root).
        cmd.current_dir(self.dir())
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .stdin(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            // std drops supplementary groups when it switches uid as root.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self, hba: Hba) -> Result<(), String> {
        let data = self.data_dir();
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"])
            .output()
            .map_err(|e| format!("run {}/initdb: {e}", self.bindir.display()))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let host = match hba {
            Hba::Any => "host   ",
            Hba::HostSslOnly => "hostssl",
        };
        std::fs::write(data.join("pg_hba.conf"), PG_HBA.replace("{host} ", host))
            .map_err(|e| format!("write pg_hba.conf: {e}"))?;
        Ok(())
    }

    /// Fills the data dir with a base backup of `primary` through its Unix socket, as a standby
    /// streaming from it over TCP as `application_name`.
    fn base_backup(&self, primary: &PgServer, application_name: &str) -> Result<(), String> {
        let out = self
            .command("pg_basebackup")
            .arg("-h")
            .arg(primary.dir())
            .args(["-p", &primary.port.to_string(), "-U", "postgres", "-D"])
            .arg(self.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .output()
            .map_err(|e| format!("run {}/pg_basebackup: {e}", self.bindir.display()))?;
        if !out.status.success() {
            return Err(format!(
                "pg_basebackup failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // -R wrote primary_conninfo for the socket; a later line wins: over TCP, with a name.
        let conninfo = format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={application_name}'\n",
            primary.port
        );
        let auto = self.data_dir().join("postgresql.auto.conf");
        let mut text =
            std::fs::read_to_string(&auto).map_err(|e| format!("read {}: {e}", auto.display()))?;
        text.push_str(&conninfo);
        std::fs::write(&auto, text).map_err(|e| format!("write {}: {e}", auto.display()))
    }

    /// Copies `src` into the data dir as `name`, owned by the server's user, mode 0600.
    fn install_file(&self, name: &str, src: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt as _;
        let dest = self.data_dir().join(name);
        std::fs::copy(src, &dest)
            .map_err(|e| format!("copy {} to {}: {e}", src.display(), dest.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod 0600 {}: {e}", dest.display()))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&dest, Some(uid), Some(gid))
                .map_err(|e| format!("chown {} to postgres: {e}", dest.display()))?;
        }
        Ok(())
    }

    /// One start attempt on `self.port`; on failure the server is not running.
    fn try_start(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let (out, err) = process::append_log(&log);
        let port = self.port.to_string();
        let sync_commit = if self.synchronous_commit {
            "synchronous_commit=on"
        } else {
            "synchronous_commit=off"
        };
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &port, "-k"])
            .arg(self.dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", sync_commit])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"]);
        // After the defaults: for the same key, the last -c wins.
        for (key, value) in &self.settings {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        let mut child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {}/postgres: {e}", self.bindir.display()))?;
        process::write_pid_file(&self.pid_file(), Some(child.id()));
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                process::write_pid_file(&self.pid_file(), None);
                return Err(format!(
                    "postgres exited with {status} while starting on port {}; log tail:\n{}",
                    self.port,
                    self.log_tail(30)
                ));
            }
            if self.postmaster_ready(child.id()) && process::tcp_accepts(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                process::stop_child(&mut child, "QUIT", Duration::from_secs(5));
                process::write_pid_file(&self.pid_file(), None);
                return Err(format!(
                    "postgres on port {} not ready after {:?}; log tail:\n{}",
                    self.port,
                    START_TIMEOUT,
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// postmaster.pid names our process and says "ready" (what `pg_ctl -w` checks).
    fn postmaster_ready(&self, pid: u32) -> bool {
        let Ok(text) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().collect();
        lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
            && lines.get(7).map(|l| l.trim()) == Some("ready")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Immediate shutdown: the data is thrown away, no need for a checkpoint.
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, "QUIT", Duration::from_secs(10));
        }
        drop(self.reaper.take());
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("warning: could not remove {}: {e}", path.display());
            }
        }
    }
}

/// A database of its own on a cluster. Dropping it leaves the database (the cluster dies with
/// the test binary anyway).
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    /// TCP, as `postgres`, no TLS: `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub url: String,
    /// Through the Unix socket (see [`PgServer::socket_url`]).
    pub socket_url: String,
}

/// `CREATE DATABASE t_<uuid>` on `pg`.
pub async fn fresh_db(pg: &PgServer) -> TestDb {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    // Through the Unix socket: works whatever the TCP rules (e.g. TLS only) are.
    let admin = pg.socket_url("postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin}: {e}; server log:\n{}", pg.log_tail(20)));
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    drop(client);
    let _ = conn.await;
    TestDb {
        url: pg.url(&name),
        socket_url: pg.socket_url(&name),
        name,
    }
}

/// Where the cluster's temp dir goes: `$TMPDIR` (or /tmp), except that as root the `postgres`
/// user must be able to reach it, so a `$TMPDIR` behind a private directory (e.g. under /root)
/// is replaced with /tmp.
fn temp_parent(as_postgres: bool) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = std::env::temp_dir();
    let traversable = tmp.ancestors().all(|dir| {
        std::fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    });
    if as_postgres && !traversable {
        PathBuf::from("/tmp")
    } else {
        tmp
    }
}

/// The PostgreSQL server binaries: `$PG_BINDIR`, then `pg_config --bindir`, then the highest
/// version in /usr/lib/postgresql/*/bin, then /usr/local/pgsql/bin and PATH.
fn find_bindir() -> PathBuf {
    static BINDIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BINDIR.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(dir) = std::env::var_os("PG_BINDIR") {
            candidates.push(dir.into());
        }
        if let Ok(out) = Command::new("pg_config")
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
            && out.status.success()
        {
            candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
        }
        let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versioned.into_iter().map(|(_, p)| p));
        candidates.push("/usr/local/pgsql/bin".into());
        candidates.extend(
            process::in_path("postgres")
                .into_iter()
                .filter_map(|p| p.parent().map(Path::to_path_buf)),
        );
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|p| seen.insert(p.clone()));
        let has_server = |d: &PathBuf| d.join("postgres").is_file() && d.join("initdb").is_file();
        candidates
            .iter()
            .find(|d| has_server(d))
            .cloned()
            .ok_or_else(|| {
                let looked: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                format!(
                    "PostgreSQL server binaries (postgres, initdb) not found (looked in {}): \
                 apt-get install -y postgresql, or set PG_BINDIR",
                    looked.join(", ")
                )
            })
    });
    match found {
        Ok(dir) => dir.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// How a [`PgPair`]'s standby replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// The primary's `synchronous_standby_names` names the standby: with
    /// `synchronous_commit=on` a COMMIT returns only once the standby has flushed its WAL.
    Synchronous,
    /// Streaming only: a COMMIT returns before the standby has it.
    Asynchronous,
}

/// The standby's `application_name`, as `synchronous_standby_names` names it.
pub const STANDBY_NAME: &str = "standby1";

/// A primary and a streaming standby made from it (`pg_basebackup -R`), each a dedicated
/// cluster on its own loopback port: for failover tests (`PgServer::kill9` the primary,
/// `PgServer::promote` the standby).
pub struct PgPair {
    pub primary: PgServer,
    pub standby: PgServer,
}

impl PgPair {
    /// Starts both and returns once `pg_stat_replication` on the primary shows the standby
    /// streaming, as a synchronous standby when `replication` says so.
    pub async fn start(replication: Replication) -> PgPair {
        let primary = PgServer::dedicated();
        let standby = PgServer::standby_of(&primary, STANDBY_NAME);
        let sync_state = match replication {
            Replication::Synchronous => {
                // After the base backup, so the standby's copy of postgresql.auto.conf does not
                // carry it (promoted, it would wait for a standby of its own).
                primary.execute_blocking(
                    "postgres",
                    &format!("ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'"),
                );
                primary.execute_blocking("postgres", "SELECT pg_reload_conf()");
                "sync"
            }
            Replication::Asynchronous => "async",
        };
        let url = primary.socket_url("postgres");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let conn = tokio::spawn(conn);
        super::wait_until(
            Duration::from_secs(60),
            &format!("the standby to stream from the primary ({sync_state})"),
            || {
                let client = &client;
                async move {
                    client
                        .query_one(
                            "SELECT count(*) FROM pg_stat_replication \
                             WHERE application_name = $1 AND state = 'streaming' \
                             AND sync_state = $2",
                            &[&STANDBY_NAME, &sync_state],
                        )
                        .await
                        .is_ok_and(|r| r.get::<_, i64>(0) == 1)
                }
            },
        )
        .await;
        drop(client);
        let _ = conn.await;
        PgPair { primary, standby }
    }

    /// A libpq URL naming both servers, primary first, that connects only to the one that
    /// accepts writes (CONTRACT.md §8).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.primary.port(),
            self.standby.port()
        )
    }
}
