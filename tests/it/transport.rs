//! Transport security and secrets: PostgreSQL over TLS end to end (a server that accepts only
//! TLS, a CA of our own), and secrets given through `*_FILE` variables never showing up in
//! `check-config`, the daemon's log or error messages.

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::json;

use crate::common::{self, Hba, PgOptions, PgServer, TestDb, TestPki};
use crate::support::{self, Cmd, Daemon, Output, Publisher, daemon_env, wait_count};

const MEAS: &str = "SELECT count(*) FROM measurements";
const REJ: &str = "SELECT count(*) FROM rejected_readings";

fn ts() -> String {
    (Utc::now() - ChronoDuration::minutes(1)).to_rfc3339()
}

/// Replaces (or adds) `key` in a daemon environment.
fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.into(), value.into()));
}

/// A dedicated cluster that speaks TLS with the server certificate of `pki` and refuses plain
/// TCP connections (hostssl only), plus a migrated database on it with an inventory.
async fn tls_only_postgres(pki: &TestPki) -> (PgServer, TestDb, support::Ids) {
    let pg = PgServer::dedicated_with_options(
        PgOptions::new()
            .file("server.pem", &pki.server_cert())
            .file("server.key", &pki.server_key())
            .settings(&[
                ("ssl", "on"),
                ("ssl_cert_file", "server.pem"),
                ("ssl_key_file", "server.key"),
            ])
            .hba(Hba::HostSslOnly),
    );
    let db = common::fresh_db(&pg).await;
    // The test's own connection goes through the Unix socket (no TLS needed there).
    let mut client = support::connect(&db.socket_url).await;
    enalysis_ingest::migrate::run(&mut client)
        .await
        .expect("migrations apply");
    let ids = support::insert_hierarchy(&client).await;
    (pg, db, ids)
}

/// `migrate` against `url` with `ca_file` trusted.
fn migrate(url: &str, ca_file: &std::path::Path) -> Output {
    Cmd::new(&["migrate"])
        .env("DATABASE_URL", url)
        .env("ENALYSIS_DATABASE__CA_FILE", &ca_file.display().to_string())
        .run()
}

#[tokio::test]
async fn the_daemon_ingests_over_tls_into_a_postgres_that_accepts_only_tls() {
    let pki = TestPki::new();
    let (pg, db, ids) = tls_only_postgres(&pki).await;
    let client = support::connect(&db.socket_url).await;
    let broker = common::Broker::start();
    let url = format!("{}?sslmode=require", db.url);
    let mut env = daemon_env(&url, &broker.url());
    set(
        &mut env,
        "ENALYSIS_DATABASE__CA_FILE",
        &pki.ca_pem().display().to_string(),
    );
    let daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    p.publish(
        &topic,
        json!({"ts": ts(), "metric": "power", "value": 1.0}).to_string(),
    )
    .await;
    p.publish(&topic, b"garbage".to_vec()).await;
    wait_count(&client, MEAS, 1).await;
    wait_count(&client, REJ, 1).await;
    // Every connection the daemon holds is encrypted (the server allows nothing else over TCP,
    // and this says so from the server's side).
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'enalysis-ingest'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let (all, tls): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        all > 0,
        "no daemon connection seen; log:\n{}",
        daemon.log_text()
    );
    assert_eq!(all, tls, "some daemon connections are not TLS");
    drop(pg);
}

