//! The Grafana dashboard and the Prometheus rules against a real Prometheus scraping a real
//! daemon that has had traffic: every panel's query and every rule parses, evaluates and
//! returns series. A renamed metric, a label that is not there or a join that matches nothing
//! fails here, not on an operator's screen.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use yaml_rust2::YamlLoader;

use crate::common::{self, Prometheus};
use crate::support::Traffic;

pub const DASHBOARD: &str = "deploy/grafana/dashboards/enalysis-ingest.json";
const RULES: &str = "deploy/prometheus/rules.yml";
/// The scrape job the rules select (`up{job="enalysis-ingest"}`) and deploy/ configures.
const JOB: &str = "enalysis-ingest";

/// Grafana's built-in variables, expanded as Grafana would for a dashboard over the last hour
/// of a Prometheus scraping every 15 s (`$__rate_interval` is at least four scrape intervals).
const BUILTINS: [(&str, &str); 4] = [
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "1h"),
    ("__range_s", "3600"),
];

/// Everything must be there within this long after the traffic: Prometheus's first scrape
/// comes about 5 s after its start, rate() needs a second one 1 s later, and recording rules
/// two evaluations more. A metric that does not exist never appears, so a failure takes this
/// long.
const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn every_dashboard_panel_and_every_rule_returns_series_from_a_real_prometheus() {
    // Prometheus first: its first scrape comes about 5 s after it starts (see `Prometheus`),
    // time the daemon uses to start and judge the traffic.
    let http_port = common::free_port();
    let prom = Prometheus::start(
        JOB,
        &[format!("127.0.0.1:{http_port}")],
        &[repo().join(RULES)],
    );
    let traffic = Traffic::start(http_port).await;
    let dashboard = load();
    let rules = rule_file();
    assert!(
        queries(&dashboard).len() >= 15 && rules.len() >= 10,
        "expected the whole dashboard and rule file"
    );

    let deadline = Instant::now() + DEADLINE;
    loop {
        let problems = problems(&prom, &dashboard, &rules).await;
        if problems.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "after {DEADLINE:?} of scraping, {} problem(s):\n  {}\nprometheus log:\n{}",
                problems.len(),
                problems.join("\n  "),
                prom.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(traffic);
}

/// What is wrong right now; empty when every query and rule is as it should be.
async fn problems(prom: &Prometheus, dashboard: &Value, rules: &[Rule]) -> Vec<String> {
    let mut problems = Vec::new();
    let vars = match resolve_variables(prom, dashboard).await {
        Ok(vars) => vars,
        Err(e) => return vec![e],
    };
    for q in queries(dashboard) {
        let what = format!("panel {:?} query {}: `{}`", q.panel, q.ref_id, q.expr);
        match substitute(&q.expr, &vars) {
            Err(e) => problems.push(format!("{what}: {e}")),
            Ok(expr) => {
                if let Some(p) = must_have_series(prom, &expr).await {
                    problems.push(format!("{what}: {p}"));
                }
            }
        }
    }
    for rule in rules {
        match &rule.kind {
            RuleKind::Record => {
                for expr in [&rule.expr, &rule.name] {
                    if let Some(p) = must_have_series(prom, expr).await {
                        problems.push(format!("record {}: `{expr}`: {p}", rule.name));
                    }
                }
            }
            // An alert is a condition, false in a healthy run, so its expression filters
            // everything out: an empty answer would prove nothing. With `bool` after every
            // comparison it keeps every series it compares (as 0 or 1) and drops only what a
            // join does not match: empty then means a metric, a label or a join is wrong. The
            // expression as written must still evaluate without an error.
            RuleKind::Alert => {
                if let Err(e) = prom.query(&rule.expr).await {
                    problems.push(format!("alert {}: `{}`: {e}", rule.name, rule.expr));
                }
                let kept = with_bool(&rule.expr);
                if let Some(p) = must_have_series(prom, &kept).await {
                    problems.push(format!("alert {}: `{kept}`: {p}", rule.name));
                }
            }
        }
    }
    // Prometheus evaluates the rule file itself every second: each rule once, without error.
    match prom.rules().await {
        Err(e) => problems.push(format!("/api/v1/rules: {e}")),
        Ok(loaded) => {
            for rule in rules {
                let health = loaded
                    .iter()
                    .find(|r| r["name"] == rule.name.as_str())
                    .map(|r| (r["health"].clone(), r["lastError"].clone()));
                match health {
                    None => problems.push(format!("rule {} not loaded", rule.name)),
                    Some((h, _)) if h == "ok" => {}
                    Some((h, e)) => {
                        problems.push(format!("rule {}: health {h}, last error {e}", rule.name))
                    }
                }
            }
        }
    }
    problems
}

/// None when `expr` returns at least one series; else what went wrong.
async fn must_have_series(prom: &Prometheus, expr: &str) -> Option<String> {
    match prom.query(expr).await {
        Ok(series) if series.is_empty() => Some("no series".into()),
        Ok(_) => None,
        Err(e) => Some(e),
    }
}

// ---------------------------------------------------------------------------------------------
// The dashboard, read as Grafana reads it (also used by tests/it/deploy.rs)

pub fn load() -> Value {
    let path = repo().join(DASHBOARD);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows' own panels included (a collapsed row holds its panels inside it).
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// Every PromQL query of every panel, as written (Grafana variables unexpanded).
pub fn queries(dashboard: &Value) -> Vec<PanelQuery> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("(untitled)").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| PanelQuery {
                    panel: title.clone(),
                    ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                    expr: t["expr"].as_str().unwrap_or_default().to_string(),
                })
        })
        .collect()
}

