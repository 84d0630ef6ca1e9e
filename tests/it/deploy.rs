//! deploy/ stays true to the code: every environment variable it names is a config key with a
//! valid value, every metric its rules use is one the daemon exports, ports and stop timeouts
//! agree with the configuration, the compose broker keeps production's no-loss settings, the
//! Grafana dashboard shows only exported metrics and is provisioned, and promtool accepts the
//! rules and their unit tests. No server is started here (tests/it/dashboard.rs runs the
//! dashboard and the rules against a real Prometheus).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use enalysis_ingest::config::Config;
use enalysis_ingest::telemetry::names;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

const COMPOSE: &str = "deploy/docker/compose.yaml";
const DOCKERFILE: &str = "deploy/docker/Dockerfile";
const ENV_EXAMPLE: &str = "deploy/systemd/env.example";
const UNIT: &str = "deploy/systemd/enalysis-ingest.service";
const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
const RULES: &str = "deploy/prometheus/rules.yml";
const RULES_TEST: &str = "deploy/prometheus/rules_test.yml";
const MOSQUITTO_PROD: &str = "deploy/mosquitto/mosquitto.conf";
const MOSQUITTO_COMPOSE: &str = "deploy/mosquitto/mosquitto.compose.conf";
const GRAFANA_DATASOURCE: &str = "deploy/grafana/provisioning/datasources/prometheus.yaml";
const GRAFANA_DASHBOARD_PROVIDER: &str =
    "deploy/grafana/provisioning/dashboards/enalysis-ingest.yaml";
const DASHBOARD: &str = crate::dashboard::DASHBOARD;
const DEPLOY_README: &str = "deploy/README.md";

/// The alerts an operator relies on; renaming one breaks their routing.
const REQUIRED_ALERTS: [&str; 7] = [
    "IngestDown",
    "EntitiesSilent",
    "MqttDisconnected",
    "DatabaseErrors",
    "RejectionRateHigh",
    "BufferBackedUp",
    "LatencyHigh",
];

// ---------------------------------------------------------------------------------------------
// Environment variables

#[test]
fn every_variable_named_in_deploy_maps_to_a_config_key_and_takes_its_value() {
    let defaults = effective(&[]);
    let mut assigned: Vec<(String, String, String)> = Vec::new();
    for (var, value) in compose_environment("ingest") {
        assigned.push((COMPOSE.into(), var, value));
    }
    for (var, value) in env_file(&read(ENV_EXAMPLE)) {
        assigned.push((ENV_EXAMPLE.into(), var, value));
    }
    for (var, value) in dockerfile_env() {
        assigned.push((DOCKERFILE.into(), var, value));
    }
    assert!(
        assigned.iter().any(|(_, v, _)| v == "DATABASE_URL"),
        "expected DATABASE_URL among {assigned:?}"
    );
    for (source, var, value) in &assigned {
        check_variable(&defaults, source, var, Some(value));
    }

    // Mentions in comments and docs (DATABASE_URL_FILE, ENALYSIS_MQTT__PASSWORD_FILE, ...) too.
    let ours = |v: &str| {
        v.starts_with("ENALYSIS_") || v.starts_with("DATABASE_URL") || v.starts_with("MQTT_URL")
    };
    for source in [COMPOSE, DOCKERFILE, ENV_EXAMPLE, UNIT, RULES, DEPLOY_README] {
        for var in upper_tokens(&read(source)).into_iter().filter(|v| ours(v)) {
            check_variable(&defaults, source, &var, None);
        }
    }
}

