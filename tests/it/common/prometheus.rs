//! A real Prometheus per test (Debian's `prometheus` package: `/usr/bin/prometheus`), scraping
//! the targets it is given every second and evaluating the rule files it is given every second,
//! on a free loopback port, its TSDB in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{self, Reaper};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;
/// One HTTP request to the API; a query over a few minutes of data answers in milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Prometheus on 127.0.0.1:`port()`. It is ready to answer queries within a fraction of a
/// second, but its first scrape comes about 5 s after the start: Prometheus 2.42's discovery
/// manager hands targets to the scrape manager at most every 5 s, with no flag to change it.
/// Start it before what it scrapes, and poll for what a test needs.
///
/// Layout of the temp dir: `prometheus.yml`, `data/` (the TSDB), `prometheus.log`,
/// `server.pid` (for the reaper).
pub struct Prometheus {
    port: u16,
    child: Option<Child>,
    // Field order matters for Drop: the reaper goes before the dir is removed.
    reaper: Option<Reaper>,
    dir: Option<tempfile::TempDir>,
}

/// What the query API answered: `Err` carries Prometheus's `errorType: error` (a query that
/// does not parse, an unknown function, a many-to-many match) or a transport failure.
pub type QueryResult = Result<Vec<Value>, String>;

impl Prometheus {
    /// Starts Prometheus with one scrape job, `job`, over `targets` (`host:port`), and the
    /// `rule_files` (absolute paths), both every second; returns once `/-/ready` answers 200.
    pub fn start(job: &str, targets: &[String], rule_files: &[PathBuf]) -> Prometheus {
        let bin = prometheus_bin();
        let dir = tempfile::Builder::new()
            .prefix("enalysis-it-prom-")
            .tempdir()
            .expect("create a temp dir for prometheus");
        let pid_file = dir.path().join("server.pid");
        process::write_pid_file(&pid_file, None);
        let reaper = Reaper::spawn(dir.path(), &pid_file, "TERM");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(job, targets, rule_files))
            .expect("write prometheus.yml");
        let mut prom = Prometheus {
            port: 0,
            child: None,
            reaper: Some(reaper),
            dir: Some(dir),
        };
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            prom.port = super::free_port();
            match prom.try_start(&bin, &config) {
                Ok(()) => return prom,
                Err(e) => last_err = e,
            }
        }
        panic!("prometheus did not start after {PORT_ATTEMPTS} attempts: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir exists until drop").path()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.dir().join("prometheus.log"), lines)
    }

    /// An instant query at the current time (`/api/v1/query`): the result's series.
    pub async fn query(&self, expr: &str) -> QueryResult {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await?;
        match data.get("resultType").and_then(Value::as_str) {
            Some("vector" | "matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            // A scalar or a string is one value, not a series.
            Some(other) => Err(format!("{other} result, not a vector: {data}")),
            None => Err(format!("no resultType in {data}")),
        }
    }

    /// Values of `label` on the series matching `selector` (`/api/v1/label/…/values`), which is
    /// what Grafana's `label_values(selector, label)` asks.
    pub async fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        let data = self
            .api(&format!(
                "/api/v1/label/{label}/values?match[]={}",
                encode(selector)
            ))
            .await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }

    /// Every loaded rule (`/api/v1/rules`), flattened out of its groups.
    pub async fn rules(&self) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/rules").await?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// One GET of the HTTP API; the `data` of a `"status": "success"` answer.
    async fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, get(self.port, path_and_query))
            .await
            .map_err(|_| format!("GET {path_and_query}: no answer in {REQUEST_TIMEOUT:?}"))??;
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path_and_query}: HTTP {status}, not JSON ({e}): {body}"))?;
        if json["status"] == "success" {
            Ok(json["data"].clone())
        } else {
            Err(format!(
                "{}: {}",
                json["errorType"].as_str().unwrap_or("error"),
                json["error"].as_str().unwrap_or(&body)
            ))
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir().join("server.pid")
    }

    fn try_start(&mut self, bin: &Path, config: &Path) -> Result<(), String> {
        let (out, err) = process::append_log(&self.dir().join("prometheus.log"));
        let mut child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    self.dir().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
                .arg("--log.level=warn")
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
                    "prometheus exited with {status} while starting on port {}; log tail:\n{}",
                    self.port,
                    self.log_tail(20)
                ));
            }
            // Ready means the TSDB is open and the API answers queries.
            if blocking_get_status(self.port, "/-/ready") == Some(200) {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                process::stop_child(&mut child, "KILL", Duration::ZERO);
                process::write_pid_file(&self.pid_file(), None);
                return Err(format!(
                    "prometheus on port {} not ready after {START_TIMEOUT:?}; log tail:\n{}",
                    self.port,
                    self.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, "TERM", Duration::from_secs(5));
        }
        process::write_pid_file(&self.pid_file(), None);
        drop(self.reaper.take());
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("warning: could not remove {}: {e}", path.display());
            }
        }
    }
}

/// prometheus.yml: a 1 s scrape and evaluation interval, so rate() over a minute has points
/// within a few seconds of the first scrape.
fn config_text(job: &str, targets: &[String], rule_files: &[PathBuf]) -> String {
    let quoted = |items: Vec<String>| {
        items
            .into_iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "# Written by the test harness.\n\
         global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: [{rules}]\n\
         scrape_configs:\n  - job_name: {job:?}\n    static_configs:\n      - targets: [{targets}]\n",
        rules = quoted(rule_files.iter().map(|p| p.display().to_string()).collect()),
        targets = quoted(targets.to_vec()),
    )
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// An HTTP/1.0 GET on loopback: (status, body). Prometheus closes the connection after an
/// HTTP/1.0 response, so reading to the end is the whole body.
async fn get(port: u16, path_and_query: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect to prometheus on port {port}: {e}"))?;
    stream
        .write_all(format!("GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("send GET {path_and_query}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("read the answer to GET {path_and_query}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path_and_query}: not an HTTP response: {response}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The status of a blocking GET, or None when nothing answers (yet).
fn blocking_get_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// `$PROMETHEUS_BIN`, PATH, /usr/bin.
fn prometheus_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("PROMETHEUS_BIN") {
            candidates.push(p.into());
        }
        candidates.extend(process::in_path("prometheus"));
        candidates.push("/usr/bin/prometheus".into());
        process::first_existing(candidates.clone()).ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "prometheus not found (looked in {}): apt-get install -y prometheus, or set \
                 PROMETHEUS_BIN",
                looked.join(", ")
            )
        })
    });
    match found {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}
