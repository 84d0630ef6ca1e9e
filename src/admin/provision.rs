//! `enalysis-ingest provision FILE`: the declarative inventory.
//!
//! An operator describes portfolios → sites → meters → assets / energy sources, plus grid links
//! and asset connections, in one YAML or JSON file (`config/inventory.example.yaml` shows every
//! key; keys are the schema's column names). This module reads the file, checks all of it, and
//! makes the database agree with it in one transaction.
//!
//! - **Keys**: portfolios by `name`, sites by (portfolio, `name`), meters / assets / energy
//!   sources by `external_id`, grid links by (site, `name`), asset connections by (`source`,
//!   `target`, `relationship`). A meter, asset or energy source found under another parent (a
//!   meter under another site) is moved under the one the file names, and the plan says so.
//! - **Idempotent**: a row whose columns already hold the file's values is not updated at all,
//!   so its `updated_at` (and its tuple) stays as it was; running a file twice changes nothing.
//! - **Declarative for what the file names**: an optional key left out means the schema's
//!   default (NULL, `{}`, `UTC`, `15min`, `out`), so deleting a line from the file clears that
//!   column. `active` is the exception: left out, it is not touched (a meter an operator
//!   deactivated is not revived by a re-run); `active: true` revives it.
//! - **Additive**: rows the file does not name are never deleted or deactivated; the plan lists
//!   them as "left" (other portfolios; the sites of the file's portfolios it does not name; and
//!   so on down).
//! - **All or nothing**: every problem of the file, and of its references into the database
//!   (asset types, parents, connection ends, time zones), is reported, one line each with its
//!   path, before anything is written. `--dry-run` applies the plan inside the transaction and
//!   rolls it back.
//!
//! Architecture invariant: every value from the file reaches SQL as a bind parameter; the only
//! text spliced into statements is the static table and column names below.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use anyhow::{Context, anyhow};
use serde_json::Value as Json;
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;
use uuid::Uuid;
use yaml_serde::Value as Yaml;

use crate::db::{Db, pg_error_message};

// Labels of the schema's enums, shared with the API (a unit test keeps them in step with
// migrations/0001_hierarchy.sql).
use super::schema::{
    self as crud, DIRECTION as DIRECTIONS, ENERGY_SOURCE_KIND as ENERGY_SOURCE_KINDS,
    INDUSTRY_TYPE as INDUSTRY_TYPES, METER_CATEGORY as METER_CATEGORIES,
    READING_FREQUENCY as READING_FREQUENCIES, RELATIONSHIP as RELATIONSHIPS,
};

use crate::locks;

// ---------------------------------------------------------------------------------------------
// The public face: run, the plan it returns, the problems it refuses with.

/// Reads the inventory at `path` (YAML for `.yaml` / `.yml`, JSON for `.json`), checks it, and
/// upserts it in one transaction, committed unless `dry_run` (then rolled back).
///
/// Errors: an [`Invalid`] (every problem, each with its path; nothing written) when the file or
/// its references are wrong; otherwise an I/O or database error with context.
pub async fn run(db: &Db, path: &Path, dry_run: bool) -> anyhow::Result<Plan> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {file}"))?;
    let format = Format::of(path)?;
    let value = parse(&text, format).with_context(|| format!("cannot parse {file}"))?;
    let mut problems = Vec::new();
    let inventory = decode(&value, &mut problems);
    check_file(&inventory, &mut problems);

    let mut client = match db.get().await {
        Ok(c) => c,
        // The file's own problems are worth reporting even when the database is away.
        Err(e) if !problems.is_empty() => {
            problems.push(Problem::new(
                "",
                format!("the checks against the database were skipped: {e}"),
            ));
            return Err(Invalid::new(file, problems).into());
        }
        Err(e) => return Err(e.into()),
    };
    let tx = client
        .transaction()
        .await
        .map_err(pg)
        .context("cannot start a transaction")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&locks::PROVISION])
        .await
        .map_err(pg)
        .context("cannot take the provisioning lock")?;
    // Before the checks, so that the cycle check sees every committed parent change and none
    // can come between it and the writes (the API's PATCH takes the same lock).
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&locks::ASSET_PARENTS])
        .await
        .map_err(pg)
        .context("cannot take the asset-parent lock")?;
    let known = check_database(&tx, &inventory, &mut problems).await?;
    if !problems.is_empty() {
        drop(tx); // rolls back
        return Err(Invalid::new(file, problems).into());
    }
    let mut plan = apply(&tx, &inventory, &known).await?;
    plan.dry_run = dry_run;
    if dry_run {
        tx.rollback()
            .await
            .map_err(pg)
            .context("cannot roll back the dry run")?;
    } else {
        tx.commit()
            .await
            .map_err(pg)
            .context("cannot commit the inventory")?;
    }
    Ok(plan)
}

/// What provisioning did (or, in a dry run, would have done), entity by entity.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Nothing was written: the transaction was rolled back.
    pub dry_run: bool,
    /// One entry per entity the file names, grouped by kind, in file order (assets parents
    /// first).
    pub entries: Vec<Entry>,
    /// Per kind, the rows in the file's scope that the file does not name, left as they are:
    /// other portfolios; sites of the file's portfolios; meters and grid links of the file's
    /// sites; assets and energy sources of the file's meters; connections touching the file's
    /// assets.
    pub left: BTreeMap<Kind, Vec<String>>,
}

/// The kinds of entity a file can hold, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Portfolio,
    Site,
    Meter,
    Asset,
    EnergySource,
    GridLink,
    AssetConnection,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Portfolio,
        Kind::Site,
        Kind::Meter,
        Kind::Asset,
        Kind::EnergySource,
        Kind::GridLink,
        Kind::AssetConnection,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Portfolio => "portfolios",
            Kind::Site => "sites",
            Kind::Meter => "meters",
            Kind::Asset => "assets",
            Kind::EnergySource => "energy sources",
            Kind::GridLink => "grid links",
            Kind::AssetConnection => "asset connections",
        }
    }

    /// What a row of this kind is moved between, when it can be.
    fn parent_noun(self) -> &'static str {
        match self {
            Kind::Meter => "site",
            Kind::Asset | Kind::EnergySource => "meter",
            _ => "parent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    /// Some columns changed; [`Entry::fields`] says which.
    Updated,
    /// Found under another parent and moved under the file's; maybe other columns changed too.
    Moved,
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Moved => "moved",
            Action::Unchanged => "unchanged",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub action: Action,
    /// How the file names it: `Portfolio`, `Portfolio / Site`, `external_id (name)`,
    /// `Site / link`, `source → target (relationship)`.
    pub name: String,
    /// The file keys whose values changed (Updated, Moved); the parent itself is not listed.
    pub fields: Vec<&'static str>,
    /// Moved: the parent it was under (a site's name, a meter's external id).
    pub moved_from: Option<String>,
}

impl Plan {
    /// How many entities of `kind` got `action`.
    pub fn count(&self, kind: Kind, action: Action) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind == kind && e.action == action)
            .count()
    }

    /// How many rows were (or would be) written: created, updated and moved.
    pub fn changes(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.action != Action::Unchanged)
            .count()
    }

    /// The rows of `kind` in the file's scope that the file does not name.
    pub fn left(&self, kind: Kind) -> &[String] {
        self.left.get(&kind).map_or(&[], Vec::as_slice)
    }

    fn push(&mut self, kind: Kind, name: String, outcome: Outcome) {
        let (action, fields, moved_from) = match outcome {
            Outcome::Created => (Action::Created, Vec::new(), None),
            Outcome::Unchanged => (Action::Unchanged, Vec::new(), None),
            Outcome::Changed {
                fields,
                moved_from: None,
            } => (Action::Updated, fields, None),
            Outcome::Changed {
                fields,
                moved_from: Some(from),
            } => (Action::Moved, fields, Some(from)),
        };
        self.entries.push(Entry {
            kind,
            action,
            name,
            fields,
            moved_from,
        });
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = [
            Action::Created,
            Action::Updated,
            Action::Moved,
            Action::Unchanged,
        ];
        for kind in Kind::ALL {
            let counts: Vec<String> = all
                .iter()
                .map(|a| format!("{} {a}", self.count(kind, *a)))
                .collect();
            let left = self.left(kind);
            writeln!(
                f,
                "{}: {}, {} left",
                kind.plural(),
                counts.join(", "),
                left.len()
            )?;
            for e in self.entries.iter().filter(|e| e.kind == kind) {
                write!(f, "  {:<10} {}", e.action.to_string(), e.name)?;
                if let Some(from) = &e.moved_from {
                    write!(f, " (from {} {from:?})", kind.parent_noun())?;
                }
                if !e.fields.is_empty() {
                    write!(f, ": {}", e.fields.join(", "))?;
                }
                writeln!(f)?;
            }
            for name in left {
                writeln!(
                    f,
                    "  {:<10} {name} (not in the file; left as it is)",
                    "left"
                )?;
            }
        }
        let total = |a| self.entries.iter().filter(|e| e.action == a).count();
        write!(
            f,
            "total: {} created, {} updated, {} moved, {} unchanged, {} left",
            total(Action::Created),
            total(Action::Updated),
            total(Action::Moved),
            total(Action::Unchanged),
            self.left.values().map(Vec::len).sum::<usize>()
        )?;
        if self.dry_run {
            write!(f, "\ndry run: nothing was written (rolled back)")?;
        }
        Ok(())
    }
}

