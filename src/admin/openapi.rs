//! The OpenAPI 3.1 document of the admin API (`GET /api/v1/openapi.json`), built from the two
//! descriptions that drive the handlers: the tables of [`schema`] for the CRUD routes and the
//! query parameters of [`read`] for the read side. Nothing here describes a column or a
//! parameter of its own.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::AdminState;
use super::crud::{DEFAULT_LIMIT, MAX_LIMIT};
use super::read;
use super::schema::{Column, Kind, TABLES, Table, pascal_case, schema_name};

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

/// `GET /api/v1/openapi.json`.
pub fn routes() -> Router<AdminState> {
    Router::new().route("/api/v1/openapi.json", get(|| async { Json(openapi()) }))
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
    // The read routes under one row of this table (its readings, revisions, …).
    for r in read::all() {
        if r.table.is_some_and(|rt| rt.name == t.name) {
            links.insert(
                r.operation_id.clone(),
                json!({"operationId": r.operation_id, "parameters": by_id}),
            );
        }
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

/// A read route's query parameters, from the read side's own descriptions.
fn query_params(params: &[read::QueryParam]) -> Vec<Value> {
    params
        .iter()
        .map(|p| param(p.name, "query", p.accepts.schema(), p.description))
        .collect()
}

/// The routes of [`read`], from their own descriptions.
fn read_paths(paths: &mut Map<String, Value>) {
    for r in read::all() {
        let mut parameters = Vec::new();
        if r.table.is_some() {
            let uuid = json!({"type": "string", "format": "uuid"});
            parameters.push(param("id", "path", uuid, ""));
        }
        parameters.extend(query_params(r.params));
        let ok = json_response(r.response, json!({"type": "object"}));
        let get = operation(
            r.operation_id,
            r.summary,
            parameters,
            None,
            &[("200", ok)],
            r.errors,
        );
        paths.insert(r.path, json!({"get": get}));
    }
}

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
