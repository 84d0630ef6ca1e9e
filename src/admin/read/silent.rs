//! `GET /api/v1/silent` (CONTRACT.md §7): the active entities that stopped reporting, read from
//! the database (`crate::silence`), so every daemon of a shared group answers the same.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Accepts, QueryParam, ReadRoute, json_rows, query_error};
use crate::admin::{AdminState, ApiError};
use crate::model::EntityKind;

pub const SILENT_ROUTE: &str = "/api/v1/silent";

pub const SILENT_PARAMS: &[QueryParam] = &[QueryParam {
    name: "kind",
    accepts: Accepts::Kind,
    description: "only entities of this kind; default: all",
}];

pub fn routes() -> Vec<ReadRoute> {
    vec![ReadRoute {
        table: None,
        path: SILENT_ROUTE.into(),
        operation_id: "listSilent".into(),
        summary: "Active entities silent for longer than completeness.silence_factor x their \
                  reading frequency, longest silent first"
            .into(),
        params: SILENT_PARAMS,
        response: "silent entities",
        errors: &["400", "503"],
        handler: get(silent),
    }]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilentQuery {
    kind: Option<String>,
}

fn parse_kind(raw: &str) -> Result<EntityKind, ApiError> {
    EntityKind::ALL
        .into_iter()
        .find(|k| k.as_str() == raw)
        .ok_or_else(|| {
            ApiError::bad_request(
                "kind",
                format!("{raw:?}: expected meter, asset or energy_source"),
            )
        })
}

async fn silent(
    State(state): State<AdminState>,
    q: Result<Query<SilentQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let kind = q.kind.as_deref().map(parse_kind).transpose()?;
    let client = state.db.get().await?;
    let rows = crate::silence::list(&client, state.silence_factor, kind).await?;
    Ok(Json(json!({ "silent": json_rows(&rows)? })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_by_their_label_only() {
        for k in EntityKind::ALL {
            assert_eq!(parse_kind(k.as_str()).ok(), Some(k));
        }
        for raw in ["", "Meter", "meters", "energy-source"] {
            assert!(parse_kind(raw).is_err(), "{raw}");
        }
        let uri: axum::http::Uri = "http://x/?kind=meter".parse().expect("uri");
        Query::<SilentQuery>::try_from_uri(&uri).expect("the described parameter");
    }
}
