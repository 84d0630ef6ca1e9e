//! One typed configuration tree, loaded once at start-up and passed down.
//!
//! Layers, lowest first: `config/default.toml` compiled into the binary (so the shipped file *is*
//! the defaults and cannot drift from the code), the file named with `--config`, then the
//! environment. Unknown keys in any layer are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize};

/// The shipped defaults; also the documentation of every key.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The config file used when `--config` is not given (skipped when it does not exist).
pub const DEFAULT_PATH: &str = "config/default.toml";

/// Shown instead of a secret.
const MASK: &str = "********";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Load(String),
    #[error("environment variable {var}: {msg}")]
    Env { var: String, msg: String },
    #[error("{key}: {msg}")]
    Invalid { key: &'static str, msg: String },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub mqtt: MqttConfig,
    pub ingest: IngestConfig,
    pub registry: RegistryConfig,
    pub completeness: CompletenessConfig,
    pub partitions: PartitionsConfig,
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    pub pool_size: usize,
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    #[serde(rename = "pool_wait_timeout_ms", with = "millis")]
    pub pool_wait_timeout: Duration,
    pub ca_file: String,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub url: Broker,
    pub client_id: String,
    pub topic_prefix: String,
    pub shared_group: String,
    pub ignore_topics: Vec<String>,
    pub username: String,
    pub password: String,
    pub ca_file: String,
    pub client_cert: String,
    pub client_key: String,
    #[serde(rename = "keep_alive_secs", with = "secs")]
    pub keep_alive: Duration,
    /// The MQTT Session Expiry Interval, which the protocol (and rumqttc) counts in seconds.
    pub session_expiry_secs: u32,
    #[serde(rename = "reconnect_min_ms", with = "millis")]
    pub reconnect_min: Duration,
    #[serde(rename = "reconnect_max_ms", with = "millis")]
    pub reconnect_max: Duration,
    pub max_packet_bytes: u32,
}

/// `database.url`, parsed once when the configuration loads: the text as configured (what is
/// printed, masked, and serialized back) and the connection settings tokio-postgres made of it.
#[derive(Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseUrl {
    text: String,
    parsed: tokio_postgres::Config,
}

impl DatabaseUrl {
    /// The URL as configured (it may carry the password).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What the pool connects with.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.parsed
    }

    fn masked(&self) -> Self {
        let mut parsed = self.parsed.clone();
        if parsed.get_password().is_some() {
            parsed.password(MASK);
        }
        Self {
            text: mask_url_password(&self.text),
            parsed,
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parsed = text
            .parse()
            .map_err(|e| format!("malformed PostgreSQL URL (DATABASE_URL): {e}"))?;
        Ok(Self {
            text: text.to_string(),
            parsed,
        })
    }
}

impl TryFrom<String> for DatabaseUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<DatabaseUrl> for String {
    fn from(url: DatabaseUrl) -> String {
        url.text
    }
}

/// Masked, like anything printed.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&mask_url_password(&self.text))
            .finish()
    }
}

/// `mqtt.url`, parsed once when the configuration loads (scheme `mqtt` or `mqtts`, a host):
/// where the MQTT client connects, and how.
#[derive(Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Broker {
    /// The URL as configured, serialized back as is.
    text: String,
    /// The URL itself (it may carry the credentials).
    pub url: url::Url,
    /// `mqtts://`.
    pub tls: bool,
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
}

impl Broker {
    /// The URL as configured (it may carry the password).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn masked(&self) -> Self {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some(MASK));
        }
        Self {
            text: mask_url_password(&self.text),
            url,
            ..self.clone()
        }
    }
}

impl FromStr for Broker {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("malformed URL (MQTT_URL): {e}"))?;
        let host = match url.host_str() {
            Some(host) if matches!(url.scheme(), "mqtt" | "mqtts") => host,
            _ => {
                return Err(format!(
                    "expected mqtt://host:port or mqtts://host:port (MQTT_URL), got scheme {:?}",
                    url.scheme()
                ));
            }
        };
        let tls = url.scheme() == "mqtts";
        Ok(Self {
            text: text.to_string(),
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            url,
        })
    }
}

