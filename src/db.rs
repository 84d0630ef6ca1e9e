//! The PostgreSQL connection pool (deadpool-postgres) with rustls TLS and bounded timeouts.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::DatabaseConfig;

pub type Client = deadpool_postgres::Object;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot read database.ca_file {path}: {msg}")]
    CaFile { path: String, msg: String },
    #[error("cannot build the connection pool: {0}")]
    Build(String),
    #[error("cannot connect to PostgreSQL at {target}: {msg}")]
    Connect {
        target: String,
        msg: String,
        /// The server refused us for a reason waiting will not fix (SQLSTATE class 28: bad
        /// credentials; 3D000: no such database).
        refused: bool,
    },
    #[error("timed out after {waited:?} waiting for a connection to PostgreSQL at {target}")]
    Timeout { target: String, waited: Duration },
    /// Every server answered read-only (standbys in recovery, a failover not finished yet).
    #[error("no server accepts writes (target_session_attrs=read-write) at {target}")]
    NoWritableServer { target: String },
    /// The server we reached does not take writes: a standby, or `default_transaction_read_only`.
    #[error(
        "PostgreSQL at {target} does not accept writes (a standby in recovery, or read-only); \
         set target_session_attrs=read-write and list every server in DATABASE_URL"
    )]
    ReadOnly { target: String },
}

impl DbError {
    /// Whether waiting and trying again can help (the database may come back); a missing CA
    /// file or a refused password will not fix itself.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::NoWritableServer { .. } | Self::ReadOnly { .. } => true,
            Self::Connect { refused, .. } => !refused,
            Self::CaFile { .. } | Self::Build(_) => false,
        }
    }
}

/// A statement that failed, as its one useful line ([`pg_error_message`]): the `?` of code that
/// runs a query, where tokio-postgres's own text would say only "db error".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(String);

impl From<tokio_postgres::Error> for QueryError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self(pg_error_message(&e))
    }
}

/// A database handle: the pool plus a printable, password-free description of the target.
#[derive(Clone)]
pub struct Db {
    pub pool: Pool,
    target: Arc<str>,
    wait: Duration,
    /// Kept for connections outside the pool (LISTEN needs its own, long-lived one).
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl Db {
    /// Builds the pool. Opens no connection yet: call [`Db::get`] (or [`Db::check`]) for that.
    pub fn new(cfg: &DatabaseConfig) -> Result<Self, DbError> {
        let mut pg = cfg.url.config().clone();
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(cfg.connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("enalysis-ingest");
        }
        // Dead peers (a pulled cable, a failed-over host) are noticed without waiting for TCP's
        // default two hours.
        pg.keepalives_idle(Duration::from_secs(30));
        let target = describe(&pg);
        let tls = MakeRustlsConnect::new(tls_config(&cfg.ca_file)?);
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let wait = cfg.pool_wait_timeout;
        let connect = cfg.connect_timeout;
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            // The most recently used connection first: the writer keeps reusing one (its
            // buffers grown to the batch's statements) instead of rotating through every
            // connection the other tasks opened and growing each one's (FIFO, the default,
            // cost ~8 MiB of peak RSS under the hostile corpus once the silence tasks came).
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(wait))
            .create_timeout(Some(connect))
            .recycle_timeout(Some(connect))
            .build()
            .map_err(|e| DbError::Build(e.to_string()))?;
        Ok(Self {
            pool,
            target: target.into(),
            wait,
            pg,
            tls,
        })
    }

    /// A connection outside the pool, with its connection future for the caller to drive
    /// (which is how LISTEN notifications are received).
    pub async fn connect_dedicated(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        DbError,
    > {
        self.pg
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.connect_error(&e))
    }

    fn connect_error(&self, e: &tokio_postgres::Error) -> DbError {
        let msg = pg_error_message(e);
        // tokio-postgres's own words when every host answered `transaction_read_only = on`
        // (it reports the last host's error); it exposes no kind for it.
        if msg.contains("database does not allow writes") {
            return DbError::NoWritableServer {
                target: self.target.to_string(),
            };
        }
        let refused = match e.code() {
            Some(c) => c.code().starts_with("28") || c.code() == "3D000",
            // The driver's own refusal to connect without a password the server asks for: no
            // SQLSTATE, and tokio-postgres exposes no kind for it, so only its text says so.
            None => e.to_string().contains("password missing"),
        };
        DbError::Connect {
            target: self.target.to_string(),
            msg,
            refused,
        }
    }

    /// `host:port/dbname`, without credentials: safe for logs and error messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A pooled connection, or an error that says what went wrong in one line.
    pub async fn get(&self) -> Result<Client, DbError> {
        self.pool.get().await.map_err(|e| self.pool_error(e))
    }

    /// Opens (or reuses) a connection and checks that the server takes writes: the daemon
    /// has no use for a standby (without `target_session_attrs=read-write` in the URL, a
    /// standby is connected to like any server).
    pub async fn check(&self) -> Result<(), DbError> {
        let client = self.get().await?;
        let rows = client
            .simple_query("SHOW transaction_read_only")
            .await
            .map_err(|e| self.connect_error(&e))?;
        let read_only = rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
            _ => false,
        });
        if read_only {
            // Not to be handed out again: a new connection chooses its server anew.
            drop(deadpool_postgres::Object::take(client));
            return Err(DbError::ReadOnly {
                target: self.target.to_string(),
            });
        }
        Ok(())
    }

    /// Closes every idle pooled connection, so the next ones are opened anew and choose their
    /// server by `target_session_attrs`. Called after the database failed a write: an idle
    /// connection may be to a server that died, or to one that no longer takes writes (a
    /// failover), and must not be handed out again.
    pub fn forget_idle(&self) {
        self.pool.retain(|_, _| false);
    }

    fn pool_error(&self, e: PoolError) -> DbError {
        let target = self.target.to_string();
        match e {
            PoolError::Backend(e) => self.connect_error(&e),
            PoolError::Timeout(_) => DbError::Timeout {
                target,
                waited: self.wait,
            },
            other => DbError::Connect {
                target,
                msg: other.to_string(),
                refused: false,
            },
        }
    }
}

/// The most useful one-line text of a tokio-postgres error: the server's message when there is
/// one ("password authentication failed for user …"), else the I/O cause ("Connection refused").
pub fn pg_error_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

/// `host:port/db`, or `host1:port1,host2:port2/db` for a URL naming several servers.
fn describe(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            // libpq: one port for all hosts, or one per host.
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let servers = if hosts.is_empty() {
        format!("localhost:{}", ports.first().copied().unwrap_or(5432))
    } else {
        hosts.join(",")
    };
    let db = pg
        .get_dbname()
        .or(pg.get_user())
        .unwrap_or("postgres")
        .to_string();
    format!("{servers}/{db}")
}

fn tls_config(ca_file: &str) -> Result<rustls::ClientConfig, DbError> {
    crate::tls::client_config("database.ca_file", ca_file, None).map_err(|e| DbError::CaFile {
        path: e.path,
        msg: e.msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_names_every_server_and_no_password() {
        for (url, target) in [
            ("postgres://u:secret@db1:5433/enalysis", "db1:5433/enalysis"),
            (
                "postgres://u:secret@db1:5432,db2:5433/enalysis?target_session_attrs=read-write",
                "db1:5432,db2:5433/enalysis",
            ),
            (
                "host=db1,db2 port=6432 user=u dbname=e",
                "db1:6432,db2:6432/e",
            ),
        ] {
            let pg: tokio_postgres::Config = url.parse().expect("a valid URL");
            assert_eq!(describe(&pg), target, "{url}");
        }
    }
}
