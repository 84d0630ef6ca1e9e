//! The migrations produce the contract's schema (CONTRACT.md §2), idempotently.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::{self, Cmd};

#[tokio::test]
async fn migrate_applies_everything_to_an_empty_database_and_then_is_a_no_op() {
    let db = support::empty_db().await;
    let (count, last) = migrations();
    let first = Cmd::new(&["migrate"]).env("DATABASE_URL", &db).run();
    first.assert_ok();
    assert!(
        first
            .stdout
            .contains(&format!("applied {count} migration(s)")),
        "{first:?}"
    );
    let second = Cmd::new(&["migrate"]).env("DATABASE_URL", &db).run();
    second.assert_ok();
    assert!(
        second
            .stdout
            .contains(&format!("schema is up to date (version {last})")),
        "{second:?}"
    );
    let client = support::connect(&db).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, count as i64);
}

/// How many migrations the binary holds, and the last version.
fn migrations() -> (usize, i64) {
    let all = enalysis_ingest::migrate::MIGRATIONS;
    (all.len(), all.last().map_or(0, |m| m.version))
}

#[tokio::test]
async fn two_migrators_starting_at_once_both_succeed() {
    let db = support::empty_db().await;
    let a = Cmd::new(&["migrate"]).env("DATABASE_URL", &db).spawn();
    let b = Cmd::new(&["migrate"]).env("DATABASE_URL", &db).spawn();
    let (a, b) = (a.wait(), b.wait());
    a.assert_ok();
    b.assert_ok();
    let applied = [&a, &b]
        .iter()
        .filter(|o| {
            o.stdout
                .contains(&format!("applied {} migration(s)", migrations().0))
        })
        .count();
    assert_eq!(applied, 1, "exactly one applies: {a:?} {b:?}");
}

#[tokio::test]
async fn a_changed_migration_is_detected_by_its_checksum() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    client
        .execute(
            "UPDATE schema_migrations SET checksum = 'x' WHERE version = 2",
            &[],
        )
        .await
        .expect("tamper");
    let out = Cmd::new(&["migrate"]).env("DATABASE_URL", &db).run();
    out.assert_failed_with("was changed after it was applied");
}

async fn enum_labels(client: &tokio_postgres::Client) -> BTreeMap<String, Vec<String>> {
    let rows = client
        .query(
            "SELECT t.typname::text, e.enumlabel::text FROM pg_type t
             JOIN pg_enum e ON e.enumtypid = t.oid ORDER BY t.typname, e.enumsortorder",
            &[],
        )
        .await
        .expect("enums");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    out
}

#[tokio::test]
async fn enums_have_the_contract_names_and_labels() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let enums = enum_labels(&client).await;
    let expect = |name: &str, labels: &[&str]| {
        let got = enums
            .get(name)
            .unwrap_or_else(|| panic!("enum {name} missing"));
        for l in labels {
            assert!(got.iter().any(|g| g == l), "{name} lacks {l}: {got:?}");
        }
    };
    expect("direction_enum", &["in", "out", "bi"]);
    expect(
        "relationship_enum",
        &["energy_flow", "data_flow", "dependency"],
    );
    expect(
        "industry_type_enum",
        &["biotech", "datacenter", "logistics", "manufacturing"],
    );
    expect("meter_category_enum", &["CONS", "PROD", "INJ", "STOR"]);
    expect(
        "reading_frequency_enum",
        &["1min", "5min", "15min", "hourly", "daily"],
    );
    expect("quality_enum", &["good", "bad", "estimated"]);
    expect("entity_type_enum", &["meter", "asset", "energy_source"]);
    // Exact sets where the contract fixes them.
    assert_eq!(enums["direction_enum"], ["in", "out", "bi"]);
    assert_eq!(
        enums["meter_category_enum"],
        ["CONS", "PROD", "INJ", "STOR"]
    );
    assert_eq!(enums["quality_enum"], ["good", "bad", "estimated"]);
    let reasons: Vec<&str> = enalysis_ingest::model::Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .collect();
    assert_eq!(enums["rejection_reason_enum"], reasons);
}

