//! Create, read, list, update and delete for every table of the hierarchy, from one set of
//! generic handlers driven by the table descriptions of [`super::schema`]. The same
//! descriptions validate input, build the SQL and generate the OpenAPI document
//! ([`super::openapi`]).
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

use super::schema::{Breach, Column, Param, Rule, Table};
use super::{AdminState, ApiError, JsonObject, json_type};
use crate::db::pg_error_message;

// The schema's names, also reachable here, where the API's tests and callers found them before
// the schema had its own module.
pub use super::schema::{
    CODE_MAX_CHARS, Kind, NAME_MAX_CHARS, TABLES, TEXT_MAX_CHARS, max_chars, schema_name,
};

/// Rows per page of a list when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest `limit` a list accepts.
pub const MAX_LIMIT: i64 = 1000;

/// The CRUD routes of every table.
pub fn routes() -> Router<AdminState> {
    let mut router = Router::new();
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
    let breach = |b: Breach| ApiError::bad_request(col.name, breach_message(b));
    let text = match (col.kind, v) {
        (Kind::Text { .. }, Value::String(s)) => {
            col.check_text(s).map_err(breach)?;
            s.clone()
        }
        (Kind::Text { .. }, _) => return expected("a string"),
        (Kind::Uuid { .. }, Value::String(s)) => match Uuid::parse_str(s) {
            Ok(id) => id.to_string(),
            Err(_) => return bad(format!("{} is not a UUID", quote(s))),
        },
        (Kind::Uuid { .. }, _) => return expected("a UUID string"),
        (Kind::Enum { labels, .. }, Value::String(s)) => match col.check_label(s) {
            Some(label) => label.to_string(),
            None => return bad(format!("{} is not one of: {}", quote(s), labels.join(", "))),
        },
        (Kind::Enum { labels, .. }, _) => {
            return expected(&format!("a string, one of: {}", labels.join(", ")));
        }
        (Kind::Float { .. }, Value::Number(n)) => {
            // A JSON number that is not an f64 cannot reach here (the body parser refuses it);
            // NaN stands in for it all the same.
            col.check_number(n.as_f64().unwrap_or(f64::NAN))
                .map_err(breach)?
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

/// The API's words for a breach of a column's rule.
fn breach_message(b: Breach) -> String {
    match b {
        Breach::TooLong { max, found } => {
            format!("must be at most {max} characters, got {found}")
        }
        Breach::Nul => "must not contain NUL characters".into(),
        Breach::Blank => "must not be empty or blank".into(),
        Breach::NotFinite { .. } => "must be a finite number".into(),
        Breach::OutOfRange { min, max, found } => match (min, max) {
            (Some(min), _) if found < min => format!("must be at least {min}, got {found}"),
            (_, Some(max)) => format!("must be at most {max}, got {found}"),
            _ => format!("is out of range, got {found}"),
        },
    }
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

/// The placeholder of the parameter just pushed onto `args`.
fn placeholder(args: &[Param], col: &Column) -> String {
    col.placeholder(args.len())
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
    let rows = client.query(&sql, &as_sql_params(&args)).await?;
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
        .await?;
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
        if let Rule::Distinct { a, b, message } = rule
            && let (Some(x), Some(y)) = (value(a), value(b))
            && x == y
        {
            return Err(ApiError::bad_request(*b, *message));
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
    let tx = client.transaction().await?;
    let row = tx.query_one(&sql, &as_sql_params(&args)).await?;
    let row = row_json(t, &row)?;
    tx.commit().await?;
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
    let tx = client.transaction().await?;
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
            .await?;
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
            .await?
            .try_get(0)?;
        if cyclic {
            return Err(ApiError::bad_request(
                *column,
                format!("would make this {} its own ancestor (a cycle)", t.noun),
            ));
        }
    }
    let row = tx
        .query_opt(&sql, &as_sql_params(&args))
        .await?
        .ok_or_else(|| not_found(t, &id))?;
    // Read back before COMMIT, as in create.
    let row = row_json(t, &row)?;
    tx.commit().await?;
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
            .await?;
        return if n == 0 {
            Err(not_found(t, &id))
        } else {
            Ok(StatusCode::NO_CONTENT.into_response())
        };
    }
    // Read back before COMMIT, as in create.
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE {} AS t SET active = false WHERE t.id = $1::text::uuid
                 RETURNING to_jsonb(t)",
                t.name
            ),
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found(t, &id))?;
    let row = row_json(t, &row)?;
    tx.commit().await?;
    Ok(Json(row).into_response())
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
}