/// One thing wrong with the inventory, at a path such as `portfolios[0].sites[1].name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, in the file's own terms; empty for the file as a whole.
    pub path: String,
    pub message: String,
}

impl Problem {
    fn new(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "(top level): {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The inventory was refused: every problem found, nothing written.
#[derive(Debug, thiserror::Error)]
pub struct Invalid {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl Invalid {
    /// Sorts the problems into file order (stable: a field's problems keep theirs).
    fn new(file: String, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_cached_key(|p| file_order(&p.path));
        Self { file, problems }
    }
}

/// A key that orders paths as they appear in the file: `meters[2]` before `meters[10]`.
fn file_order(path: &str) -> String {
    let mut key = String::with_capacity(path.len() + 16);
    let mut digits = String::new();
    for c in path.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            key.push_str(&format!("{digits:0>10}"));
            digits.clear();
        }
        key.push(c);
    }
    key.push_str(&digits);
    key
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let s = if n == 1 { "" } else { "s" };
        write!(f, "{}: {n} problem{s}, nothing was written", self.file)?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

fn pg(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow!(pg_error_message(&e))
}

// ---------------------------------------------------------------------------------------------
// Reading the file: YAML or JSON into one tree, then into typed specs, collecting problems.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

impl Format {
    fn of(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml") => {
                Ok(Self::Yaml)
            }
            Some(e) if e.eq_ignore_ascii_case("json") => Ok(Self::Json),
            _ => Err(anyhow!(
                "{}: unknown file type; expected .yaml, .yml or .json",
                path.display()
            )),
        }
    }
}

/// Both formats land in YAML's tree, which (unlike `serde_json::Value`) keeps a YAML `.nan` or
/// `.inf` as what it is, so the checks can refuse it instead of it turning into null.
fn parse(text: &str, format: Format) -> anyhow::Result<Yaml> {
    match format {
        Format::Json => Ok(serde_json::from_str(text)?),
        Format::Yaml => {
            let mut value: Yaml = yaml_serde::from_str(text)?;
            // `<<: *defaults` merge keys, so a file can share metadata between entries.
            value.apply_merge()?;
            Ok(value)
        }
    }
}

struct Inventory {
    portfolios: Vec<PortfolioSpec>,
}

struct PortfolioSpec {
    path: String,
    name: String,
    description: Option<String>,
    metadata: Json,
    active: Option<bool>,
    sites: Vec<SiteSpec>,
}

struct SiteSpec {
    path: String,
    name: String,
    industry_type: &'static str,
    location: Option<String>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    timezone: String,
    metadata: Json,
    active: Option<bool>,
    meters: Vec<MeterSpec>,
    grid_links: Vec<GridLinkSpec>,
    asset_connections: Vec<ConnectionSpec>,
}

struct MeterSpec {
    path: String,
    external_id: String,
    name: String,
    category: &'static str,
    reading_frequency: &'static str,
    description: Option<String>,
    metadata: Json,
    active: Option<bool>,
    assets: Vec<AssetSpec>,
    energy_sources: Vec<EnergySourceSpec>,
}

struct AssetSpec {
    path: String,
    external_id: String,
    name: String,
    asset_type: Option<String>,
    parent: Option<String>,
    equipment: Option<String>,
    manufacturer: Option<String>,
    model: Option<String>,
    rated_power_kw: Option<f64>,
    description: Option<String>,
    metadata: Json,
    active: Option<bool>,
}

struct EnergySourceSpec {
    path: String,
    external_id: String,
    name: String,
    kind: &'static str,
    capacity_kw: Option<f64>,
    storage_capacity_kwh: Option<f64>,
    carbon_intensity_g_per_kwh: Option<f64>,
    description: Option<String>,
    metadata: Json,
    active: Option<bool>,
}

struct GridLinkSpec {
    path: String,
    name: String,
    direction: &'static str,
    capacity_kw: Option<f64>,
    provider: Option<String>,
    tariff_structure: Json,
    metadata: Json,
    active: Option<bool>,
}

struct ConnectionSpec {
    path: String,
    source: String,
    target: String,
    relationship: &'static str,
    direction: &'static str,
    description: Option<String>,
    metadata: Json,
    active: Option<bool>,
}

impl Inventory {
    fn sites(&self) -> impl Iterator<Item = (&PortfolioSpec, &SiteSpec)> {
        self.portfolios
            .iter()
            .flat_map(|p| p.sites.iter().map(move |s| (p, s)))
    }

    fn meters(&self) -> impl Iterator<Item = (&SiteSpec, &MeterSpec)> {
        self.sites()
            .flat_map(|(_, s)| s.meters.iter().map(move |m| (s, m)))
    }

    fn assets(&self) -> impl Iterator<Item = (&MeterSpec, &AssetSpec)> {
        self.meters()
            .flat_map(|(_, m)| m.assets.iter().map(move |a| (m, a)))
    }

    fn energy_sources(&self) -> impl Iterator<Item = (&MeterSpec, &EnergySourceSpec)> {
        self.meters()
            .flat_map(|(_, m)| m.energy_sources.iter().map(move |e| (m, e)))
    }

    fn grid_links(&self) -> impl Iterator<Item = (&SiteSpec, &GridLinkSpec)> {
        self.sites()
            .flat_map(|(_, s)| s.grid_links.iter().map(move |g| (s, g)))
    }