#[tokio::test]
async fn every_table_has_the_common_columns_and_the_contract_tables_exist() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let rows = client
        .query(
            "SELECT c.table_name::text, c.column_name::text, c.data_type::text,
                    c.is_nullable::text, coalesce(c.column_default, '')
             FROM information_schema.columns c
             JOIN information_schema.tables t USING (table_schema, table_name)
             WHERE c.table_schema = 'public' AND t.table_type IN ('BASE TABLE', 'VIEW')",
            &[],
        )
        .await
        .expect("columns");
    let mut tables: BTreeMap<String, BTreeMap<String, (String, String, String)>> = BTreeMap::new();
    for r in rows {
        tables
            .entry(r.get(0))
            .or_default()
            .insert(r.get(1), (r.get(2), r.get(3), r.get(4)));
    }
    let hierarchy = [
        "portfolios",
        "sites",
        "meters",
        "assets",
        "asset_connections",
        "energy_sources",
        "grid_links",
        "recommendations",
        "asset_types",
    ];
    for t in hierarchy {
        let cols = tables.get(t).unwrap_or_else(|| panic!("table {t} missing"));
        let (ty, _, default) = &cols["id"];
        assert_eq!(ty, "uuid", "{t}.id");
        assert!(default.contains("gen_random_uuid()"), "{t}.id default");
        for c in ["created_at", "updated_at"] {
            assert_eq!(cols[c].0, "timestamp with time zone", "{t}.{c}");
            assert_eq!(cols[c].1, "NO", "{t}.{c} nullable");
        }
        assert_eq!(cols["metadata"].0, "jsonb", "{t}.metadata");
        assert_eq!(cols["active"].0, "boolean", "{t}.active");
    }
    for t in ["meters", "assets", "energy_sources"] {
        assert!(tables[t].contains_key("external_id"), "{t}.external_id");
    }
    assert!(tables.contains_key("rejected_readings"));
    assert!(tables.contains_key("schema_migrations"));
    // A view over rejected_messages and rejected_reading_runs, with the contract's columns.
    for c in [
        "received_at",
        "topic",
        "payload",
        "payload_text",
        "payload_size",
        "reason",
        "detail",
        "entity_type",
        "entity_id",
        "metric",
        "ts",
    ] {
        assert!(
            tables["rejected_readings"].contains_key(c),
            "rejected_readings.{c}"
        );
    }
    assert_eq!(tables["rejected_readings"]["payload"].0, "bytea");

    // measurements is partitioned, so information_schema lists it as a partitioned table: read
    // the parent's columns from pg_attribute.
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull
             FROM pg_attribute a WHERE a.attrelid = 'measurements'::regclass
             AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[],
        )
        .await
        .expect("measurement columns");
    let cols: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected = [
        ("entity_type", "entity_type_enum"),
        ("entity_id", "uuid"),
        ("metric", "text"),
        ("ts", "timestamp with time zone"),
        ("value", "double precision"),
        ("unit", "text"),
        ("quality", "quality_enum"),
        ("received_at", "timestamp with time zone"),
    ];
    assert_eq!(cols.len(), expected.len(), "{cols:?}");
    for ((name, ty, not_null), (en, et)) in cols.iter().zip(expected) {
        assert_eq!((name.as_str(), ty.as_str()), (en, et));
        assert!(not_null, "measurements.{name} must be NOT NULL");
    }
}

#[tokio::test]
async fn measurements_is_range_partitioned_by_ts_with_the_contract_key() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let row = client
        .query_one("SELECT pg_get_partkeydef('measurements'::regclass)", &[])
        .await
        .expect("partkey");
    assert_eq!(row.get::<_, String>(0), "RANGE (ts)");
    let key: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_constraint c
             CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
             WHERE c.conrelid = 'measurements'::regclass AND c.contype IN ('p', 'u')
             ORDER BY k.n",
            &[],
        )
        .await
        .expect("key")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(key, ["entity_type", "entity_id", "metric", "ts"]);
    // Only one index on the hot insert path.
    let indexes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'measurements'::regclass",
            &[],
        )
        .await
        .expect("indexes")
        .get(0);
    assert_eq!(indexes, 1);
    // The default partition exists so that no batch fails for want of a partition.
    let default: Option<String> = client
        .query_one("SELECT to_regclass('measurements_default')::text", &[])
        .await
        .expect("default")
        .get(0);
    assert!(default.is_some());
}