#[tokio::test]
async fn a_postgres_certificate_from_another_ca_is_refused_in_one_line_naming_the_certificate() {
    let pki = TestPki::new();
    let stranger = TestPki::new();
    let (pg, db, _ids) = tls_only_postgres(&pki).await;
    let url = format!("{}?sslmode=require", db.url);

    // The right CA: the command works (so the failures below are about the CA alone).
    migrate(&url, &pki.ca_pem()).assert_ok();

    // A CA that did not sign the server certificate.
    let out = migrate(&url, &stranger.ca_pem());
    out.assert_failed_with("certificate");
    // It names the server it could not trust.
    let target = format!("127.0.0.1:{}/{}", pg.port(), db.name);
    assert!(out.stderr.contains(&target), "{out:?}");
    // The system roots alone do not trust a private CA either.
    Cmd::new(&["migrate"])
        .env("DATABASE_URL", &url)
        .run()
        .assert_failed_with("certificate");

    // The daemon does not start ingesting; it says why while it waits for the database.
    let broker = common::Broker::start();
    let mut env = daemon_env(&url, &broker.url());
    set(
        &mut env,
        "ENALYSIS_DATABASE__CA_FILE",
        &stranger.ca_pem().display().to_string(),
    );
    let daemon = Daemon::spawn(&env);
    daemon.wait_for_log("database not reachable yet", 1).await;
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("database not reachable yet"))
        .unwrap_or_default();
    assert!(line.contains("certificate"), "{line}");
    assert!(!log.contains("\"ingesting\""), "{log}");
}

#[tokio::test]
async fn plain_tcp_to_a_tls_only_postgres_is_refused() {
    let pki = TestPki::new();
    let (_pg, db, _ids) = tls_only_postgres(&pki).await;
    let out = migrate(&format!("{}?sslmode=disable", db.url), &pki.ca_pem());
    out.assert_failed_with("no pg_hba.conf entry");
    assert!(out.stderr.contains("no encryption"), "{out:?}");
}

/// What every secret in the test below starts with: none of it may show up anywhere.
const SECRET: &str = "s3cr3t-Zq9";

/// Asserts that `text` (named `what`) holds no secret.
fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "a secret leaked into {what}:\n{text}"
    );
}

fn assert_output_has_no_secret(what: &str, out: &Output) {
    assert_no_secret(&format!("{what} (stdout)"), &out.stdout);
    assert_no_secret(&format!("{what} (stderr)"), &out.stderr);
}

/// `Cmd` with a daemon environment (minus what `check-config`/`migrate` do not take).
fn cmd(args: &[&str], env: &[(String, String)]) -> Cmd {
    env.iter().fold(Cmd::new(args), |cmd, (k, v)| cmd.env(k, v))
}