#[test]
fn each_deploy_environment_loads_as_a_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defaults = effective(&[]);
    let compose: Vec<_> = dockerfile_env()
        .into_iter()
        .chain(compose_environment("ingest"))
        .collect();
    for (source, vars) in [
        ("Dockerfile ENV + compose ingest environment", compose),
        (ENV_EXAMPLE, env_file(&read(ENV_EXAMPLE))),
    ] {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(var, value)| match target(&var) {
                Some(Target::File(key)) => {
                    let path = dir.path().join(&var);
                    std::fs::write(&path, default_string(&defaults, &key)).expect("write");
                    (var, path.to_string_lossy().into_owned())
                }
                _ => (var, value),
            })
            .collect();
        let config = match Config::load_from(None, vars.clone()) {
            Ok(config) => config,
            Err(e) => panic!("{source}: the daemon would refuse this environment: {e}\n{vars:?}"),
        };
        // What `run` checks first: a listener off loopback needs an admin token.
        if let Err(e) = config.listen_addr() {
            panic!("{source}: `run` would refuse this environment: {e}\n{vars:?}");
        }
    }
}

/// Where a variable goes: straight into a key, or (`X_FILE`) into X's key from a file.
#[derive(Debug)]
enum Target {
    Key(String),
    File(String),
}

/// The documented scheme (README, config/default.toml): four fixed names, then
/// `ENALYSIS_<SECTION>__<KEY>`, and `<any of them>_FILE`. Deliberately re-stated here rather than
/// taken from the code: a variable outside the scheme is silently ignored by the daemon.
fn documented_key(var: &str) -> Option<String> {
    let fixed = match var {
        "DATABASE_URL" => Some("database.url"),
        "MQTT_URL" => Some("mqtt.url"),
        "ENALYSIS_HTTP_ADDR" => Some("http.addr"),
        "ENALYSIS_ADMIN_TOKEN" => Some("admin.token"),
        _ => None,
    };
    if let Some(key) = fixed {
        return Some(key.into());
    }
    let (section, key) = var.strip_prefix("ENALYSIS_")?.split_once("__")?;
    (!section.is_empty() && !key.is_empty())
        .then(|| format!("{}.{}", section.to_lowercase(), key.to_lowercase()))
}

fn target(var: &str) -> Option<Target> {
    let defaults = effective(&[]);
    match documented_key(var) {
        Some(key) if lookup(&defaults, &key).is_some() => Some(Target::Key(key)),
        direct => match var.strip_suffix("_FILE").and_then(documented_key) {
            Some(key) => Some(Target::File(key)),
            None => direct.map(Target::Key),
        },
    }
}

fn check_variable(defaults: &Value, source: &str, var: &str, value: Option<&str>) {
    let target = target(var).unwrap_or_else(|| {
        panic!(
            "{source}: {var} is not a configuration variable (DATABASE_URL, MQTT_URL, \
             ENALYSIS_HTTP_ADDR, ENALYSIS_ADMIN_TOKEN, ENALYSIS_<SECTION>__<KEY>, or one of \
             them + _FILE): the daemon would ignore it"
        )
    });
    let (Target::Key(key) | Target::File(key)) = &target;
    if lookup(defaults, key).is_none() {
        panic!("{source}: {var} maps to {key}, which is not a key of config/default.toml");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (env_value, expected) = match &target {
        Target::Key(_) => {
            let v = value.map_or_else(|| default_string(defaults, key), str::to_string);
            (v.clone(), v)
        }
        // The deploy file names a path on the target machine: check the mapping with a file here.
        Target::File(_) => {
            let content = default_string(defaults, key);
            let path = dir.path().join("secret");
            std::fs::write(&path, format!("{content}\n")).expect("write secret");
            (path.to_string_lossy().into_owned(), content)
        }
    };
    let config = match Config::load_from(None, [(var.to_string(), env_value.clone())]) {
        Ok(c) => c,
        Err(e) => panic!("{source}: {var}={env_value:?} is refused: {e}"),
    };
    let got = serde_json::to_value(&config).expect("config serializes");
    let got = lookup(&got, key).map(scalar_string);
    assert_eq!(
        got.as_deref(),
        Some(expected.as_str()),
        "{source}: {var} did not set {key}"
    );
}

/// The effective configuration for an environment, as JSON (keys as in config/default.toml).
fn effective(env: &[(&str, &str)]) -> Value {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let config = Config::load_from(None, env).unwrap_or_else(|e| panic!("config: {e}"));
    serde_json::to_value(&config).expect("config serializes")
}

fn lookup<'a>(config: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(config, |v, part| v.get(part))
}