/// The dashboard's template variables, in order (a later one may use an earlier one).
pub fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

/// `label_values(selector, label)` → (selector, label).
pub fn label_values_query(definition: &str) -> Option<(&str, &str)> {
    let inner = definition
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim(), label.trim()))
}

/// The value of each variable as Grafana would pick it against this Prometheus: a query
/// variable's values must exist (its "All" is its `allValue`, else the first value in order),
/// a textbox or constant is its text.
async fn resolve_variables(
    prom: &Prometheus,
    dashboard: &Value,
) -> Result<BTreeMap<String, String>, String> {
    let mut vars: BTreeMap<String, String> = BUILTINS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for var in variables(dashboard) {
        let name = var["name"].as_str().ok_or("a variable without a name")?;
        let value = match var["type"].as_str() {
            Some("query") => {
                let definition = var["definition"].as_str().unwrap_or_default();
                let (selector, label) = label_values_query(definition)
                    .ok_or_else(|| format!("variable {name}: not label_values(…): {definition}"))?;
                let selector = substitute(selector, &vars)?;
                let mut values = prom.label_values(&selector, label).await?;
                if values.is_empty() {
                    return Err(format!("variable {name}: {definition} has no values"));
                }
                values.sort();
                match var["allValue"].as_str() {
                    Some(all) if var["includeAll"] == true => all.to_string(),
                    _ => values.remove(0),
                }
            }
            Some("textbox" | "constant") => var["query"].as_str().unwrap_or_default().to_string(),
            other => return Err(format!("variable {name}: type {other:?} not handled here")),
        };
        vars.insert(name.to_string(), value);
    }
    Ok(vars)
}

/// Expands `$name` and `${name}`; a variable the dashboard does not define is an error (as it
/// would be a broken panel in Grafana).
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => braced
                .split_once('}')
                .ok_or_else(|| format!("unclosed ${{ in `{expr}`"))?,
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        let value = vars
            .get(name)
            .ok_or_else(|| format!("unknown variable ${name} in `{expr}`"))?;
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The rule file

enum RuleKind {
    Record,
    Alert,
}

struct Rule {
    kind: RuleKind,
    name: String,
    expr: String,
}

fn rule_file() -> Vec<Rule> {
    let path = repo().join(RULES);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{RULES}: {e}"));
    let mut out = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr").trim().to_string();
            let (kind, name) = match (rule["record"].as_str(), rule["alert"].as_str()) {
                (Some(r), None) => (RuleKind::Record, r),
                (None, Some(a)) => (RuleKind::Alert, a),
                _ => panic!("{RULES}: a rule is a record or an alert: {rule:?}"),
            };
            out.push(Rule {
                kind,
                name: name.to_string(),
                expr,
            });
        }
    }
    out
}

