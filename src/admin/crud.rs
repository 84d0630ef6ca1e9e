//! Create, read, list, update and delete for every table of the hierarchy, from one set of
//! generic handlers driven by static table descriptions ([`TABLES`]). The same descriptions
//! validate input, build the SQL and generate the OpenAPI document.
//!
//! SQL is built only from the static descriptions; every value from a client is a bound
//! parameter, passed as text and cast to the column's type (`$1::text::meter_category_enum`)
//! after it has been validated here. Rows come back as `to_jsonb(t)`, so the JSON field names are
//! the column names and no per-table Rust mapping exists.

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{AdminState, ApiError, JsonObject, json_type};
use crate::db::pg_error_message;

/// Rows per page of a list when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest `limit` a list accepts.
pub const MAX_LIMIT: i64 = 1000;

/// The type of a column, as far as validation and casting need to know.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `text`; `non_empty`: the schema CHECKs `length(btrim(x)) > 0`. `max_chars`: at most
    /// that many characters (Unicode code points: PostgreSQL's `char_length`, JSON Schema's
    /// `maxLength`); the schema's copy is a `{table}_{column}_length` CHECK of
    /// `migrations/0005_text_limits.sql` (an integration test compares the two).
    Text {
        non_empty: bool,
        max_chars: usize,
    },
    /// `uuid`; `refers_to`: the table of a foreign key (such columns are list filters).
    Uuid {
        refers_to: Option<&'static str>,
    },
    /// A PostgreSQL enum; the labels are those of `migrations/0001_hierarchy.sql` (an
    /// integration test compares them with the database).
    Enum {
        sql_type: &'static str,
        labels: &'static [&'static str],
    },
    /// `double precision`, finite and within the schema's CHECK bounds.
    Float {
        min: Option<f64>,
        max: Option<f64>,
    },
    Bool,
    /// `jsonb` holding a JSON object (`metadata`, `tariff_structure`).
    Object,
    /// `timestamptz`, maintained by the database.
    Timestamp,
}

impl Kind {
    fn sql_type(self) -> &'static str {
        match self {
            Kind::Text { .. } => "text",
            Kind::Uuid { .. } => "uuid",
            Kind::Enum { sql_type, .. } => sql_type,
            Kind::Float { .. } => "double precision",
            Kind::Bool => "boolean",
            Kind::Object => "jsonb",
            Kind::Timestamp => "timestamptz",
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// May be `null` (absent from a create, or cleared with `null` in a patch).
    pub nullable: bool,
    /// Must be given on create: NOT NULL without a default.
    pub required: bool,
    /// Clients may set it; `id`, `created_at` and `updated_at` belong to the database.
    pub writable: bool,
}

impl Column {
    /// A writable NOT NULL column with a default.
    const fn new(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            nullable: false,
            required: false,
            writable: true,
        }
    }
    const fn required(self) -> Self {
        Self {
            required: true,
            ..self
        }
    }
    const fn nullable(self) -> Self {
        Self {
            nullable: true,
            ..self
        }
    }
    const fn read_only(self) -> Self {
        Self {
            writable: false,
            ..self
        }
    }

    /// Columns a list can be filtered on: foreign keys, enums and booleans (`active`).
    fn is_filter(&self) -> bool {
        matches!(
            self.kind,
            Kind::Uuid { refers_to: Some(_) } | Kind::Enum { .. } | Kind::Bool
        )
    }
}

/// A rule across columns or rows, checked before writing.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// Two columns must hold different values (an asset connected to itself). Checked when
    /// both are in the request; the schema's CHECK catches a patch that gives only one.
    Distinct {
        a: &'static str,
        b: &'static str,
        message: &'static str,
    },
    /// A column referring to the same table must not form a cycle (a parent-asset chain).
    /// Every writer of the column holds the advisory lock `lock` ([`crate::locks`]) from its
    /// cycle check to its commit.
    Acyclic { column: &'static str, lock: i64 },
}

/// One table of the API.
#[derive(Debug)]
pub struct Table {
    /// The SQL table.
    pub name: &'static str,
    /// The URL segment under `/api/v1/`.
    pub path: &'static str,
    /// One row, for messages and the OpenAPI schema name: "meter".
    pub noun: &'static str,
    pub columns: &'static [Column],
    /// Reference data: list and get only.
    pub read_only: bool,
    pub rules: &'static [Rule],
}