fn scalar_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn default_string(defaults: &Value, key: &str) -> String {
    lookup(defaults, key).map(scalar_string).unwrap_or_default()
}

/// Words made of `A-Z0-9_` standing alone (not inside a longer identifier), without a trailing
/// `_` (so the placeholder `ENALYSIS_<SECTION>__<KEY>` is not taken for a variable).
fn upper_tokens(text: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    let mut chars = text.char_indices().peekable();
    let mut prev: Option<char> = None;
    while let Some((start, c)) = chars.next() {
        if is_word(c) && !prev.is_some_and(is_word) {
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if !is_word(d) {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            let word = &text[start..end];
            if word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && !word.ends_with('_')
            {
                out.insert(word.to_string());
            }
            prev = word.chars().last();
        } else {
            prev = Some(c);
        }
    }
    out
}

/// `KEY=VALUE` lines of an EnvironmentFile (comments and blank lines skipped).
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Metrics and rules

#[test]
fn the_rules_use_only_metrics_the_daemon_exports() {
    let exported = exported_metric_names();
    let rules = yaml(RULES);
    let mut records = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut texts = Vec::new();
    for group in array(&rules["groups"], "groups") {
        for rule in array(&group["rules"], "rules") {
            if let Some(r) = rule["record"].as_str() {
                records.insert(r.to_string());
            }
            if let Some(a) = rule["alert"].as_str() {
                alerts.insert(a.to_string());
            }
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            exprs.push(expr.to_string());
            if let Some(annotations) = rule["annotations"].as_hash() {
                texts.extend(
                    annotations
                        .values()
                        .filter_map(|v| v.as_str().map(String::from)),
                );
            }
        }
    }
    for alert in REQUIRED_ALERTS {
        assert!(alerts.contains(alert), "{RULES} lacks alert {alert}");
    }
    // The unit tests feed series by name: those names must be real too.
    for test in array(&yaml(RULES_TEST)["tests"], "tests") {
        for series in array(&test["input_series"], "input_series") {
            let s = series["series"].as_str().expect("series");
            exprs.push(s.to_string());
        }
        if let Some(cases) = test["promql_expr_test"].as_vec() {
            exprs.extend(
                cases
                    .iter()
                    .filter_map(|c| c["expr"].as_str().map(String::from)),
            );
        }
    }

    for expr in &exprs {
        assert_known_metrics(RULES, expr, &exported, &records);
    }
    // Annotations point operators at recorded series: those must exist as well.
    for text in &texts {
        let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        for word in words.filter(|w| w.starts_with("ingest:")) {
            assert!(
                records.contains(word),
                "an annotation names {word}, not recorded in {RULES}"
            );
        }
    }
}

/// Every daemon metric `expr` (found in `source`) uses is in `exported`, with the histogram
/// suffixes allowed, and every recorded series (`a:b:c`) is one of `records`. Returns the
/// daemon metrics used (histograms by their base name).
fn assert_known_metrics(
    source: &str,
    expr: &str,
    exported: &BTreeSet<String>,
    records: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for ident in promql_identifiers(expr) {
        if ident.starts_with("ingest_") || ident.starts_with("process_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| ident.strip_suffix(s))
                .filter(|base| exported.contains(*base));
            assert!(
                exported.contains(&ident) || base.is_some(),
                "{source}: {ident} (in `{expr}`) is not in src/telemetry.rs `names`: {exported:?}"
            );
            used.insert(base.map_or(ident.clone(), str::to_string));
        } else if ident.contains(':') {
            assert!(
                records.contains(&ident),
                "{source}: {ident} is used but not recorded in {RULES}"
            );
        }
    }
    used
}

/// What issue #16 puts on the dashboard: every stage of a reading's path, the broker, the
/// database and the process; and, from issue #14, the silent entities. (Corrections have no
/// panel yet.)
const DASHBOARD_METRICS: [&str; 19] = [
    names::MESSAGES_RECEIVED,
    names::READINGS_ACCEPTED,
    names::READINGS_REJECTED,
    names::READINGS_DUPLICATE,
    names::MESSAGES_ISOLATED,
    names::END_TO_END_LATENCY,
    names::FLUSH_DURATION,
    names::BATCH_ROWS,
    names::BUFFERED_READINGS,
    names::BUFFERED_BYTES,
    names::MQTT_UNACKED,
    names::MQTT_CONNECTED,
    names::MQTT_RECONNECTS,
    names::DB_ERRORS,
    names::DB_POOL_CONNECTIONS,
    names::DB_POOL_WAITING,
    names::PROCESS_RESIDENT_MEMORY,
    names::PROCESS_CPU_SECONDS,
    names::ENTITIES_SILENT,
];

#[test]
fn the_dashboard_shows_every_stage_with_exported_metrics_and_is_provisioned() {
    use crate::dashboard;
    let exported = exported_metric_names();
    let board = dashboard::load();
    let uid = yaml(GRAFANA_DATASOURCE)["datasources"][0]["uid"]
        .as_str()
        .expect("the data source has a uid")
        .to_string();

    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard::panels(&board) {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} ({title}) used twice");
        let pos = &panel["gridPos"];
        let (x, w) = (pos["x"].as_u64(), pos["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24),
            "{title}: gridPos {pos} outside Grafana's 24 columns"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], uid,
            "{title}: not on the provisioned data source"
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], uid,
                "{title}: a query on another data source"
            );
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: an empty query");
            used.extend(assert_known_metrics(
                DASHBOARD,
                expr,
                &exported,
                &BTreeSet::new(),
            ));
        }
    }
    for name in DASHBOARD_METRICS {
        assert!(used.contains(name), "{DASHBOARD}: no panel shows {name}");
    }

    // Variables: queried from the daemon's own metrics; the byte budget's default is the
    // daemon's default.
    let defaults = effective(&[]);
    for var in dashboard::variables(&board) {
        let name = var["name"].as_str().unwrap_or_default();
        match var["type"].as_str() {
            Some("query") => {
                let definition = var["definition"].as_str().unwrap_or_default();
                let (selector, _) = dashboard::label_values_query(definition)
                    .unwrap_or_else(|| panic!("variable {name}: {definition}"));
                assert_known_metrics(DASHBOARD, selector, &exported, &BTreeSet::new());
                assert_eq!(var["datasource"]["uid"], uid, "variable {name}");
            }
            Some("textbox") if name == "max_buffered_bytes" => assert_eq!(
                var["query"].as_str(),
                Some(default_string(&defaults, "ingest.max_buffered_bytes").as_str()),
                "{DASHBOARD}: $max_buffered_bytes is not the default ingest.max_buffered_bytes"
            ),
            other => panic!("variable {name}: type {other:?} unexpected"),
        }
    }

    // Provisioning: the provider reads the directory compose mounts the dashboards at.
    let provider = yaml(GRAFANA_DASHBOARD_PROVIDER);
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("providers[0].options.path");
    let source = Path::new(DASHBOARD)
        .parent()
        .and_then(|d| d.strip_prefix("deploy").ok())
        .expect("the dashboard is under deploy/");
    let mount = format!("../{}:{path}:ro", source.display());
    let grafana_volumes: Vec<String> = yaml(COMPOSE)["services"]["grafana"]["volumes"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    assert!(
        grafana_volumes.contains(&mount),
        "{COMPOSE}: grafana does not mount {mount} (the provider reads {path}): {grafana_volumes:?}"
    );
    assert!(
        grafana_volumes
            .iter()
            .any(|v| v == "../grafana/provisioning:/etc/grafana/provisioning:ro"),
        "{COMPOSE}: grafana does not mount the provisioning directory"
    );
}

