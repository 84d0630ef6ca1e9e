//! The read side: readings of one entity (raw or bucketed) and recent rejections here, the
//! energy-data routes of CONTRACT.md §7 in the modules beside this one.
//!
//! Each route is described once, as a [`ReadRoute`] in [`all`] (path, summary, handler), with
//! its query parameters as a [`QueryParam`] table ([`MEASUREMENT_PARAMS`], …): the handlers
//! parse what those accept, and the OpenAPI document ([`super::openapi`]) is built from them.

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{MethodRouter, get};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::Row;
use uuid::Uuid;

mod completeness;
mod revisions;
mod silent;

/// The site completeness query, for the benchmark's `EXPLAIN`.
pub use completeness::SITE as SITE_COMPLETENESS_SQL;

use super::{AdminState, ApiError, schema};
use crate::db::pg_error_message;
use crate::model::{EntityKind, Reason};

pub mod intervals;

/// The tables whose rows have readings, with the entity kind of `measurements.entity_type`.
pub const ENTITY_TABLES: [(EntityKind, &str); 3] = [
    (EntityKind::Meter, "meters"),
    (EntityKind::Asset, "assets"),
    (EntityKind::EnergySource, "energy_sources"),
];

/// One read route, described once: [`routes`] mounts its handler and the OpenAPI document
/// ([`super::openapi`]) is built from the same fields, so neither can name a parameter or a
/// route the other does not have.
pub struct ReadRoute {
    /// For a route under one row (`/api/v1/{table}/{id}/…`, `id` a path parameter): the table.
    pub table: Option<&'static schema::Table>,
    pub path: String,
    pub operation_id: String,
    pub summary: String,
    pub params: &'static [QueryParam],
    /// What the 200 answer holds.
    pub response: &'static str,
    /// The error responses besides 401 and 500 (which every route has).
    pub errors: &'static [&'static str],
    pub handler: MethodRouter<AdminState>,
}

impl ReadRoute {
    /// `GET /api/v1/{table path}/{id}/{segment}`, operation `get{Table}{Segment}`.
    pub fn under(
        table: &'static schema::Table,
        segment: &str,
        summary: String,
        params: &'static [QueryParam],
        response: &'static str,
        handler: MethodRouter<AdminState>,
    ) -> ReadRoute {
        ReadRoute {
            table: Some(table),
            path: format!("/api/v1/{}/{{id}}/{segment}", table.path),
            operation_id: format!(
                "get{}{}",
                schema::schema_name(table),
                schema::pascal_case(segment, '-')
            ),
            summary,
            params,
            response,
            errors: &["400", "404", "503"],
            handler,
        }
    }
}

/// Every read route: the readings and rejections of this module, and the energy-data routes
/// of CONTRACT.md §7 in the modules beside it.
pub fn all() -> Vec<ReadRoute> {
    let mut routes = Vec::new();
    for (kind, name) in ENTITY_TABLES {
        let Some(table) = schema::table(name) else {
            continue;
        };
        routes.push(ReadRoute::under(
            table,
            "measurements",
            format!(
                "Readings of a {}: raw, or per bucket (avg, min, max, last, count)",
                table.noun
            ),
            MEASUREMENT_PARAMS,
            "readings or buckets",
            get(move |s, p, q| measurements(s, kind, name, p, q)),
        ));
    }
    routes.extend(revisions::routes());
    routes.push(ReadRoute {
        table: None,
        path: REJECTIONS_ROUTE.into(),
        operation_id: "listRejections".into(),
        summary: "Recent rejected readings, newest first".into(),
        params: REJECTION_PARAMS,
        response: "rejections",
        errors: &["400", "503"],
        handler: get(rejections),
    });
    routes.extend(silent::routes());
    routes.extend(completeness::routes());
    routes.extend(intervals::routes());
    routes
}

/// `GET /api/v1/rejections`.
pub const REJECTIONS_ROUTE: &str = "/api/v1/rejections";

/// Routes under `/api/v1`, merged into the admin router (and so behind its token).
pub fn routes() -> Router<AdminState> {
    all()
        .into_iter()
        .fold(Router::new(), |router, r| router.route(&r.path, r.handler))
}

