//! Energy per interval (CONTRACT.md §7): `GET /api/v1/meters/{id}/intervals` from one meter's
//! cumulative `energy` register, and `GET /api/v1/sites/{id}/intervals`, the site's load profile
//! (per interval, the energy of its active meters summed per category).
//!
//! The arithmetic is the core's ([`crate::intervals`]); this module finds the boundaries (the
//! local midnights of `1d` from PostgreSQL, which has the time-zone database) and streams each
//! meter's readings through the core's accumulator in one ordered index scan of the primary key,
//! plus one probe on either side of the window. Where this runs (here, not in SQL window
//! functions) was chosen by measurement: BENCHMARKS.md, "Interval energy".
//!
//! What one request can cost is bounded: at most [`MAX_INTERVALS`] intervals (checked before
//! anything is read) and at most [`MAX_READINGS`] readings read; memory grows with the
//! intervals only, since readings are folded as they arrive.

use std::pin::pin;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{Accepts, QueryParam, ReadRoute, query_error};
use crate::admin::{AdminState, ApiError, schema};
use crate::intervals::{self, Accumulator, Interval, Period, Sample};
use crate::model::Quality;

/// Most intervals one request may ask for (about 2.8 years of `15m`).
pub const MAX_INTERVALS: usize = 100_000;
/// Most readings one request may read, over all its meters (about 9.5 years of 1-minute
/// readings; at the measured rate, some seconds of work).
pub const MAX_READINGS: u64 = 5_000_000;

/// The query parameters of both routes ([`IntervalQuery`]).
pub const INTERVAL_PARAMS: &[QueryParam] = &[
    QueryParam {
        name: "from",
        accepts: Accepts::Time,
        description: "inclusive: the intervals whose start lies in [from, to); default: 24 h before `to`",
    },
    QueryParam {
        name: "to",
        accepts: Accepts::Time,
        description: "exclusive; default: now",
    },
    QueryParam {
        name: "period",
        accepts: Accepts::Period,
        description: "15m and 1h aligned in UTC; 1d from midnight to midnight in the site's timezone",
    },
];

/// The two routes, for [`super::all`].
pub fn routes() -> Vec<ReadRoute> {
    let mut routes = Vec::new();
    if let Some(meters) = schema::table("meters") {
        routes.push(ReadRoute::under(
            meters,
            "intervals",
            "Energy per interval from the meter's cumulative `energy` register (CONTRACT §7): \
             interpolated at the boundaries, through glitches, resets and rollovers"
                .into(),
            INTERVAL_PARAMS,
            "{meter_id, period, unit, intervals: [{start, end, energy, quality, readings}]}; \
             absent intervals are left out",
            get(meter),
        ));
    }
    if let Some(sites) = schema::table("sites") {
        routes.push(ReadRoute::under(
            sites,
            "intervals",
            "The site's load profile: per interval, the energy of its active CONS, PROD and INJ \
             meters summed per category"
                .into(),
            INTERVAL_PARAMS,
            "{site_id, period, unit, meters, intervals: [{start, end, energy: {CONS, PROD, INJ}, \
             quality, meters}]}",
            get(site),
        ));
    }
    routes
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalQuery {
    from: Option<String>,
    to: Option<String>,
    period: Option<String>,
}

/// A request's parsed parameters.
struct Window {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    period: Period,
}

fn window(q: &IntervalQuery) -> Result<Window, ApiError> {
    let period = match q.period.as_deref() {
        None => Period::Min15,
        Some(p) => Period::parse(p).ok_or_else(|| {
            ApiError::bad_request("period", format!("{p:?}: expected 15m, 1h or 1d"))
        })?,
    };
    let (from, to) = super::window(&q.from, &q.to, Utc::now())?;
    Ok(Window { from, to, period })
}

fn too_many(e: intervals::TooMany) -> ApiError {
    ApiError::bad_request("to", format!("{e} (period)"))
}

/// The boundaries of the window's intervals: computed for `15m` and `1h`, from PostgreSQL's
/// time-zone database for `1d` (local midnights of `timezone`).
async fn boundaries(
    client: &tokio_postgres::Client,
    w: &Window,
    timezone: &str,
) -> Result<Vec<DateTime<Utc>>, ApiError> {
    if let Some(step) = w.period.fixed() {
        return intervals::aligned(w.from, w.to, step, MAX_INTERVALS).map_err(too_many);
    }
    // A local day is at least 23 h: bound the count before asking for the midnights.
    let days = (w.to - w.from).num_hours() / 23 + 2;
    if days > MAX_INTERVALS as i64 {
        return Err(too_many(intervals::TooMany {
            intervals: days,
            max: MAX_INTERVALS,
        }));
    }
    let rows = client
        .query(
            "SELECT d AT TIME ZONE $3
             FROM generate_series(($1::timestamptz AT TIME ZONE $3)::date::timestamp,
                                  ($2::timestamptz AT TIME ZONE $3)::date::timestamp + interval '1 day',
                                  interval '1 day') AS d",
            &[&w.from, &w.to, &timezone],
        )
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == SqlState::INVALID_PARAMETER_VALUE => ApiError::bad_request(
                "period",
                format!("1d needs the site's timezone, and {timezone:?} is not a time zone PostgreSQL knows"),
            ),
            _ => ApiError::from_pg(&e),
        })?;
    let midnights = rows
        .iter()
        .map(|r| r.try_get::<_, DateTime<Utc>>(0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(intervals::within(midnights, w.from, w.to))
}

/// What the arithmetic needs of a meter.
struct MeterSpec {
    id: Uuid,
    max_gap: TimeDelta,
    register_max: Option<f64>,
}

impl MeterSpec {
    /// From `reading_frequency` and the text of `metadata->>'register_max'`: a positive finite
    /// number (a JSON number, or a string holding one); anything else means no rollover.
    fn new(id: Uuid, frequency: &str, register_max: Option<&str>) -> Result<Self, ApiError> {
        let max_gap = intervals::max_gap(frequency).ok_or_else(|| {
            tracing::error!(%id, frequency, "admin API: a reading frequency the core does not know");
            ApiError::internal()
        })?;
        let register_max = register_max
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|m| m.is_finite() && *m > 0.0);
        Ok(Self {
            id,
            max_gap,
            register_max,
        })
    }
}