impl Table {
    fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Text limits, in characters. Names, titles, external ids and codes sit in unique indexes,
/// where PostgreSQL refuses an entry of more than about 2,700 bytes: 200 characters of up to
/// 4 bytes each stay well below that.
pub const NAME_MAX_CHARS: usize = 200;
/// Short identifiers: a time zone (the longest IANA name has 32 characters), a currency code.
pub const CODE_MAX_CHARS: usize = 64;
/// Free text: descriptions.
pub const TEXT_MAX_CHARS: usize = 10_000;

const fn text(max_chars: usize) -> Kind {
    Kind::Text {
        non_empty: false,
        max_chars,
    }
}
const fn name_text(max_chars: usize) -> Kind {
    Kind::Text {
        non_empty: true,
        max_chars,
    }
}
const fn fk(table: &'static str) -> Kind {
    Kind::Uuid {
        refers_to: Some(table),
    }
}
const fn float_min0() -> Kind {
    Kind::Float {
        min: Some(0.0),
        max: None,
    }
}
const fn enumeration(sql_type: &'static str, labels: &'static [&'static str]) -> Kind {
    Kind::Enum { sql_type, labels }
}

const ID: Column = Column::new("id", Kind::Uuid { refers_to: None }).read_only();
const METADATA: Column = Column::new("metadata", Kind::Object);
const ACTIVE: Column = Column::new("active", Kind::Bool);
const CREATED_AT: Column = Column::new("created_at", Kind::Timestamp).read_only();
const UPDATED_AT: Column = Column::new("updated_at", Kind::Timestamp).read_only();

pub const DIRECTION: &[&str] = &["in", "out", "bi"];
pub const RELATIONSHIP: &[&str] = &["energy_flow", "data_flow", "dependency"];
pub const INDUSTRY_TYPE: &[&str] = &[
    "biotech",
    "datacenter",
    "logistics",
    "manufacturing",
    "pharmaceutical",
    "food_beverage",
    "chemicals",
    "automotive",
    "retail",
    "healthcare",
    "education",
    "hospitality",
    "office",
    "warehouse",
    "agriculture",
    "utilities",
    "residential",
    "other",
];
pub const METER_CATEGORY: &[&str] = &["CONS", "PROD", "INJ", "STOR"];
pub const READING_FREQUENCY: &[&str] = &["1min", "5min", "15min", "hourly", "daily"];
pub const ENERGY_SOURCE_KIND: &[&str] = &[
    "solar",
    "wind",
    "battery",
    "grid",
    "generator",
    "chp",
    "hydrogen",
    "hydro",
    "geothermal",
    "other",
];
pub const RECOMMENDATION_CATEGORY: &[&str] = &[
    "efficiency",
    "renewable",
    "storage",
    "demand_response",
    "tariff",
    "maintenance",
    "other",
];
pub const RECOMMENDATION_STATUS: &[&str] = &[
    "open",
    "accepted",
    "in_progress",
    "implemented",
    "dismissed",
];

/// Every table of the API, in the order of the hierarchy (and of the OpenAPI document).
pub static TABLES: &[Table] = &[
    Table {
        name: "portfolios",
        path: "portfolios",
        noun: "portfolio",
        read_only: false,
        rules: &[],
        columns: &[
            ID,
            Column::new("name", name_text(NAME_MAX_CHARS)).required(),
            Column::new("description", text(TEXT_MAX_CHARS)).nullable(),
            METADATA,
            ACTIVE,
            CREATED_AT,
            UPDATED_AT,
        ],
    },
    Table {
        name: "sites",
        path: "sites",
        noun: "site",
        read_only: false,
        rules: &[],
        columns: &[
            ID,
            Column::new("portfolio_id", fk("portfolios")).required(),
            Column::new("name", name_text(NAME_MAX_CHARS)).required(),
            Column::new(
                "industry_type",
                enumeration("industry_type_enum", INDUSTRY_TYPE),
            ),
            Column::new("location", text(NAME_MAX_CHARS)).nullable(),
            Column::new(
                "latitude",
                Kind::Float {
                    min: Some(-90.0),
                    max: Some(90.0),
                },
            )
            .nullable(),
            Column::new(
                "longitude",
                Kind::Float {
                    min: Some(-180.0),
                    max: Some(180.0),
                },
            )
            .nullable(),
            Column::new("timezone", text(CODE_MAX_CHARS)),
            METADATA,
            ACTIVE,
            CREATED_AT,
            UPDATED_AT,
        ],
    },
    Table {
        name: "meters",
        path: "meters",
        noun: "meter",
        read_only: false,
        rules: &[],
        columns: &[
            ID,
            Column::new("site_id", fk("sites")).required(),
            Column::new("name", name_text(NAME_MAX_CHARS)).required(),
            Column::new("external_id", name_text(NAME_MAX_CHARS)).nullable(),
            Column::new(
                "category",
                enumeration("meter_category_enum", METER_CATEGORY),
            )
            .required(),
            Column::new(
                "reading_frequency",
                enumeration("reading_frequency_enum", READING_FREQUENCY),
            ),
            Column::new("description", text(TEXT_MAX_CHARS)).nullable(),
            METADATA,
            ACTIVE,
            CREATED_AT,
            UPDATED_AT,
        ],
    },
    Table {
        name: "asset_types",
        path: "asset-types",
        noun: "asset type",
        read_only: true,
        rules: &[],
        columns: &[
            ID,
            Column::new("code", name_text(NAME_MAX_CHARS)).required(),
            Column::new("name", text(NAME_MAX_CHARS)).required(),
            Column::new("description", text(TEXT_MAX_CHARS)).nullable(),
            METADATA,
            ACTIVE,
            CREATED_AT,
            UPDATED_AT,
        ],
    },
    Table {
        name: "assets",
        path: "assets",
        noun: "asset",
        read_only: false,
        rules: &[Rule::Acyclic {
            column: "parent_asset_id",
            lock: crate::locks::ASSET_PARENTS,
        }],
        columns: &[
            ID,
            Column::new("meter_id", fk("meters")).required(),
            Column::new("parent_asset_id", fk("assets")).nullable(),
            Column::new("asset_type_id", fk("asset_types")).nullable(),
            Column::new("name", name_text(NAME_MAX_CHARS)).required(),
            Column::new("external_id", name_text(NAME_MAX_CHARS)).nullable(),
            Column::new("equipment", text(NAME_MAX_CHARS)).nullable(),
            Column::new("manufacturer", text(NAME_MAX_CHARS)).nullable(),
            Column::new("model", text(NAME_MAX_CHARS)).nullable(),
            Column::new("rated_power_kw", float_min0()).nullable(),
            Column::new("description", text(TEXT_MAX_CHARS)).nullable(),
            METADATA,
            ACTIVE,
            CREATED_AT,
            UPDATED_AT,
        ],
    },
    Table {
        name: "asset_connections",
        path: "asset-connections",
        noun: "asset connection",
        read_only: false,
        rules: &[Rule::Distinct {
            a: "source_asset_id",
            b: "target_asset_id",
            message: "must differ from source_asset_id: an asset cannot be connected to itself",
        }],
        columns: &[
            ID,
            Column::new("source_asset_id", fk("assets")).required(),
            Column::new("target_asset_id", fk("assets")).required(),
            Column::new(
                "relationship",
                enumeration("relationship_enum", RELATIONSHIP),
            )
            .required(),
            Column::new("direction", enumeration("direction_enum", DIRECTION)),
            Column::new("description", text(TEXT_MAX_CHARS)).nullable(),
            METADATA,
            ACTIVE,
            CREATED_AT,
            UPDATED_AT,
        ],
    },
    Table {
        name: "energy_sources",
        path: "energy-sources",
        noun: "energy source",
        read_only: false,
        rules: &[],
        columns: &[
            ID,
            Column::new("meter_id", fk("meters")).required(),
            Column::new("name", name_text(NAME_MAX_CHARS)).required(),
            Column::new("external_id", name_text(NAME_MAX_CHARS)).nullable(),
            Column::new(
                "kind",
                enumeration("energy_source_kind_enum", ENERGY_SOURCE_KIND),
            )
            .required(),
            Column::new("capacity_kw", float_min0()).nullable(),
            Column::new("storage_capacity_kwh", float_min0()).nullable(),
            Column::new("carbon_intensity_g_per_kwh", float_min0()).nullable(),
            Column::new("description", text(TEXT_MAX_CHARS)).nullable(),
            METADATA,
            ACTIVE,
            CREATED_AT,
            UPDATED_AT,
        ],
    },
    Table {
        name: "grid_links",
        path: "grid-links",
        noun: "grid link",
        read_only: false,
        rules: &[],
        columns: &[
            ID,
            Column::new("site_id", fk("sites")).required(),
            Column::new("name", name_text(NAME_MAX_CHARS)).required(),
            Column::new("direction", enumeration("direction_enum", DIRECTION)).required(),
            Column::new("capacity_kw", float_min0()).nullable(),
            Column::new("provider", text(NAME_MAX_CHARS)).nullable(),
            Column::new("tariff_structure", Kind::Object),
            METADATA,
            ACTIVE,
            CREATED_AT,
            UPDATED_AT,
        ],
    },
    Table {
        name: "recommendations",
        path: "recommendations",
        noun: "recommendation",
        read_only: false,
        rules: &[],
        columns: &[
            ID,
            Column::new("site_id", fk("sites")).required(),
            Column::new("title", name_text(NAME_MAX_CHARS)).required(),
            Column::new("description", text(TEXT_MAX_CHARS)).nullable(),
            Column::new(
                "category",
                enumeration("recommendation_category_enum", RECOMMENDATION_CATEGORY),
            )
            .required(),
            Column::new(
                "status",
                enumeration("recommendation_status_enum", RECOMMENDATION_STATUS),
            ),
            Column::new("estimated_savings_per_year", float_min0()).nullable(),
            Column::new("currency", name_text(CODE_MAX_CHARS)),
            Column::new("investment_cost", float_min0()).nullable(),
            Column::new(
                "roi_percent",
                Kind::Float {
                    min: None,
                    max: None,
                },
            )
            .nullable(),
            Column::new("payback_years", float_min0()).nullable(),
            Column::new("carbon_reduction_kg_per_year", float_min0()).nullable(),
            METADATA,
            ACTIVE,
            CREATED_AT,
            UPDATED_AT,
        ],
    },
];

/// The most characters `table.column` may hold, when it is a text column of [`TABLES`]. The one
/// declaration of each limit: the API's checks, its OpenAPI `maxLength` and `provision`'s checks
/// all read it from here.
pub fn max_chars(table: &str, column: &str) -> Option<usize> {
    let t = TABLES.iter().find(|t| t.name == table)?;
    match t.column(column)?.kind {
        Kind::Text { max_chars, .. } => Some(max_chars),
        _ => None,
    }
}

/// Named constraints whose column or rule a client should see: `(constraint, field, rule)`.
/// Constraints with PostgreSQL's default names (`meters_site_id_fkey`) need no entry.
const CONSTRAINTS: &[(&str, &str, &str)] = &[
    (
        "portfolios_name_key",
        "name",
        "another portfolio already has this name",
    ),
    (
        "sites_portfolio_id_name_key",
        "name",
        "another site of this portfolio already has this name",
    ),
    (
        "meters_external_id_key",
        "external_id",
        "another meter already has this external_id",
    ),
    (
        "assets_external_id_key",
        "external_id",
        "another asset already has this external_id",
    ),
    (
        "energy_sources_external_id_key",
        "external_id",
        "another energy source already has this external_id",
    ),
    (
        "grid_links_site_id_name_key",
        "name",
        "another grid link of this site already has this name",
    ),
    (
        "asset_connections_source_target_relationship_key",
        "target_asset_id",
        "these assets are already connected with this relationship",
    ),
    (
        "asset_connections_not_self",
        "target_asset_id",
        "must differ from source_asset_id: an asset cannot be connected to itself",
    ),
    (
        "assets_not_own_parent",
        "parent_asset_id",
        "an asset cannot be its own parent",
    ),
];

/// The field and rule of a named constraint, for [`ApiError::from_pg`].
pub(crate) fn constraint_rule(constraint: &str) -> Option<(&'static str, &'static str)> {
    CONSTRAINTS
        .iter()
        .find(|(name, _, _)| *name == constraint)
        .map(|(_, field, rule)| (*field, *rule))
}

/// The CRUD routes of every table, and `GET /api/v1/openapi.json`.
pub fn routes() -> Router<AdminState> {
    let mut router = Router::new().route("/api/v1/openapi.json", get(|| async { Json(openapi()) }));
    for t in TABLES {
        let mut collection = get(move |s, q| list(s, t, q));
        let mut item = get(move |s, p| fetch(s, t, p));
        if !t.read_only {
            collection = collection.post(move |s, b| create(s, t, b));
            item = item
                .patch(move |s, p, b| update(s, t, p, b))
                .delete(move |s, p, q| delete(s, t, p, q));
        }
        router = router
            .route(&format!("/api/v1/{}", t.path), collection)
            .route(&format!("/api/v1/{}/{{id}}", t.path), item);
    }
    router
}

/// A query parameter or body value, validated and turned into the text PostgreSQL casts to
/// the column's type; `None` is SQL NULL.
type Param = Option<String>;

/// Shortens client input quoted in a message.
fn quote(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Checks one value against its column and returns it as a parameter.
fn to_param(col: &Column, v: &Value) -> Result<Param, ApiError> {
    let bad = |msg: String| Err(ApiError::bad_request(col.name, msg));
    if v.is_null() {
        return if col.nullable {
            Ok(None)
        } else {
            bad("must not be null".into())
        };
    }
    let expected = |what: &str| bad(format!("must be {what}, got {}", json_type(v)));
    let text = match (col.kind, v) {
        (
            Kind::Text {
                non_empty,
                max_chars,
            },
            Value::String(s),
        ) => {
            let n = s.chars().count();
            if n > max_chars {
                return bad(format!("must be at most {max_chars} characters, got {n}"));
            }
            if s.contains('\0') {
                return bad("must not contain NUL characters".into());
            }
            if non_empty && s.trim().is_empty() {
                return bad("must not be empty or blank".into());
            }
            s.clone()
        }
        (Kind::Text { .. }, _) => return expected("a string"),
        (Kind::Uuid { .. }, Value::String(s)) => match Uuid::parse_str(s) {
            Ok(id) => id.to_string(),
            Err(_) => return bad(format!("{} is not a UUID", quote(s))),
        },
        (Kind::Uuid { .. }, _) => return expected("a UUID string"),
        (Kind::Enum { labels, .. }, Value::String(s)) => {
            if !labels.contains(&s.as_str()) {
                return bad(format!("{} is not one of: {}", quote(s), labels.join(", ")));
            }
            s.clone()
        }
        (Kind::Enum { labels, .. }, _) => {
            return expected(&format!("a string, one of: {}", labels.join(", ")));
        }
        (Kind::Float { min, max }, Value::Number(n)) => {
            let Some(x) = n.as_f64().filter(|x| x.is_finite()) else {
                return bad("must be a finite number".into());
            };
            if let Some(min) = min.filter(|m| x < *m) {
                return bad(format!("must be at least {min}, got {x}"));
            }
            if let Some(max) = max.filter(|m| x > *m) {
                return bad(format!("must be at most {max}, got {x}"));
            }
            format!("{x:?}")
        }
        (Kind::Float { .. }, _) => return expected("a number"),
        (Kind::Bool, Value::Bool(b)) => b.to_string(),
        (Kind::Bool, _) => return expected("true or false"),
        (Kind::Object, Value::Object(_)) => {
            if has_nul(v) {
                return bad("must not contain NUL characters".into());
            }
            v.to_string()
        }
        (Kind::Object, _) => return expected("a JSON object"),
        (Kind::Timestamp, _) => return bad("is set by the database".into()),
    };
    Ok(Some(text))
}

/// The body's fields as `(column, parameter)` pairs, in column order. On create, required
/// columns must be present.
fn body_params(
    t: &Table,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<Vec<(&'static Column, Param)>, ApiError> {
    for key in body.keys() {
        match t.column(key) {
            None => {
                let known: Vec<&str> = t
                    .columns
                    .iter()
                    .filter(|c| c.writable)
                    .map(|c| c.name)
                    .collect();
                let shown: String = key.chars().take(64).collect();
                return Err(ApiError::bad_request(
                    shown,
                    format!(
                        "unknown field of a {}; known fields: {}",
                        t.noun,
                        known.join(", ")
                    ),
                ));
            }
            Some(c) if !c.writable => {
                return Err(ApiError::bad_request(
                    c.name,
                    "is read-only: set by the database",
                ));
            }
            Some(_) => {}
        }
    }
    let mut params = Vec::new();
    for col in t.columns.iter().filter(|c| c.writable) {
        match body.get(col.name) {
            Some(v) => params.push((col, to_param(col, v)?)),
            None if creating && col.required => {
                return Err(ApiError::bad_request(col.name, "is required"));
            }
            None => {}
        }
    }
    Ok(params)
}

/// `$n::text::type` for the next parameter.
fn placeholder(args: &[Param], col: &Column) -> String {
    format!("${}::text::{}", args.len(), col.kind.sql_type())
}

fn as_sql_params(args: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

/// The `{id}` of a path, as a canonical UUID. One that is not even text (bad percent-encoding,
/// invalid UTF-8) gets the same JSON 400 as any other non-UUID, not axum's plain-text one.
fn parse_id(raw: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(raw) =
        raw.map_err(|_| ApiError::bad_request("id", "is not a UUID (nor valid UTF-8)"))?;
    Uuid::parse_str(&raw)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::bad_request("id", format!("{} is not a UUID", quote(&raw))))
}

fn not_found(t: &Table, id: &str) -> ApiError {
    ApiError::not_found(format!("no {} with id {id}", t.noun))
}

fn query_pairs(
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    let Query(pairs) = q.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    for (i, (key, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(k, _)| k == key) {
            return Err(ApiError::bad_request(
                key.chars().take(64).collect::<String>(),
                "is given more than once",
            ));
        }
    }
    Ok(pairs)
}

async fn list(
    State(state): State<AdminState>,
    t: &'static Table,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut sql = format!("SELECT to_jsonb(t) FROM {} t WHERE true", t.name);
    let mut args: Vec<Param> = Vec::new();
    let mut limit = DEFAULT_LIMIT;
    for (key, raw) in query_pairs(q)? {
        match key.as_str() {
            "limit" => {
                limit = raw
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "limit",
                            format!("must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            "cursor" => {
                let id = Uuid::parse_str(&raw).map_err(|_| {
                    ApiError::bad_request("cursor", "is not a cursor returned by this API")
                })?;
                args.push(Some(id.to_string()));
                sql += &format!(" AND t.id > ${}::text::uuid", args.len());
            }
            _ => {
                let Some(col) = t.column(&key).filter(|c| c.is_filter()) else {
                    let filters: Vec<&str> = t
                        .columns
                        .iter()
                        .filter(|c| c.is_filter())
                        .map(|c| c.name)
                        .chain(["limit", "cursor"])
                        .collect();
                    return Err(ApiError::bad_request(
                        key.chars().take(64).collect::<String>(),
                        format!("unknown query parameter; known: {}", filters.join(", ")),
                    ));
                };
                if raw == "null" && col.nullable {
                    sql += &format!(" AND t.{} IS NULL", col.name);
                    continue;
                }
                let value = match (col.kind, raw.as_str()) {
                    (Kind::Bool, "true") => Value::Bool(true),
                    (Kind::Bool, "false") => Value::Bool(false),
                    (Kind::Bool, _) => {
                        return Err(ApiError::bad_request(col.name, "must be true or false"));
                    }
                    _ => Value::String(raw),
                };
                args.push(to_param(col, &value)?);
                sql += &format!(" AND t.{} = {}", col.name, placeholder(&args, col));
            }
        }
    }
    // One row more than asked says whether there is a next page.
    args.push(Some((limit + 1).to_string()));
    sql += &format!(" ORDER BY t.id LIMIT ${}::text::bigint", args.len());
    let client = state.db.get().await?;
    let rows = client
        .query(&sql, &as_sql_params(&args))
        .await
        .map_err(|e| ApiError::from_pg(&e))?;
    let mut items = rows
        .iter()
        .map(|r| row_json(t, r))
        .collect::<Result<Vec<Value>, ApiError>>()?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().and_then(|row| row.get("id")).cloned()
    } else {
        None
    };
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})))
}