/// The string literals of `pub mod names` in src/telemetry.rs, read as text.
fn exported_metric_names() -> BTreeSet<String> {
    let source = read("src/telemetry.rs");
    let start = source
        .find("pub mod names {")
        .expect("src/telemetry.rs has `pub mod names {`");
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("end of `mod names`")];
    let names: BTreeSet<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("pub const ") && l.contains("&str"))
        .filter_map(|l| l.split('"').nth(1).map(String::from))
        .collect();
    // The text reading agrees with the crate.
    for name in [
        names::MQTT_CONNECTED,
        names::END_TO_END_LATENCY,
        names::DB_ERRORS,
    ] {
        assert!(
            names.contains(name),
            "{name} not found in `mod names`: {names:?}"
        );
    }
    names
}

/// Metric, recording-rule and function names in a PromQL expression (string literals and
/// durations skipped).
fn promql_identifiers(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            let mut escaped = false;
            for d in chars.by_ref() {
                if d == c && !escaped {
                    break;
                }
                escaped = d == '\\' && !escaped;
            }
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            let mut word = String::from(c);
            while let Some(&d) = chars.peek() {
                if !(d.is_ascii_alphanumeric() || d == '_' || d == ':') {
                    break;
                }
                word.push(d);
                chars.next();
            }
            if !word.starts_with(|c: char| c.is_ascii_digit()) {
                out.insert(word);
            }
        }
    }
    out
}