/// Largest `limit` of either route.
pub const MAX_LIMIT: i64 = 10_000;
/// Readings (or buckets) per answer when `limit` is not given.
pub const MEASUREMENTS_LIMIT: i64 = 1000;
/// Rejections per answer when `limit` is not given.
pub const REJECTIONS_LIMIT: i64 = 100;

/// What a query parameter accepts: the handlers parse exactly this, and [`Accepts::schema`]
/// states it in the OpenAPI document.
#[derive(Debug, Clone, Copy)]
pub enum Accepts {
    /// A metric of the catalogue.
    Metric,
    /// A rejection reason (CONTRACT.md §4).
    Reason,
    /// An RFC 3339 time.
    Time,
    /// A bucket width ([`parse_bucket`]).
    Bucket,
    /// An interval period of [`crate::intervals::Period`], default `15m`.
    Period,
    /// 1 to [`MAX_LIMIT`], with this default.
    Limit { default: i64 },
    /// An entity kind: `meter`, `asset`, `energy_source`.
    Kind,
}

/// One query parameter of a read route.
#[derive(Debug, Clone, Copy)]
pub struct QueryParam {
    pub name: &'static str,
    pub accepts: Accepts,
    pub description: &'static str,
}

/// The query parameters of `GET …/{id}/measurements` ([`MeasurementQuery`]).
pub const MEASUREMENT_PARAMS: &[QueryParam] = &[
    QueryParam {
        name: "metric",
        accepts: Accepts::Metric,
        description: "a metric of the catalogue",
    },
    QueryParam {
        name: "from",
        accepts: Accepts::Time,
        description: "default: 24 h before `to`",
    },
    QueryParam {
        name: "to",
        accepts: Accepts::Time,
        description: "default: now + 5 min",
    },
    QueryParam {
        name: "bucket",
        accepts: Accepts::Bucket,
        description: "30s, 15m, 1h, 1d… (1 s to 31 d; a bare number is seconds); absent: raw",
    },
    QueryParam {
        name: "limit",
        accepts: Accepts::Limit {
            default: MEASUREMENTS_LIMIT,
        },
        description: "",
    },
];

/// The query parameters of `GET /api/v1/rejections` ([`RejectionQuery`]).
pub const REJECTION_PARAMS: &[QueryParam] = &[
    QueryParam {
        name: "reason",
        accepts: Accepts::Reason,
        description: "a rejection reason (CONTRACT.md §4)",
    },
    QueryParam {
        name: "since",
        accepts: Accepts::Time,
        description: "default: 24 h ago",
    },
    QueryParam {
        name: "limit",
        accepts: Accepts::Limit {
            default: REJECTIONS_LIMIT,
        },
        description: "",
    },
];

/// The largest bucket width, in seconds: 31 days.
const MAX_BUCKET_SECS: i64 = 31 * 86_400;

impl Accepts {
    /// The JSON Schema of what the handlers accept.
    pub fn schema(self) -> Value {
        match self {
            Accepts::Metric => {
                let metrics: Vec<&str> = crate::catalogue::ALL.iter().map(|m| m.name).collect();
                json!({"type": "string", "enum": metrics})
            }
            Accepts::Reason => {
                let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                json!({"type": "string", "enum": reasons})
            }
            Accepts::Time => json!({"type": "string", "format": "date-time"}),
            Accepts::Bucket => json!({"type": "string", "pattern": "^0*[1-9][0-9]*[smhd]?$"}),
            Accepts::Kind => {
                let kinds: Vec<&str> = EntityKind::ALL.iter().map(|k| k.as_str()).collect();
                json!({"type": "string", "enum": kinds})
            }
            Accepts::Period => {
                let periods: Vec<&str> = crate::intervals::Period::ALL
                    .iter()
                    .map(|p| p.as_str())
                    .collect();
                json!({"type": "string", "enum": periods, "default": "15m"})
            }
            Accepts::Limit { default } => {
                json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": default})
            }
        }
    }
}

pub(super) fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request("query", e.body_text())
}