async fn fetch(
    State(state): State<AdminState>,
    t: &'static Table,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(id)?;
    let client = state.db.get().await?;
    let row = client
        .query_opt(
            &format!(
                "SELECT to_jsonb(t) FROM {} t WHERE t.id = $1::text::uuid",
                t.name
            ),
            &[&id],
        )
        .await
        .map_err(|e| ApiError::from_pg(&e))?;
    let row = row.ok_or_else(|| not_found(t, &id))?;
    Ok(Json(row_json(t, &row)?))
}

/// Column 0 of `row`, a `to_jsonb(t)`, as JSON. Every number the API writes reads back (see the
/// `float_roundtrip` feature in Cargo.toml), but another writer can store a jsonb number beyond
/// f64 (`1e400`): such a row is a logged 500, never a panic. Writers call this before COMMIT,
/// so the failure rolls their write back.
fn row_json(t: &Table, row: &Row) -> Result<Value, ApiError> {
    row.try_get(0).map_err(|e| {
        tracing::error!(table = t.name, error = %pg_error_message(&e), "admin API: a row cannot be read as JSON");
        ApiError::internal()
    })
}

/// The cross-column rules that can be checked from the request alone.
fn check_distinct(t: &Table, params: &[(&'static Column, Param)]) -> Result<(), ApiError> {
    let value = |name: &str| {
        params
            .iter()
            .find(|(c, _)| c.name == name)
            .and_then(|(_, p)| p.as_deref())
    };
    for rule in t.rules {
        if let Rule::Distinct { a, b, message } = rule {
            if let (Some(x), Some(y)) = (value(a), value(b)) {
                if x == y {
                    return Err(ApiError::bad_request(*b, *message));
                }
            }
        }
    }
    Ok(())
}

async fn create(
    State(state): State<AdminState>,
    t: &'static Table,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let params = body_params(t, &body, true)?;
    check_distinct(t, &params)?;
    let mut args: Vec<Param> = Vec::new();
    let mut columns = Vec::new();
    let mut values = Vec::new();
    for (col, p) in params {
        args.push(p);
        columns.push(col.name);
        values.push(placeholder(&args, col));
    }
    let sql = if columns.is_empty() {
        format!(
            "INSERT INTO {} AS t DEFAULT VALUES RETURNING to_jsonb(t)",
            t.name
        )
    } else {
        format!(
            "INSERT INTO {} AS t ({}) VALUES ({}) RETURNING to_jsonb(t)",
            t.name,
            columns.join(", "),
            values.join(", ")
        )
    };
    let mut client = state.db.get().await?;
    // The row is read back before COMMIT: if that fails, nothing was written.
    let tx = client
        .transaction()
        .await
        .map_err(|e| ApiError::from_pg(&e))?;
    let row = tx
        .query_one(&sql, &as_sql_params(&args))
        .await
        .map_err(|e| ApiError::from_pg(&e))?;
    let row = row_json(t, &row)?;
    tx.commit().await.map_err(|e| ApiError::from_pg(&e))?;
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

async fn update(
    State(state): State<AdminState>,
    t: &'static Table,
    id: Result<Path<String>, PathRejection>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(id)?;
    let params = body_params(t, &body, false)?;
    check_distinct(t, &params)?;
    if params.is_empty() {
        return fetch(State(state), t, Ok(Path(id))).await;
    }
    let mut args: Vec<Param> = Vec::new();
    let mut sets = Vec::new();
    for (col, p) in &params {
        args.push(p.clone());
        sets.push(format!("{} = {}", col.name, placeholder(&args, col)));
    }
    args.push(Some(id.clone()));
    let sql = format!(
        "UPDATE {} AS t SET {} WHERE t.id = ${}::text::uuid RETURNING to_jsonb(t)",
        t.name,
        sets.join(", "),
        args.len()
    );
    let mut client = state.db.get().await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| ApiError::from_pg(&e))?;
    for rule in t.rules {
        let Rule::Acyclic { column, lock } = rule else {
            continue;
        };
        let Some((_, Some(parent))) = params.iter().find(|(c, _)| c.name == *column) else {
            continue;
        };
        // Serialises the changes of this column with every other writer of it (other patches,
        // `provision`), so two of them cannot each pass the check and close a cycle together.
        // Held until commit.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[lock])
            .await
            .map_err(|e| ApiError::from_pg(&e))?;
        // Walk up from the new parent; reaching this row means it would become its own
        // ancestor. UNION (not UNION ALL) ends the walk even on a cycle made by plain SQL.
        let cyclic: bool = tx
            .query_one(
                &format!(
                    "WITH RECURSIVE up(id) AS (
                         SELECT $1::text::uuid
                         UNION
                         SELECT t.{column} FROM {table} t JOIN up ON t.id = up.id
                         WHERE t.{column} IS NOT NULL)
                     SELECT EXISTS (SELECT 1 FROM up WHERE id = $2::text::uuid)",
                    table = t.name
                ),
                &[parent, &id],
            )
            .await
            .map_err(|e| ApiError::from_pg(&e))?
            .try_get(0)
            .map_err(|e| ApiError::from_pg(&e))?;
        if cyclic {
            return Err(ApiError::bad_request(
                *column,
                format!("would make this {} its own ancestor (a cycle)", t.noun),
            ));
        }
    }
    let row = tx
        .query_opt(&sql, &as_sql_params(&args))
        .await
        .map_err(|e| ApiError::from_pg(&e))?
        .ok_or_else(|| not_found(t, &id))?;
    // Read back before COMMIT, as in create.
    let row = row_json(t, &row)?;
    tx.commit().await.map_err(|e| ApiError::from_pg(&e))?;
    Ok(Json(row))
}

async fn delete(
    State(state): State<AdminState>,
    t: &'static Table,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let mut hard = false;
    for (key, raw) in query_pairs(q)? {
        match (key.as_str(), raw.as_str()) {
            ("hard", "true") => hard = true,
            ("hard", "false") => hard = false,
            ("hard", _) => return Err(ApiError::bad_request("hard", "must be true or false")),
            _ => {
                return Err(ApiError::bad_request(
                    key.chars().take(64).collect::<String>(),
                    "unknown query parameter; known: hard",
                ));
            }
        }
    }
    let mut client = state.db.get().await?;
    if hard {
        // ON DELETE CASCADE removes the subtree in the same statement; nothing is read after
        // it, so the statement's own transaction is enough.
        let n = client
            .execute(
                &format!("DELETE FROM {} WHERE id = $1::text::uuid", t.name),
                &[&id],
            )
            .await
            .map_err(|e| ApiError::from_pg(&e))?;
        return if n == 0 {
            Err(not_found(t, &id))
        } else {
            Ok(StatusCode::NO_CONTENT.into_response())
        };
    }
    // Read back before COMMIT, as in create.
    let tx = client
        .transaction()
        .await
        .map_err(|e| ApiError::from_pg(&e))?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE {} AS t SET active = false WHERE t.id = $1::text::uuid
                 RETURNING to_jsonb(t)",
                t.name
            ),
            &[&id],
        )
        .await
        .map_err(|e| ApiError::from_pg(&e))?
        .ok_or_else(|| not_found(t, &id))?;
    let row = row_json(t, &row)?;
    tx.commit().await.map_err(|e| ApiError::from_pg(&e))?;
    Ok(Json(row).into_response())
}