    fn connections(&self) -> impl Iterator<Item = &ConnectionSpec> {
        self.sites().flat_map(|(_, s)| s.asset_connections.iter())
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn describe(v: &Yaml) -> String {
    match v {
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => format!("the boolean {b}"),
        Yaml::Number(n) => format!("the number {n}"),
        Yaml::String(_) => "a string".into(),
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Mapping(_) => "a mapping".into(),
        Yaml::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// One mapping of the file being decoded: hands out its fields one by one and, at the end,
/// reports the keys nobody asked for (what `deny_unknown_fields` does, but for every key at
/// once rather than the first).
struct Fields<'v, 'p> {
    path: String,
    /// The SQL table the mapping becomes a row of: its text limits apply to the keys named
    /// like its columns.
    table: Option<&'static str>,
    map: Option<&'v yaml_serde::Mapping>,
    asked: Vec<&'static str>,
    problems: &'p mut Vec<Problem>,
}

impl<'v, 'p> Fields<'v, 'p> {
    fn new(value: &'v Yaml, path: String, problems: &'p mut Vec<Problem>) -> Self {
        let map = match value {
            Yaml::Mapping(m) => Some(m),
            other => {
                problems.push(Problem::new(
                    &path,
                    format!("expected a mapping, found {}", describe(other)),
                ));
                None
            }
        };
        Self {
            path,
            table: None,
            map,
            asked: Vec::new(),
            problems,
        }
    }

    /// A mapping that becomes a row of `table`.
    fn row(
        table: &'static str,
        value: &'v Yaml,
        path: String,
        problems: &'p mut Vec<Problem>,
    ) -> Self {
        Self {
            table: Some(table),
            ..Self::new(value, path, problems)
        }
    }

    /// Reports `s` when it is longer than its column allows (the API's limit, from
    /// [`crud::max_chars`]), so the database never sees it.
    fn too_long(&mut self, key: &str, s: &str) -> bool {
        let Some(max) = self.table.and_then(|t| crud::max_chars(t, key)) else {
            return false;
        };
        let n = s.chars().count();
        if n > max {
            self.problem(key, format!("must be at most {max} characters, found {n}"));
        }
        n > max
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems
            .push(Problem::new(&join(&self.path, key), message));
    }

    /// The value of `key`; `None` when absent or null.
    fn get(&mut self, key: &'static str) -> Option<&'v Yaml> {
        self.asked.push(key);
        match self.map?.get(key) {
            None | Some(Yaml::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// Reports a missing required key (unless this is not a mapping at all: already reported).
    fn missing(&mut self, key: &str) {
        if self.map.is_some() {
            self.problem(key, "missing (required)");
        }
    }

    fn text(&mut self, key: &'static str) -> Option<String> {
        match self.get(key)? {
            Yaml::String(s) if self.too_long(key, s) => None,
            Yaml::String(s) => Some(s.clone()),
            other => {
                let found = describe(other);
                self.problem(key, format!("expected a string, found {found}"));
                None
            }
        }
    }

    /// A required, non-blank string (a name, an external id). Empty when it is not one: the
    /// problem is then already reported.
    fn required(&mut self, key: &'static str) -> String {
        match self.get(key) {
            None => {
                self.missing(key);
                String::new()
            }
            Some(Yaml::String(s)) if s.trim().is_empty() => {
                self.problem(key, "must not be empty");
                String::new()
            }
            Some(Yaml::String(s)) if self.too_long(key, s) => String::new(),
            Some(Yaml::String(s)) => s.clone(),
            Some(Yaml::Number(n)) => {
                // An unquoted EAN or serial (`external_id: 541448800000000001`) is a number to YAML,
                // and long ones lose digits: refuse rather than guess.
                self.problem(
                    key,
                    format!("expected a string, found the number {n}; quote it (\"{n}\") to keep it exactly"),
                );
                String::new()
            }
            Some(other) => {
                let found = describe(other);
                self.problem(key, format!("expected a string, found {found}"));
                String::new()
            }
        }
    }

    /// A device's external id: it names the entity in MQTT topics
    /// (`…/meters/{external_id}/readings`), so it cannot hold a topic separator or wildcard.
    fn external_id(&mut self) -> String {
        let id = self.required("external_id");
        if id.contains(['/', '+', '#', '\0']) {
            self.problem(
                "external_id",
                format!("{id:?} cannot be used in an MQTT topic: it must not contain '/', '+', '#' or NUL"),
            );
        }
        id
    }

    /// One of an enum's labels; `default` when absent (required when there is none). Empty
    /// when wrong: the problem is then already reported.
    fn label(
        &mut self,
        key: &'static str,
        allowed: &'static [&'static str],
        default: Option<&'static str>,
    ) -> &'static str {
        let Some(value) = self.get(key) else {
            if default.is_none() && self.map.is_some() {
                self.problem(
                    key,
                    format!("missing (required; one of {})", allowed.join(", ")),
                );
            }
            return default.unwrap_or("");
        };
        let Yaml::String(s) = value else {
            let found = describe(value);
            self.problem(
                key,
                format!("expected one of {}, found {found}", allowed.join(", ")),
            );
            return "";
        };
        if let Some(label) = allowed.iter().find(|a| **a == s) {
            return label;
        }
        let hint = allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(s))
            .map(|a| format!(" (did you mean {a:?}?)"))
            .unwrap_or_default();
        self.problem(
            key,
            format!("{s:?} is not one of {}{hint}", allowed.join(", ")),
        );
        ""
    }

    /// A finite number in `[min, max]`.
    fn number(&mut self, key: &'static str, min: f64, max: f64) -> Option<f64> {
        let value = self.get(key)?;
        let Some(x) = (match value {
            Yaml::Number(n) => n.as_f64(),
            // YAML reads a number beyond f64 (`1e400`) as a string: say what it is.
            Yaml::String(s) if s.parse::<f64>().is_ok_and(f64::is_infinite) => {
                self.problem(
                    key,
                    format!(
                        "must be a finite number, found {s} (beyond ±{:e})",
                        f64::MAX
                    ),
                );
                return None;
            }
            _ => None,
        }) else {
            let found = describe(value);
            self.problem(key, format!("expected a number, found {found}"));
            return None;
        };
        if !x.is_finite() {
            self.problem(key, format!("must be a finite number, found {x}"));
            None
        } else if x < min || x > max {
            let rule = if max == f64::INFINITY {
                format!("must be ≥ {min}")
            } else {
                format!("must be between {min} and {max}")
            };
            self.problem(key, format!("{rule}, found {x}"));
            None
        } else {
            Some(x)
        }
    }

    fn boolean(&mut self, key: &'static str) -> Option<bool> {
        match self.get(key)? {
            Yaml::Bool(b) => Some(*b),
            other => {
                let found = describe(other);
                self.problem(key, format!("expected true or false, found {found}"));
                None
            }
        }
    }

    /// A JSON object column (`metadata`, `tariff_structure`); `{}` when absent.
    fn object(&mut self, key: &'static str) -> Json {
        match self.get(key) {
            None => Json::Object(Default::default()),
            Some(v @ Yaml::Mapping(_)) => to_json(v, &join(&self.path, key), self.problems),
            Some(other) => {
                let found = describe(other);
                self.problem(key, format!("expected a mapping, found {found}"));
                Json::Object(Default::default())
            }
        }
    }

    /// The items of a list, each with its path; empty when absent.
    fn list(&mut self, key: &'static str, required: bool) -> Vec<(String, &'v Yaml)> {
        match self.get(key) {
            None => {
                if required {
                    self.missing(key);
                }
                Vec::new()
            }
            Some(Yaml::Sequence(items)) => {
                let path = join(&self.path, key);
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{path}[{i}]"), v))
                    .collect()
            }
            Some(other) => {
                let found = describe(other);
                self.problem(key, format!("expected a list, found {found}"));
                Vec::new()
            }
        }
    }

    /// Reports every key that was not asked for.
    fn finish(self) {
        let Some(map) = self.map else { return };
        for key in map.keys() {
            match key {
                Yaml::String(s) if self.asked.contains(&s.as_str()) => {}
                Yaml::String(s) => self.problems.push(Problem::new(
                    &join(&self.path, s),
                    format!("unknown field; expected one of {}", self.asked.join(", ")),
                )),
                other => self.problems.push(Problem::new(
                    &self.path,
                    format!("keys must be strings, found {}", describe(other)),
                )),
            }
        }
    }
}

/// A YAML tree as JSON for a jsonb column. Scalar keys become strings (`2024: …` is `"2024"`);
/// non-finite numbers and tags have no JSON form and are refused.
fn to_json(v: &Yaml, path: &str, problems: &mut Vec<Problem>) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else if let Some(x) = n.as_f64().and_then(serde_json::Number::from_f64) {
                Json::Number(x)
            } else {
                problems.push(Problem::new(
                    path,
                    format!("must be a finite number, found {n}"),
                ));
                Json::Null
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| to_json(x, &format!("{path}[{i}]"), problems))
                .collect(),
        ),
        Yaml::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    other => {
                        problems.push(Problem::new(
                            path,
                            format!("keys must be strings, found {}", describe(other)),
                        ));
                        continue;
                    }
                };
                let value = to_json(x, &join(path, &key), problems);
                out.insert(key, value);
            }
            Json::Object(out)
        }
        Yaml::Tagged(t) => {
            problems.push(Problem::new(
                path,
                format!("YAML tags ({}) have no JSON form", t.tag),
            ));
            Json::Null
        }
    }
}

fn decode(root: &Yaml, problems: &mut Vec<Problem>) -> Inventory {
    let mut f = Fields::new(root, String::new(), problems);
    let items = f.list("portfolios", true);
    f.finish();
    Inventory {
        portfolios: items
            .into_iter()
            .map(|(path, v)| portfolio(v, path, problems))
            .collect(),
    }
}

fn portfolio(v: &Yaml, path: String, problems: &mut Vec<Problem>) -> PortfolioSpec {
    let mut f = Fields::row("portfolios", v, path.clone(), problems);
    let name = f.required("name");
    let description = f.text("description");
    let metadata = f.object("metadata");
    let active = f.boolean("active");
    let sites = f.list("sites", false);
    f.finish();
    PortfolioSpec {
        path,
        name,
        description,
        metadata,
        active,
        sites: sites
            .into_iter()
            .map(|(path, v)| site(v, path, problems))
            .collect(),
    }
}

