//! `enalysis-ingest provision` (issue 4, item 4): the example inventory against a fresh, migrated
//! and seeded database; idempotence down to the tuple; every refusal with its path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use enalysis_ingest::admin::provision::{self, Action, Invalid, Kind, Plan};
use enalysis_ingest::config::Config;
use enalysis_ingest::db::Db;

use crate::support;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/inventory.example.yaml");

/// A fresh database with the asset types seeded, as a pool (for `provision::run`) and a plain
/// client (for looking).
struct Env {
    db: Db,
    client: tokio_postgres::Client,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    let url = support::migrated_db().await;
    let client = support::connect(&url).await;
    enalysis_ingest::seed::run(&client)
        .await
        .expect("seed asset types");
    let config =
        Config::load_from(None, vec![("DATABASE_URL".into(), url)]).expect("test configuration");
    let db = Db::new(&config.database).expect("pool");
    Env {
        db,
        client,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

impl Env {
    async fn provision(&self, path: &Path) -> Plan {
        provision::run(&self.db, path, false)
            .await
            .unwrap_or_else(|e| panic!("provision {}: {e:#}", path.display()))
    }

    async fn dry_run(&self, path: &Path) -> Plan {
        provision::run(&self.db, path, true)
            .await
            .unwrap_or_else(|e| panic!("dry run {}: {e:#}", path.display()))
    }

    /// Runs a file that must be refused; returns the problems as `path: message` lines.
    async fn refused(&self, path: &Path) -> Vec<String> {
        let err = provision::run(&self.db, path, false)
            .await
            .expect_err("the inventory is refused");
        let invalid = err
            .downcast_ref::<Invalid>()
            .unwrap_or_else(|| panic!("expected Invalid, got {err:#}"));
        invalid.problems.iter().map(ToString::to_string).collect()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write inventory");
        path
    }

    /// The example with `from` replaced by `to` (which must occur exactly once).
    fn example_with(&self, from: &str, to: &str) -> PathBuf {
        let text = std::fs::read_to_string(EXAMPLE).expect("example");
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} once in the example"
        );
        self.write("changed.yaml", &text.replace(from, to))
    }

    async fn counts(&self) -> BTreeMap<&'static str, i64> {
        let mut out = BTreeMap::new();
        for table in TABLES {
            let row = self
                .client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .expect("count");
            out.insert(table, row.get(0));
        }
        out
    }

    /// Every row of the hierarchy with its `updated_at` and `xmin`: any UPDATE, even one that
    /// changes no value, gives the row a new `xmin`.
    async fn snapshot(&self) -> BTreeMap<String, (String, String)> {
        let mut out = BTreeMap::new();
        for table in TABLES {
            let rows = self
                .client
                .query(
                    &format!("SELECT id::text, updated_at::text, xmin::text FROM {table}"),
                    &[],
                )
                .await
                .expect("snapshot");
            for r in rows {
                out.insert(
                    format!("{table}/{}", r.get::<_, String>(0)),
                    (r.get(1), r.get(2)),
                );
            }
        }
        out
    }

    async fn text(&self, sql: &str, key: &str) -> Option<String> {
        self.client
            .query_opt(sql, &[&key])
            .await
            .expect("query")
            .map(|r| r.get(0))
    }
}

const TABLES: [&str; 7] = [
    "portfolios",
    "sites",
    "meters",
    "assets",
    "energy_sources",
    "grid_links",
    "asset_connections",
];

fn expected_counts(n: [i64; 7]) -> BTreeMap<&'static str, i64> {
    TABLES.into_iter().zip(n).collect()
}

/// The example's entities per table (see config/inventory.example.yaml).
const EXAMPLE_COUNTS: [i64; 7] = [1, 1, 4, 8, 2, 1, 2];