impl TryFrom<String> for Broker {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Broker> for String {
    fn from(broker: Broker) -> String {
        broker.text
    }
}

/// Masked, like anything printed.
impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Broker")
            .field(&mask_url_password(&self.text))
            .finish()
    }
}

/// Most packets rumqttc reads in one poll (its `max_readb_count`), all before the MQTT task
/// sees, and charges, any of them.
const MQTT_READ_BATCH: usize = 10;

impl MqttConfig {
    /// What one poll may read beyond the byte budget before a message is charged: a full read
    /// batch of the largest packets the broker may send, plus a partial one in the read buffer.
    /// Kept free inside `ingest.max_buffered_bytes`.
    pub fn poll_reserve(&self) -> usize {
        (MQTT_READ_BATCH + 1) * self.max_packet_bytes as usize
    }
}

/// Largest `ingest.max_payload_bytes`: see `Config::validate`.
const MAX_STATEMENT_PAYLOAD: usize = 64 << 20;
/// What `ingest.max_buffered_bytes` must leave for the pipeline (queue, batches) beyond the
/// read reserve.
const MIN_PIPELINE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub max_payload_bytes: usize,
    pub max_buffered_bytes: usize,
    pub queue_messages: usize,
    pub batch_max_rows: usize,
    #[serde(rename = "batch_max_age_ms", with = "millis")]
    pub batch_max_age: Duration,
    #[serde(rename = "max_clock_skew_secs", with = "secs")]
    pub max_clock_skew: Duration,
    pub max_age_days: u64,
    #[serde(rename = "retry_min_ms", with = "millis")]
    pub retry_min: Duration,
    #[serde(rename = "retry_max_ms", with = "millis")]
    pub retry_max: Duration,
    #[serde(rename = "shutdown_timeout_secs", with = "secs")]
    pub shutdown_timeout: Duration,
    pub corrections: crate::corrections::Policy,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(rename = "refresh_interval_secs", with = "secs")]
    pub refresh_interval: Duration,
}

/// Silence and completeness (CONTRACT.md §7).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompletenessConfig {
    /// An entity is silent when its last reading was received longer ago than this many times
    /// its reading frequency.
    pub silence_factor: f64,
    /// How often the last readings gathered from committed batches go to
    /// `entity_last_readings`.
    #[serde(rename = "flush_interval_ms", with = "millis")]
    pub flush_interval: Duration,
    /// How often `ingest_entities_silent` is recounted from the database.
    #[serde(rename = "gauge_interval_secs", with = "secs")]
    pub gauge_interval: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsConfig {
    pub months_ahead: u32,
    pub retention_days: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Serialized as `IP:PORT` (serde's form of a `SocketAddr` in TOML and JSON).
    #[serde(deserialize_with = "ip_port")]
    pub addr: SocketAddr,
}

/// `http.addr` from its text, refused in the words of the contract's variable.
fn ip_port<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|e| {
        serde::de::Error::custom(format!(
            "expected IP:PORT such as 127.0.0.1:9464 (ENALYSIS_HTTP_ADDR), got {text:?}: {e}"
        ))
    })
}

/// A `Duration` written as whole milliseconds: the `*_ms` keys.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A `Duration` written as whole seconds: the `*_secs` keys.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    #[serde(rename = "rejection_summary_secs", with = "secs")]
    pub rejection_summary: Duration,
}