fn site(v: &Yaml, path: String, problems: &mut Vec<Problem>) -> SiteSpec {
    let mut f = Fields::row("sites", v, path.clone(), problems);
    let name = f.required("name");
    let industry_type = f.label("industry_type", INDUSTRY_TYPES, None);
    let location = f.text("location");
    let latitude = f.number("latitude", -90.0, 90.0);
    let longitude = f.number("longitude", -180.0, 180.0);
    let timezone = match f.text("timezone") {
        Some(tz) if tz.trim().is_empty() => {
            f.problem("timezone", "must not be empty");
            String::new()
        }
        Some(tz) => tz,
        None => "UTC".to_string(),
    };
    let metadata = f.object("metadata");
    let active = f.boolean("active");
    let meters = f.list("meters", false);
    let grid_links = f.list("grid_links", false);
    let connections = f.list("asset_connections", false);
    f.finish();
    SiteSpec {
        path,
        name,
        industry_type,
        location,
        latitude,
        longitude,
        timezone,
        metadata,
        active,
        meters: meters
            .into_iter()
            .map(|(path, v)| meter(v, path, problems))
            .collect(),
        grid_links: grid_links
            .into_iter()
            .map(|(path, v)| grid_link(v, path, problems))
            .collect(),
        asset_connections: connections
            .into_iter()
            .map(|(path, v)| connection(v, path, problems))
            .collect(),
    }
}

fn meter(v: &Yaml, path: String, problems: &mut Vec<Problem>) -> MeterSpec {
    let mut f = Fields::row("meters", v, path.clone(), problems);
    let external_id = f.external_id();
    let name = f.required("name");
    let category = f.label("category", METER_CATEGORIES, None);
    let reading_frequency = f.label("reading_frequency", READING_FREQUENCIES, Some("15min"));
    let description = f.text("description");
    let metadata = f.object("metadata");
    let active = f.boolean("active");
    let assets = f.list("assets", false);
    let sources = f.list("energy_sources", false);
    f.finish();
    MeterSpec {
        path,
        external_id,
        name,
        category,
        reading_frequency,
        description,
        metadata,
        active,
        assets: assets
            .into_iter()
            .map(|(path, v)| asset(v, path, problems))
            .collect(),
        energy_sources: sources
            .into_iter()
            .map(|(path, v)| energy_source(v, path, problems))
            .collect(),
    }
}

fn asset(v: &Yaml, path: String, problems: &mut Vec<Problem>) -> AssetSpec {
    let mut f = Fields::row("assets", v, path.clone(), problems);
    let spec = AssetSpec {
        external_id: f.external_id(),
        name: f.required("name"),
        asset_type: f.text("asset_type"),
        parent: f.text("parent"),
        equipment: f.text("equipment"),
        manufacturer: f.text("manufacturer"),
        model: f.text("model"),
        rated_power_kw: f.number("rated_power_kw", 0.0, f64::INFINITY),
        description: f.text("description"),
        metadata: f.object("metadata"),
        active: f.boolean("active"),
        path,
    };
    f.finish();
    spec
}

fn energy_source(v: &Yaml, path: String, problems: &mut Vec<Problem>) -> EnergySourceSpec {
    let mut f = Fields::row("energy_sources", v, path.clone(), problems);
    let spec = EnergySourceSpec {
        external_id: f.external_id(),
        name: f.required("name"),
        kind: f.label("kind", ENERGY_SOURCE_KINDS, None),
        capacity_kw: f.number("capacity_kw", 0.0, f64::INFINITY),
        storage_capacity_kwh: f.number("storage_capacity_kwh", 0.0, f64::INFINITY),
        carbon_intensity_g_per_kwh: f.number("carbon_intensity_g_per_kwh", 0.0, f64::INFINITY),
        description: f.text("description"),
        metadata: f.object("metadata"),
        active: f.boolean("active"),
        path,
    };
    f.finish();
    spec
}

fn grid_link(v: &Yaml, path: String, problems: &mut Vec<Problem>) -> GridLinkSpec {
    let mut f = Fields::row("grid_links", v, path.clone(), problems);
    let spec = GridLinkSpec {
        name: f.required("name"),
        direction: f.label("direction", DIRECTIONS, None),
        capacity_kw: f.number("capacity_kw", 0.0, f64::INFINITY),
        provider: f.text("provider"),
        tariff_structure: f.object("tariff_structure"),
        metadata: f.object("metadata"),
        active: f.boolean("active"),
        path,
    };
    f.finish();
    spec
}

fn connection(v: &Yaml, path: String, problems: &mut Vec<Problem>) -> ConnectionSpec {
    let mut f = Fields::row("asset_connections", v, path.clone(), problems);
    let spec = ConnectionSpec {
        source: f.required("source"),
        target: f.required("target"),
        relationship: f.label("relationship", RELATIONSHIPS, None),
        direction: f.label("direction", DIRECTIONS, Some("out")),
        description: f.text("description"),
        metadata: f.object("metadata"),
        active: f.boolean("active"),
        path,
    };
    f.finish();
    spec
}

// ---------------------------------------------------------------------------------------------
// Checks across the file: unique keys, references that must resolve, no self-links.

/// Records `key` at `path`; reports it when an earlier entry already had it. Empty keys were
/// reported when decoded and are skipped here.
fn unique<'a>(
    seen: &mut HashMap<String, &'a str>,
    key: String,
    path: &'a str,
    field: &str,
    what: &str,
    problems: &mut Vec<Problem>,
) {
    if key.is_empty() {
        return;
    }
    if let Some(first) = seen.get(&key) {
        problems.push(Problem::new(
            &join(path, field),
            format!("duplicate {what} (first at {first})"),
        ));
    } else {
        seen.insert(key, path);
    }
}

fn check_file(inv: &Inventory, problems: &mut Vec<Problem>) {
    let mut portfolios = HashMap::new();
    for p in &inv.portfolios {
        let what = format!("portfolio name {:?}", p.name);
        unique(
            &mut portfolios,
            p.name.clone(),
            &p.path,
            "name",
            &what,
            problems,
        );
    }
    let mut sites = HashMap::new();
    for (p, s) in inv.sites() {
        let what = format!("site name {:?} in portfolio {:?}", s.name, p.name);
        let key = if s.name.is_empty() {
            String::new()
        } else {
            format!("{}\0{}", p.name, s.name)
        };
        unique(&mut sites, key, &s.path, "name", &what, problems);
    }
    let mut links = HashMap::new();
    for (s, g) in inv.grid_links() {
        let what = format!("grid link name {:?} in site {:?}", g.name, s.name);
        let key = if g.name.is_empty() {
            String::new()
        } else {
            format!("{}\0{}\0{}", s.path, s.name, g.name)
        };
        unique(&mut links, key, &g.path, "name", &what, problems);
    }
    let mut meters = HashMap::new();
    for (_, m) in inv.meters() {
        let what = format!("meter external_id {:?}", m.external_id);
        unique(
            &mut meters,
            m.external_id.clone(),
            &m.path,
            "external_id",
            &what,
            problems,
        );
    }
    let mut sources = HashMap::new();
    for (_, e) in inv.energy_sources() {
        let what = format!("energy source external_id {:?}", e.external_id);
        unique(
            &mut sources,
            e.external_id.clone(),
            &e.path,
            "external_id",
            &what,
            problems,
        );
    }
    let mut assets = HashMap::new();
    for (_, a) in inv.assets() {
        let what = format!("asset external_id {:?}", a.external_id);
        unique(
            &mut assets,
            a.external_id.clone(),
            &a.path,
            "external_id",
            &what,
            problems,
        );
        if let Some(parent) = &a.parent {
            if parent.trim().is_empty() {
                problems.push(Problem::new(&join(&a.path, "parent"), "must not be empty"));
            } else if *parent == a.external_id {
                problems.push(Problem::new(
                    &join(&a.path, "parent"),
                    "an asset cannot be its own parent",
                ));
            }
        }
        if a.asset_type.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push(Problem::new(
                &join(&a.path, "asset_type"),
                "must not be empty",
            ));
        }
    }
    let mut connections = HashMap::new();
    for c in inv.connections() {
        if !c.source.is_empty() && c.source == c.target {
            problems.push(Problem::new(
                &join(&c.path, "target"),
                format!("an asset cannot be connected to itself ({:?})", c.source),
            ));
        }
        let key = if c.source.is_empty() || c.target.is_empty() || c.relationship.is_empty() {
            String::new()
        } else {
            format!("{}\0{}\0{}", c.source, c.target, c.relationship)
        };
        let what = format!(
            "connection {} → {} ({})",
            c.source, c.target, c.relationship
        );
        unique(&mut connections, key, &c.path, "source", &what, problems);
    }
}