#[tokio::test]
async fn the_example_inventory_provisions_every_table() {
    let env = env().await;
    let plan = env.provision(Path::new(EXAMPLE)).await;

    assert_eq!(env.counts().await, expected_counts(EXAMPLE_COUNTS));
    for (kind, n) in Kind::ALL.into_iter().zip(EXAMPLE_COUNTS) {
        assert_eq!(plan.count(kind, Action::Created), n as usize, "{kind:?}");
    }
    assert!(!plan.dry_run);
    let shown = plan.to_string();
    assert!(
        shown.contains("created    demo-grid-cons (Grid consumption)"),
        "{shown}"
    );
    assert!(
        shown.contains("meters: 4 created, 0 updated, 0 moved, 0 unchanged, 0 left"),
        "{shown}"
    );

    // References resolved: the PDU's parent, the asset types, the connection ends.
    let parent = env
        .text(
            "SELECT p.external_id FROM assets a JOIN assets p ON p.id = a.parent_asset_id
             WHERE a.external_id = $1",
            "demo-pdu-a1",
        )
        .await;
    assert_eq!(parent.as_deref(), Some("demo-ups-a"));
    let asset_type = env
        .text(
            "SELECT t.code FROM assets a JOIN asset_types t ON t.id = a.asset_type_id
             WHERE a.external_id = $1",
            "demo-pv-inverter-1",
        )
        .await;
    assert_eq!(asset_type.as_deref(), Some("PROD"));
    let site = env
        .text(
            "SELECT s.name || '|' || s.industry_type || '|' || s.timezone || '|' || s.latitude
             FROM meters m JOIN sites s ON s.id = m.site_id WHERE m.external_id = $1",
            "demo-battery",
        )
        .await;
    assert_eq!(
        site.as_deref(),
        Some("Brussels datacenter|datacenter|Europe/Brussels|50.8427")
    );
    let battery = env
        .client
        .query_one(
            "SELECT kind::text, capacity_kw, storage_capacity_kwh, metadata->>'chemistry'
             FROM energy_sources WHERE external_id = 'demo-battery-bank'",
            &[],
        )
        .await
        .expect("battery");
    assert_eq!(battery.get::<_, String>(0), "battery");
    assert_eq!(battery.get::<_, Option<f64>>(1), Some(500.0));
    assert_eq!(battery.get::<_, Option<f64>>(2), Some(1000.0));
    assert_eq!(battery.get::<_, Option<String>>(3).as_deref(), Some("LFP"));
    let tariff = env
        .text(
            "SELECT direction::text || '|' || (tariff_structure->'offtake_eur_per_kwh'->>'peak')
             FROM grid_links WHERE name = $1",
            "Sibelga 11 kV connection",
        )
        .await;
    assert_eq!(tariff.as_deref(), Some("bi|0.21"));
    let flow = env
        .text(
            "SELECT s.external_id || ' → ' || t.external_id || ' ' || c.relationship || ' ' || c.direction
             FROM asset_connections c
             JOIN assets s ON s.id = c.source_asset_id JOIN assets t ON t.id = c.target_asset_id
             WHERE s.external_id = $1",
            "demo-ups-a",
        )
        .await;
    assert_eq!(
        flow.as_deref(),
        Some("demo-ups-a → demo-pdu-a1 energy_flow out")
    );
    // Optional keys left out take the schema's defaults.
    let defaults = env
        .text(
            "SELECT reading_frequency::text || '|' || metadata::text || '|' || active
             FROM meters WHERE external_id = $1",
            "demo-battery",
        )
        .await;
    assert_eq!(defaults.as_deref(), Some("1min|{}|true"));
}

#[tokio::test]
async fn provisioning_twice_changes_nothing() {
    let env = env().await;
    env.provision(Path::new(EXAMPLE)).await;
    let before = env.snapshot().await;

    let plan = env.provision(Path::new(EXAMPLE)).await;

    assert_eq!(plan.changes(), 0, "{plan}");
    for (kind, n) in Kind::ALL.into_iter().zip(EXAMPLE_COUNTS) {
        assert_eq!(plan.count(kind, Action::Unchanged), n as usize, "{kind:?}");
    }
    assert!(plan.left.is_empty(), "{plan}");
    assert_eq!(
        env.snapshot().await,
        before,
        "no row was updated, not even to itself"
    );
    assert!(
        plan.to_string()
            .contains("total: 0 created, 0 updated, 0 moved, 19 unchanged, 0 left"),
        "{plan}"
    );
}