#[test]
fn config_keys_named_in_deploy_files_exist() {
    let defaults = effective(&[]);
    let sections: Vec<String> = defaults
        .as_object()
        .expect("config is a table")
        .keys()
        .cloned()
        .collect();
    for source in [
        RULES,
        COMPOSE,
        DOCKERFILE,
        MOSQUITTO_COMPOSE,
        MOSQUITTO_PROD,
        UNIT,
        DEPLOY_README,
        DASHBOARD,
    ] {
        let text = read(source);
        for key in dotted_words(&text) {
            let Some((section, _)) = key.split_once('.') else {
                continue;
            };
            if sections.iter().any(|s| s == section) {
                assert!(
                    lookup(&defaults, &key).is_some(),
                    "{source} names {key}, which is not a key of config/default.toml"
                );
            }
        }
    }
}

/// `word.word` runs of `a-z0-9_` not inside a path, file name or host (`enalysis-ingest.service`
/// and `src/ingest.rs` are skipped by what precedes them).
fn dotted_words(text: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let bytes: Vec<char> = text.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let prev = i.checked_sub(1).map(|p| bytes[p]);
        let starts = is_word(bytes[i])
            && !prev.is_some_and(|p| p.is_ascii_alphanumeric() || "_-./:$".contains(p));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bytes.len() && (is_word(bytes[j]) || bytes[j] == '.') {
            j += 1;
        }
        let word: String = bytes[i..j].iter().collect();
        let word = word.trim_end_matches('.');
        let next = bytes.get(j).copied();
        if word.matches('.').count() == 1
            && !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '/')
        {
            out.insert(word.to_string());
        }
        i = j.max(i + 1);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Compose, Dockerfile, Prometheus, Grafana: wired to each other