#[tokio::test]
async fn foreign_keys_cascade_down_the_hierarchy() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let rows = client
        .query(
            "SELECT conrelid::regclass::text, confrelid::regclass::text, confdeltype::text
             FROM pg_constraint WHERE contype = 'f'",
            &[],
        )
        .await
        .expect("fks");
    let fks: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for (child, parent) in [
        ("sites", "portfolios"),
        ("meters", "sites"),
        ("assets", "meters"),
        ("assets", "assets"),
        ("energy_sources", "meters"),
        ("asset_connections", "assets"),
        ("grid_links", "sites"),
        ("recommendations", "sites"),
    ] {
        assert!(
            fks.contains(&(child.into(), parent.into(), "c".into())),
            "{child} → {parent} must cascade: {fks:?}"
        );
    }
}

#[tokio::test]
async fn deleting_a_portfolio_deletes_everything_below_it_including_readings() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let ids = support::insert_hierarchy(&client).await;
    client
        .execute(
            "INSERT INTO measurements (entity_type, entity_id, metric, ts, value, unit)
             VALUES ('meter', $1, 'power', now(), 1, 'kW'),
                    ('asset', $2, 'power', now(), 1, 'kW'),
                    ('energy_source', $3, 'power', now(), 1, 'kW')",
            &[&ids.meter, &ids.asset, &ids.source],
        )
        .await
        .expect("readings");
    // A replaced version and a last reading go with their entity too.
    client
        .execute(
            "INSERT INTO measurement_revisions (entity_type, entity_id, metric, ts, value, unit,
                 quality, received_at)
             VALUES ('meter', $1, 'power', now(), 0.5, 'kW', 'estimated', now());
             ",
            &[&ids.meter],
        )
        .await
        .expect("revision");
    client
        .execute(
            "INSERT INTO entity_last_readings (entity_type, entity_id, last_ts, last_received_at)
             VALUES ('asset', $1, now(), now())",
            &[&ids.asset],
        )
        .await
        .expect("last reading");
    client
        .execute("DELETE FROM portfolios WHERE id = $1", &[&ids.portfolio])
        .await
        .expect("delete");
    for table in [
        "sites",
        "meters",
        "assets",
        "asset_connections",
        "energy_sources",
        "grid_links",
        "recommendations",
        "measurements",
        "measurement_revisions",
        "entity_last_readings",
    ] {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "{table} still has rows");
    }
}

#[tokio::test]
async fn updated_at_moves_on_update_and_created_at_does_not() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let ids = support::insert_hierarchy(&client).await;
    let before = client
        .query_one(
            "SELECT created_at, updated_at FROM meters WHERE id = $1",
            &[&ids.meter],
        )
        .await
        .expect("row");
    client
        .execute(
            "UPDATE meters SET name = 'renamed' WHERE id = $1",
            &[&ids.meter],
        )
        .await
        .expect("update");
    let after = client
        .query_one(
            "SELECT created_at, updated_at FROM meters WHERE id = $1",
            &[&ids.meter],
        )
        .await
        .expect("row");
    let t = |r: &tokio_postgres::Row, i| r.get::<_, chrono::DateTime<chrono::Utc>>(i);
    assert_eq!(t(&before, 0), t(&after, 0));
    assert!(t(&after, 1) > t(&before, 1));
}