const READING_COLUMNS: &str = "SELECT ts, value, quality FROM measurements
     WHERE entity_type = 'meter' AND entity_id = $1 AND metric = 'energy'";

fn sample(row: &tokio_postgres::Row) -> Result<Sample, ApiError> {
    Ok(Sample {
        ts: row.try_get(0)?,
        value: row.try_get(1)?,
        quality: row.try_get(2)?,
    })
}

/// One meter's intervals between `bounds` (absent ones `None`): the reading at or before the
/// first boundary, those in between in one ordered scan, the one at or after the last.
/// `budget` is the readings the request may still read.
async fn meter_intervals(
    client: &tokio_postgres::Client,
    m: &MeterSpec,
    bounds: Vec<DateTime<Utc>>,
    budget: &mut u64,
) -> Result<Vec<Option<Interval>>, ApiError> {
    let (Some(&first), Some(&last)) = (bounds.first(), bounds.last()) else {
        return Ok(Vec::new());
    };
    let mut acc = Accumulator::new(bounds, m.max_gap, m.register_max);
    let before = client
        .query_opt(
            &format!("{READING_COLUMNS} AND ts <= $2 ORDER BY ts DESC LIMIT 1"),
            &[&m.id, &first],
        )
        .await?;
    if let Some(row) = before {
        acc.push(sample(&row)?);
    }
    let params: [&(dyn ToSql + Sync); 3] = [&m.id, &first, &last];
    let rows = client
        .query_raw(
            &format!("{READING_COLUMNS} AND ts > $2 AND ts < $3 ORDER BY ts"),
            params.iter().map(|p| *p as &dyn ToSql),
        )
        .await?;
    let mut rows = pin!(rows);
    while let Some(row) = rows.try_next().await? {
        if *budget == 0 {
            return Err(ApiError::bad_request(
                "from",
                format!(
                    "the window holds more than {MAX_READINGS} readings: ask for a shorter one"
                ),
            ));
        }
        *budget -= 1;
        acc.push(sample(&row)?);
    }
    let after = client
        .query_opt(
            &format!("{READING_COLUMNS} AND ts >= $2 ORDER BY ts LIMIT 1"),
            &[&m.id, &last],
        )
        .await?;
    if let Some(row) = after {
        acc.push(sample(&row)?);
    }
    Ok(acc.finish())
}

#[derive(Serialize)]
struct MeterAnswer {
    meter_id: Uuid,
    period: &'static str,
    unit: &'static str,
    intervals: Vec<MeterInterval>,
}

#[derive(Serialize)]
struct MeterInterval {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    energy: f64,
    quality: &'static str,
    readings: u64,
}

async fn meter(
    State(state): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<IntervalQuery>, QueryRejection>,
) -> Result<Json<MeterAnswer>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let id = super::path_id(id)?;
    let w = window(&q)?;
    let client = state.db.get().await?;
    let row = client
        .query_opt(
            "SELECT m.reading_frequency::text, m.metadata->>'register_max', s.timezone
             FROM meters m JOIN sites s ON s.id = m.site_id WHERE m.id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no meter {id}")))?;
    let frequency: String = row.try_get(0)?;
    let register_max: Option<String> = row.try_get(1)?;
    let timezone: String = row.try_get(2)?;
    let spec = MeterSpec::new(id, &frequency, register_max.as_deref())?;
    let bounds = boundaries(&client, &w, &timezone).await?;
    let mut budget = MAX_READINGS;
    let intervals = meter_intervals(&client, &spec, bounds, &mut budget)
        .await?
        .into_iter()
        .flatten()
        .map(|i| MeterInterval {
            start: i.start,
            end: i.end,
            energy: i.energy,
            quality: i.quality.as_str(),
            readings: i.readings,
        })
        .collect();
    Ok(Json(MeterAnswer {
        meter_id: id,
        period: w.period.as_str(),
        unit: "kWh",
        intervals,
    }))
}