#[tokio::test]
async fn a_changed_field_updates_exactly_that_row() {
    let env = env().await;
    env.provision(Path::new(EXAMPLE)).await;
    let before = env.snapshot().await;
    let changed = env.example_with("capacity_kw: 250", "capacity_kw: 300");

    let plan = env.provision(&changed).await;

    assert_eq!(plan.changes(), 1, "{plan}");
    let entry = plan
        .entries
        .iter()
        .find(|e| e.action == Action::Updated)
        .expect("one update");
    assert_eq!(entry.kind, Kind::EnergySource);
    assert_eq!(entry.name, "demo-pv-array (Rooftop PV)");
    assert_eq!(entry.fields, ["capacity_kw"]);
    assert!(
        plan.to_string()
            .contains("updated    demo-pv-array (Rooftop PV): capacity_kw"),
        "{plan}"
    );

    let after = env.snapshot().await;
    let pv_id = env
        .text(
            "SELECT id::text FROM energy_sources WHERE external_id = $1",
            "demo-pv-array",
        )
        .await
        .expect("pv");
    let moved: Vec<&String> = before
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert_eq!(moved, [&format!("energy_sources/{pv_id}")]);
    let capacity = env
        .text(
            "SELECT capacity_kw::text FROM energy_sources WHERE external_id = $1",
            "demo-pv-array",
        )
        .await;
    assert_eq!(capacity.as_deref(), Some("300"));
}

#[tokio::test]
async fn a_removed_optional_key_takes_the_default_and_active_is_left_alone() {
    let env = env().await;
    env.provision(Path::new(EXAMPLE)).await;
    env.client
        .execute(
            "UPDATE meters SET active = false WHERE external_id = 'demo-grid-inj'",
            &[],
        )
        .await
        .expect("deactivate");
    let changed = env.example_with(
        "            description: Fiscal meter on the 11 kV incomer (injection)\n",
        "",
    );

    let plan = env.provision(&changed).await;

    assert_eq!(plan.changes(), 1, "{plan}");
    assert_eq!(
        plan.entries
            .iter()
            .find(|e| e.action == Action::Updated)
            .map(|e| e.fields.clone()),
        Some(vec!["description"])
    );
    let row = env
        .text(
            "SELECT coalesce(description, 'NULL') || '|' || active FROM meters WHERE external_id = $1",
            "demo-grid-inj",
        )
        .await;
    assert_eq!(row.as_deref(), Some("NULL|false"), "not revived");
}

