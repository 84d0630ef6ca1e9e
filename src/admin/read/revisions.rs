//! `GET /api/v1/{meters|assets|energy-sources}/{id}/revisions` (CONTRACT.md §7): the versions
//! of an entity's readings that corrections replaced, oldest replacement first.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Accepts, ENTITY_TABLES, QueryParam, ReadRoute, exists, json_rows, known_metric, limit,
    parse_time, path_id, query_error,
};
use crate::admin::{AdminState, ApiError, schema};
use crate::model::EntityKind;

/// Revisions per answer when `limit` is not given.
const REVISIONS_LIMIT: i64 = 1000;

/// The query parameters of `GET …/{id}/revisions` ([`RevisionQuery`]).
pub const REVISION_PARAMS: &[QueryParam] = &[
    QueryParam {
        name: "metric",
        accepts: Accepts::Metric,
        description: "only this metric",
    },
    QueryParam {
        name: "from",
        accepts: Accepts::Time,
        description: "only readings with `ts` at or after this",
    },
    QueryParam {
        name: "to",
        accepts: Accepts::Time,
        description: "only readings with `ts` before this",
    },
    QueryParam {
        name: "limit",
        accepts: Accepts::Limit {
            default: REVISIONS_LIMIT,
        },
        description: "at most this many, the oldest replacements first",
    },
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionQuery {
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
}

pub fn routes() -> Vec<ReadRoute> {
    ENTITY_TABLES
        .iter()
        .filter_map(|&(kind, name)| {
            let table = schema::table(name)?;
            Some(ReadRoute::under(
                table,
                "revisions",
                format!(
                    "Versions of a {}'s readings replaced by corrections, oldest replacement first",
                    table.noun
                ),
                REVISION_PARAMS,
                "revisions",
                get(move |s, p, q| revisions(s, kind, name, p, q)),
            ))
        })
        .collect()
}

async fn revisions(
    State(state): State<AdminState>,
    kind: EntityKind,
    table: &'static str,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<RevisionQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let id = path_id(id)?;
    let from = parse_time("from", &q.from)?;
    let to = parse_time("to", &q.to)?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(ApiError::bad_request("from", "must be before `to`"));
    }
    if let Some(m) = &q.metric {
        known_metric(m)?;
    }
    let limit = limit(q.limit, REVISIONS_LIMIT)?;
    let client = state.db.get().await?;
    exists(&client, kind, table, id).await?;
    let rows = client
        .query(
            "SELECT jsonb_build_object('metric', metric, 'ts', ts, 'value', value, 'unit', unit,
                 'quality', quality, 'received_at', received_at, 'replaced_at', replaced_at)
             FROM measurement_revisions
             WHERE entity_type = $1 AND entity_id = $2
               AND ($3::text IS NULL OR metric = $3)
               AND ($4::timestamptz IS NULL OR ts >= $4)
               AND ($5::timestamptz IS NULL OR ts < $5)
             ORDER BY replaced_at, metric, ts LIMIT $6",
            &[&kind, &id, &q.metric, &from, &to, &limit],
        )
        .await?;
    Ok(Json(json!({ "revisions": json_rows(&rows)? })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_described_parameters_are_the_parsed_ones() {
        let q: Vec<String> = REVISION_PARAMS
            .iter()
            .map(|p| format!("{}=1", p.name))
            .collect();
        let uri: axum::http::Uri = format!("http://x/?{}", q.join("&")).parse().expect("uri");
        Query::<RevisionQuery>::try_from_uri(&uri).expect("every revision parameter");
    }
}