/// The `{id}` of a route under one row, as a UUID (else 400).
pub(super) fn path_id(id: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    // Not even text (invalid UTF-8): the same JSON 400 as any other non-UUID.
    let Path(id) =
        id.map_err(|_| ApiError::bad_request("id", "is not a UUID (nor valid UTF-8)"))?;
    Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("id", format!("{id:?} is not a UUID")))
}

/// 404 unless `table` has a row `id` (active or not: its history is still there).
pub(super) async fn exists(
    client: &crate::db::Client,
    kind: EntityKind,
    table: &str,
    id: Uuid,
) -> Result<(), ApiError> {
    let found = client
        .query_opt(&format!("SELECT 1 FROM {table} WHERE id = $1"), &[&id])
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no {} {id}", kind.as_str()))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementQuery {
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// `1m`, `15m`, `1h`, `1d`, … or seconds; absent = raw readings.
    bucket: Option<String>,
    limit: Option<i64>,
}

pub(super) fn parse_time(
    field: &str,
    raw: &Option<String>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::bad_request(field, format!("{s:?} is not RFC 3339: {e}")))
        })
        .transpose()
}

/// A window `[from, to)` from the query's `from` and `to`: `to` defaults to `default_to`, `from`
/// to 24 h before `to`, and `from` must come first.
pub(super) fn window(
    from: &Option<String>,
    to: &Option<String>,
    default_to: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let to = parse_time("to", to)?.unwrap_or(default_to);
    let from = parse_time("from", from)?.unwrap_or(to - Duration::hours(24));
    if from >= to {
        return Err(ApiError::bad_request("from", "must be before `to`"));
    }
    Ok((from, to))
}

/// A metric of the catalogue, or a 400 naming `metric`.
pub(super) fn known_metric(metric: &str) -> Result<(), ApiError> {
    match crate::catalogue::lookup(metric) {
        Some(_) => Ok(()),
        None => Err(ApiError::bad_request(
            "metric",
            format!("unknown metric {metric:?}"),
        )),
    }
}

/// A bucket width: `30s`, `5m`, `1h`, `1d`, or a bare number of seconds; 1 s to 31 days.
fn parse_bucket(raw: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "bucket",
            format!("{raw:?}: expected a width such as 30s, 15m, 1h, 1d (1 s to 31 d)"),
        )
    };
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if !(1..=MAX_BUCKET_SECS).contains(&secs) {
        return Err(bad());
    }
    Ok(secs)
}

pub(super) fn limit(raw: Option<i64>, default: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "limit",
            format!("{n}: must be 1 to {MAX_LIMIT}"),
        )),
    }
}