#[tokio::test]
async fn a_meter_named_under_another_site_is_moved_and_the_rest_is_left() {
    let env = env().await;
    env.provision(Path::new(EXAMPLE)).await;
    let file = env.write(
        "move.yaml",
        "portfolios:
  - name: Enalysis demo
    description: Demonstration portfolio used by scripts/dev and the simulator
    metadata: {owner: operations@example.com}
    sites:
      - name: Antwerp warehouse
        industry_type: warehouse
        meters:
          - external_id: demo-battery
            name: Battery (relocated)
            category: STOR
            reading_frequency: 1min
",
    );

    let plan = env.provision(&file).await;

    let meter = plan
        .entries
        .iter()
        .find(|e| e.kind == Kind::Meter)
        .expect("the meter");
    assert_eq!(meter.action, Action::Moved, "{plan}");
    assert_eq!(meter.moved_from.as_deref(), Some("Brussels datacenter"));
    assert_eq!(meter.fields, ["name"]);
    assert_eq!(plan.count(Kind::Portfolio, Action::Unchanged), 1);
    assert_eq!(plan.count(Kind::Site, Action::Created), 1);
    assert_eq!(
        plan.left(Kind::Site),
        ["Enalysis demo / Brussels datacenter"],
        "{plan}"
    );
    // The battery bank came along with its meter; nothing was deleted.
    assert_eq!(
        plan.left(Kind::EnergySource),
        ["demo-battery-bank (Battery bank)"]
    );
    let shown = plan.to_string();
    assert!(
        shown.contains(
            "moved      demo-battery (Battery (relocated)) (from site \"Brussels datacenter\"): name"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("left       Enalysis demo / Brussels datacenter"),
        "{shown}"
    );
    let site = env
        .text(
            "SELECT s.name FROM meters m JOIN sites s ON s.id = m.site_id WHERE m.external_id = $1",
            "demo-battery",
        )
        .await;
    assert_eq!(site.as_deref(), Some("Antwerp warehouse"));
    let mut counts = EXAMPLE_COUNTS;
    counts[1] += 1;
    assert_eq!(env.counts().await, expected_counts(counts));
}

#[tokio::test]
async fn a_dry_run_writes_nothing() {
    let env = env().await;
    let plan = env.dry_run(Path::new(EXAMPLE)).await;
    assert!(plan.dry_run);
    assert_eq!(plan.count(Kind::Asset, Action::Created), 8, "{plan}");
    assert!(
        plan.to_string()
            .ends_with("dry run: nothing was written (rolled back)")
    );
    assert_eq!(env.counts().await, expected_counts([0; 7]));

    env.provision(Path::new(EXAMPLE)).await;
    let before = env.snapshot().await;
    let changed = env.example_with("name: Chiller 2", "name: Chiller 2 (spare)");
    let plan = env.dry_run(&changed).await;
    assert_eq!(plan.count(Kind::Asset, Action::Updated), 1, "{plan}");
    assert_eq!(env.snapshot().await, before);
}

#[tokio::test]
async fn every_problem_is_reported_with_its_path_and_nothing_is_written() {
    let env = env().await;
    let file = env.write(
        "bad.yaml",
        "portfolios:
  - name: Broken
    sites:
      - name: S1
        industry_type: datacentre
        latitude: 95
        longitude: 4.3
        timezone: Europe/Bruxelles
        meters:
          - external_id: m1
            name: Main
            categroy: CONS
          - external_id: m1
            name: ''
            category: CONS
            reading_frequency: 10min
            assets:
              - external_id: a1
                name: Pump
                asset_type: PUMP
                parent: nowhere
                rated_power_kw: -3
            energy_sources:
              - external_id: e1
                name: PV
                kind: solar
                capacity_kw: .inf
        grid_links:
          - name: G
            direction: both
        asset_connections:
          - source: a1
            target: a1
            relationship: energy_flow
          - source: a1
            target: ghost
            relationship: data_flow
",
    );

    let problems = env.refused(&file).await;

    let p = "portfolios[0].sites[0]";
    let expected = [
        format!("{p}.industry_type: \"datacentre\" is not one of"),
        format!("{p}.latitude: must be between -90 and 90, found 95"),
        format!("{p}.timezone: unknown time zone \"Europe/Bruxelles\""),
        format!("{p}.meters[0].category: missing (required"),
        format!("{p}.meters[0].categroy: unknown field"),
        format!("{p}.meters[1].name: must not be empty"),
        format!("{p}.meters[1].reading_frequency: \"10min\" is not one of"),
        format!(
            "{p}.meters[1].external_id: duplicate meter external_id \"m1\" (first at {p}.meters[0])"
        ),
        format!("{p}.meters[1].assets[0].rated_power_kw: must be ≥ 0, found -3"),
        format!(
            "{p}.meters[1].assets[0].asset_type: unknown asset type \"PUMP\" (known: C/I, CONS, INJ, PROD)"
        ),
        format!(
            "{p}.meters[1].assets[0].parent: no asset with external_id \"nowhere\" in the file or the database"
        ),
        format!("{p}.meters[1].energy_sources[0].capacity_kw: must be a finite number"),
        format!("{p}.grid_links[0].direction: \"both\" is not one of in, out, bi"),
        format!("{p}.asset_connections[0].target: an asset cannot be connected to itself"),
        format!("{p}.asset_connections[1].target: no asset with external_id \"ghost\""),
    ];
    for needle in &expected {
        assert!(
            problems
                .iter()
                .any(|line| line.starts_with(needle.as_str())),
            "{needle:?} not in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    assert_eq!(env.counts().await, expected_counts([0; 7]));

    // As the CLI shows it: one headline, then one problem per line.
    let err = provision::run(&env.db, &file, false)
        .await
        .expect_err("refused");
    let text = format!("{err:#}");
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.ends_with("bad.yaml: 15 problems, nothing was written")),
        "{text}"
    );
    assert_eq!(lines.count(), 15, "{text}");
}

#[tokio::test]
async fn a_valid_file_is_refused_whole_when_one_reference_is_missing() {
    let env = env().await;
    let file = env.example_with("parent: demo-ups-a", "parent: demo-ups-b");
    let problems = env.refused(&file).await;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].ends_with(
        "assets[3].parent: no asset with external_id \"demo-ups-b\" in the file or the database"
    ));
    assert_eq!(env.counts().await, expected_counts([0; 7]));
}