/// The asset parent links as they would be after provisioning, by a key per asset (its
/// external id, or `id:<uuid>` for a database asset without one): file assets point where the
/// file says, the other database assets where they point now. Returns each cycle reached from
/// `starts`, once, as the keys around it from the first start on it.
fn cycles(graph: &HashMap<String, Option<String>>, starts: &[&str]) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut reported: HashSet<&str> = HashSet::new();
    for &start in starts {
        if reported.contains(start) {
            continue;
        }
        let mut chain = vec![start];
        let mut at = start;
        while let Some(Some(next)) = graph.get(at) {
            if next == start {
                found.push(chain.iter().map(|s| s.to_string()).collect());
                reported.extend(chain.iter().copied());
                break;
            }
            // A cycle further up that does not pass through `start`: its own members report it.
            if chain.contains(&next.as_str()) || chain.len() > graph.len() {
                break;
            }
            chain.push(next);
            at = next;
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Checks against the database, inside the transaction that will write.

/// What the checks looked up, for the writes.
struct Known {
    asset_types: HashMap<String, Uuid>,
    /// Assets the file refers to (as a parent, or at an end of a connection) without declaring
    /// them.
    assets: HashMap<String, Uuid>,
}

async fn check_database(
    tx: &Transaction<'_>,
    inv: &Inventory,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<Known> {
    // Asset types: the reference table is small; load it whole to name the known codes.
    let rows = tx
        .query("SELECT code, id FROM asset_types ORDER BY code", &[])
        .await
        .map_err(pg)
        .context("cannot read asset_types")?;
    let asset_types: HashMap<String, Uuid> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (_, a) in inv.assets() {
        if let Some(code) = a.asset_type.as_deref().filter(|c| !c.trim().is_empty()) {
            if !asset_types.contains_key(code) {
                let mut codes: Vec<&str> = asset_types.keys().map(String::as_str).collect();
                codes.sort_unstable();
                let known = if codes.is_empty() {
                    "none: has `enalysis-ingest seed` run?".to_string()
                } else {
                    codes.join(", ")
                };
                problems.push(Problem::new(
                    &join(&a.path, "asset_type"),
                    format!("unknown asset type {code:?} (known: {known})"),
                ));
            }
        }
    }

    // Time zones, as PostgreSQL knows them.
    let zones: Vec<&str> = {
        let mut z: Vec<&str> = inv
            .sites()
            .map(|(_, s)| s.timezone.as_str())
            .filter(|z| !z.is_empty())
            .collect();
        z.sort_unstable();
        z.dedup();
        z
    };
    let rows = tx
        .query(
            "SELECT name FROM pg_timezone_names WHERE name = ANY($1)",
            &[&zones],
        )
        .await
        .map_err(pg)
        .context("cannot read pg_timezone_names")?;
    let valid: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    for (_, s) in inv.sites() {
        if !s.timezone.is_empty() && !valid.contains(&s.timezone) {
            problems.push(Problem::new(
                &join(&s.path, "timezone"),
                format!(
                    "unknown time zone {:?} (expected an IANA name such as Europe/Brussels)",
                    s.timezone
                ),
            ));
        }
    }

    // Assets referred to but not declared must exist in the database.
    let in_file: HashSet<&str> = inv.assets().map(|(_, a)| a.external_id.as_str()).collect();
    let mut refs: Vec<(String, &str)> = Vec::new(); // (path, external id)
    for (_, a) in inv.assets() {
        if let Some(p) = a.parent.as_deref() {
            refs.push((join(&a.path, "parent"), p));
        }
    }
    for c in inv.connections() {
        refs.push((join(&c.path, "source"), &c.source));
        refs.push((join(&c.path, "target"), &c.target));
    }
    refs.retain(|(_, e)| !e.trim().is_empty() && !in_file.contains(e));
    let wanted: Vec<&str> = refs.iter().map(|(_, e)| *e).collect();
    let rows = tx
        .query(
            "SELECT external_id, id FROM assets WHERE external_id = ANY($1)",
            &[&wanted],
        )
        .await
        .map_err(pg)
        .context("cannot look up assets")?;
    let assets: HashMap<String, Uuid> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (path, e) in &refs {
        if !assets.contains_key(*e) {
            problems.push(Problem::new(
                path,
                format!("no asset with external_id {e:?} in the file or the database"),
            ));
        }
    }

    // Parent cycles through the database: the ancestors of the database parents the file names.
    let db_parents: Vec<Uuid> = inv
        .assets()
        .filter_map(|(_, a)| a.parent.as_deref())
        .filter_map(|p| assets.get(p).copied())
        .collect();
    let rows = tx
        .query(
            "WITH RECURSIVE up (id, external_id, parent_asset_id) AS (
                 SELECT id, external_id, parent_asset_id FROM assets WHERE id = ANY($1)
               UNION
                 SELECT a.id, a.external_id, a.parent_asset_id
                 FROM assets a JOIN up ON a.id = up.parent_asset_id
             )
             SELECT id, external_id, parent_asset_id FROM up",
            &[&db_parents],
        )
        .await
        .map_err(pg)
        .context("cannot read the asset hierarchy")?;
    let key_of_id: HashMap<Uuid, String> = rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            let ext: Option<String> = r.get(1);
            (id, ext.unwrap_or_else(|| format!("id:{id}")))
        })
        .collect();
    let mut graph: HashMap<String, Option<String>> = HashMap::new();
    for r in &rows {
        let id: Uuid = r.get(0);
        let parent: Option<Uuid> = r.get(2);
        let key = key_of_id[&id].clone();
        graph.insert(key, parent.and_then(|p| key_of_id.get(&p).cloned()));
    }
    let mut starts = Vec::new();
    let mut path_of: HashMap<&str, &str> = HashMap::new();
    for (_, a) in inv.assets() {
        if a.external_id.is_empty() {
            continue;
        }
        let parent = a
            .parent
            .clone()
            .filter(|p| *p != a.external_id && !p.trim().is_empty());
        graph.insert(a.external_id.clone(), parent);
        starts.push(a.external_id.as_str());
        path_of.entry(&a.external_id).or_insert(&a.path);
    }
    for cycle in cycles(&graph, &starts) {
        let path = path_of.get(cycle[0].as_str()).copied().unwrap_or("");
        let mut around = cycle.clone();
        around.push(cycle[0].clone());
        problems.push(Problem::new(
            &join(path, "parent"),
            format!("parents form a cycle: {}", around.join(" → ")),
        ));
    }

    Ok(Known {
        asset_types,
        assets,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing: one upsert per entity, parents first, comparing before updating.

/// One column and its new value. `ty` is the SQL type the parameter is cast to; enum values
/// travel as text and are cast (`$1::text::meter_category_enum`).
struct Col {
    column: &'static str,
    /// The file's key for it, for the plan.
    field: &'static str,
    ty: &'static str,
    value: Box<dyn ToSql + Sync + Send>,
}

fn col(column: &'static str, ty: &'static str, value: impl ToSql + Sync + Send + 'static) -> Col {
    Col {
        column,
        field: column,
        ty,
        value: Box::new(value),
    }
}

impl Col {
    fn named(mut self, field: &'static str) -> Self {
        self.field = field;
        self
    }

    fn placeholder(&self, n: usize) -> String {
        if self.ty.ends_with("_enum") {
            format!("${n}::text::{}", self.ty)
        } else {
            format!("${n}::{}", self.ty)
        }
    }
}

/// `active` only when the file says so (see the module doc).
fn push_active(cols: &mut Vec<Col>, active: Option<bool>) {
    if let Some(a) = active {
        cols.push(col("active", "bool", a));
    }
}

struct Upsert {
    table: &'static str,
    /// The columns that identify the row.
    key: Vec<Col>,
    /// The parent column a row may be moved along, with SQL (over `t`) naming its current
    /// parent for the plan.
    parent: Option<(Col, &'static str)>,
    cols: Vec<Col>,
}

enum Outcome {
    Created,
    Unchanged,
    Changed {
        fields: Vec<&'static str>,
        moved_from: Option<String>,
    },
}

impl Upsert {
    /// Finds the row by its key (locking it), inserts it when absent, and otherwise updates only
    /// the columns whose values differ; an identical row is not touched at all.
    async fn run(self, tx: &Transaction<'_>) -> anyhow::Result<(Uuid, Outcome)> {
        let table = self.table;
        let mut all: Vec<&Col> = self.key.iter().collect();
        if let Some((p, _)) = &self.parent {
            all.push(p);
        }
        all.extend(self.cols.iter());
        let params: Vec<&(dyn ToSql + Sync)> = all.iter().map(|c| c.value.as_ref() as _).collect();
        let placeholders: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(i, c)| c.placeholder(i + 1))
            .collect();
        let nkey = self.key.len();

        let wheres: Vec<String> = self
            .key
            .iter()
            .zip(&placeholders)
            .map(|(c, ph)| format!("t.{} = {ph}", c.column))
            .collect();
        let mut select = vec![
            "t.id".to_string(),
            self.parent
                .as_ref()
                .map_or("NULL::text", |(_, label)| *label)
                .to_string(),
        ];
        select.extend(
            all[nkey..]
                .iter()
                .zip(&placeholders[nkey..])
                .map(|(c, ph)| format!("t.{} IS DISTINCT FROM {ph}", c.column)),
        );
        let sql = format!(
            "SELECT {} FROM {table} t WHERE {} FOR UPDATE",
            select.join(", "),
            wheres.join(" AND ")
        );
        let found = tx
            .query_opt(&sql, &params)
            .await
            .map_err(pg)
            .with_context(|| format!("cannot read {table}"))?;

        let Some(row) = found else {
            let columns: Vec<&str> = all.iter().map(|c| c.column).collect();
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES ({}) RETURNING id",
                columns.join(", "),
                placeholders.join(", ")
            );
            let row = tx
                .query_one(&sql, &params)
                .await
                .map_err(pg)
                .with_context(|| format!("cannot insert into {table}"))?;
            return Ok((row.get(0), Outcome::Created));
        };

        let id: Uuid = row.get(0);
        let mut changed: Vec<&Col> = Vec::new();
        let mut moved_from = None;
        for (i, c) in all[nkey..].iter().enumerate() {
            if row.get::<_, bool>(i + 2) {
                changed.push(c);
                let is_parent = i == 0 && self.parent.is_some();
                if is_parent {
                    let from: Option<String> = row.get(1);
                    moved_from = Some(from.unwrap_or_default());
                }
            }
        }
        if changed.is_empty() {
            return Ok((id, Outcome::Unchanged));
        }
        let sets: Vec<String> = changed
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = {}", c.column, c.placeholder(i + 2)))
            .collect();
        let sql = format!("UPDATE {table} SET {} WHERE id = $1", sets.join(", "));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id];
        params.extend(
            changed
                .iter()
                .map(|c| c.value.as_ref() as &(dyn ToSql + Sync)),
        );
        tx.execute(&sql, &params)
            .await
            .map_err(pg)
            .with_context(|| format!("cannot update {table}"))?;
        let parent_column = self.parent.as_ref().map(|(p, _)| p.column);
        let fields = changed
            .iter()
            .filter(|c| Some(c.column) != parent_column)
            .map(|c| c.field)
            .collect();
        Ok((id, Outcome::Changed { fields, moved_from }))
    }
}

fn labelled(external_id: &str, name: &str) -> String {
    format!("{external_id} ({name})")
}

async fn apply(tx: &Transaction<'_>, inv: &Inventory, known: &Known) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();

    let mut portfolio_ids: HashMap<&str, Uuid> = HashMap::new();
    for p in &inv.portfolios {
        let mut cols = vec![
            col("description", "text", p.description.clone()),
            col("metadata", "jsonb", p.metadata.clone()),
        ];
        push_active(&mut cols, p.active);
        let (id, outcome) = Upsert {
            table: "portfolios",
            key: vec![col("name", "text", p.name.clone())],
            parent: None,
            cols,
        }
        .run(tx)
        .await?;
        portfolio_ids.insert(&p.name, id);
        plan.push(Kind::Portfolio, p.name.clone(), outcome);
    }

    // Keyed by path: two portfolios may each have a site of the same name.
    let mut site_ids: HashMap<&str, Uuid> = HashMap::new();
    for (p, s) in inv.sites() {
        let mut cols = vec![
            col("industry_type", "industry_type_enum", s.industry_type),
            col("location", "text", s.location.clone()),
            col("latitude", "float8", s.latitude),
            col("longitude", "float8", s.longitude),
            col("timezone", "text", s.timezone.clone()),
            col("metadata", "jsonb", s.metadata.clone()),
        ];
        push_active(&mut cols, s.active);
        let (id, outcome) = Upsert {
            table: "sites",
            key: vec![
                col("portfolio_id", "uuid", portfolio_ids[p.name.as_str()]),
                col("name", "text", s.name.clone()),
            ],
            parent: None,
            cols,
        }
        .run(tx)
        .await?;
        site_ids.insert(&s.path, id);
        plan.push(Kind::Site, format!("{} / {}", p.name, s.name), outcome);
    }

    let mut meter_ids: HashMap<&str, Uuid> = HashMap::new();
    for (s, m) in inv.meters() {
        let mut cols = vec![
            col("name", "text", m.name.clone()),
            col("category", "meter_category_enum", m.category),
            col(
                "reading_frequency",
                "reading_frequency_enum",
                m.reading_frequency,
            ),
            col("description", "text", m.description.clone()),
            col("metadata", "jsonb", m.metadata.clone()),
        ];
        push_active(&mut cols, m.active);
        let (id, outcome) = Upsert {
            table: "meters",
            key: vec![col("external_id", "text", m.external_id.clone())],
            parent: Some((
                col("site_id", "uuid", site_ids[s.path.as_str()]),
                "(SELECT p.name FROM sites p WHERE p.id = t.site_id)",
            )),
            cols,
        }
        .run(tx)
        .await?;
        meter_ids.insert(&m.external_id, id);
        plan.push(Kind::Meter, labelled(&m.external_id, &m.name), outcome);
    }

    let mut asset_ids: HashMap<&str, Uuid> = known
        .assets
        .iter()
        .map(|(e, id)| (e.as_str(), *id))
        .collect();
    let file_assets: Vec<(&MeterSpec, &AssetSpec)> = inv.assets().collect();
    for (m, a) in parents_first(&file_assets) {
        let parent = a.parent.as_deref().map(|p| asset_ids[p]);
        let asset_type = a.asset_type.as_deref().map(|t| known.asset_types[t]);
        let mut cols = vec![
            col("name", "text", a.name.clone()),
            col("parent_asset_id", "uuid", parent).named("parent"),
            col("asset_type_id", "uuid", asset_type).named("asset_type"),
            col("equipment", "text", a.equipment.clone()),
            col("manufacturer", "text", a.manufacturer.clone()),
            col("model", "text", a.model.clone()),
            col("rated_power_kw", "float8", a.rated_power_kw),
            col("description", "text", a.description.clone()),
            col("metadata", "jsonb", a.metadata.clone()),
        ];
        push_active(&mut cols, a.active);
        let (id, outcome) = Upsert {
            table: "assets",
            key: vec![col("external_id", "text", a.external_id.clone())],
            parent: Some((
                col("meter_id", "uuid", meter_ids[m.external_id.as_str()]),
                "(SELECT coalesce(p.external_id, p.name) FROM meters p WHERE p.id = t.meter_id)",
            )),
            cols,
        }
        .run(tx)
        .await?;
        asset_ids.insert(&a.external_id, id);
        plan.push(Kind::Asset, labelled(&a.external_id, &a.name), outcome);
    }

    let mut source_ids: Vec<Uuid> = Vec::new();
    for (m, e) in inv.energy_sources() {
        let mut cols = vec![
            col("name", "text", e.name.clone()),
            col("kind", "energy_source_kind_enum", e.kind),
            col("capacity_kw", "float8", e.capacity_kw),
            col("storage_capacity_kwh", "float8", e.storage_capacity_kwh),
            col(
                "carbon_intensity_g_per_kwh",
                "float8",
                e.carbon_intensity_g_per_kwh,
            ),
            col("description", "text", e.description.clone()),
            col("metadata", "jsonb", e.metadata.clone()),
        ];
        push_active(&mut cols, e.active);
        let (id, outcome) = Upsert {
            table: "energy_sources",
            key: vec![col("external_id", "text", e.external_id.clone())],
            parent: Some((
                col("meter_id", "uuid", meter_ids[m.external_id.as_str()]),
                "(SELECT coalesce(p.external_id, p.name) FROM meters p WHERE p.id = t.meter_id)",
            )),
            cols,
        }
        .run(tx)
        .await?;
        source_ids.push(id);
        plan.push(
            Kind::EnergySource,
            labelled(&e.external_id, &e.name),
            outcome,
        );
    }

    let mut link_ids: Vec<Uuid> = Vec::new();
    for (s, g) in inv.grid_links() {
        let mut cols = vec![
            col("direction", "direction_enum", g.direction),
            col("capacity_kw", "float8", g.capacity_kw),
            col("provider", "text", g.provider.clone()),
            col("tariff_structure", "jsonb", g.tariff_structure.clone()),
            col("metadata", "jsonb", g.metadata.clone()),
        ];
        push_active(&mut cols, g.active);
        let (id, outcome) = Upsert {
            table: "grid_links",
            key: vec![
                col("site_id", "uuid", site_ids[s.path.as_str()]),
                col("name", "text", g.name.clone()),
            ],
            parent: None,
            cols,
        }
        .run(tx)
        .await?;
        link_ids.push(id);
        plan.push(Kind::GridLink, format!("{} / {}", s.name, g.name), outcome);
    }

    let mut connection_ids: Vec<Uuid> = Vec::new();
    for c in inv.connections() {
        let mut cols = vec![
            col("direction", "direction_enum", c.direction),
            col("description", "text", c.description.clone()),
            col("metadata", "jsonb", c.metadata.clone()),
        ];
        push_active(&mut cols, c.active);
        let (id, outcome) = Upsert {
            table: "asset_connections",
            key: vec![
                col("source_asset_id", "uuid", asset_ids[c.source.as_str()]),
                col("target_asset_id", "uuid", asset_ids[c.target.as_str()]),
                col("relationship", "relationship_enum", c.relationship),
            ],
            parent: None,
            cols,
        }
        .run(tx)
        .await?;
        connection_ids.push(id);
        plan.push(
            Kind::AssetConnection,
            format!("{} → {} ({})", c.source, c.target, c.relationship),
            outcome,
        );
    }

    // What the file's scope holds that the file does not name.
    let portfolios: Vec<Uuid> = portfolio_ids.values().copied().collect();
    let sites: Vec<Uuid> = site_ids.values().copied().collect();
    let meters: Vec<Uuid> = meter_ids.values().copied().collect();
    let file_asset_ids: Vec<Uuid> = file_assets
        .iter()
        .map(|(_, a)| asset_ids[a.external_id.as_str()])
        .collect();
    // Each query lists the rows of its kind under the file's parents ($1) that the file does not
    // name ($2). Portfolios have no parent: every other portfolio is listed ($1 is unused there,
    // kept so that all seven take the same two parameters).
    const LABEL: &str = "coalesce(external_id || ' (' || name || ')', name)";
    let queries: [(Kind, String, &Vec<Uuid>, &Vec<Uuid>); 7] = [
        (
            Kind::Portfolio,
            "SELECT name FROM portfolios WHERE cardinality($1::uuid[]) >= 0 AND NOT (id = ANY($2))
             ORDER BY 1"
                .into(),
            &portfolios,
            &portfolios,
        ),
        (
            Kind::Site,
            "SELECT p.name || ' / ' || s.name FROM sites s JOIN portfolios p ON p.id = s.portfolio_id
             WHERE s.portfolio_id = ANY($1) AND NOT (s.id = ANY($2)) ORDER BY 1"
                .into(),
            &portfolios,
            &sites,
        ),
        (
            Kind::Meter,
            format!(
                "SELECT {LABEL} FROM meters WHERE site_id = ANY($1) AND NOT (id = ANY($2)) ORDER BY 1"
            ),
            &sites,
            &meters,
        ),
        (
            Kind::Asset,
            format!(
                "SELECT {LABEL} FROM assets WHERE meter_id = ANY($1) AND NOT (id = ANY($2)) ORDER BY 1"
            ),
            &meters,
            &file_asset_ids,
        ),
        (
            Kind::EnergySource,
            format!(
                "SELECT {LABEL} FROM energy_sources WHERE meter_id = ANY($1) AND NOT (id = ANY($2))
                 ORDER BY 1"
            ),
            &meters,
            &source_ids,
        ),
        (
            Kind::GridLink,
            "SELECT s.name || ' / ' || g.name FROM grid_links g JOIN sites s ON s.id = g.site_id
             WHERE g.site_id = ANY($1) AND NOT (g.id = ANY($2)) ORDER BY 1"
                .into(),
            &sites,
            &link_ids,
        ),
        (
            Kind::AssetConnection,
            "SELECT coalesce(a.external_id, a.name) || ' → ' || coalesce(b.external_id, b.name)
                    || ' (' || c.relationship || ')'
             FROM asset_connections c
             JOIN assets a ON a.id = c.source_asset_id
             JOIN assets b ON b.id = c.target_asset_id
             WHERE (c.source_asset_id = ANY($1) OR c.target_asset_id = ANY($1))
               AND NOT (c.id = ANY($2)) ORDER BY 1"
                .into(),
            &file_asset_ids,
            &connection_ids,
        ),
    ];
    for (kind, sql, scope, named) in queries {
        let rows = tx
            .query(&sql, &[scope, named])
            .await
            .map_err(pg)
            .with_context(|| format!("cannot list the {} left", kind.plural()))?;
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if !names.is_empty() {
            plan.left.insert(kind, names);
        }
    }
    Ok(plan)
}

/// The file's assets ordered so that a parent declared in the file comes before its children
/// (it must exist before a child can point at it). The parent links are acyclic by then.
fn parents_first<'a>(
    assets: &[(&'a MeterSpec, &'a AssetSpec)],
) -> Vec<(&'a MeterSpec, &'a AssetSpec)> {
    let index: HashMap<&str, usize> = assets
        .iter()
        .enumerate()
        .map(|(i, (_, a))| (a.external_id.as_str(), i))
        .collect();
    let mut placed = vec![false; assets.len()];
    let mut out = Vec::with_capacity(assets.len());
    for start in 0..assets.len() {
        let mut chain = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            if placed[i] || chain.contains(&i) {
                break;
            }
            chain.push(i);
            at = assets[i]
                .1
                .parent
                .as_deref()
                .and_then(|p| index.get(p).copied());
        }
        for &i in chain.iter().rev() {
            placed[i] = true;
            out.push(assets[i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(yaml: &str) -> Vec<String> {
        let value = parse(yaml, Format::Yaml).expect("parses");
        let mut problems = Vec::new();
        let inv = decode(&value, &mut problems);
        check_file(&inv, &mut problems);
        problems.iter().map(Problem::to_string).collect()
    }

    /// One site with one meter; `extra` is spliced into the meter, indented for it.
    fn with_meter(extra: &str) -> String {
        format!(
            "portfolios:\n- name: P\n  sites:\n  - name: S\n    industry_type: datacenter\n    meters:\n    - external_id: m1\n      name: M\n      category: CONS\n{extra}"
        )
    }

    #[test]
    fn enum_labels_match_the_schema() {
        let sql = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/0001_hierarchy.sql"
        ));
        let labels = |ty: &str| -> Vec<String> {
            let start = sql
                .find(&format!("CREATE TYPE {ty} AS ENUM ("))
                .unwrap_or_else(|| panic!("{ty} in the schema"));
            let rest = &sql[start..];
            let body = &rest[rest.find('(').unwrap() + 1..rest.find(");").unwrap()];
            body.split(',')
                .map(|l| l.trim().trim_matches('\'').to_string())
                .collect()
        };
        let cases: [(&str, &[&str]); 6] = [
            ("industry_type_enum", INDUSTRY_TYPES),
            ("meter_category_enum", METER_CATEGORIES),
            ("reading_frequency_enum", READING_FREQUENCIES),
            ("energy_source_kind_enum", ENERGY_SOURCE_KINDS),
            ("direction_enum", DIRECTIONS),
            ("relationship_enum", RELATIONSHIPS),
        ];
        for (ty, ours) in cases {
            assert_eq!(labels(ty), ours, "{ty}");
        }
    }

    #[test]
    fn a_well_formed_file_has_no_problems() {
        let yaml = with_meter(
            "      assets:\n      - external_id: a1\n        name: A\n      - external_id: a2\n        name: B\n        parent: a1\n",
        );
        assert_eq!(problems_of(&yaml), Vec::<String>::new());
    }

    #[test]
    fn each_rule_names_its_path() {
        let cases: &[(&str, &str)] = &[
            (
                "      categroy: CONS\n",
                "portfolios[0].sites[0].meters[0].categroy: unknown field",
            ),
            (
                "      reading_frequency: 2min\n",
                "meters[0].reading_frequency: \"2min\" is not one of",
            ),
            (
                "      energy_sources:\n      - external_id: e1\n        name: E\n        kind: Solar\n",
                "energy_sources[0].kind: \"Solar\" is not one of solar, wind, battery, grid, generator, chp, hydrogen, hydro, geothermal, other (did you mean \"solar\"?)",
            ),
            (
                "      energy_sources:\n      - external_id: e1\n        name: E\n        kind: solar\n        capacity_kw: -1\n",
                "energy_sources[0].capacity_kw: must be ≥ 0, found -1",
            ),
            (
                "      energy_sources:\n      - external_id: e1\n        name: E\n        kind: solar\n        capacity_kw: .nan\n",
                "energy_sources[0].capacity_kw: must be a finite number",
            ),
            (
                "      assets:\n      - external_id: a1\n        name: '  '\n",
                "assets[0].name: must not be empty",
            ),
            (
                "      assets:\n      - external_id: 12345\n        name: A\n",
                "assets[0].external_id: expected a string, found the number 12345; quote it",
            ),
            (
                "      assets:\n      - external_id: a/1\n        name: A\n",
                "assets[0].external_id: \"a/1\" cannot be used in an MQTT topic",
            ),
            (
                "      assets:\n      - external_id: a1\n        name: A\n        rated_power_kw: '5'\n",
                "assets[0].rated_power_kw: expected a number, found a string",
            ),
            (
                "      assets:\n      - external_id: a1\n        name: A\n        parent: a1\n",
                "assets[0].parent: an asset cannot be its own parent",
            ),
            (
                "      assets:\n      - external_id: a1\n        name: A\n      - external_id: a1\n        name: B\n",
                "assets[1].external_id: duplicate asset external_id \"a1\" (first at portfolios[0].sites[0].meters[0].assets[0])",
            ),
            (
                "      metadata: {x: .inf}\n",
                "meters[0].metadata.x: must be a finite number",
            ),
            (
                "      metadata: [1]\n",
                "meters[0].metadata: expected a mapping",
            ),
            (
                "      active: yes please\n",
                "meters[0].active: expected true or false",
            ),
            (
                "    - name: M2\n",
                "meters[1].external_id: missing (required)",
            ),
            (
                "    - name: M2\n",
                "meters[1].category: missing (required; one of CONS",
            ),
            (
                "    latitude: 91\n",
                "sites[0].latitude: must be between -90 and 90, found 91",
            ),
            (
                "    longitude: -181\n",
                "sites[0].longitude: must be between -180 and 180",
            ),
            (
                "    asset_connections:\n    - source: x\n      target: x\n      relationship: energy_flow\n",
                "asset_connections[0].target: an asset cannot be connected to itself",
            ),
            (
                "    asset_connections:\n    - source: x\n      target: y\n      relationship: flows\n",
                "asset_connections[0].relationship: \"flows\" is not one of energy_flow",
            ),
            (
                "    grid_links:\n    - name: G\n      direction: bi\n    - name: G\n      direction: in\n",
                "grid_links[1].name: duplicate grid link name \"G\" in site \"S\"",
            ),
            (
                "  - name: S\n    industry_type: datacenter\n",
                "sites[1].name: duplicate site name \"S\"",
            ),
            (
                "- name: P\n",
                "portfolios[1].name: duplicate portfolio name \"P\"",
            ),
            (
                "extra: 1\n",
                "extra: unknown field; expected one of portfolios",
            ),
        ];
        for (extra, needle) in cases {
            let got = problems_of(&with_meter(extra));
            assert!(
                got.iter().any(|p| p.contains(needle)),
                "{needle:?} not in {got:#?}"
            );
        }
    }

    #[test]
    fn text_over_its_columns_limit_is_a_problem() {
        let at_limit = with_meter(&format!(
            "      description: {}\n      assets:\n      - external_id: {}\n        name: A\n",
            "é".repeat(crud::TEXT_MAX_CHARS),
            "a".repeat(crud::NAME_MAX_CHARS)
        ));
        assert_eq!(problems_of(&at_limit), Vec::<String>::new());
        let over = with_meter(&format!(
            "      description: {}\n      assets:\n      - external_id: {}\n        name: A\n        equipment: {}\n    timezone: {}\n",
            "é".repeat(crud::TEXT_MAX_CHARS + 1),
            "a".repeat(crud::NAME_MAX_CHARS + 1),
            "q".repeat(crud::NAME_MAX_CHARS + 1),
            "Z".repeat(crud::CODE_MAX_CHARS + 1),
        ));
        let m = "portfolios[0].sites[0].meters[0]";
        assert_eq!(
            problems_of(&over),
            [
                "portfolios[0].sites[0].timezone: must be at most 64 characters, found 65"
                    .to_string(),
                format!("{m}.description: must be at most 10000 characters, found 10001"),
                format!("{m}.assets[0].external_id: must be at most 200 characters, found 201"),
                format!("{m}.assets[0].equipment: must be at most 200 characters, found 201"),
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let yaml =
            with_meter("      categroy: X\n      reading_frequency: 2min\n      colour: red\n");
        let got = problems_of(&yaml);
        assert_eq!(got.len(), 3, "{got:#?}");
    }

    #[test]
    fn shapes_that_are_not_mappings_or_lists_are_refused() {
        let cases = [
            ("[]", "(top level): expected a mapping, found a list"),
            ("{}", "portfolios: missing (required)"),
            (
                "portfolios: 3",
                "portfolios: expected a list, found the number 3",
            ),
            (
                "portfolios: [3]",
                "portfolios[0]: expected a mapping, found the number 3",
            ),
        ];
        for (yaml, needle) in cases {
            let got = problems_of(yaml);
            assert_eq!(got, vec![needle.to_string()], "{yaml}");
        }
    }

    #[test]
    fn json_keeps_the_same_paths() {
        let value = parse(
            r#"{"portfolios": [{"name": "P", "sites": [{"name": "S", "industry_type": "mine"}]}]}"#,
            Format::Json,
        )
        .expect("parses");
        let mut problems = Vec::new();
        decode(&value, &mut problems);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .to_string()
                .starts_with("portfolios[0].sites[0].industry_type: \"mine\" is not one of")
        );
    }

    #[test]
    fn yaml_merge_keys_are_applied() {
        let yaml = "defaults: &d\n  owner: ops\nportfolios:\n- name: P\n  metadata:\n    <<: *d\n    tier: 3\n";
        let value = parse(yaml, Format::Yaml).expect("parses");
        let mut problems = Vec::new();
        let inv = decode(&value, &mut problems);
        // The anchor's home is an unknown top-level key, which is reported; the merge worked.
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            inv.portfolios[0].metadata,
            serde_json::json!({"owner": "ops", "tier": 3})
        );
    }

    #[test]
    fn cycles_are_found_once_each_whatever_the_start() {
        let graph = |edges: &[(&str, Option<&str>)]| -> HashMap<String, Option<String>> {
            edges
                .iter()
                .map(|(a, b)| (a.to_string(), b.map(str::to_string)))
                .collect()
        };
        let g = graph(&[
            ("a", Some("b")),
            ("b", Some("c")),
            ("c", Some("a")),
            ("d", Some("a")),
        ]);
        assert_eq!(cycles(&g, &["d", "a", "b", "c"]), vec![vec!["a", "b", "c"]]);
        let g = graph(&[("a", Some("b")), ("b", None), ("c", Some("b"))]);
        assert!(cycles(&g, &["a", "b", "c"]).is_empty());
        // Through a database asset that is not in the file.
        let g = graph(&[("a", Some("id:1")), ("id:1", Some("a"))]);
        assert_eq!(cycles(&g, &["a"]), vec![vec!["a", "id:1"]]);
    }

    #[test]
    fn parents_are_written_before_their_children() {
        let yaml = with_meter(
            "      assets:\n      - {external_id: c, name: C, parent: b}\n      - {external_id: b, name: B, parent: a}\n      - {external_id: a, name: A}\n      - {external_id: x, name: X, parent: elsewhere}\n",
        );
        let value = parse(&yaml, Format::Yaml).expect("parses");
        let mut problems = Vec::new();
        let inv = decode(&value, &mut problems);
        let assets: Vec<_> = inv.assets().collect();
        let order: Vec<&str> = parents_first(&assets)
            .iter()
            .map(|(_, a)| a.external_id.as_str())
            .collect();
        assert_eq!(order, ["a", "b", "c", "x"]);
    }

    #[test]
    fn problems_come_in_file_order() {
        let mut paths = vec!["a[10].x", "a[2].y", "", "a[2].b[1]", "a[2]"];
        paths.sort_by_key(|p| file_order(p));
        assert_eq!(paths, ["", "a[2]", "a[2].b[1]", "a[2].y", "a[10].x"]);
    }

    #[test]
    fn the_file_type_comes_from_the_extension() {
        let cases = [
            ("x.yaml", Some(Format::Yaml)),
            ("x.YML", Some(Format::Yaml)),
            ("x.json", Some(Format::Json)),
            ("x.toml", None),
            ("x", None),
        ];
        for (path, format) in cases {
            assert_eq!(Format::of(Path::new(path)).ok(), format, "{path}");
        }
    }
}