impl Config {
    /// Loads from the defaults, `path` (or [`DEFAULT_PATH`] when it exists) and the process
    /// environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment (tests).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        match path {
            Some(p) if !p.exists() => return Err(ConfigError::MissingFile(p.to_path_buf())),
            Some(p) => figment = figment.merge(Toml::file_exact(p)),
            None if Path::new(DEFAULT_PATH).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_PATH))
            }
            None => {}
        }
        let env = EnvLayer::collect(env)?;
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Load(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot say, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // `database.url`, `mqtt.url` and `http.addr` were parsed, and refused in their key's
        // name, as they loaded.
        let invalid = |key, msg: String| Err(ConfigError::Invalid { key, msg });
        if self.database.pool_size == 0 {
            return invalid("database.pool_size", "must be at least 1".into());
        }
        if self.database.connect_timeout.is_zero() || self.database.pool_wait_timeout.is_zero() {
            return invalid(
                "database.connect_timeout_ms",
                "timeouts must be above 0 ms".into(),
            );
        }
        let m = &self.mqtt;
        if m.client_id.is_empty() || m.client_id.len() > 128 {
            return invalid("mqtt.client_id", "must be 1 to 128 characters".into());
        }
        let prefix_ok = !m.topic_prefix.is_empty()
            && !m.topic_prefix.starts_with('/')
            && !m.topic_prefix.ends_with('/')
            && !m.topic_prefix.contains(['+', '#']);
        if !prefix_ok {
            return invalid(
                "mqtt.topic_prefix",
                format!(
                    "{:?}: must be non-empty, without wildcards or leading/trailing '/'",
                    m.topic_prefix
                ),
            );
        }
        if m.shared_group.contains(['/', '+', '#']) {
            return invalid(
                "mqtt.shared_group",
                "must not contain '/', '+' or '#'".into(),
            );
        }
        if m.client_cert.is_empty() != m.client_key.is_empty() {
            return invalid(
                "mqtt.client_cert",
                "client_cert and client_key go together".into(),
            );
        }
        if m.keep_alive < Duration::from_secs(5) {
            return invalid("mqtt.keep_alive_secs", "must be at least 5".into());
        }
        if m.reconnect_min.is_zero() || m.reconnect_min > m.reconnect_max {
            return invalid(
                "mqtt.reconnect_min_ms",
                "must be above 0 and not above reconnect_max_ms".into(),
            );
        }
        let prefix = format!("{}/", m.topic_prefix.trim_end_matches('/'));
        if let Some(bad) = m.ignore_topics.iter().find(|f| {
            !crate::decode::valid_filter(f) || !f.starts_with(&prefix) || f.len() == prefix.len()
        }) {
            return invalid(
                "mqtt.ignore_topics",
                format!(
                    "{bad:?} is not an MQTT topic filter under {prefix} (levels, `+` for one \
                     level, a final `#`)"
                ),
            );
        }
        let i = &self.ingest;
        if i.max_payload_bytes == 0 || i.max_payload_bytes as u64 > u64::from(m.max_packet_bytes) {
            return invalid(
                "ingest.max_payload_bytes",
                "must be above 0 and not above mqtt.max_packet_bytes".into(),
            );
        }
        // A kept payload (and its text copy) goes to PostgreSQL in one statement, whose
        // protocol messages stop at 1 GB; 64 MiB leaves a wide margin.
        if i.max_payload_bytes > MAX_STATEMENT_PAYLOAD {
            return invalid(
                "ingest.max_payload_bytes",
                format!("must not be above {MAX_STATEMENT_PAYLOAD} (64 MiB)"),
            );
        }
        let reserve = m.poll_reserve();
        if i.max_buffered_bytes < reserve + MIN_PIPELINE_BYTES {
            return invalid(
                "ingest.max_buffered_bytes",
                format!(
                    "must be at least {} ({} MiB): 11 x mqtt.max_packet_bytes are kept for what \
                     one read from the broker may bring, plus 4 MiB for the pipeline",
                    reserve + MIN_PIPELINE_BYTES,
                    (reserve + MIN_PIPELINE_BYTES).div_ceil(1 << 20)
                ),
            );
        }
        if i.queue_messages == 0 || i.batch_max_rows == 0 || i.batch_max_age.is_zero() {
            return invalid(
                "ingest.queue_messages",
                "queue_messages, batch_max_rows and batch_max_age_ms must be above 0".into(),
            );
        }
        if i.max_age_days == 0 || i.max_age_days > 36500 {
            return invalid("ingest.max_age_days", "must be 1 to 36500".into());
        }
        // A day is far beyond any clock's skew, and keeps the value a valid time span.
        if i.max_clock_skew > Duration::from_secs(86_400) {
            return invalid("ingest.max_clock_skew_secs", "must be 0 to 86400".into());
        }
        if i.retry_min.is_zero() || i.retry_min > i.retry_max {
            return invalid(
                "ingest.retry_min_ms",
                "must be above 0 and not above retry_max_ms".into(),
            );
        }
        if self.registry.refresh_interval.is_zero() {
            return invalid("registry.refresh_interval_secs", "must be above 0".into());
        }
        let c = &self.completeness;
        if !(c.silence_factor > 0.0 && c.silence_factor <= 1000.0) {
            return invalid(
                "completeness.silence_factor",
                "must be above 0 and at most 1000".into(),
            );
        }
        // The list and the gauge are at most 10 s behind (CONTRACT.md §7): a flush and a
        // recount must both fit in that.
        if c.flush_interval.is_zero() || c.flush_interval > Duration::from_millis(5000) {
            return invalid("completeness.flush_interval_ms", "must be 1 to 5000".into());
        }
        if c.gauge_interval.is_zero() || c.gauge_interval > Duration::from_secs(5) {
            return invalid("completeness.gauge_interval_secs", "must be 1 to 5".into());
        }
        let p = &self.partitions;
        if p.retention_days != 0 && u64::from(p.retention_days) < i.max_age_days {
            return invalid(
                "partitions.retention_days",
                "must be 0 (keep) or at least ingest.max_age_days, or accepted readings would land in dropped months".into(),
            );
        }
        if self.log.rejection_summary.is_zero() {
            return invalid("log.rejection_summary_secs", "must be above 0".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return invalid("log.level", format!("{:?}: {e}", self.log.level));
        }
        Ok(())
    }

    /// The address the daemon listens on, refused by the listen rule ([`check_listen`]). A
    /// rule for `run` only, not part of [`Config::validate`]: the one-shot commands never
    /// listen, and an image that listens on every interface (deploy/docker) must still load
    /// for them without an admin token.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        let addr = self.http.addr;
        check_listen(addr, &self.admin.token).map_err(|msg| ConfigError::Invalid {
            key: "http.addr",
            msg,
        })?;
        Ok(addr)
    }

    /// A copy safe to print or log: passwords in URLs and tokens are replaced by a mask.
    pub fn masked(&self) -> Config {
        let mut c = self.clone();
        c.database.url = c.database.url.masked();
        c.mqtt.url = c.mqtt.url.masked();
        for secret in [&mut c.admin.token, &mut c.mqtt.password] {
            if !secret.is_empty() {
                *secret = MASK.into();
            }
        }
        c
    }

    /// The effective configuration as TOML, secrets masked (`check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml_string(&self.masked())
    }
}