#[tokio::test]
async fn a_cycle_of_parents_is_refused_in_the_file_and_through_the_database() {
    let env = env().await;
    let head = "portfolios:
  - name: P
    sites:
      - name: S
        industry_type: office
        meters:
          - external_id: m
            name: M
            category: CONS
            assets:
";
    let file = env.write(
        "cycle.yaml",
        &format!(
            "{head}              - {{external_id: a, name: A, parent: c}}
              - {{external_id: b, name: B, parent: a}}
              - {{external_id: c, name: C, parent: b}}
              - {{external_id: d, name: D, parent: a}}
"
        ),
    );
    let problems = env.refused(&file).await;
    assert_eq!(
        problems,
        ["portfolios[0].sites[0].meters[0].assets[0].parent: parents form a cycle: a → c → b → a"]
    );

    // b's parent is a in the database; a file that gives a the parent b closes a loop.
    let chain = env.write(
        "chain.yaml",
        &format!(
            "{head}              - {{external_id: a, name: A}}
              - {{external_id: b, name: B, parent: a}}
"
        ),
    );
    env.provision(&chain).await;
    let loop_ = env.write(
        "loop.yaml",
        &format!("{head}              - {{external_id: a, name: A, parent: b}}\n"),
    );
    let problems = env.refused(&loop_).await;
    assert_eq!(
        problems,
        ["portfolios[0].sites[0].meters[0].assets[0].parent: parents form a cycle: a → b → a"]
    );
    let parent = env
        .text(
            "SELECT coalesce(parent_asset_id::text, 'none') FROM assets WHERE external_id = $1",
            "a",
        )
        .await;
    assert_eq!(parent.as_deref(), Some("none"), "nothing written");
}

#[tokio::test]
async fn json_input_provisions_the_same_rows() {
    let env = env().await;
    let yaml = std::fs::read_to_string(EXAMPLE).expect("example");
    let value: serde_json::Value = yaml_serde::from_str(&yaml).expect("example as a tree");
    let json = env.write(
        "inventory.json",
        &serde_json::to_string_pretty(&value).expect("json"),
    );

    let plan = env.provision(&json).await;
    assert_eq!(plan.count(Kind::Meter, Action::Created), 4, "{plan}");
    assert_eq!(env.counts().await, expected_counts(EXAMPLE_COUNTS));

    // The same inventory in YAML is the same data: nothing to do.
    let plan = env.provision(Path::new(EXAMPLE)).await;
    assert_eq!(plan.changes(), 0, "{plan}");

    // JSON errors carry the same paths.
    let bad = env.write(
        "bad.json",
        r#"{"portfolios": [{"name": "P", "sites": [{"name": "S", "industry_type": "office", "meters": [{"external_id": "m", "name": "M", "category": "CONS", "categroy": "x"}]}]}]}"#,
    );
    let problems = env.refused(&bad).await;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].starts_with("portfolios[0].sites[0].meters[0].categroy: unknown field"));
}

#[tokio::test]
async fn unreadable_files_are_one_clear_error() {
    let env = env().await;
    let toml = env.write("inventory.toml", "portfolios = []");
    let err = provision::run(&env.db, &toml, false)
        .await
        .expect_err("refused");
    assert!(
        format!("{err:#}").contains("unknown file type; expected .yaml, .yml or .json"),
        "{err:#}"
    );
    let broken = env.write("broken.yaml", "portfolios: [\n");
    let err = provision::run(&env.db, &broken, false)
        .await
        .expect_err("refused");
    assert!(format!("{err:#}").contains("cannot parse"), "{err:#}");
    let missing = env.dir.path().join("missing.yaml");
    let err = provision::run(&env.db, &missing, false)
        .await
        .expect_err("refused");
    assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
}

