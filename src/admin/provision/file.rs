//! Reading the inventory file: YAML or JSON into one tree, then into typed specs, collecting
//! every problem on the way. Each value is checked by its column's rules in
//! [`schema`](crate::admin::schema) (text limits, bounds, enum labels), the same rules the API
//! applies.

use std::path::Path;

use anyhow::anyhow;
use serde_json::Value as Json;
use yaml_serde::Value as Yaml;

use super::plan::Problem;
use crate::admin::schema::{self, Breach, Column, Kind, Param};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Yaml,
    Json,
}

impl Format {
    pub(super) fn of(path: &Path) -> anyhow::Result<Self> {
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
pub(super) fn parse(text: &str, format: Format) -> anyhow::Result<Yaml> {
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

pub(super) struct Inventory {
    pub(super) portfolios: Vec<PortfolioSpec>,
}

/// The columns of a row that only the schema describes: every writable column of its table
/// but its keys, names, references, `metadata` and `active` (the fields beside it), decoded by
/// its kind and checked by its rules ([`Fields::columns`]).
pub(super) type Columns = Vec<(&'static Column, Param)>;

pub(super) struct PortfolioSpec {
    pub(super) path: String,
    pub(super) name: String,
    pub(super) metadata: Json,
    pub(super) active: Option<bool>,
    pub(super) columns: Columns,
    pub(super) sites: Vec<SiteSpec>,
}

pub(super) struct SiteSpec {
    pub(super) path: String,
    pub(super) name: String,
    pub(super) industry_type: &'static str,
    pub(super) timezone: String,
    pub(super) metadata: Json,
    pub(super) active: Option<bool>,
    pub(super) columns: Columns,
    pub(super) meters: Vec<MeterSpec>,
    pub(super) grid_links: Vec<GridLinkSpec>,
    pub(super) asset_connections: Vec<ConnectionSpec>,
}

pub(super) struct MeterSpec {
    pub(super) path: String,
    pub(super) external_id: String,
    pub(super) name: String,
    pub(super) metadata: Json,
    pub(super) active: Option<bool>,
    pub(super) columns: Columns,
    pub(super) assets: Vec<AssetSpec>,
    pub(super) energy_sources: Vec<EnergySourceSpec>,
}

pub(super) struct AssetSpec {
    pub(super) path: String,
    pub(super) external_id: String,
    pub(super) name: String,
    /// An asset type's code.
    pub(super) asset_type: Option<String>,
    /// The parent asset's external id.
    pub(super) parent: Option<String>,
    pub(super) metadata: Json,
    pub(super) active: Option<bool>,
    pub(super) columns: Columns,
}

pub(super) struct EnergySourceSpec {
    pub(super) path: String,
    pub(super) external_id: String,
    pub(super) name: String,
    pub(super) metadata: Json,
    pub(super) active: Option<bool>,
    pub(super) columns: Columns,
}

pub(super) struct GridLinkSpec {
    pub(super) path: String,
    pub(super) name: String,
    pub(super) metadata: Json,
    pub(super) active: Option<bool>,
    pub(super) columns: Columns,
}

pub(super) struct ConnectionSpec {
    pub(super) path: String,
    /// The source asset's external id.
    pub(super) source: String,
    /// The target asset's external id.
    pub(super) target: String,
    pub(super) relationship: &'static str,
    pub(super) metadata: Json,
    pub(super) active: Option<bool>,
    pub(super) columns: Columns,
}

impl Inventory {
    pub(super) fn sites(&self) -> impl Iterator<Item = (&PortfolioSpec, &SiteSpec)> {
        self.portfolios
            .iter()
            .flat_map(|p| p.sites.iter().map(move |s| (p, s)))
    }

    pub(super) fn meters(&self) -> impl Iterator<Item = (&SiteSpec, &MeterSpec)> {
        self.sites()
            .flat_map(|(_, s)| s.meters.iter().map(move |m| (s, m)))
    }

    pub(super) fn assets(&self) -> impl Iterator<Item = (&MeterSpec, &AssetSpec)> {
        self.meters()
            .flat_map(|(_, m)| m.assets.iter().map(move |a| (m, a)))
    }

    pub(super) fn energy_sources(&self) -> impl Iterator<Item = (&MeterSpec, &EnergySourceSpec)> {
        self.meters()
            .flat_map(|(_, m)| m.energy_sources.iter().map(move |e| (m, e)))
    }

    pub(super) fn grid_links(&self) -> impl Iterator<Item = (&SiteSpec, &GridLinkSpec)> {
        self.sites()
            .flat_map(|(_, s)| s.grid_links.iter().map(move |g| (s, g)))
    }

    pub(super) fn connections(&self) -> impl Iterator<Item = &ConnectionSpec> {
        self.sites().flat_map(|(_, s)| s.asset_connections.iter())
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
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

/// `provision`'s words for a breach of a column's rule (the API says the same rules its way).
fn breach_message(b: Breach) -> String {
    match b {
        Breach::TooLong { max, found } => {
            format!("must be at most {max} characters, found {found}")
        }
        Breach::Nul => "must not contain NUL characters".into(),
        Breach::Blank => "must not be empty".into(),
        Breach::NotFinite { found } => format!("must be a finite number, found {found}"),
        Breach::OutOfRange { min, max, found } => match (min, max) {
            (Some(min), Some(max)) => format!("must be between {min} and {max}, found {found}"),
            (Some(min), None) => format!("must be ≥ {min}, found {found}"),
            (None, Some(max)) => format!("must be ≤ {max}, found {found}"),
            (None, None) => format!("is out of range, found {found}"),
        },
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

    /// The column `key` is, when this mapping is a row and `key` names one of its columns.
    fn column(&self, key: &str) -> Option<&'static Column> {
        self.table.and_then(|t| schema::column(t, key))
    }

    /// Reports `s` when it breaks its column's rules (the API's: its text limit, no NUL, no
    /// blank name; [`Column::check_text`]), so the database never sees it.
    fn breaks_text_rules(&mut self, key: &str, s: &str) -> bool {
        let Some(breach) = self.column(key).and_then(|c| c.check_text(s).err()) else {
            return false;
        };
        self.problem(key, breach_message(breach));
        true
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
            Yaml::String(s) if self.breaks_text_rules(key, s) => None,
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
            Some(Yaml::String(s)) if self.breaks_text_rules(key, s) => String::new(),
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

    /// One of the labels of the enum column `key`; `default` when absent (required when there
    /// is none). Empty when wrong: the problem is then already reported.
    fn label(&mut self, key: &'static str, default: Option<&'static str>) -> &'static str {
        let column = self.column(key);
        let allowed = column.map_or(&[][..], Column::labels);
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
        if let Some(label) = column.and_then(|c| c.check_label(s)) {
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

    /// A number for the float column `key`, finite and within the column's bounds
    /// ([`Column::check_number`]).
    fn number(&mut self, key: &'static str) -> Option<f64> {
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
        match self.column(key).map(|c| c.check_number(x)) {
            Some(Err(breach)) => {
                self.problem(key, breach_message(breach));
                None
            }
            _ => Some(x),
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

    /// The schema's default of column `key`, as text; empty when it has none.
    fn default_of(&self, key: &str) -> String {
        self.column(key)
            .and_then(|c| c.default)
            .unwrap_or_default()
            .to_string()
    }

    /// Every writable column of the row's table that only the schema describes, decoded by its
    /// kind and checked by its rules, under the key of its name; a key left out is the column's
    /// default (NULL when it has none; an enum without one is required). Not here: the columns
    /// in `own` (decoded by the caller: keys, names), references (uuid columns: the file names
    /// them by key), `metadata` and `active` (the spec's own fields).
    fn columns(&mut self, own: &[&str]) -> Columns {
        let Some(table) = self.table.and_then(schema::table) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for col in table.columns {
            let skipped = !col.writable
                || own.contains(&col.name)
                || ["metadata", "active"].contains(&col.name)
                || matches!(col.kind, Kind::Uuid { .. } | Kind::Timestamp);
            if skipped {
                continue;
            }
            let default = || col.default.map(str::to_string);
            let param = match col.kind {
                Kind::Text { .. } => self.text(col.name).or_else(default),
                Kind::Float { .. } => self
                    .number(col.name)
                    .map(schema::float_param)
                    .or_else(default),
                Kind::Enum { .. } => Some(self.label(col.name, col.default).to_string()),
                Kind::Object => Some(self.object(col.name).to_string()),
                Kind::Bool => self
                    .boolean(col.name)
                    .map(|b| b.to_string())
                    .or_else(default),
                Kind::Uuid { .. } | Kind::Timestamp => continue,
            };
            out.push((col, param));
        }
        out
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

pub(super) fn decode(root: &Yaml, problems: &mut Vec<Problem>) -> Inventory {
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
    let columns = f.columns(&["name"]);
    let metadata = f.object("metadata");
    let active = f.boolean("active");
    let sites = f.list("sites", false);
    f.finish();
    PortfolioSpec {
        path,
        name,
        metadata,
        active,
        columns,
        sites: sites
            .into_iter()
            .map(|(path, v)| site(v, path, problems))
            .collect(),
    }
}

fn site(v: &Yaml, path: String, problems: &mut Vec<Problem>) -> SiteSpec {
    let mut f = Fields::row("sites", v, path.clone(), problems);
    let name = f.required("name");
    // Required in a file, though the schema has a default: an inventory says what a site is.
    let industry_type = f.label("industry_type", None);
    let timezone = match f.text("timezone") {
        Some(tz) if tz.trim().is_empty() => {
            f.problem("timezone", "must not be empty");
            String::new()
        }
        Some(tz) => tz,
        None => f.default_of("timezone"),
    };
    let columns = f.columns(&["name", "industry_type", "timezone"]);
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
        timezone,
        metadata,
        active,
        columns,
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
    let columns = f.columns(&["external_id", "name"]);
    let metadata = f.object("metadata");
    let active = f.boolean("active");
    let assets = f.list("assets", false);
    let sources = f.list("energy_sources", false);
    f.finish();
    MeterSpec {
        path,
        external_id,
        name,
        metadata,
        active,
        columns,
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
        columns: f.columns(&["external_id", "name"]),
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
        columns: f.columns(&["external_id", "name"]),
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
        columns: f.columns(&["name"]),
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
        relationship: f.label("relationship", None),
        columns: f.columns(&["relationship"]),
        metadata: f.object("metadata"),
        active: f.boolean("active"),
        path,
    };
    f.finish();
    spec
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::admin::provision::check::check_file;

    fn problems_of(yaml: &str) -> Vec<String> {
        let value = parse(yaml, Format::Yaml).expect("parses");
        let mut problems = Vec::new();
        let inv = decode(&value, &mut problems);
        check_file(&inv, &mut problems);
        problems.iter().map(Problem::to_string).collect()
    }

    /// One site with one meter; `extra` is spliced into the meter, indented for it.
    pub(in crate::admin::provision) fn with_meter(extra: &str) -> String {
        format!(
            "portfolios:\n- name: P\n  sites:\n  - name: S\n    industry_type: datacenter\n    meters:\n    - external_id: m1\n      name: M\n      category: CONS\n{extra}"
        )
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
            "é".repeat(schema::TEXT_MAX_CHARS),
            "a".repeat(schema::NAME_MAX_CHARS)
        ));
        assert_eq!(problems_of(&at_limit), Vec::<String>::new());
        let over = with_meter(&format!(
            "      description: {}\n      assets:\n      - external_id: {}\n        name: A\n        equipment: {}\n    timezone: {}\n",
            "é".repeat(schema::TEXT_MAX_CHARS + 1),
            "a".repeat(schema::NAME_MAX_CHARS + 1),
            "q".repeat(schema::NAME_MAX_CHARS + 1),
            "Z".repeat(schema::CODE_MAX_CHARS + 1),
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
