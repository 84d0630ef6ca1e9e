//! `GET /api/v1/meters/{id}/completeness` and `GET /api/v1/sites/{id}/completeness`
//! (CONTRACT.md §7): how many of the slots of a window hold a reading.
//!
//! Slots are the database's (`reading_slot_*` of `0007_completeness.sql`: UTC-aligned, `daily`
//! from local midnight in the site's time zone), so the time zone arithmetic happens where the
//! time zone lives. No slot is ever generated: `expected` is arithmetic on the window's two
//! boundaries, `present` counts the distinct slots of the readings found through the primary
//! key, and the gaps are the holes between consecutive present slots. So the cost follows the
//! readings stored, not the window's length.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Accepts, QueryParam, ReadRoute, json_rows, known_metric, query_error};
use crate::admin::{AdminState, ApiError, schema};

/// The metric when `metric` is not given.
pub const DEFAULT_METRIC: &str = "energy";

pub const COMPLETENESS_PARAMS: &[QueryParam] = &[
    QueryParam {
        name: "metric",
        accepts: Accepts::Metric,
        description: "default: energy",
    },
    QueryParam {
        name: "from",
        accepts: Accepts::Time,
        description: "inclusive (slots starting at or after it); default: 24 h before `to`",
    },
    QueryParam {
        name: "to",
        accepts: Accepts::Time,
        description: "exclusive (slots starting before it); default: now",
    },
];

