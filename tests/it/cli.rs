//! Every CLI failure mode gives one clear line on stderr and a non-zero exit; the README lists
//! every command.

use crate::support::{self, Cmd};

#[test]
fn an_unreachable_database_is_one_line_and_exit_1() {
    let port = crate::common::free_port();
    Cmd::new(&["migrate"])
        .env(
            "DATABASE_URL",
            &format!("postgres://postgres@127.0.0.1:{port}/x"),
        )
        .run()
        .assert_failed_with("cannot connect to PostgreSQL at 127.0.0.1");
}

#[tokio::test]
async fn a_wrong_password_is_one_line_and_exit_1() {
    let url = crate::common::shared_pg().password_user_url("wrong-password");
    Cmd::new(&["seed"])
        .env("DATABASE_URL", &url)
        .run()
        .assert_failed_with("password authentication failed");
}

#[test]
fn a_malformed_database_url_is_one_line_and_exit_1() {
    Cmd::new(&["migrate"])
        .env("DATABASE_URL", "postgres://u@host:notaport/db")
        .run()
        .assert_failed_with("malformed PostgreSQL URL");
}

#[test]
fn an_unknown_config_key_is_one_line_and_exit_1() {
    Cmd::new(&["check-config"])
        .env("ENALYSIS_INGEST__BATCH_ROWS", "5")
        .run()
        .assert_failed_with("ingest.batch_rows: unknown field");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[database]\nurl = \"postgres://x@h/d\"\npoolsize = 3\n",
    )
    .expect("write");
    Cmd::new(&[
        "--config",
        path.to_str().expect("utf-8 path"),
        "check-config",
    ])
    .run()
    .assert_failed_with("database.poolsize: unknown field");
}

#[test]
fn a_bad_config_value_is_one_line_and_exit_1() {
    Cmd::new(&["check-config"])
        .env("ENALYSIS_INGEST__BATCH_MAX_ROWS", "lots")
        .run()
        .assert_failed_with("ingest.batch_max_rows");
    Cmd::new(&["check-config", "--config", "/nonexistent/enalysis.toml"])
        .run()
        .assert_failed_with("/nonexistent/enalysis.toml does not exist");
}

#[test]
fn check_config_prints_the_effective_values_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok-from-file\n").expect("write");
    let out = Cmd::new(&["check-config"])
        .env(
            "DATABASE_URL",
            "postgres://ingest:db-secret@db.example:5432/energy",
        )
        .env("MQTT_URL", "mqtt://gw:mqtt-secret@broker:1883")
        .env(
            "ENALYSIS_ADMIN_TOKEN_FILE",
            token_file.to_str().expect("utf-8 path"),
        )
        .env("ENALYSIS_INGEST__BATCH_MAX_ROWS", "1234")
        .run();
    out.assert_ok();
    for secret in ["db-secret", "mqtt-secret", "tok-from-file"] {
        assert!(
            !out.stdout.contains(secret),
            "{secret} leaked: {}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("postgres://ingest:********@db.example:5432/energy")
    );
    assert!(out.stdout.contains("batch_max_rows = 1234"));
    assert!(out.stdout.contains("token = \"********\""));
}

#[tokio::test]
async fn migrate_against_a_database_that_does_not_exist_says_so() {
    let url = support::empty_db().await;
    let url = format!("{}_missing", url);
    Cmd::new(&["migrate"])
        .env("DATABASE_URL", &url)
        .run()
        .assert_failed_with("does not exist");
}

#[tokio::test]
async fn run_with_a_wrong_password_exits_1_instead_of_waiting_forever() {
    let url = crate::common::shared_pg().password_user_url("wrong-password");
    let broker = crate::common::Broker::start();
    let out = Cmd::new(&["run"])
        .env("DATABASE_URL", &url)
        .env("MQTT_URL", &broker.url())
        .env("ENALYSIS_HTTP_ADDR", "127.0.0.1:0")
        .run();
    assert_eq!(out.status, Some(1), "{out:?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("password authentication failed"),
        "{out:?}"
    );
}

#[tokio::test]
async fn provisioning_the_example_inventory_twice_changes_nothing_the_second_time() {
    let url = support::migrated_db().await;
    Cmd::new(&["seed"])
        .env("DATABASE_URL", &url)
        .run()
        .assert_ok();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/inventory.example.yaml");
    let dry = Cmd::new(&["provision", example, "--dry-run"])
        .env("DATABASE_URL", &url)
        .run();
    dry.assert_ok();
    assert!(dry.stdout.contains("nothing was written"), "{dry:?}");
    let first = Cmd::new(&["provision", example])
        .env("DATABASE_URL", &url)
        .run();
    first.assert_ok();
    assert!(first.stdout.contains("total: 19 created"), "{first:?}");
    let second = Cmd::new(&["provision", example])
        .env("DATABASE_URL", &url)
        .run();
    second.assert_ok();
    assert!(
        second
            .stdout
            .contains("total: 0 created, 0 updated, 0 moved, 19 unchanged"),
        "{second:?}"
    );
}

#[test]
fn the_readme_command_table_lists_every_subcommand() {
    use clap::CommandFactory as _;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let documented: std::collections::BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `enalysis-ingest "))
        .filter_map(|rest| rest.split([' ', '`']).next())
        .map(str::to_string)
        .collect();
    let commands: std::collections::BTreeSet<String> = enalysis_ingest::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    assert_eq!(documented, commands, "README's command table vs `--help`");
}