async fn measurements(
    State(state): State<AdminState>,
    kind: EntityKind,
    table: &'static str,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<MeasurementQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let id = path_id(id)?;
    let (from, to) = window(&q.from, &q.to, Utc::now() + Duration::minutes(5))?;
    if let Some(m) = &q.metric {
        known_metric(m)?;
    }
    let client = state.db.get().await?;
    exists(&client, kind, table, id).await?;
    let rows = match &q.bucket {
        None => {
            let limit = limit(q.limit, MEASUREMENTS_LIMIT)?;
            client
                .query(
                    "SELECT jsonb_build_object('metric', metric, 'ts', ts, 'value', value,
                         'unit', unit, 'quality', quality, 'received_at', received_at)
                     FROM measurements
                     WHERE entity_type = $1 AND entity_id = $2
                       AND ($3::text IS NULL OR metric = $3) AND ts >= $4 AND ts < $5
                     ORDER BY metric, ts DESC LIMIT $6",
                    &[&kind, &id, &q.metric, &from, &to, &limit],
                )
                .await
        }
        Some(bucket) => {
            let secs = parse_bucket(bucket)?;
            let limit = limit(q.limit, MEASUREMENTS_LIMIT)?;
            client
                .query(
                    "SELECT jsonb_build_object('metric', metric, 'bucket', b, 'unit', min(unit),
                         'avg', avg(value), 'min', min(value), 'max', max(value),
                         'last', (array_agg(value ORDER BY ts DESC))[1], 'count', count(*))
                     FROM (SELECT metric, unit, value, ts,
                                  date_bin(make_interval(secs => $6), ts, 'epoch') AS b
                           FROM measurements
                           WHERE entity_type = $1 AND entity_id = $2
                             AND ($3::text IS NULL OR metric = $3) AND ts >= $4 AND ts < $5) r
                     GROUP BY metric, b ORDER BY metric, b DESC LIMIT $7",
                    &[&kind, &id, &q.metric, &from, &to, &(secs as f64), &limit],
                )
                .await
        }
    }?;
    let items = json_rows(&rows)?;
    Ok(Json(json!({
        "entity_type": kind.as_str(),
        "entity_id": id,
        "from": from,
        "to": to,
        "bucket": q.bucket,
        "items": items,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectionQuery {
    reason: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

async fn rejections(
    State(state): State<AdminState>,
    q: Result<Query<RejectionQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    if let Some(r) = &q.reason
        && !Reason::ALL.iter().any(|x| x.as_str() == r)
    {
        return Err(ApiError::bad_request(
            "reason",
            format!("unknown reason {r:?}"),
        ));
    }
    let since = parse_time("since", &q.since)?.unwrap_or(Utc::now() - Duration::hours(24));
    let limit = limit(q.limit, REJECTIONS_LIMIT)?;
    let client = state.db.get().await?;
    let rows = client
        .query(
            "SELECT jsonb_build_object('id', id, 'received_at', received_at, 'topic', topic,
                 'reason', reason, 'detail', detail, 'entity_type', entity_type,
                 'entity_id', entity_id, 'metric', metric, 'ts', ts,
                 'payload_size', payload_size, 'payload_text', left(payload_text, 4096))
             FROM rejected_readings
             WHERE ($1::text IS NULL OR reason = $1::text::rejection_reason_enum)
               AND received_at >= $2
             ORDER BY received_at DESC LIMIT $3",
            &[&q.reason, &since, &limit],
        )
        .await?;
    let items = json_rows(&rows)?;
    Ok(Json(json!({ "since": since, "items": items })))
}

/// Column 0 of each row, a `jsonb_build_object`, as JSON. Rows can come from other writers (a
/// jsonb number beyond f64 does not decode): a logged 500, never a panic.
pub(super) fn json_rows(rows: &[Row]) -> Result<Vec<Value>, ApiError> {
    rows.iter()
        .map(|r| {
            r.try_get(0).map_err(|e| {
                tracing::error!(error = %pg_error_message(&e), "admin API: a row cannot be read as JSON");
                ApiError::internal()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_widths_parse_with_units_and_bounds() {
        for (raw, secs) in [
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("1d", 86_400),
            ("60", 60),
        ] {
            assert_eq!(parse_bucket(raw).ok(), Some(secs), "{raw}");
        }
        for raw in ["", "0s", "1w", "h", "-5m", "32d", "99999999999999999999d"] {
            assert!(parse_bucket(raw).is_err(), "{raw}");
        }
    }

    /// The described parameters are the ones the handlers take: a query naming every one of
    /// them parses, and the bucket pattern of the document admits the widths that parse.
    #[test]
    fn the_described_parameters_are_the_parsed_ones() {
        let query = |params: &[QueryParam]| {
            params
                .iter()
                .map(|p| format!("{}=1", p.name))
                .collect::<Vec<_>>()
                .join("&")
        };
        let q = format!("http://x/?{}", query(MEASUREMENT_PARAMS));
        let uri: axum::http::Uri = q.parse().expect("uri");
        Query::<MeasurementQuery>::try_from_uri(&uri).expect("every measurement parameter");
        let q = format!("http://x/?{}", query(REJECTION_PARAMS));
        let uri: axum::http::Uri = q.parse().expect("uri");
        Query::<RejectionQuery>::try_from_uri(&uri).expect("every rejection parameter");
        let uri: axum::http::Uri = "http://x/?colour=red".parse().expect("uri");
        assert!(Query::<MeasurementQuery>::try_from_uri(&uri).is_err());
    }
}