#[tokio::test]
async fn secrets_from_files_never_appear_in_check_config_logs_or_errors() {
    let db_password = format!("{SECRET}-db-7Hk2");
    let mqtt_password = format!("{SECRET}-mqtt-4Lp8");
    let admin_token = format!("{SECRET}-admin-9Vx1");

    // A database whose role must log in with `db_password` (scram over TCP).
    let pg = common::shared_pg();
    let db = common::fresh_db(pg).await;
    let client = support::connect(&db.url).await;
    let mut migrator = support::connect(&db.url).await;
    enalysis_ingest::migrate::run(&mut migrator)
        .await
        .expect("migrations apply");
    let ids = support::insert_hierarchy(&client).await;
    let role = format!("secret_{}", uuid::Uuid::new_v4().simple());
    let db_url = pg.password_role_url(&db.name, &role, &db_password);
    let wrong_db_url = db_url.replace(&db_password, &format!("{SECRET}-db-WRONG"));
    assert_ne!(db_url, wrong_db_url);

    // A broker that wants a password.
    let files = tempfile::tempdir().expect("tempdir");
    let dir = files.path();
    common::run_checked(
        "mosquitto_passwd",
        &["-b", "-c", "passwd", "gateway", &mqtt_password],
        dir,
    );
    let broker = common::Broker::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}/passwd\n",
        dir.display()
    ));

    // Every secret through a file.
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{text}\n")).expect("write a secret file");
        path.display().to_string()
    };
    let db_url_file = write("database_url", &db_url);
    let wrong_db_url_file = write("wrong_database_url", &wrong_db_url);
    let mqtt_password_file = write("mqtt_password", &mqtt_password);
    let wrong_mqtt_password_file = write("wrong_mqtt_password", &format!("{SECRET}-mqtt-WRONG"));
    let admin_token_file = write("admin_token", &admin_token);
    let http_port = common::free_port();
    let mut env = daemon_env("unused", &broker.url());
    env.retain(|(k, _)| k != "DATABASE_URL");
    set(&mut env, "DATABASE_URL_FILE", &db_url_file);
    set(&mut env, "ENALYSIS_MQTT__USERNAME", "gateway");
    set(
        &mut env,
        "ENALYSIS_MQTT__PASSWORD_FILE",
        &mqtt_password_file,
    );
    set(&mut env, "ENALYSIS_ADMIN_TOKEN_FILE", &admin_token_file);
    set(
        &mut env,
        "ENALYSIS_HTTP_ADDR",
        &format!("127.0.0.1:{http_port}"),
    );
    // Everything at debug, dependencies included: more chances to leak.
    set(&mut env, "RUST_LOG", "debug");

    // check-config: the secrets are read (masked values are printed), never shown.
    let out = cmd(&["check-config"], &env).run();
    out.assert_ok();
    assert_output_has_no_secret("check-config", &out);
    assert!(
        out.stdout.contains(&format!("postgres://{role}:********@")),
        "{out:?}"
    );
    assert_eq!(out.stdout.matches("\"********\"").count(), 2, "{out:?}");

    // The same for the other forms a database password can take.
    let query_form = format!(
        "postgres://{role}@127.0.0.1:{}/{}?password={db_password}",
        pg.port(),
        db.name
    );
    let key_value_form = format!(
        "host=127.0.0.1 port={} user={role} password='{db_password}' dbname={}",
        pg.port(),
        db.name
    );
    for url in [&query_form, &key_value_form] {
        let mut env = env.clone();
        set(
            &mut env,
            "DATABASE_URL_FILE",
            &write("other_database_url", url),
        );
        let out = cmd(&["check-config"], &env).run();
        out.assert_ok();
        assert_output_has_no_secret(&format!("check-config with {url}"), &out);
        // The form really carries a working password.
        cmd(&["migrate"], &env).run().assert_ok();
    }

    // The daemon, ingesting with all three secrets, its admin API used with the token.
    let mut daemon = Daemon::start(&env).await;
    daemon.wait_for_log("\"ingesting\"", 1).await;
    let p = Publisher::connect(&format!(
        "mqtt://gateway:{mqtt_password}@127.0.0.1:{}",
        broker.port()
    ))
    .await;
    p.publish(
        &format!("enalysis/v1/meters/{}/readings", ids.meter),
        json!({"ts": ts(), "metric": "power", "value": 1.0}).to_string(),
    )
    .await;
    wait_count(&client, MEAS, 1).await;
    let api = "/api/v1/asset-types";
    let (status, _) = support::http(http_port, "GET", api, Some(&admin_token), None).await;
    assert_eq!(status, 200);
    let near_miss = format!("{admin_token}-typo");
    let (status, body) = support::http(http_port, "GET", api, Some(&near_miss), None).await;
    assert_eq!(status, 401);
    assert_no_secret("a 401 response", &body);
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(30).await, Some(0), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("\"stopped\""), "{log}");
    // The configuration was logged (masked), so the absence below means something.
    assert!(log.contains(":********@"), "{log}");
    assert_no_secret("the daemon's log", &log);

    // A refused database password: one line, no password.
    let mut wrong_db = env.clone();
    set(&mut wrong_db, "DATABASE_URL_FILE", &wrong_db_url_file);
    let out = cmd(&["migrate"], &wrong_db).run();
    out.assert_failed_with("password authentication failed");
    assert_output_has_no_secret("migrate with a wrong password", &out);
    // The daemon gives up on it (waiting will not fix a password), saying so without it.
    let mut daemon = Daemon::spawn(&wrong_db);
    assert_eq!(daemon.wait_exit(30).await, Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("password authentication failed"), "{log}");
    assert_no_secret("the log of a daemon refused by PostgreSQL", &log);

    // A refused MQTT password: the daemon retries, and says why without it.
    let mut wrong_mqtt = env.clone();
    set(
        &mut wrong_mqtt,
        "ENALYSIS_MQTT__PASSWORD_FILE",
        &wrong_mqtt_password_file,
    );
    let daemon = Daemon::spawn(&wrong_mqtt);
    daemon
        .wait_for_log("cannot connect to the MQTT broker", 1)
        .await;
    assert_no_secret(
        "the log of a daemon refused by the broker",
        &daemon.log_text(),
    );
}