#[test]
fn the_compose_stack_is_wired_together() {
    let compose = yaml(COMPOSE);
    let services = compose["services"].as_hash().expect("compose has services");
    let service_names: BTreeSet<&str> = services.keys().filter_map(Yaml::as_str).collect();
    for s in ["postgres", "mosquitto", "ingest", "prometheus", "grafana"] {
        assert!(service_names.contains(s), "{COMPOSE} lacks service {s}");
    }
    let ingest = &compose["services"]["ingest"];
    assert_eq!(
        ingest["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy"),
        "ingest must wait for a healthy postgres"
    );
    assert_eq!(
        ingest["depends_on"]["mosquitto"]["condition"].as_str(),
        Some("service_started")
    );
    assert_eq!(ingest["restart"].as_str(), Some("unless-stopped"));
    let healthcheck = format!(
        "{:?}",
        compose["services"]["postgres"]["healthcheck"]["test"]
    );
    assert!(
        healthcheck.contains("pg_isready"),
        "postgres healthcheck: {healthcheck}"
    );

    // Every relative path exists: bind mounts and the build.
    let base = repo().join("deploy/docker");
    let context = ingest["build"]["context"]
        .as_str()
        .expect("ingest.build.context");
    let dockerfile = ingest["build"]["dockerfile"]
        .as_str()
        .expect("ingest.build.dockerfile");
    assert!(
        base.join(context).join(dockerfile).is_file(),
        "{context}/{dockerfile}"
    );
    for (name, service) in services {
        for volume in service["volumes"].as_vec().into_iter().flatten() {
            let spec = volume.as_str().expect("short volume syntax");
            let source = spec.split(':').next().unwrap_or_default();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    base.join(source).exists(),
                    "{name:?}: {source} does not exist"
                );
            }
        }
    }

    // The listener in the container: not loopback, and the port Prometheus scrapes.
    let env: Vec<(String, String)> = dockerfile_env()
        .into_iter()
        .chain(compose_environment("ingest"))
        .collect();
    let config = Config::load_from(None, env).expect("compose environment loads");
    let addr: SocketAddr = config.http.addr;
    assert!(
        !addr.ip().is_loopback(),
        "{addr}: unreachable from Prometheus"
    );

    let prometheus = yaml(PROMETHEUS);
    let job = array(&prometheus["scrape_configs"], "scrape_configs")
        .iter()
        .find(|j| j["job_name"].as_str() == Some("enalysis-ingest"))
        .expect("a scrape job named enalysis-ingest");
    let targets = array(&job["static_configs"][0]["targets"], "targets");
    let target = targets[0].as_str().expect("target");
    assert_eq!(target, format!("ingest:{}", addr.port()), "scrape target");
    assert!(
        read(RULES).contains("job=\"enalysis-ingest\""),
        "rules select the scrape job"
    );
    let rule_files = array(&prometheus["rule_files"], "rule_files");
    for f in rule_files {
        let f = f.as_str().expect("rule file");
        assert!(repo().join("deploy/prometheus").join(f).is_file(), "{f}");
        let mounted = compose["services"]["prometheus"]["volumes"]
            .as_vec()
            .into_iter()
            .flatten()
            .filter_map(Yaml::as_str)
            .any(|v| v.ends_with(&format!(":/etc/prometheus/{f}:ro")));
        assert!(mounted, "prometheus must mount {f} beside prometheus.yml");
    }
    let exposed = dockerfile_instructions("EXPOSE");
    assert_eq!(exposed, vec![addr.port().to_string()], "Dockerfile EXPOSE");
    let published = ingest["ports"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(Yaml::as_str)
        .any(|p| p.ends_with(&format!(":{}", addr.port())));
    assert!(published, "compose publishes the metrics port");

    let datasource = yaml(GRAFANA_DATASOURCE);
    let url = datasource["datasources"][0]["url"]
        .as_str()
        .expect("datasource url");
    assert_eq!(url, "http://prometheus:9090");
}