#[tokio::test]
async fn seed_inserts_the_asset_types_once() {
    let db = support::migrated_db().await;
    let first = Cmd::new(&["seed"]).env("DATABASE_URL", &db).run();
    first.assert_ok();
    assert!(first.stdout.contains("4 inserted"), "{first:?}");
    let second = Cmd::new(&["seed"]).env("DATABASE_URL", &db).run();
    second.assert_ok();
    assert!(second.stdout.contains("0 inserted"), "{second:?}");
    let client = support::connect(&db).await;
    let codes: Vec<String> = client
        .query("SELECT code FROM asset_types ORDER BY code", &[])
        .await
        .expect("codes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(codes, ["C/I", "CONS", "INJ", "PROD"]);
}

#[tokio::test]
async fn partitions_are_created_ahead_and_absorb_rows_from_the_default_partition() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    client
        .execute(
            "INSERT INTO measurements (entity_type, entity_id, metric, ts, value, unit)
             VALUES ('meter', gen_random_uuid(), 'power', '2001-02-03T00:00:00Z', 1, 'kW')",
            &[],
        )
        .await
        .expect("insert");
    let created: i32 = client
        .query_one(
            "SELECT ensure_measurement_partitions('2001-01-15', '2001-03-01')",
            &[],
        )
        .await
        .expect("ensure")
        .get(0);
    assert_eq!(created, 3);
    let home: String = client
        .query_one("SELECT tableoid::regclass::text FROM measurements", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(home, "measurements_y2001m02");
    let again: i32 = client
        .query_one(
            "SELECT ensure_measurement_partitions('2001-01-15', '2001-03-01')",
            &[],
        )
        .await
        .expect("ensure")
        .get(0);
    assert_eq!(again, 0);
    let dropped: i32 = client
        .query_one("SELECT drop_measurement_partitions('2001-03-01')", &[])
        .await
        .expect("drop")
        .get(0);
    assert_eq!(dropped, 2);
}

/// Rows stored before `0004` (a payload per rejected reading) move to the payload-once tables
/// and read back through the `rejected_readings` view unchanged.
#[tokio::test]
async fn rejections_stored_before_0004_read_back_unchanged_through_the_view() {
    use enalysis_ingest::migrate::{MIGRATIONS, checksum};
    let db = support::empty_db().await;
    let mut client = support::connect(&db).await;
    // The schema as it was at version 3, recorded as such.
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text NOT NULL,
                 checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
                 duration_ms bigint NOT NULL)",
        )
        .await
        .expect("bookkeeping");
    for m in MIGRATIONS.iter().filter(|m| m.version <= 3) {
        client.batch_execute(m.sql).await.expect(m.name);
        client
            .execute(
                "INSERT INTO schema_migrations (version, name, checksum, duration_ms)
                 VALUES ($1, $2, $3, 0)",
                &[&m.version, &m.name, &checksum(m.sql)],
            )
            .await
            .expect("record");
    }
    // Two readings of one message and a whole-message rejection of another, old style.
    client
        .batch_execute(
            "INSERT INTO rejected_readings (topic, payload, payload_text, payload_size,
                 message_digest, seq, reason, detail, metric)
             VALUES
               ('t/a', '[1,2]', '[1,2]', 5, sha256('a'), 0, 'malformed_payload', 'element 0: x', NULL),
               ('t/a', '[1,2]', '[1,2]', 5, sha256('a'), 1, 'malformed_payload', 'element 1: x', NULL),
               ('t/b', '\\x00ff', NULL, 2, sha256('b'), 0, 'malformed_payload', 'not UTF-8', NULL)",
        )
        .await
        .expect("old rows");
    let before = client
        .query(
            "SELECT topic, payload, payload_text, payload_size, message_digest, seq, reason::text,
                    detail FROM rejected_readings ORDER BY topic, seq",
            &[],
        )
        .await
        .expect("before");
    enalysis_ingest::migrate::run(&mut client)
        .await
        .expect("0004 applies over old rows");
    let after = client
        .query(
            "SELECT topic, payload, payload_text, payload_size, message_digest, seq, reason::text,
                    detail FROM rejected_readings ORDER BY topic, seq",
            &[],
        )
        .await
        .expect("after");
    let show = |rows: &[tokio_postgres::Row]| -> Vec<String> {
        rows.iter()
            .map(|r| {
                format!(
                    "{:?} {:?} {:?} {} {:?} {} {} {:?}",
                    r.get::<_, String>(0),
                    r.get::<_, Vec<u8>>(1),
                    r.get::<_, Option<String>>(2),
                    r.get::<_, i32>(3),
                    r.get::<_, Vec<u8>>(4),
                    r.get::<_, i32>(5),
                    r.get::<_, String>(6),
                    r.get::<_, String>(7),
                )
            })
            .collect()
    };
    assert_eq!(show(&after), show(&before));
    let messages: i64 = client
        .query_one("SELECT count(*) FROM rejected_messages", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(messages, 2, "one payload row per message");
}