/// The admin API without a token is open to whoever reaches the listener, so a listener
/// without `admin.token` must be on a loopback address.
pub fn check_listen(addr: SocketAddr, token: &str) -> Result<(), String> {
    if token.is_empty() && !addr.ip().to_canonical().is_loopback() {
        return Err(format!(
            "refusing to serve the admin API on {addr} without a token: set ENALYSIS_ADMIN_TOKEN \
             (or ENALYSIS_ADMIN_TOKEN_FILE), or listen on a loopback address (http.addr)"
        ));
    }
    Ok(())
}

fn toml_string(c: &Config) -> String {
    // Plain structs of strings, numbers and booleans always serialize.
    toml::to_string(c).unwrap_or_default()
}

/// One line per figment error: `key: what is wrong (in which layer)`.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let key = err.path.join(".");
            let layer = err
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!(" (in {} {src})", m.name),
                    None => format!(" (in {})", m.name),
                })
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{layer}", err.kind)
            } else {
                format!("{key}: {}{layer}", err.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Replaces every password in a connection string with the mask: the `user:password@` of a
/// URL, a `password` query parameter (`postgres://u@h/db?password=…`, which libpq and
/// tokio-postgres accept), and the `password=` of a key-value connection string
/// (`host=h user=u password=…`). Anything else that cannot be parsed is masked whole when it
/// may hold credentials (`@` or `password` in it), else left alone.
pub fn mask_url_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some(MASK));
            }
            if let Some(query) = u.query() {
                let masked: Vec<String> = query
                    .split('&')
                    .map(|part| {
                        let is_password = url::form_urlencoded::parse(part.as_bytes())
                            .next()
                            .is_some_and(|(k, _)| k.eq_ignore_ascii_case("password"));
                        match part.split_once('=') {
                            Some((key, _)) if is_password => format!("{key}={MASK}"),
                            _ => part.to_string(),
                        }
                    })
                    .collect();
                u.set_query(Some(&masked.join("&")));
            }
            u.to_string()
        }
        Err(_) => mask_conninfo_password(raw).unwrap_or_else(|| {
            if raw.contains('@') || raw.to_ascii_lowercase().contains("password") {
                MASK.into()
            } else {
                raw.to_string()
            }
        }),
    }
}