/// `expr` with `bool` after every comparison operator (`==`, `!=`, `>`, `<`, `>=`, `<=`) that
/// does not have it yet: a comparison then yields 0 or 1 for each series instead of filtering.
/// Label matchers (`{a!="b"}`), ranges and string literals are left alone.
fn with_bool(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len() + 16);
    let (mut braces, mut brackets) = (0usize, 0usize);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                // A string literal, escapes included, copied as is.
                out.push(c);
                i += 1;
                while i < chars.len() {
                    out.push(chars[i]);
                    if chars[i] == '\\' && c != '`' && i + 1 < chars.len() {
                        out.push(chars[i + 1]);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if chars[i - 1] == c {
                        break;
                    }
                }
                continue;
            }
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            _ => {}
        }
        let next = chars.get(i + 1).copied();
        let op_len = if braces > 0 || brackets > 0 {
            0
        } else {
            match (c, next) {
                ('=' | '!' | '>' | '<', Some('=')) => 2,
                ('>' | '<', _) => 1,
                _ => 0,
            }
        };
        if op_len == 0 {
            out.push(c);
            i += 1;
            continue;
        }
        out.extend(&chars[i..i + op_len]);
        i += op_len;
        let rest: String = chars[i..].iter().collect();
        let already = rest
            .trim_start()
            .strip_prefix("bool")
            .is_some_and(|r| !r.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
        if !already {
            out.push_str(" bool");
        }
    }
    out
}

#[test]
fn with_bool_keeps_every_compared_series_and_changes_nothing_else() {
    for (expr, expected) in [
        (
            r#"up{job="enalysis-ingest"} == 0"#,
            r#"up{job="enalysis-ingest"} == bool 0"#,
        ),
        (
            "rate(ingest_db_errors_total[5m]) > 0",
            "rate(ingest_db_errors_total[5m]) > bool 0",
        ),
        (
            "increase(x[15m]) > 5\nand on (job, instance) y == 1",
            "increase(x[15m]) > bool 5\nand on (job, instance) y == bool 1",
        ),
        ("a >= 1 or b <= 2", "a >= bool 1 or b <= bool 2"),
        (
            r#"a{r!="x", s=~"y"} != 1"#,
            r#"a{r!="x", s=~"y"} != bool 1"#,
        ),
        ("a > bool 1", "a > bool 1"),
        ("a > boolean_metric", "a > bool boolean_metric"),
        (
            r#"label_replace(a, "d", "<$1>", "s", "(.*)") < 3"#,
            r#"label_replace(a, "d", "<$1>", "s", "(.*)") < bool 3"#,
        ),
        (
            r#"a{s="q\"<"} / ignoring (reason) group_left b > 0.05"#,
            r#"a{s="q\"<"} / ignoring (reason) group_left b > bool 0.05"#,
        ),
        (
            "sum by (le) (rate(h_bucket[5m]))",
            "sum by (le) (rate(h_bucket[5m]))",
        ),
    ] {
        assert_eq!(with_bool(expr), expected, "{expr}");
    }
}

#[test]
fn grafana_variables_are_expanded_and_unknown_ones_refused() {
    let vars: BTreeMap<String, String> =
        [("job", "j"), ("instance", ".*"), ("__rate_interval", "1m")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    for (expr, expected) in [
        (
            r#"rate(x{job=~"$job", instance=~"${instance}"}[$__rate_interval])"#,
            Ok(r#"rate(x{job=~"j", instance=~".*"}[1m])"#.to_string()),
        ),
        ("vector(1)", Ok("vector(1)".to_string())),
        (
            "x{a=\"$jobs\"}",
            Err("unknown variable $jobs in `x{a=\"$jobs\"}`".to_string()),
        ),
        (
            "x[${__rate_interval",
            Err("unclosed ${ in `x[${__rate_interval`".to_string()),
        ),
    ] {
        assert_eq!(substitute(expr, &vars), expected, "{expr}");
    }
    assert_eq!(
        label_values_query(r#"label_values(up{job=~"$job"}, instance)"#),
        Some((r#"up{job=~"$job"}"#, "instance"))
    );
    assert_eq!(label_values_query("query_result(up)"), None);
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