/// The categories of a site's load profile (STOR meters are left out: a battery's register
/// counts both directions).
const CATEGORIES: [&str; 3] = ["CONS", "PROD", "INJ"];

/// Energy per category of one site interval; `None` where no meter of that category
/// contributed.
#[derive(Serialize, Default, Clone, Copy)]
struct PerCategory {
    #[serde(rename = "CONS")]
    cons: Option<f64>,
    #[serde(rename = "PROD")]
    prod: Option<f64>,
    #[serde(rename = "INJ")]
    inj: Option<f64>,
}

impl PerCategory {
    fn add(&mut self, category: &str, energy: f64) {
        let slot = match category {
            "CONS" => &mut self.cons,
            "PROD" => &mut self.prod,
            _ => &mut self.inj,
        };
        *slot = Some(slot.unwrap_or(0.0) + energy);
    }
}

#[derive(Default, Clone, Copy)]
struct SiteSlot {
    energy: PerCategory,
    meters: u32,
    estimated: bool,
}

#[derive(Serialize)]
struct SiteAnswer {
    site_id: Uuid,
    period: &'static str,
    unit: &'static str,
    /// The site's active CONS, PROD and INJ meters: what a complete interval sums.
    meters: u32,
    intervals: Vec<SiteInterval>,
}

#[derive(Serialize)]
struct SiteInterval {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    energy: PerCategory,
    /// `estimated` when a meter's interval was, or when a meter is missing from it.
    quality: &'static str,
    /// The meters whose interval is present.
    meters: u32,
}

async fn site(
    State(state): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<IntervalQuery>, QueryRejection>,
) -> Result<Json<SiteAnswer>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let id = super::path_id(id)?;
    let w = window(&q)?;
    let client = state.db.get().await?;
    let row = client
        .query_opt(
            "SELECT s.timezone, s.active AND p.active
             FROM sites s JOIN portfolios p ON p.id = s.portfolio_id WHERE s.id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no site {id}")))?;
    let timezone: String = row.try_get(0)?;
    let active: bool = row.try_get(1)?;
    let bounds = boundaries(&client, &w, &timezone).await?;
    // Active all the way up (CONTRACT §7): none under an inactive site or portfolio.
    let meters = if active {
        client
            .query(
                "SELECT id, category::text, reading_frequency::text, metadata->>'register_max'
                 FROM meters WHERE site_id = $1 AND active AND category::text = ANY($2)
                 ORDER BY id",
                &[&id, &CATEGORIES.as_slice()],
            )
            .await?
    } else {
        Vec::new()
    };
    let mut slots = vec![SiteSlot::default(); bounds.len().saturating_sub(1)];
    let mut budget = MAX_READINGS;
    for m in &meters {
        let category: String = m.try_get(1)?;
        let frequency: String = m.try_get(2)?;
        let register_max: Option<String> = m.try_get(3)?;
        let spec = MeterSpec::new(m.try_get(0)?, &frequency, register_max.as_deref())?;
        let got = meter_intervals(&client, &spec, bounds.clone(), &mut budget).await?;
        for (slot, i) in slots.iter_mut().zip(got) {
            if let Some(i) = i {
                slot.energy.add(&category, i.energy);
                slot.meters += 1;
                slot.estimated |= i.quality != Quality::Good;
            }
        }
    }
    let total = u32::try_from(meters.len()).unwrap_or(u32::MAX);
    let intervals = slots
        .iter()
        .zip(bounds.windows(2))
        .filter(|(s, _)| s.meters > 0)
        .map(|(s, b)| SiteInterval {
            start: b[0],
            end: b[1],
            energy: s.energy,
            quality: if s.estimated || s.meters < total {
                Quality::Estimated.as_str()
            } else {
                Quality::Good.as_str()
            },
            meters: s.meters,
        })
        .collect();
    Ok(Json(SiteAnswer {
        site_id: id,
        period: w.period.as_str(),
        unit: "kWh",
        meters: total,
        intervals,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_described_parameters_are_the_parsed_ones() {
        let q: Vec<String> = INTERVAL_PARAMS
            .iter()
            .map(|p| format!("{}=1", p.name))
            .collect();
        let uri: axum::http::Uri = format!("http://x/?{}", q.join("&")).parse().expect("uri");
        Query::<IntervalQuery>::try_from_uri(&uri).expect("every interval parameter");
    }

    #[test]
    fn register_max_is_a_positive_number_or_nothing() {
        let id = Uuid::nil();
        for (raw, want) in [
            (Some("100000"), Some(100_000.0)),
            (Some(" 99999.5 "), Some(99_999.5)),
            (Some("0"), None),
            (Some("-5"), None),
            (Some("lots"), None),
            (Some("NaN"), None),
            (None, None),
        ] {
            let spec = MeterSpec::new(id, "15min", raw).expect("a known frequency");
            assert_eq!(spec.register_max, want, "{raw:?}");
        }
    }
}