/// Masks the `password` values of a key-value connection string (`key=value` pairs separated
/// by whitespace, values bare or single-quoted with backslash escapes: the syntax
/// tokio-postgres parses). `None` when `raw` is not one.
fn mask_conninfo_password(raw: &str) -> Option<String> {
    let mut it = raw.char_indices().peekable();
    let mut out = String::with_capacity(raw.len());
    let mut copied = 0;
    let pos = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        it.peek().map_or(raw.len(), |&(i, _)| i)
    };
    loop {
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            break;
        }
        let key_start = pos(&mut it);
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key = &raw[key_start..pos(&mut it)];
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        if key.is_empty() || it.next_if(|&(_, c)| c == '=').is_none() {
            return None;
        }
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let value_start = pos(&mut it);
        if it.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match it.next()? {
                    (_, '\\') => {
                        it.next()?;
                    }
                    (_, '\'') => break,
                    _ => {}
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|&(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    it.next();
                }
            }
        }
        let value_end = pos(&mut it);
        if key.eq_ignore_ascii_case("password") {
            out.push_str(&raw[copied..value_start]);
            out.push_str(MASK);
            copied = value_end;
        }
    }
    out.push_str(&raw[copied..]);
    Some(out)
}

/// The environment layer: fixed names from the contract, `ENALYSIS_<SECTION>__<KEY>` for the
/// rest, and `_FILE` variants that read the value from a file (for secrets).
struct EnvLayer {
    dict: Dict,
}

impl EnvLayer {
    fn collect(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let defaults: Dict = Toml::string(DEFAULTS)
            .data()
            .ok()
            .and_then(|m| m.into_values().next())
            .unwrap_or_default();
        let vars: BTreeMap<String, String> = env.into_iter().collect();
        let mut dict = Dict::new();
        for (name, raw) in &vars {
            // `X_FILE` reads X from a file, unless `X_FILE` is itself a key (mqtt.ca_file).
            let known = |var: &str| key_for(var).is_some_and(|k| lookup(&defaults, &k).is_some());
            let (base, from_file) = match name.strip_suffix("_FILE") {
                Some(base) if !known(name) && key_for(base).is_some() => (base, true),
                _ => (name.as_str(), false),
            };
            let Some(key) = key_for(base) else { continue };
            let value = if from_file {
                if vars.contains_key(base) {
                    return Err(ConfigError::Env {
                        var: name.clone(),
                        msg: format!("both {base} and {name} are set; set only one"),
                    });
                }
                let text = std::fs::read_to_string(raw).map_err(|e| ConfigError::Env {
                    var: name.clone(),
                    msg: format!("cannot read {raw}: {e}"),
                })?;
                text.trim_end_matches(['\n', '\r']).to_string()
            } else {
                raw.clone()
            };
            // Type the value by its default: a password of digits stays a string, a pool size
            // of digits becomes a number.
            let is_string = lookup(&defaults, &key).is_none_or(|v| matches!(v, Value::String(..)));
            let value = if is_string {
                Value::from(value)
            } else {
                value
                    .parse::<Value>()
                    .unwrap_or_else(|_| Value::from(value))
            };
            let nested = figment::util::nest(&key, value)
                .into_dict()
                .unwrap_or_default();
            dict = merge_dicts(dict, nested);
        }
        Ok(Self { dict })
    }
}