/// The API's text limits (one declaration, `crud::max_chars`) and f64's range hold for the file
/// too: each breach is a problem at its path, before the database sees anything.
#[tokio::test]
async fn over_long_text_and_numbers_beyond_f64_are_problems_with_their_path() {
    let env = env().await;
    let file = env.write(
        "long.yaml",
        &format!(
            "portfolios:
  - name: {huge}
  - name: P
    sites:
      - name: S
        industry_type: office
        timezone: {tz}
        meters:
          - external_id: m1
            name: M
            category: CONS
            description: {description}
            assets:
              - external_id: {id}
                name: A
                model: {name}
            energy_sources:
              - external_id: e1
                name: E
                kind: solar
                capacity_kw: 1e400
        grid_links:
          - name: G
            direction: in
            provider: {name}
",
            huge = "x".repeat(1_000_000),
            tz = "Z".repeat(65),
            description = "é".repeat(10_001),
            id = "a".repeat(201),
            name = "n".repeat(201),
        ),
    );
    let problems = env.refused(&file).await;
    let s = "portfolios[1].sites[0]";
    let expected = [
        "portfolios[0].name: must be at most 200 characters, found 1000000".to_string(),
        format!("{s}.timezone: must be at most 64 characters, found 65"),
        format!("{s}.meters[0].description: must be at most 10000 characters, found 10001"),
        format!("{s}.meters[0].assets[0].external_id: must be at most 200 characters, found 201"),
        format!("{s}.meters[0].assets[0].model: must be at most 200 characters, found 201"),
        format!(
            "{s}.meters[0].energy_sources[0].capacity_kw: must be a finite number, found 1e400"
        ),
        format!("{s}.grid_links[0].provider: must be at most 200 characters, found 201"),
    ];
    for needle in &expected {
        assert!(
            problems.iter().any(|l| l.starts_with(needle.as_str())),
            "{needle:?} not in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    assert_eq!(env.counts().await, expected_counts([0; 7]));

    // JSON has no string fallback: a number beyond f64 is a parse error with its position.
    let json = env.write(
        "big.json",
        r#"{"portfolios": [{"name": "P", "metadata": {"x": 1e400}}]}"#,
    );
    let err = provision::run(&env.db, &json, false)
        .await
        .expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot parse") && text.contains("number out of range at line 1 column"),
        "{text}"
    );
    assert_eq!(env.counts().await, expected_counts([0; 7]));
}

/// The largest finite numbers are stored, read back as JSON the way the API reads rows
/// (`to_jsonb`), and a second run finds nothing to change.
#[tokio::test]
async fn the_largest_finite_numbers_provision_and_read_back() {
    let env = env().await;
    let text = format!(
        "portfolios:
  - name: P
    metadata: {{max: 1.7976931348623157e308, min: -1.7976931348623157e308}}
    sites:
      - name: S
        industry_type: office
        meters:
          - external_id: m1
            name: {name}
            category: CONS
            energy_sources:
              - external_id: e1
                name: E
                kind: solar
                capacity_kw: 1.7976931348623157e308
",
        name = "é".repeat(200),
    );
    let file = env.write("big.yaml", &text);
    let plan = env.provision(&file).await;
    assert_eq!(plan.count(Kind::EnergySource, Action::Created), 1, "{plan}");
    let source: serde_json::Value = env
        .client
        .query_one("SELECT to_jsonb(e) FROM energy_sources e", &[])
        .await
        .expect("read back")
        .try_get(0)
        .expect("decodes as JSON");
    assert_eq!(source["capacity_kw"].as_f64(), Some(f64::MAX), "{source}");
    let portfolio: serde_json::Value = env
        .client
        .query_one("SELECT to_jsonb(p) FROM portfolios p", &[])
        .await
        .expect("read back")
        .try_get(0)
        .expect("decodes as JSON");
    assert_eq!(portfolio["metadata"]["max"].as_f64(), Some(f64::MAX));
    assert_eq!(portfolio["metadata"]["min"].as_f64(), Some(f64::MIN));
    let again = env.provision(&file).await;
    assert_eq!(again.changes(), 0, "{again}");
}