#[test]
fn the_dockerfile_builds_from_the_repository_and_runs_unprivileged() {
    let text = read(DOCKERFILE);
    assert!(text.contains("cargo build --release --locked"));
    for copy in dockerfile_instructions("COPY") {
        if copy.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "COPY {source}: not in the repository"
            );
        }
    }
    let user = dockerfile_instructions("USER");
    let user = user.last().expect("a USER instruction");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "runs as {user}"
    );
    assert_eq!(
        dockerfile_instructions("ENTRYPOINT"),
        ["[\"enalysis-ingest\"]"]
    );
    assert_eq!(dockerfile_instructions("CMD"), ["[\"run\"]"]);
    let ignored = read(".dockerignore");
    for dir in ["target/", ".dev/", ".git/"] {
        assert!(
            ignored.lines().any(|l| l.trim() == dir),
            ".dockerignore lacks {dir}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Shutdown and broker settings

#[test]
fn stop_timeouts_leave_the_daemon_time_to_drain() {
    let compose_env: Vec<_> = dockerfile_env()
        .into_iter()
        .chain(compose_environment("ingest"))
        .collect();
    let config = Config::load_from(None, compose_env).expect("compose environment");
    let grace = yaml(COMPOSE)["services"]["ingest"]["stop_grace_period"]
        .as_str()
        .map(seconds)
        .expect("ingest.stop_grace_period");
    assert!(
        grace > config.ingest.shutdown_timeout.as_secs(),
        "compose stop_grace_period {grace}s <= ingest.shutdown_timeout_secs {}",
        config.ingest.shutdown_timeout.as_secs()
    );

    let config = Config::load_from(None, env_file(&read(ENV_EXAMPLE))).expect("env.example");
    let unit = read(UNIT);
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(seconds)
        .expect("TimeoutStopSec= in the unit");
    assert!(
        stop > config.ingest.shutdown_timeout.as_secs(),
        "TimeoutStopSec {stop}s <= ingest.shutdown_timeout_secs {}",
        config.ingest.shutdown_timeout.as_secs()
    );
}

#[test]
fn the_compose_broker_keeps_the_production_no_loss_settings() {
    let prod = mosquitto_settings(&read(MOSQUITTO_PROD));
    let local = mosquitto_settings(&read(MOSQUITTO_COMPOSE));
    let required = [
        ("persistence", "true"),
        ("max_queued_messages", "0"),
        ("max_queued_bytes", "0"),
        ("max_inflight_messages", "0"),
    ];
    for (key, value) in required {
        for (file, settings) in [(MOSQUITTO_PROD, &prod), (MOSQUITTO_COMPOSE, &local)] {
            assert_eq!(
                settings.get(key).map(String::as_str),
                Some(value),
                "{file}: {key}"
            );
        }
    }
    for key in [
        "persistent_client_expiration",
        "message_size_limit",
        "autosave_interval",
    ] {
        assert_eq!(
            prod.get(key),
            local.get(key),
            "{key} differs between the two broker files"
        );
    }

    let defaults = Config::load_from(None, Vec::new()).expect("defaults");
    let expiration = prod
        .get("persistent_client_expiration")
        .map(|v| mosquitto_duration(v))
        .expect("persistent_client_expiration");
    assert!(
        expiration >= u64::from(defaults.mqtt.session_expiry_secs),
        "the broker forgets a session ({expiration}s) before mqtt.session_expiry_secs"
    );
    let limit: u64 = prod["message_size_limit"]
        .parse()
        .expect("message_size_limit");
    assert!(limit <= u64::from(defaults.mqtt.max_packet_bytes));
}

fn mosquitto_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// mosquitto's `7d`-style durations (h, d, w, m = 30 days, y = 365 days), or plain seconds.
fn mosquitto_duration(v: &str) -> u64 {
    let (n, unit) = v.split_at(v.len() - 1);
    let per = match unit {
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        "m" => 2_592_000,
        "y" => 31_536_000,
        _ => return v.parse().unwrap_or_else(|_| panic!("duration {v:?}")),
    };
    n.parse::<u64>()
        .unwrap_or_else(|_| panic!("duration {v:?}"))
        * per
}

/// Whole seconds of `45`, `45s`, `1m30s`, `1min 30s`, `2h` (compose and systemd styles).
fn seconds(text: &str) -> u64 {
    let mut total = 0.0;
    let mut chars = text.trim().chars().peekable();
    while chars.peek().is_some() {
        let number: String =
            std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_digit() || *c == '.')).collect();
        let unit: String =
            std::iter::from_fn(|| chars.next_if(char::is_ascii_alphabetic)).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let n: f64 = number
            .parse()
            .unwrap_or_else(|_| panic!("duration {text:?}"));
        total += n * match unit.as_str() {
            "" | "s" | "sec" => 1.0,
            "ms" => 0.001,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => panic!("duration {text:?}: unit {other:?}"),
        };
    }
    total as u64
}