fn lookup<'a>(dict: &'a Dict, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut current = dict.get(parts.next()?)?;
    for part in parts {
        current = current.as_dict()?.get(part)?;
    }
    Some(current)
}

fn merge_dicts(mut a: Dict, b: Dict) -> Dict {
    for (k, v) in b {
        match (a.remove(&k), v) {
            (Some(Value::Dict(t, old)), Value::Dict(_, new)) => {
                a.insert(k, Value::Dict(t, merge_dicts(old, new)));
            }
            (_, v) => {
                a.insert(k, v);
            }
        }
    }
    a
}

/// Maps an environment variable name to a config key, or `None` when it is not ours.
fn key_for(var: &str) -> Option<String> {
    match var {
        "DATABASE_URL" => return Some("database.url".into()),
        "MQTT_URL" => return Some("mqtt.url".into()),
        "ENALYSIS_HTTP_ADDR" => return Some("http.addr".into()),
        "ENALYSIS_ADMIN_TOKEN" => return Some("admin.token".into()),
        _ => {}
    }
    let rest = var.strip_prefix("ENALYSIS_")?;
    let (section, key) = rest.split_once("__")?;
    if section.is_empty() || key.is_empty() {
        return None;
    }
    Some(format!(
        "{}.{}",
        section.to_ascii_lowercase(),
        key.to_ascii_lowercase()
    ))
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(None, env(pairs))
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:9464");
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn contract_variables_override_the_file() {
        let c = load(&[
            ("DATABASE_URL", "postgres://u:pw@db:5433/x"),
            ("MQTT_URL", "mqtts://broker:8883"),
            ("ENALYSIS_HTTP_ADDR", "0.0.0.0:9000"),
            ("ENALYSIS_ADMIN_TOKEN", "s3cret"),
        ])
        .expect("valid");
        assert_eq!(c.database.url.as_str(), "postgres://u:pw@db:5433/x");
        assert_eq!(c.mqtt.url.as_str(), "mqtts://broker:8883");
        assert_eq!(c.http.addr.to_string(), "0.0.0.0:9000");
        assert_eq!(c.admin.token, "s3cret");
    }

    #[test]
    fn prefixed_variables_reach_nested_keys_with_their_types() {
        let c = load(&[
            ("ENALYSIS_DATABASE__POOL_SIZE", "3"),
            ("ENALYSIS_LOG__FORMAT", "pretty"),
            ("ENALYSIS_ADMIN__TOKEN", "12345"),
        ])
        .expect("valid");
        assert_eq!(c.database.pool_size, 3);
        assert_eq!(c.log.format, LogFormat::Pretty);
        // Digits stay a string where the key is a string.
        assert_eq!(c.admin.token, "12345");
    }

    #[test]
    fn unknown_keys_are_errors_wherever_they_come_from() {
        let err = load(&[("ENALYSIS_DATABASE__POOLSIZE", "3")]).expect_err("unknown key");
        assert!(err.to_string().contains("poolsize"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[mqtt]\nurll = \"mqtt://x:1\"\n").expect("write");
        let err = Config::load_from(Some(&path), env(&[])).expect_err("unknown key");
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").expect("write");
        let p = path.to_string_lossy().to_string();
        let c = load(&[("ENALYSIS_ADMIN_TOKEN_FILE", &p)]).expect("valid");
        assert_eq!(c.admin.token, "from-file");

        let err = load(&[
            ("ENALYSIS_ADMIN_TOKEN_FILE", &p),
            ("ENALYSIS_ADMIN_TOKEN", "x"),
        ])
        .expect_err("both set");
        assert!(err.to_string().contains("set only one"), "{err}");

        // A key that itself ends in _file is a key, not a file indirection.
        let c = load(&[("ENALYSIS_MQTT__CA_FILE", "/etc/ca.pem")]).expect("valid");
        assert_eq!(c.mqtt.ca_file, "/etc/ca.pem");

        let err = load(&[("DATABASE_URL_FILE", "/nonexistent/db")]).expect_err("missing");
        assert!(err.to_string().contains("DATABASE_URL_FILE"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (var, value, key) in [
            ("DATABASE_URL", "postgres://u@h:notaport/db", "database.url"),
            ("MQTT_URL", "http://broker", "mqtt.url"),
            ("ENALYSIS_HTTP_ADDR", "localhost", "http.addr"),
            ("ENALYSIS_DATABASE__POOL_SIZE", "0", "database.pool_size"),
            // Past chrono's range: once a panic at start-up, or a negative skew.
            (
                "ENALYSIS_INGEST__MAX_CLOCK_SKEW_SECS",
                "10000000000000000",
                "ingest.max_clock_skew_secs",
            ),
        ] {
            let err = load(&[(var, value)]).expect_err(var);
            assert!(err.to_string().contains(key), "{var}: {err}");
        }
        let err = load(&[("ENALYSIS_LOG__FORMAT", "xml")]).expect_err("bad enum");
        assert!(err.to_string().contains("xml"), "{err}");
    }

    #[test]
    fn masked_config_hides_every_secret() {
        let c = load(&[
            ("DATABASE_URL", "postgres://u:dbpw@db/x?password=dbpw3"),
            ("MQTT_URL", "mqtt://m:mqpw@broker:1883"),
            ("ENALYSIS_ADMIN_TOKEN", "tok"),
            ("ENALYSIS_MQTT__PASSWORD", "mqpw2"),
        ])
        .expect("valid");
        let text = c.to_masked_toml();
        for secret in ["dbpw", "dbpw3", "mqpw", "\"tok\"", "mqpw2"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(
            text.contains("postgres://u:********@db/x?password=********"),
            "{text}"
        );
        assert!(text.contains("[database]"), "{text}");
    }

    #[test]
    fn passwords_are_masked_in_every_connection_string_form() {
        for (raw, masked) in [
            ("postgres://u:pw@db/x", "postgres://u:********@db/x"),
            (
                "postgres://u@db/x?sslmode=require&password=pw&connect_timeout=5",
                "postgres://u@db/x?sslmode=require&password=********&connect_timeout=5",
            ),
            (
                "postgres://u@db/x?PASSWORD=pw",
                "postgres://u@db/x?PASSWORD=********",
            ),
            (
                "postgres://u@db/x?pass%77ord=pw",
                "postgres://u@db/x?pass%77ord=********",
            ),
            (
                "postgres://u@db/x?sslmode=require",
                "postgres://u@db/x?sslmode=require",
            ),
            (
                "host=db user=u password=pw dbname=x",
                "host=db user=u password=******** dbname=x",
            ),
            (
                "host=db password = 'p w\\' x' dbname=x",
                "host=db password = ******** dbname=x",
            ),
            ("password=p\\ w host=db", "password=******** host=db"),
            ("host=db user=u", "host=db user=u"),
            ("mqtt://gw:pw@broker:1883", "mqtt://gw:********@broker:1883"),
            ("not a url@all", "********"),
            ("host=db password='unterminated", "********"),
        ] {
            assert_eq!(mask_url_password(raw), masked, "{raw}");
        }
        // Each form also parses as tokio-postgres reads it, with the password we masked.
        for raw in [
            "postgres://u@db/x?password=pw",
            "host=db password='pw' dbname=x",
        ] {
            let c: tokio_postgres::Config = raw.parse().expect(raw);
            assert_eq!(c.get_password(), Some(&b"pw"[..]), "{raw}");
        }
    }

    #[test]
    fn a_listener_off_loopback_without_an_admin_token_is_refused() {
        let c = load(&[("ENALYSIS_HTTP_ADDR", "0.0.0.0:9000")]).expect("loads");
        let err = c.listen_addr().expect_err("refused");
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "http.addr",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("without a token"), "{err}");
        for (addr, token) in [("[::1]:9000", ""), ("[::]:9000", "t")] {
            let c = load(&[
                ("ENALYSIS_HTTP_ADDR", addr),
                ("ENALYSIS_ADMIN_TOKEN", token),
            ]);
            let listen = c.expect("loads").listen_addr();
            assert_eq!(listen.ok(), addr.parse().ok(), "{addr} {token:?}");
        }
    }

    #[test]
    fn urls_and_the_listener_are_parsed_as_they_load_and_named_when_refused() {
        let c = load(&[
            (
                "DATABASE_URL",
                "postgres://u:pw@db:5433/x?connect_timeout=3",
            ),
            ("MQTT_URL", "mqtts://gw:pw@[::1]"),
            ("ENALYSIS_HTTP_ADDR", "[::]:9000"),
        ])
        .expect("valid");
        let pg = c.database.url.config();
        assert_eq!(pg.get_ports(), [5433]);
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        let b = &c.mqtt.url;
        assert_eq!((b.host.as_str(), b.port, b.tls), ("::1", 8883, true));
        assert_eq!(
            c.http.addr,
            "[::]:9000".parse::<SocketAddr>().expect("addr")
        );
        for (var, value, expected) in [
            (
                "DATABASE_URL",
                "postgres://u@h:notaport/db",
                "database.url: malformed PostgreSQL URL (DATABASE_URL)",
            ),
            ("MQTT_URL", "::nope", "mqtt.url: malformed URL (MQTT_URL)"),
            (
                "MQTT_URL",
                "http://broker",
                "mqtt.url: expected mqtt://host:port or mqtts://host:port (MQTT_URL), got scheme \"http\"",
            ),
            (
                "ENALYSIS_HTTP_ADDR",
                "localhost:9464",
                "http.addr: expected IP:PORT such as 127.0.0.1:9464 (ENALYSIS_HTTP_ADDR), got \"localhost:9464\"",
            ),
        ] {
            let err = load(&[(var, value)]).expect_err(value);
            assert!(err.to_string().contains(expected), "{var}={value}: {err}");
        }
        // From a file too, where the error says which one.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[http]\naddr = \"localhost\"\n").expect("write");
        let err = Config::load_from(Some(&path), env(&[])).expect_err("bad addr");
        assert!(
            err.to_string().contains("http.addr: expected IP:PORT"),
            "{err}"
        );
        assert!(err.to_string().contains("c.toml"), "{err}");
    }

    #[test]
    fn durations_keep_their_keys_and_units() {
        let c = load(&[
            ("ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "250"),
            ("ENALYSIS_MQTT__KEEP_ALIVE_SECS", "12"),
        ])
        .expect("valid");
        assert_eq!(c.ingest.batch_max_age, Duration::from_millis(250));
        assert_eq!(c.mqtt.keep_alive, Duration::from_secs(12));
        assert_eq!(c.ingest.shutdown_timeout, Duration::from_secs(30));
        let text = c.to_masked_toml();
        for line in [
            "batch_max_age_ms = 250\n",
            "keep_alive_secs = 12\n",
            "connect_timeout_ms = 5000\n",
            "shutdown_timeout_secs = 30\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        for (var, value) in [
            ("ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "-1"),
            ("ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "abc"),
        ] {
            let err = load(&[(var, value)]).expect_err(value);
            assert!(
                err.to_string().contains("ingest.batch_max_age_ms: "),
                "{err}"
            );
        }
        let err = load(&[("ENALYSIS_MQTT__KEEP_ALIVE_SECS", "2")]).expect_err("too short");
        assert_eq!(err.to_string(), "mqtt.keep_alive_secs: must be at least 5");
    }

    #[test]
    fn the_masked_copy_keeps_no_password_in_its_parsed_urls_either() {
        let c = load(&[
            ("DATABASE_URL", "postgres://u:dbpw@db/x"),
            ("MQTT_URL", "mqtt://m:mqpw@broker:1883"),
        ])
        .expect("valid")
        .masked();
        assert_eq!(
            c.database.url.config().get_password(),
            Some(MASK.as_bytes())
        );
        assert_eq!(c.mqtt.url.url.password(), Some(MASK));
        let debug = format!("{:?}", (&c.database.url, &c.mqtt.url));
        assert!(
            !debug.contains("dbpw") && !debug.contains("mqpw"),
            "{debug}"
        );
    }

    #[test]
    fn an_explicit_missing_config_file_is_an_error() {
        let err =
            Config::load_from(Some(Path::new("/nonexistent.toml")), env(&[])).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent.toml"), "{err}");
    }
}