pub fn routes() -> Vec<ReadRoute> {
    let mut routes = Vec::new();
    if let Some(meters) = schema::table("meters") {
        routes.push(ReadRoute::under(
            meters,
            "completeness",
            format!(
                "Completeness of a meter's readings: expected and present slots of its reading \
                 frequency, and the gaps (the earliest {MAX_GAPS}; `gaps_total` counts them all)"
            ),
            COMPLETENESS_PARAMS,
            "completeness",
            get(meter),
        ));
    }
    if let Some(sites) = schema::table("sites") {
        routes.push(ReadRoute::under(
            sites,
            "completeness",
            "Completeness of each active meter of a site, and the site's totals".into(),
            COMPLETENESS_PARAMS,
            "completeness per meter",
            get(site),
        ));
    }
    routes
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletenessQuery {
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// A checked window and metric.
struct Window {
    metric: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

fn window(q: CompletenessQuery) -> Result<Window, ApiError> {
    let (from, to) = super::window(&q.from, &q.to, Utc::now())?;
    let metric = q.metric.unwrap_or_else(|| DEFAULT_METRIC.to_string());
    known_metric(&metric)?;
    Ok(Window { metric, from, to })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A site's `timezone` is free text in the schema: one PostgreSQL does not know fails the
/// query with 22023. Said as such (the request itself was fine, but 400 is what the route
/// documents for a request it cannot answer), never as a 500.
fn query_failed(e: tokio_postgres::Error) -> ApiError {
    if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE) {
        return ApiError::bad_request(
            "timezone",
            "the site's timezone is not a time zone PostgreSQL knows (pg_timezone_names); \
             correct the site",
        );
    }
    e.into()
}

/// `present / expected`, 1.0 when nothing is expected.
fn ratio(present: i64, expected: i64) -> f64 {
    if expected <= 0 {
        1.0
    } else {
        present as f64 / expected as f64
    }
}

/// One meter: its window `[lo, hi)` cut at slot boundaries (the slots whose start lies in
/// `[from, to)`), the present slots, and the gaps as runs. The gaps are the holes between
/// consecutive covered slots, with the window's ends as sentinels.
const METER: &str = "
    WITH mt AS (
        SELECT m.id, m.reading_frequency AS f, s.timezone AS tz
        FROM meters m JOIN sites s ON s.id = m.site_id
        WHERE m.id = $1
    ), sp AS (
        SELECT mt.*, w.lo, greatest(w.lo, w.hi) AS hi
        FROM mt CROSS JOIN LATERAL (
            SELECT reading_slot_ceil(mt.f, mt.tz, $3) AS lo,
                   reading_slot_ceil(mt.f, mt.tz, $4) AS hi) w
    ), h AS (
        SELECT DISTINCT reading_slot_start(sp.f, sp.tz, r.ts) AS start
        FROM sp JOIN measurements r
          ON r.entity_type = 'meter' AND r.entity_id = sp.id AND r.metric = $2
         AND r.ts >= sp.lo AND r.ts < sp.hi
    ), cover AS (
        SELECT h.start, reading_slot_end(sp.f, sp.tz, h.start) AS stop FROM h, sp
        UNION ALL SELECT NULL, sp.lo FROM sp
        UNION ALL SELECT sp.hi, NULL FROM sp
    ), seq AS (
        SELECT start, lag(stop) OVER (ORDER BY start NULLS FIRST) AS prev FROM cover
    ), gaps AS (
        SELECT seq.prev AS gfrom, seq.start AS gto,
               reading_slots_between(sp.f, sp.tz, seq.prev, seq.start) AS n
        FROM seq, sp WHERE seq.start > seq.prev
    ), shown AS (
        SELECT * FROM gaps ORDER BY gfrom LIMIT $5
    )
    SELECT sp.f::text, reading_slots_between(sp.f, sp.tz, sp.lo, sp.hi),
           (SELECT count(*) FROM h),
           (SELECT count(*) FROM gaps),
           (SELECT coalesce(array_agg(gfrom ORDER BY gfrom), '{}') FROM shown),
           (SELECT coalesce(array_agg(gto ORDER BY gfrom), '{}') FROM shown),
           (SELECT coalesce(array_agg(n ORDER BY gfrom), '{}') FROM shown)
    FROM sp";

/// Most gaps a meter's answer lists (the earliest); `gaps_total` counts them all. Without it one
/// request for years of an intermittent 1-min meter would build millions of objects in the
/// daemon that ingests (its memory is the ingest path's too).
pub const MAX_GAPS: i64 = 10_000;

async fn meter(
    State(state): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<CompletenessQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let id = super::path_id(id)?;
    let w = window(q)?;
    let client = state.db.get().await?;
    let row = client
        .query_opt(METER, &[&id, &w.metric, &w.from, &w.to, &MAX_GAPS])
        .await
        .map_err(query_failed)?
        .ok_or_else(|| ApiError::not_found(format!("no meter {id}")))?;
    let frequency: String = row.try_get(0)?;
    let expected: i64 = row.try_get(1)?;
    let present: i64 = row.try_get(2)?;
    let gaps_total: i64 = row.try_get(3)?;
    let gap_from: Vec<DateTime<Utc>> = row.try_get(4)?;
    let gap_to: Vec<DateTime<Utc>> = row.try_get(5)?;
    let missing: Vec<i64> = row.try_get(6)?;
    let gaps: Vec<Value> = gap_from
        .into_iter()
        .zip(gap_to)
        .zip(missing)
        .map(|((from, to), missing)| {
            json!({"from": rfc3339(from), "to": rfc3339(to), "missing": missing})
        })
        .collect();
    Ok(Json(json!({
        "meter_id": id,
        "metric": w.metric,
        "reading_frequency": frequency,
        "from": rfc3339(w.from),
        "to": rfc3339(w.to),
        "expected": expected,
        "present": present,
        "completeness": ratio(present, expected),
        "gaps": gaps,
        "gaps_total": gaps_total,
    })))
}

/// Every active meter of a site (active all the way up: `active_entities`), each with its own
/// frequency; `present` per meter from one index range scan of its readings.
pub const SITE: &str = "
    WITH mt AS (
        SELECT m.id, m.external_id, m.name, m.reading_frequency AS f, s.timezone AS tz
        FROM active_entities e
        JOIN meters m ON m.id = e.id
        JOIN sites s ON s.id = m.site_id
        WHERE e.entity_type = 'meter' AND m.site_id = $1
    )
    SELECT jsonb_build_object('meter_id', mt.id, 'external_id', mt.external_id,
               'name', mt.name, 'reading_frequency', mt.f,
               'expected', w.expected, 'present', p.present),
           w.expected, p.present
    FROM mt
    CROSS JOIN LATERAL (
        SELECT b.lo, b.hi, reading_slots_between(mt.f, mt.tz, b.lo, b.hi) AS expected
        FROM (SELECT a.lo, greatest(a.lo, a.hi) AS hi
              FROM (SELECT reading_slot_ceil(mt.f, mt.tz, $3) AS lo,
                           reading_slot_ceil(mt.f, mt.tz, $4) AS hi) a) b
    ) w
    -- An aggregate in a LATERAL join, not a scalar subquery: it is not pulled up into the
    -- select list, where each mention would scan the readings again (measured: twice).
    CROSS JOIN LATERAL (
        SELECT count(DISTINCT reading_slot_start(mt.f, mt.tz, r.ts)) AS present
        FROM measurements r
        WHERE r.entity_type = 'meter' AND r.entity_id = mt.id AND r.metric = $2
          AND r.ts >= w.lo AND r.ts < w.hi
    ) p
    ORDER BY mt.name, mt.id";

async fn site(
    State(state): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<CompletenessQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let id = super::path_id(id)?;
    let w = window(q)?;
    let client = state.db.get().await?;
    if client
        .query_opt("SELECT 1 FROM sites WHERE id = $1", &[&id])
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!("no site {id}")));
    }
    let rows = client
        .query(SITE, &[&id, &w.metric, &w.from, &w.to])
        .await
        .map_err(query_failed)?;
    let mut meters = json_rows(&rows)?;
    let (mut expected, mut present) = (0i64, 0i64);
    for (row, m) in rows.iter().zip(meters.iter_mut()) {
        let e: i64 = row.try_get(1)?;
        let p: i64 = row.try_get(2)?;
        expected += e;
        present += p;
        if let Some(obj) = m.as_object_mut() {
            obj.insert("completeness".into(), json!(ratio(p, e)));
        }
    }
    Ok(Json(json!({
        "site_id": id,
        "metric": w.metric,
        "from": rfc3339(w.from),
        "to": rfc3339(w.to),
        "meters": meters,
        "expected": expected,
        "present": present,
        "completeness": ratio(present, expected),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completeness_is_one_when_nothing_is_expected() {
        assert_eq!(ratio(0, 0), 1.0);
        assert_eq!(ratio(3, 4), 0.75);
        assert_eq!(ratio(0, 4), 0.0);
    }

    #[test]
    fn the_window_defaults_and_checks_name_the_parameter() {
        let q = |metric: Option<&str>, from: Option<&str>, to: Option<&str>| CompletenessQuery {
            metric: metric.map(str::to_owned),
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
        };
        let w = window(q(None, None, Some("2026-11-02T00:00:00Z"))).expect("defaults");
        assert_eq!(w.metric, "energy");
        assert_eq!(rfc3339(w.from), "2026-11-01T00:00:00Z");
        let field = |r: Result<Window, ApiError>| r.err().and_then(|e| e.field);
        let t = "2026-11-02T00:00:00Z";
        assert_eq!(
            field(window(q(Some("vibes"), None, None))).as_deref(),
            Some("metric")
        );
        assert_eq!(
            field(window(q(None, Some(t), Some(t)))).as_deref(),
            Some("from")
        );
        assert_eq!(
            field(window(q(None, Some("yesterday"), None))).as_deref(),
            Some("from")
        );
        assert_eq!(
            field(window(q(None, None, Some("soon")))).as_deref(),
            Some("to")
        );
        let uri: axum::http::Uri = "http://x/?metric=1&from=1&to=1".parse().expect("uri");
        Query::<CompletenessQuery>::try_from_uri(&uri).expect("every described parameter");
    }
}