// ---- OpenAPI -------------------------------------------------------------------------------

/// The OpenAPI schema name of a table's rows: "asset connection" → "AssetConnection".
pub fn schema_name(t: &Table) -> String {
    pascal_case(t.noun, ' ')
}

fn column_schema(col: &Column) -> Value {
    let mut s = match col.kind {
        Kind::Text {
            non_empty,
            max_chars,
        } => {
            // No NUL anywhere (PostgreSQL text cannot hold it); a name also needs one
            // character that is not white space.
            let pattern = if non_empty {
                "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
            } else {
                "^[^\\u0000]*$"
            };
            json!({"type": "string", "maxLength": max_chars, "pattern": pattern})
        }
        Kind::Uuid { refers_to } => {
            let mut s = json!({"type": "string", "format": "uuid"});
            if let Some(table) = refers_to {
                s["description"] = json!(format!("id of a row of {table}"));
            }
            s
        }
        Kind::Enum { labels, .. } => json!({"type": "string", "enum": labels}),
        Kind::Float { min, max } => {
            let mut s = json!({"type": "number"});
            if let Some(min) = min {
                s["minimum"] = json!(min);
            }
            if let Some(max) = max {
                s["maximum"] = json!(max);
            }
            s
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Object => json!({"type": "object"}),
        Kind::Timestamp => json!({"type": "string", "format": "date-time"}),
    };
    if col.nullable {
        let ty = s["type"].clone();
        s["type"] = json!([ty, "null"]);
    }
    if !col.writable {
        s["readOnly"] = json!(true);
    }
    s
}

fn param(name: &str, location: &str, schema: Value, description: &str) -> Value {
    json!({
        "name": name, "in": location, "required": location == "path",
        "schema": schema, "description": description,
    })
}

/// A JSON response with `schema`.
fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// One operation: its successful responses plus references to the shared error responses. Every
/// operation can also answer 401 (the token) and 500 (a bug, caught by the panic layer).
fn operation(
    id: String,
    summary: String,
    parameters: Vec<Value>,
    body: Option<Value>,
    ok: &[(&str, Value)],
    errors: &[&str],
) -> Value {
    let mut responses: Map<String, Value> = ok
        .iter()
        .map(|(code, r)| (code.to_string(), r.clone()))
        .collect();
    for code in errors.iter().chain(&["401", "500"]) {
        let reference = json!({"$ref": format!("#/components/responses/{code}")});
        responses.insert(code.to_string(), reference);
    }
    let mut op = json!({
        "operationId": id, "summary": summary, "parameters": parameters, "responses": responses,
    });
    if let Some(schema) = body {
        op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    op
}

/// The path of an entity's readings, for the tables that have them.
fn measurements_path(t: &Table) -> Option<&'static str> {
    ["meters", "assets", "energy-sources"]
        .into_iter()
        .find(|p| *p == t.path)
}

/// OpenAPI links from the row a create returns to what can be done with it: get, patch and
/// delete it, read its readings, list and create the rows that refer to it. They document
/// the API's shape, and they let a stateful tester (schemathesis) build real hierarchies
/// instead of guessing ids.
fn create_links(t: &Table) -> Value {
    let name = schema_name(t);
    let by_id = json!({"id": "$response.body#/id"});
    let mut links = Map::new();
    for verb in ["get", "update", "delete"] {
        links.insert(
            format!("{verb}{name}"),
            json!({"operationId": format!("{verb}{name}"), "parameters": by_id}),
        );
    }
    if measurements_path(t).is_some() {
        links.insert(
            format!("get{name}Measurements"),
            json!({"operationId": format!("get{name}Measurements"), "parameters": by_id}),
        );
    }
    let refers_here =
        |c: &&Column| matches!(c.kind, Kind::Uuid { refers_to: Some(r) } if r == t.name);
    for child in TABLES {
        let refs: Vec<&Column> = child.columns.iter().filter(refers_here).collect();
        let child_name = schema_name(child);
        for col in &refs {
            // Two references to this table (a connection's source and target): a link each.
            let via = if refs.len() > 1 {
                format!("By{}", pascal_case(col.name, '_'))
            } else {
                String::new()
            };
            let value = json!("$response.body#/id");
            links.insert(
                format!("list{child_name}s{via}"),
                json!({"operationId": format!("list{child_name}s"), "parameters": {format!("query.{}", col.name): value}}),
            );
            if !child.read_only {
                links.insert(
                    format!("create{child_name}{via}"),
                    json!({"operationId": format!("create{child_name}"), "requestBody": {col.name: value}}),
                );
            }
        }
    }
    Value::Object(links)
}

/// `source_asset_id` → `SourceAssetId` (with `_`), `asset connection` → `AssetConnection`.
fn pascal_case(words: &str, separator: char) -> String {
    words
        .split(separator)
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn table_paths(t: &Table, paths: &mut Map<String, Value>) {
    let name = schema_name(t);
    let row = json!({"$ref": format!("#/components/schemas/{name}")});
    let id = param(
        "id",
        "path",
        json!({"type": "string", "format": "uuid"}),
        "",
    );
    let mut filters: Vec<Value> = t
        .columns
        .iter()
        .filter(|c| c.is_filter())
        .map(|c| {
            let desc = if c.nullable {
                "equals; `null` matches rows where it is null"
            } else {
                "equals"
            };
            let plain = Column {
                nullable: false,
                writable: true,
                ..*c
            };
            let mut schema = column_schema(&plain);
            if c.nullable {
                schema = json!({"anyOf": [schema, {"type": "string", "enum": ["null"]}]});
            }
            param(c.name, "query", schema, desc)
        })
        .collect();
    filters.push(param(
        "limit",
        "query",
        json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
        "rows per page",
    ));
    filters.push(param(
        "cursor",
        "query",
        json!({"type": "string", "format": "uuid"}),
        "`next_cursor` of the previous page",
    ));
    let page = json!({
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": row},
            "next_cursor": {"type": ["string", "null"], "description": "null on the last page"},
        },
    });
    let mut collection = json!({"get": operation(
        format!("list{name}s"),
        format!("List {}s, ordered by id", t.noun),
        filters,
        None,
        &[("200", json_response("a page", page))],
        &["400", "503"],
    )});
    let mut item = json!({"get": operation(
        format!("get{name}"),
        format!("Get a {}", t.noun),
        vec![id.clone()],
        None,
        &[("200", json_response("the row", row.clone()))],
        &["400", "404", "503"],
    )});
    if !t.read_only {
        let required: Vec<&str> = t
            .columns
            .iter()
            .filter(|c| c.required)
            .map(|c| c.name)
            .collect();
        let mut created = json_response("the new row", row.clone());
        created["links"] = create_links(t);
        collection["post"] = operation(
            format!("create{name}"),
            format!("Create a {}", t.noun),
            vec![],
            Some(json!({"allOf": [row, {"required": required}]})),
            &[("201", created)],
            &["400", "409", "413", "415", "503"],
        );
        item["patch"] = operation(
            format!("update{name}"),
            format!(
                "Update the given fields of a {}; `null` clears a nullable field",
                t.noun
            ),
            vec![id.clone()],
            Some(row.clone()),
            &[("200", json_response("the updated row", row.clone()))],
            &["400", "404", "409", "413", "415", "503"],
        );
        let hard = param(
            "hard",
            "query",
            json!({"type": "boolean", "default": false}),
            "delete the row and, by cascade, everything under it",
        );
        item["delete"] = operation(
            format!("delete{name}"),
            format!("Deactivate a {} (active = false), or delete it", t.noun),
            vec![id, hard],
            None,
            &[
                ("200", json_response("deactivated: the row", row)),
                ("204", json!({"description": "deleted (hard=true)"})),
            ],
            &["400", "404", "503"],
        );
    }
    paths.insert(format!("/api/v1/{}", t.path), collection);
    paths.insert(format!("/api/v1/{}/{{id}}", t.path), item);
}

/// The read side of [`super::read`], described by hand.
fn read_paths(paths: &mut Map<String, Value>) {
    let object = json!({"type": "object"});
    let time = json!({"type": "string", "format": "date-time"});
    let metrics: Vec<&str> = crate::catalogue::ALL.iter().map(|m| m.name).collect();
    let reasons: Vec<&str> = crate::model::Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .collect();
    let limit = |default: i64| {
        let schema = json!({"type": "integer", "minimum": 1, "maximum": 10000, "default": default});
        param("limit", "query", schema, "")
    };
    for t in TABLES {
        let Some(path) = measurements_path(t) else {
            continue;
        };
        let noun = t.noun;
        let get = operation(
            format!("get{}Measurements", schema_name(t)),
            format!("Readings of a {noun}: raw, or per bucket (avg, min, max, last, count)"),
            vec![
                param(
                    "id",
                    "path",
                    json!({"type": "string", "format": "uuid"}),
                    "",
                ),
                param(
                    "metric",
                    "query",
                    json!({"type": "string", "enum": metrics}),
                    "a metric of the catalogue",
                ),
                param("from", "query", time.clone(), "default: 24 h before `to`"),
                param("to", "query", time.clone(), "default: now + 5 min"),
                param(
                    "bucket",
                    "query",
                    json!({"type": "string", "pattern": "^0*[1-9][0-9]*[smhd]?$"}),
                    "30s, 15m, 1h, 1d… (1 s to 31 d; a bare number is seconds); absent: raw",
                ),
                limit(1000),
            ],
            None,
            &[("200", json_response("readings or buckets", object.clone()))],
            &["400", "404", "503"],
        );
        paths.insert(
            format!("/api/v1/{path}/{{id}}/measurements"),
            json!({"get": get}),
        );
    }
    let get = operation(
        "listRejections".into(),
        "Recent rejected readings, newest first".into(),
        vec![
            param(
                "reason",
                "query",
                json!({"type": "string", "enum": reasons}),
                "a rejection reason (CONTRACT.md §4)",
            ),
            param("since", "query", time, "default: 24 h ago"),
            limit(100),
        ],
        None,
        &[("200", json_response("rejections", object))],
        &["400", "503"],
    );
    paths.insert("/api/v1/rejections".into(), json!({"get": get}));
}

/// The OpenAPI 3.1 document of the admin API, generated from [`TABLES`].
pub fn openapi() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in TABLES {
        table_paths(t, &mut paths);
        let properties: Map<String, Value> = t
            .columns
            .iter()
            .map(|c| (c.name.to_string(), column_schema(c)))
            .collect();
        schemas.insert(
            schema_name(t),
            json!({"type": "object", "properties": properties, "additionalProperties": false}),
        );
    }
    read_paths(&mut paths);
    let this = operation(
        "getOpenApi".into(),
        "This document".into(),
        vec![],
        None,
        &[(
            "200",
            json_response("OpenAPI 3.1", json!({"type": "object"})),
        )],
        &[],
    );
    paths.insert("/api/v1/openapi.json".into(), json!({ "get": this }));
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string", "enum": ["invalid", "not_found", "conflict", "unauthorized", "too_large", "unsupported_media_type", "unavailable", "internal"]},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"], "description": "the JSON field or query parameter at fault"},
            },
        }}}),
    );
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "enalysis-ingest admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage the hierarchy (portfolios → sites → meters → assets / energy sources, asset connections, grid links, recommendations) and look at readings and rejections. JSON field names are the column names of the schema.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "admin.token (ENALYSIS_ADMIN_TOKEN)"}},
            "responses": {
                "400": error("invalid input: `field` names the field and `message` the rule"),
                "401": error("missing or wrong bearer token"),
                "404": error("no such row"),
                "409": error("a unique key (external_id, name) is taken"),
                "413": error("body over 1 MiB"),
                "415": error("Content-Type is not application/json"),
                "500": error("an internal error (a bug, or a row another writer stored that the API cannot read); the cause is in the server log"),
                "503": error("the database is unavailable"),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> &'static Column {
        TABLES
            .iter()
            .flat_map(|t| t.columns)
            .find(|c| c.name == name)
            .unwrap()
    }

    #[test]
    fn values_are_checked_against_their_column() {
        // (column, value, Ok(the parameter) or Err(part of the message))
        type Case = (
            &'static str,
            Value,
            Result<Option<&'static str>, &'static str>,
        );
        let cases: &[Case] = &[
            ("name", json!("Main"), Ok(Some("Main"))),
            ("name", json!("  "), Err("must not be empty")),
            ("name", json!(null), Err("must not be null")),
            ("name", json!(5), Err("must be a string")),
            ("name", json!("a\u{0}b"), Err("NUL")),
            (
                "name",
                json!("é".repeat(200)),
                Ok(Some(&*"é".repeat(200).leak())),
            ),
            (
                "name",
                json!("é".repeat(201)),
                Err("must be at most 200 characters, got 201"),
            ),
            (
                "description",
                json!("x".repeat(10_001)),
                Err("must be at most 10000 characters"),
            ),
            (
                "timezone",
                json!("Z".repeat(65)),
                Err("at most 64 characters"),
            ),
            ("description", json!(null), Ok(None)),
            ("site_id", json!("not-a-uuid"), Err("is not a UUID")),
            (
                "site_id",
                json!("6F9619FF-8B86-D011-B42D-00C04FC964FF"),
                Ok(Some("6f9619ff-8b86-d011-b42d-00c04fc964ff")),
            ),
            ("category", json!("CONS"), Ok(Some("CONS"))),
            (
                "category",
                json!("cons"),
                Err("is not one of: CONS, PROD, INJ, STOR"),
            ),
            ("rated_power_kw", json!(12.5), Ok(Some("12.5"))),
            ("rated_power_kw", json!(0), Ok(Some("0.0"))),
            ("rated_power_kw", json!(-1), Err("must be at least 0")),
            ("rated_power_kw", json!("5"), Err("must be a number")),
            ("latitude", json!(91), Err("must be at most 90")),
            ("latitude", json!(-90), Ok(Some("-90.0"))),
            ("roi_percent", json!(-15), Ok(Some("-15.0"))),
            ("active", json!("yes"), Err("true or false")),
            ("metadata", json!({"a": [1]}), Ok(Some(r#"{"a":[1]}"#))),
            ("metadata", json!([1]), Err("a JSON object")),
            ("metadata", json!({"a": "\u{0}"}), Err("NUL")),
        ];
        for (name, value, expected) in cases {
            let got = to_param(col(name), value);
            match (got, expected) {
                (Ok(p), Ok(e)) => assert_eq!(p.as_deref(), *e, "{name} {value}"),
                (Err(err), Err(e)) => {
                    assert_eq!(err.field.as_deref(), Some(*name));
                    assert!(err.message.contains(e), "{name} {value}: {}", err.message);
                }
                (got, e) => panic!("{name} {value}: got {got:?}, expected {e:?}"),
            }
        }
    }

    #[test]
    fn every_table_has_the_common_columns_and_unique_paths() {
        for t in TABLES {
            for c in ["id", "metadata", "active", "created_at", "updated_at"] {
                assert!(t.column(c).is_some(), "{} lacks {c}", t.name);
            }
            assert_eq!(
                TABLES.iter().filter(|u| u.path == t.path).count(),
                1,
                "{}",
                t.path
            );
        }
    }

    #[test]
    fn the_openapi_document_covers_every_route() {
        let doc = openapi();
        for t in TABLES {
            let item = &doc["paths"][format!("/api/v1/{}/{{id}}", t.path)];
            assert!(item["get"].is_object(), "{}", t.path);
            assert_eq!(item["patch"].is_object(), !t.read_only, "{}", t.path);
        }
        assert!(doc["components"]["schemas"]["AssetConnection"].is_object());
    }

    /// Every operation has a unique id, and every link names an existing operation and only
    /// parameters (or body fields) that operation has.
    #[test]
    fn openapi_links_point_at_real_operations_and_parameters() {
        let doc = openapi();
        let mut operations: Map<String, Value> = Map::new();
        for item in doc["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("path item").values() {
                let id = op["operationId"].as_str().expect("an operationId");
                assert!(
                    operations.insert(id.to_string(), op.clone()).is_none(),
                    "{id} twice"
                );
            }
        }
        let mut links = 0;
        for op in operations.values() {
            let Some(created) = op["responses"]["201"].as_object() else {
                continue;
            };
            for (name, link) in created["links"].as_object().expect("links") {
                let target = &operations[link["operationId"].as_str().expect("operationId")];
                for key in link["parameters"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    let (location, param) = key.split_once('.').unwrap_or(("path", key));
                    let found = target["parameters"]
                        .as_array()
                        .expect("parameters")
                        .iter()
                        .any(|p| p["name"] == param && p["in"] == location);
                    assert!(found, "{name}: {key}");
                }
                if let Some(body) = link["requestBody"].as_object() {
                    let schema = &target["requestBody"]["content"]["application/json"]["schema"];
                    let table = schema["allOf"][0]["$ref"]
                        .as_str()
                        .and_then(|r| r.rsplit('/').next())
                        .expect("a row schema");
                    for field in body.keys() {
                        assert!(
                            doc["components"]["schemas"][table]["properties"][field].is_object(),
                            "{name}: {field}"
                        );
                    }
                }
                links += 1;
            }
        }
        // Each table links to its own get, update, delete; parents to their children.
        assert!(links > 40, "{links} links");
    }
}