// ---------------------------------------------------------------------------------------------
// promtool

#[test]
fn promtool_accepts_the_config_the_rules_and_their_unit_tests() {
    if Command::new("promtool").arg("--version").output().is_err() {
        panic!(
            "promtool not found: it checks deploy/prometheus/. Install it with \
             `apt-get install -y prometheus` (Debian), then run the tests again"
        );
    }
    for args in [
        ["check", "config", PROMETHEUS],
        ["check", "rules", RULES],
        ["test", "rules", RULES_TEST],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(repo())
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the files

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn yaml(rel: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one YAML document");
    docs.remove(0)
}

fn array<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {y:?}"))
}

/// A compose service's `environment`, in map or `KEY=VALUE` list form.
fn compose_environment(service: &str) -> Vec<(String, String)> {
    let compose = yaml(COMPOSE);
    let env = &compose["services"][service]["environment"];
    let scalar = |y: &Yaml| match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("{service}: environment value {other:?}"),
    };
    if let Some(map) = env.as_hash() {
        map.iter()
            .map(|(k, v)| (k.as_str().expect("variable name").to_string(), scalar(v)))
            .collect()
    } else if let Some(list) = env.as_vec() {
        let lines: Vec<String> = list.iter().map(scalar).collect();
        env_file(&lines.join("\n"))
    } else {
        panic!("{COMPOSE}: service {service} has no environment")
    }
}

/// The image's builder stage copies only some paths of the repository: cargo must be able to
/// resolve the build from those alone (the vendored patch of rumqttc, the declared bench).
#[test]
fn the_dockerfile_copies_everything_cargo_needs_to_resolve_the_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ctx = tempfile::tempdir().expect("tempdir");
    for args in dockerfile_instructions("COPY") {
        if args.starts_with("--from") {
            continue;
        }
        let mut parts: Vec<&str> = args.split_whitespace().collect();
        parts.pop(); // the destination
        for src in parts {
            let from = root.join(src);
            let status = Command::new("cp")
                .args(["-r", from.to_str().expect("utf-8 path")])
                .arg(ctx.path())
                .status()
                .expect("cp");
            assert!(status.success(), "COPY {src}: not in the repository");
        }
    }
    // Resolved for this machine's platform only: the other platforms' crates (android, windows)
    // are never downloaded by a build here, and `--offline` must not depend on whether something
    // else (cargo-deny) happened to fetch them first.
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &host])
        .current_dir(ctx.path())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo cannot resolve the build from the Dockerfile's COPY set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The arguments of every `INSTRUCTION ...` line of the Dockerfile (continuations joined).
fn dockerfile_instructions(instruction: &str) -> Vec<String> {
    let text = read(DOCKERFILE).replace("\\\n", " ");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(instruction))
        .filter(|rest| rest.starts_with(' '))
        .map(|rest| rest.trim().to_string())
        .collect()
}

/// `ENV KEY=VALUE ...` of the Dockerfile.
fn dockerfile_env() -> Vec<(String, String)> {
    dockerfile_instructions("ENV")
        .iter()
        .flat_map(|args| {
            args.split_whitespace()
                .map(|kv| {
                    let (k, v) = kv
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV {kv}: use KEY=VALUE"));
                    (k.to_string(), v.to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
