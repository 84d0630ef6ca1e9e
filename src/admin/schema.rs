//! The schema as the admin side knows it: every table, column, rule, enum label, named
//! constraint, value check and text limit, declared once. The CRUD handlers ([`super::crud`]),
//! the OpenAPI document ([`super::openapi`]) and `provision` ([`super::provision`]) all read
//! it; a new column is added here and nowhere else. The migrations are its copy in SQL, which
//! integration tests compare with it (columns, nullability, enum labels, text limits).
//!
//! Values reach SQL as text cast to the column's type ([`Column::placeholder`]), after the
//! checks here have passed; the checks say *what* is wrong ([`Breach`]), and each caller says
//! it in its own words (an API message, a provision problem).

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
    /// The type a parameter is cast to.
    pub fn sql_type(self) -> &'static str {
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
    /// The schema's DEFAULT of a NOT NULL column, as the parameter text it stands for: what
    /// `provision` writes for a key the file leaves out (an integration test compares it with
    /// the database's).
    pub default: Option<&'static str>,
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
            default: None,
        }
    }
    const fn default(self, value: &'static str) -> Self {
        Self {
            default: Some(value),
            ..self
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
    pub fn is_filter(&self) -> bool {
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
    pub fn column(&self, name: &str) -> Option<&'static Column> {
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
const METADATA: Column = Column::new("metadata", Kind::Object).default("{}");
const ACTIVE: Column = Column::new("active", Kind::Bool).default("true");
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
            )
            .default("other"),
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
            Column::new("timezone", text(CODE_MAX_CHARS)).default("UTC"),
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
            )
            .default("15min"),
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
            Column::new("direction", enumeration("direction_enum", DIRECTION)).default("out"),
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
            Column::new("tariff_structure", Kind::Object).default("{}"),
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
            )
            .default("open"),
            Column::new("estimated_savings_per_year", float_min0()).nullable(),
            Column::new("currency", name_text(CODE_MAX_CHARS)).default("EUR"),
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
    match self::column(table, column)?.kind {
        Kind::Text { max_chars, .. } => Some(max_chars),
        _ => None,
    }
}

/// Named constraints whose column or rule a client should see: `(constraint, field, rule)`.
/// Constraints with PostgreSQL's default names (`meters_site_id_fkey`) need no entry.
const CONSTRAINTS: &[(&str, &str, &str)] = &[
    (
        "sites_timezone_known",
        "timezone",
        "unknown time zone (expected a name such as Europe/Brussels)",
    ),
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

/// The field and rule of a named constraint, for [`super::ApiError::from_pg`].
pub(crate) fn constraint_rule(constraint: &str) -> Option<(&'static str, &'static str)> {
    CONSTRAINTS
        .iter()
        .find(|(name, _, _)| *name == constraint)
        .map(|(_, field, rule)| (*field, *rule))
}

/// The table named `name` (its SQL name).
pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

/// The column `table.column`.
pub fn column(table: &str, column: &str) -> Option<&'static Column> {
    self::table(table)?.column(column)
}

// ---- Names --------------------------------------------------------------------------------

/// The OpenAPI schema name of a table's rows: "asset connection" → "AssetConnection".
pub fn schema_name(t: &Table) -> String {
    pascal_case(t.noun, ' ')
}

/// `source_asset_id` → `SourceAssetId` (with `_`), `asset connection` → `AssetConnection`.
pub fn pascal_case(words: &str, separator: char) -> String {
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

// ---- Values ---------------------------------------------------------------------------------

/// A checked value as the text PostgreSQL casts to its column's type; `None` is SQL NULL.
pub type Param = Option<String>;

/// The parameter text of a float: Rust's shortest round-trip form, which PostgreSQL reads back
/// as the same f64.
pub fn float_param(x: f64) -> String {
    format!("{x:?}")
}

/// Why a value does not fit its column. The API and `provision` check the same rules and say
/// them in their own words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Breach {
    /// More characters than the column's limit.
    TooLong { max: usize, found: usize },
    /// PostgreSQL text cannot hold NUL.
    Nul,
    /// A name that is empty or only white space.
    Blank,
    /// NaN or an infinity.
    NotFinite { found: f64 },
    /// Outside the column's CHECK bounds (`min`/`max` are the column's, for the message).
    OutOfRange {
        min: Option<f64>,
        max: Option<f64>,
        found: f64,
    },
}

impl Column {
    /// `$n::text::type`: the placeholder of parameter `n` of this column.
    pub fn placeholder(&self, n: usize) -> String {
        format!("${n}::text::{}", self.kind.sql_type())
    }

    /// Checks a string for a text column: its limit, then NUL, then (for names) blankness.
    /// Other kinds take no string here.
    pub fn check_text(&self, s: &str) -> Result<(), Breach> {
        let Kind::Text {
            non_empty,
            max_chars,
        } = self.kind
        else {
            return Ok(());
        };
        let found = s.chars().count();
        if found > max_chars {
            return Err(Breach::TooLong {
                max: max_chars,
                found,
            });
        }
        if s.contains('\0') {
            return Err(Breach::Nul);
        }
        if non_empty && s.trim().is_empty() {
            return Err(Breach::Blank);
        }
        Ok(())
    }

    /// Checks a number for a float column and returns it as its parameter text
    /// ([`float_param`]).
    pub fn check_number(&self, x: f64) -> Result<String, Breach> {
        let Kind::Float { min, max } = self.kind else {
            return Ok(float_param(x));
        };
        if !x.is_finite() {
            return Err(Breach::NotFinite { found: x });
        }
        if min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) {
            return Err(Breach::OutOfRange { min, max, found: x });
        }
        Ok(float_param(x))
    }

    /// The enum label `s` is, as the static label; `None` when it is not one (each caller names
    /// the labels in its own words).
    pub fn check_label(&self, s: &str) -> Option<&'static str> {
        self.labels().iter().find(|l| **l == s).copied()
    }

    /// The labels of an enum column; empty for any other.
    pub fn labels(&self) -> &'static [&'static str] {
        match self.kind {
            Kind::Enum { labels, .. } => labels,
            _ => &[],
        }
    }

    /// The bounds of a float column.
    pub fn bounds(&self) -> (Option<f64>, Option<f64>) {
        match self.kind {
            Kind::Float { min, max } => (min, max),
            _ => (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every enum of the tables, against `migrations/0001_hierarchy.sql` (the integration
    /// tests compare them with a migrated database too).
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
        let mut checked = 0;
        for col in TABLES.iter().flat_map(|t| t.columns) {
            if let Kind::Enum {
                sql_type,
                labels: ours,
            } = col.kind
            {
                assert_eq!(labels(sql_type), ours, "{sql_type}");
                checked += 1;
            }
        }
        assert!(checked >= 8, "{checked} enum columns");
    }

    #[test]
    fn values_breach_their_columns_rules() {
        let col = |t: &str, c: &str| column(t, c).expect("a column");
        let name = col("meters", "name");
        assert_eq!(name.check_text("Main"), Ok(()));
        assert_eq!(name.check_text("  "), Err(Breach::Blank));
        assert_eq!(name.check_text("a\0b"), Err(Breach::Nul));
        assert_eq!(
            name.check_text(&"é".repeat(201)),
            Err(Breach::TooLong {
                max: 200,
                found: 201
            })
        );
        assert_eq!(col("meters", "description").check_text(" "), Ok(()));
        let lat = col("sites", "latitude");
        assert_eq!(lat.check_number(-90.0).as_deref(), Ok("-90.0"));
        assert_eq!(
            lat.check_number(91.0),
            Err(Breach::OutOfRange {
                min: Some(-90.0),
                max: Some(90.0),
                found: 91.0
            })
        );
        assert!(matches!(
            lat.check_number(f64::NAN),
            Err(Breach::NotFinite { .. })
        ));
        assert_eq!(
            col("energy_sources", "capacity_kw").check_number(f64::MAX),
            Ok("1.7976931348623157e308".to_string())
        );
        let category = col("meters", "category");
        assert_eq!(category.check_label("STOR"), Some("STOR"));
        assert_eq!(category.check_label("stor"), None);
        assert_eq!(category.labels(), METER_CATEGORY);
    }
}
