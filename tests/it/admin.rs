//! The admin API (CONTRACT.md §5, issue 4): served in-process by `admin::router` on a free
//! loopback port against a fresh, migrated database, and spoken to with a tiny HTTP/1.1 client.

use std::collections::{BTreeMap, BTreeSet};

use enalysis_ingest::admin::{self, AdminState, crud};
use enalysis_ingest::config::Config;
use enalysis_ingest::db::Db;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;
use crate::support;

const TOKEN: &str = "test-token-0123456789";

/// The admin router served on 127.0.0.1:0 until dropped.
struct Api {
    port: u16,
    token: String,
    db_url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// Asserts an error response: status, `code` and `field`; returns the message.
    fn assert_error(&self, status: u16, code: &str, field: Option<&str>) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{self:?}");
        assert_eq!(v["error"]["field"].as_str(), field, "{self:?}");
        let message = v["error"]["message"]
            .as_str()
            .expect("a message")
            .to_string();
        assert!(!message.is_empty());
        // Nothing of SQL or the driver leaks into a body.
        for leak in [
            "SELECT", "INSERT", "UPDATE ", "DELETE", "ERROR", "violates", "$1", "::", "db error",
            "relation",
        ] {
            assert!(!self.body.contains(leak), "{leak:?} leaked: {self:?}");
        }
        message
    }
}

fn state(db_url: &str) -> AdminState {
    let cfg = Config::load_from(None, [("DATABASE_URL".to_string(), db_url.to_string())])
        .expect("config");
    AdminState {
        db: Db::new(&cfg.database).expect("pool"),
        silence_factor: cfg.completeness.silence_factor,
    }
}

/// Serves `app` on a free loopback port until the task is aborted.
async fn serve(app: axum::Router) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (port, server)
}

impl Api {
    async fn start() -> Api {
        Self::start_with(&support::migrated_db().await, TOKEN).await
    }

    async fn start_with(db_url: &str, token: &str) -> Api {
        let (port, server) = serve(admin::router(state(db_url), token.to_string())).await;
        Api {
            port,
            token: token.to_string(),
            db_url: db_url.to_string(),
            server,
        }
    }

    async fn db(&self) -> tokio_postgres::Client {
        support::connect(&self.db_url).await
    }

    /// Sends `head` (request line and headers, without the blank line) and `body`.
    async fn raw(&self, head: &str, body: &[u8]) -> Resp {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        let mut request = format!("{head}\r\nHost: x\r\nConnection: close\r\n");
        if !body.is_empty() {
            request += &format!("Content-Length: {}\r\n", body.len());
        }
        request += "\r\n";
        let (mut rd, mut wr) = stream.split();
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        // Write and read at once: the server may answer (413) before it has read the body.
        let write = async {
            let _ = wr.write_all(&bytes).await;
        };
        let read = async {
            let mut out = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    // A reset after the response (unread body) ends the exchange too.
                    Err(_) if !out.is_empty() => break,
                    Err(e) => panic!("read response: {e}"),
                }
            }
            out
        };
        let ((), out) = tokio::join!(write, read);
        let text = String::from_utf8(out).expect("UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{head}"
        );
        Resp {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    /// A request with the right token; a JSON body when given.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nAuthorization: Bearer {}",
            self.token
        );
        let body = match body {
            Some(v) => {
                head += "\r\nContent-Type: application/json";
                v.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        self.raw(&head, &body).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None).await
    }

    /// POSTs and expects 201; returns the row.
    async fn create(&self, collection: &str, body: Value) -> Value {
        let r = self
            .call("POST", &format!("/api/v1/{collection}"), Some(body))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.json()
    }
}

fn id(row: &Value) -> String {
    row["id"].as_str().expect("an id").to_string()
}

/// Row counts of every table of the hierarchy: "nothing was written" is "these did not change".
async fn counts(client: &tokio_postgres::Client) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for t in crud::TABLES {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {}", t.name), &[])
            .await
            .expect("count")
            .get(0);
        out.insert(t.name.to_string(), n);
    }
    out
}

#[tokio::test]
async fn a_hierarchy_is_created_read_updated_deactivated_and_deleted_with_its_subtree() {
    let api = Api::start().await;
    let p = api
        .create(
            "portfolios",
            json!({"name": "Acme", "metadata": {"owner": "ops"}}),
        )
        .await;
    assert_eq!(p["name"], "Acme");
    assert_eq!(p["active"], true);
    assert_eq!(p["metadata"], json!({"owner": "ops"}));
    assert_eq!(p["description"], Value::Null);
    let created = p["created_at"].as_str().expect("created_at");
    chrono::DateTime::parse_from_rfc3339(created).expect("RFC 3339 timestamps");

    let site = api
        .create(
            "sites",
            json!({"portfolio_id": id(&p), "name": "DC1", "industry_type": "datacenter",
                   "latitude": 52.37, "longitude": 4.9, "timezone": "Europe/Amsterdam"}),
        )
        .await;
    assert_eq!(site["industry_type"], "datacenter");
    assert_eq!(site["latitude"], 52.37);
    let meter = api
        .create(
            "meters",
            json!({"site_id": id(&site), "name": "Main", "external_id": "EAN-1", "category": "CONS",
                   "description": "incomer"}),
        )
        .await;
    assert_eq!(meter["reading_frequency"], "15min", "the default");
    let parent = api
        .create(
            "assets",
            json!({"meter_id": id(&meter), "name": "UPS", "rated_power_kw": 250}),
        )
        .await;
    let child = api
        .create(
            "assets",
            json!({"meter_id": id(&meter), "name": "Rack 1", "parent_asset_id": id(&parent)}),
        )
        .await;
    api.create(
        "asset-connections",
        json!({"source_asset_id": id(&parent), "target_asset_id": id(&child),
               "relationship": "energy_flow"}),
    )
    .await;
    api.create(
        "energy-sources",
        json!({"meter_id": id(&meter), "name": "PV", "kind": "solar", "capacity_kw": 120.5}),
    )
    .await;
    api.create(
        "grid-links",
        json!({"site_id": id(&site), "name": "Grid", "direction": "bi",
               "tariff_structure": {"peak": 0.31}}),
    )
    .await;
    api.create(
        "recommendations",
        json!({"site_id": id(&site), "title": "Shift load", "category": "efficiency",
               "roi_percent": -3.5}),
    )
    .await;

    // Read one, list by parent.
    let got = api.get(&format!("/api/v1/meters/{}", id(&meter))).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json(), meter);
    let children = api
        .get(&format!("/api/v1/assets?parent_asset_id={}", id(&parent)))
        .await
        .json();
    assert_eq!(children["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(children["items"][0]["id"], child["id"]);
    assert_eq!(children["next_cursor"], Value::Null);
    let top = api.get("/api/v1/assets?parent_asset_id=null").await.json();
    assert_eq!(top["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(top["items"][0]["id"], parent["id"]);

    // Patch: only the given fields change; null clears a nullable one.
    let r = api
        .call(
            "PATCH",
            &format!("/api/v1/meters/{}", id(&meter)),
            Some(json!({"name": "Main incomer", "description": null, "category": "PROD"})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let patched = r.json();
    assert_eq!(patched["name"], "Main incomer");
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["category"], "PROD");
    assert_eq!(patched["external_id"], "EAN-1");
    assert_eq!(patched["created_at"], meter["created_at"]);
    assert_ne!(patched["updated_at"], meter["updated_at"]);

    // Soft delete: the row stays, inactive, and the active filter sees it.
    let r = api
        .call("DELETE", &format!("/api/v1/meters/{}", id(&meter)), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["active"], false);
    let inactive = api
        .get(&format!(
            "/api/v1/meters?site_id={}&active=false",
            id(&site)
        ))
        .await
        .json();
    assert_eq!(inactive["items"][0]["id"], meter["id"]);
    let active = api.get("/api/v1/meters?active=true").await.json();
    assert_eq!(active["items"], json!([]));

    // Hard delete of the portfolio removes everything under it.
    let client = api.db().await;
    assert!(counts(&client).await.values().any(|n| *n > 0));
    let r = api
        .call(
            "DELETE",
            &format!("/api/v1/portfolios/{}?hard=true", id(&p)),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    for (table, n) in counts(&client).await {
        assert_eq!(n, 0, "{table} after the cascade");
    }
    api.get(&format!("/api/v1/sites/{}", id(&site)))
        .await
        .assert_error(404, "not_found", None);
    api.call(
        "DELETE",
        &format!("/api/v1/portfolios/{}?hard=true", id(&p)),
        None,
    )
    .await
    .assert_error(404, "not_found", None);
}

#[tokio::test]
async fn every_resource_supports_create_get_list_patch_and_both_deletes() {
    let api = Api::start().await;
    let client = api.db().await;
    let ids = support::insert_hierarchy(&client).await;
    let (site, meter, asset) = (
        ids.site.to_string(),
        ids.meter.to_string(),
        ids.asset.to_string(),
    );
    let other_asset = id(&api
        .create("assets", json!({"meter_id": meter, "name": "Fan"}))
        .await);
    // (collection, parent filter, create body, patch body)
    let cases = [
        (
            "portfolios",
            None,
            json!({"name": "Another"}),
            json!({"description": "d"}),
        ),
        (
            "sites",
            Some(("portfolio_id", ids.portfolio.to_string())),
            json!({"portfolio_id": ids.portfolio, "name": "S2"}),
            json!({"industry_type": "logistics"}),
        ),
        (
            "meters",
            Some(("site_id", site.clone())),
            json!({"site_id": site, "name": "M2", "category": "STOR"}),
            json!({"reading_frequency": "1min"}),
        ),
        (
            "assets",
            Some(("meter_id", meter.clone())),
            json!({"meter_id": meter, "name": "A2", "external_id": "a2"}),
            json!({"rated_power_kw": 7.5}),
        ),
        (
            "asset-connections",
            Some(("source_asset_id", other_asset.clone())),
            json!({"source_asset_id": other_asset, "target_asset_id": asset,
                   "relationship": "dependency"}),
            json!({"direction": "bi"}),
        ),
        (
            "energy-sources",
            Some(("meter_id", meter.clone())),
            json!({"meter_id": meter, "name": "Genset", "kind": "generator"}),
            json!({"carbon_intensity_g_per_kwh": 650}),
        ),
        (
            "grid-links",
            Some(("site_id", site.clone())),
            json!({"site_id": site, "name": "Backup feed", "direction": "in"}),
            json!({"capacity_kw": 500}),
        ),
        (
            "recommendations",
            Some(("site_id", site.clone())),
            json!({"site_id": site, "title": "Battery", "category": "storage"}),
            json!({"status": "accepted"}),
        ),
    ];
    for (collection, filter, body, patch) in cases {
        let row = api.create(collection, body.clone()).await;
        for (k, v) in body.as_object().expect("object") {
            assert_eq!(&row[k], v, "{collection}.{k}");
        }
        let path = format!("/api/v1/{collection}/{}", id(&row));
        assert_eq!(api.get(&path).await.json(), row, "{collection}");
        let query = filter
            .map(|(k, v)| format!("?{k}={v}&limit=1000"))
            .unwrap_or_else(|| "?limit=1000".into());
        let list = api
            .get(&format!("/api/v1/{collection}{query}"))
            .await
            .json();
        let listed: Vec<&Value> = list["items"].as_array().expect("items").iter().collect();
        assert!(listed.contains(&&row), "{collection} list: {list}");
        let r = api.call("PATCH", &path, Some(patch.clone())).await;
        assert_eq!(r.status, 200, "{collection}: {r:?}");
        let (k, v) = patch
            .as_object()
            .expect("object")
            .iter()
            .next()
            .expect("a field");
        assert_eq!(&r.json()[k], v, "{collection}.{k}");
        let r = api.call("DELETE", &path, None).await;
        assert_eq!(r.status, 200, "{collection}: {r:?}");
        assert_eq!(r.json()["active"], false, "{collection}");
        let r = api.call("DELETE", &format!("{path}?hard=true"), None).await;
        assert_eq!(r.status, 204, "{collection}: {r:?}");
        api.get(&path).await.assert_error(404, "not_found", None);
    }
    // Reference data is read-only.
    client
        .execute(
            "INSERT INTO asset_types (code, name) VALUES ('CONS', 'Consumer')",
            &[],
        )
        .await
        .expect("asset type");
    let types = api.get("/api/v1/asset-types").await.json();
    assert_eq!(types["items"][0]["code"], "CONS");
    let r = api
        .call(
            "POST",
            "/api/v1/asset-types",
            Some(json!({"code": "X", "name": "x"})),
        )
        .await;
    assert_eq!(r.status, 405, "{r:?}");
}

#[tokio::test]
async fn lists_page_through_every_row_exactly_once() {
    let api = Api::start().await;
    let mine = api.create("portfolios", json!({"name": "Mine"})).await;
    let other = api.create("portfolios", json!({"name": "Other"})).await;
    let mut expected = BTreeSet::new();
    for i in 0..7 {
        let s = api
            .create(
                "sites",
                json!({"portfolio_id": id(&mine), "name": format!("S{i}")}),
            )
            .await;
        expected.insert(id(&s));
        api.create(
            "sites",
            json!({"portfolio_id": id(&other), "name": format!("S{i}")}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/sites?portfolio_id={}&limit=3", id(&mine));
        if let Some(c) = &cursor {
            path += &format!("&cursor={c}");
        }
        let page = api.get(&path).await.json();
        pages += 1;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 3, "{page}");
        seen.extend(items.iter().map(id));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7, "no row twice: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ordered by id");
    // The default page holds everything here; bad paging parameters are named.
    let all = api.get("/api/v1/sites").await.json();
    assert_eq!(all["items"].as_array().map(Vec::len), Some(14));
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("cursor=abc", "cursor"),
        ("color=red", "color"),
        ("name=S1", "name"),
        ("active=yes", "active"),
        ("portfolio_id=nope", "portfolio_id"),
        ("limit=1&limit=2", "limit"),
    ] {
        api.get(&format!("/api/v1/sites?{query}"))
            .await
            .assert_error(400, "invalid", Some(field));
    }
}

#[tokio::test]
async fn invalid_input_gets_a_4xx_naming_the_field_and_writes_nothing() {
    let api = Api::start().await;
    let client = api.db().await;
    let ids = support::insert_hierarchy(&client).await;
    let taken: String = client
        .query_one(
            "SELECT external_id FROM meters WHERE id = $1",
            &[&ids.meter],
        )
        .await
        .expect("external id")
        .get(0);
    let missing = uuid::Uuid::new_v4();
    let meter_path = format!("/api/v1/meters/{}", ids.meter);
    let asset_path = format!("/api/v1/assets/{}", ids.asset);
    let before = counts(&client).await;
    let meter = |extra: Value| {
        let mut body = json!({"site_id": ids.site, "name": "M", "category": "CONS"});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    let meters = "POST /api/v1/meters".to_string();
    let sources = "POST /api/v1/energy-sources".to_string();
    let patch_meter = format!("PATCH {meter_path}");
    let no_body = Value::Null;
    // (request, body, "status code field"); field `-` is null.
    #[rustfmt::skip]
    let cases: Vec<(String, Value, &str)> = vec![
        (meters.clone(), meter(json!({"category": "cons"})), "400 invalid category"),
        (meters.clone(), meter(json!({"reading_frequency": "2min"})), "400 invalid reading_frequency"),
        (meters.clone(), meter(json!({"site_id": "not-a-uuid"})), "400 invalid site_id"),
        (meters.clone(), meter(json!({"site_id": missing})), "400 invalid site_id"),
        (meters.clone(), meter(json!({"external_id": taken})), "409 conflict external_id"),
        (meters.clone(), meter(json!({"name": " "})), "400 invalid name"),
        (meters.clone(), meter(json!({"name": null})), "400 invalid name"),
        (meters.clone(), meter(json!({"external_id": ""})), "400 invalid external_id"),
        (meters.clone(), meter(json!({"metadata": [1, 2]})), "400 invalid metadata"),
        (meters.clone(), meter(json!({"colour": "red"})), "400 invalid colour"),
        (meters.clone(), meter(json!({"id": missing})), "400 invalid id"),
        (meters.clone(), meter(json!({"created_at": "2020-01-01T00:00:00Z"})), "400 invalid created_at"),
        (meters.clone(), json!({"site_id": ids.site, "name": "M"}), "400 invalid category"),
        ("POST /api/v1/sites".into(), json!({"portfolio_id": ids.portfolio, "name": "x", "latitude": 90.5}), "400 invalid latitude"),
        (sources.clone(), json!({"meter_id": ids.meter, "name": "x", "kind": "solar", "capacity_kw": -1}), "400 invalid capacity_kw"),
        (sources.clone(), json!({"meter_id": ids.meter, "name": "x", "kind": "solar", "capacity_kw": "5"}), "400 invalid capacity_kw"),
        (sources.clone(), json!({"meter_id": ids.meter, "name": "x", "kind": "nuclear"}), "400 invalid kind"),
        ("POST /api/v1/asset-connections".into(), json!({"source_asset_id": ids.asset, "target_asset_id": ids.asset, "relationship": "energy_flow"}), "400 invalid target_asset_id"),
        ("POST /api/v1/assets".into(), json!({"meter_id": ids.meter, "name": "x", "parent_asset_id": missing}), "400 invalid parent_asset_id"),
        ("POST /api/v1/assets".into(), json!({"meter_id": ids.meter, "name": "x", "asset_type_id": missing}), "400 invalid asset_type_id"),
        ("POST /api/v1/portfolios".into(), json!({"name": "x", "metadata": {"a": "\u{0}"}}), "400 invalid metadata"),
        (patch_meter.clone(), json!({"category": "BOTH"}), "400 invalid category"),
        (patch_meter.clone(), json!({"site_id": missing}), "400 invalid site_id"),
        (patch_meter.clone(), json!({"active": "no"}), "400 invalid active"),
        (patch_meter.clone(), json!({"nmae": "typo"}), "400 invalid nmae"),
        (patch_meter.clone(), json!({"category": null}), "400 invalid category"),
        (format!("PATCH {asset_path}"), json!({"parent_asset_id": ids.asset}), "400 invalid parent_asset_id"),
        (format!("PATCH /api/v1/meters/{missing}"), json!({"name": "x"}), "404 not_found -"),
        ("PATCH /api/v1/meters/123".into(), json!({"name": "x"}), "400 invalid id"),
        (format!("GET /api/v1/meters/{missing}"), no_body.clone(), "404 not_found -"),
        ("GET /api/v1/meters/123".into(), no_body.clone(), "400 invalid id"),
        // Not UTF-8 at all: still the JSON error, not axum's plain-text one.
        ("GET /api/v1/meters/%FF".into(), no_body.clone(), "400 invalid id"),
        ("PATCH /api/v1/meters/%FF".into(), json!({"name": "x"}), "400 invalid id"),
        ("DELETE /api/v1/meters/%FF".into(), no_body.clone(), "400 invalid id"),
        ("GET /api/v1/meters/%FF/measurements".into(), no_body.clone(), "400 invalid id"),
        (format!("DELETE /api/v1/meters/{missing}"), no_body.clone(), "404 not_found -"),
        (format!("DELETE {meter_path}?hard=yes"), no_body.clone(), "400 invalid hard"),
        (format!("DELETE {meter_path}?force=true"), no_body.clone(), "400 invalid force"),
        ("GET /api/v1/nothing-here".into(), no_body.clone(), "404 not_found -"),
    ];
    for (request, body, expect) in cases {
        let (method, path) = request.split_once(' ').expect("method and path");
        let expect: Vec<&str> = expect.split(' ').collect();
        let status: u16 = expect[0].parse().expect("status");
        let field = Some(expect[2]).filter(|f| *f != "-");
        let body = (!body.is_null()).then_some(body);
        let what = format!("{request} {body:?}");
        let r = api.call(method, path, body).await;
        r.assert_error(status, expect[1], field);
        assert_eq!(counts(&client).await, before, "{what} wrote something");
    }
    // The patched rows are untouched too.
    let meter_row = api.get(&meter_path).await.json();
    assert_eq!(meter_row["category"], "CONS");
    assert_eq!(meter_row["active"], true);
    // A patch that gives only one side of the self-connection rule is caught by the schema.
    let conns = api
        .get(&format!(
            "/api/v1/asset-connections?source_asset_id={}",
            ids.asset
        ))
        .await
        .json();
    let conn = &conns["items"][0];
    api.call(
        "PATCH",
        &format!("/api/v1/asset-connections/{}", id(conn)),
        Some(json!({"target_asset_id": ids.asset})),
    )
    .await
    .assert_error(400, "invalid", Some("target_asset_id"));
}

#[tokio::test]
async fn a_parent_asset_chain_cannot_be_closed_into_a_cycle() {
    let api = Api::start().await;
    let client = api.db().await;
    let ids = support::insert_hierarchy(&client).await;
    let asset = |name: &str, parent: Option<String>| json!({"meter_id": ids.meter, "name": name, "parent_asset_id": parent});
    let a = id(&api.create("assets", asset("a", None)).await);
    let b = id(&api.create("assets", asset("b", Some(a.clone()))).await);
    let c = id(&api.create("assets", asset("c", Some(b.clone()))).await);
    for (node, parent) in [(&a, &c), (&a, &b), (&b, &c), (&a, &a)] {
        let msg = api
            .call(
                "PATCH",
                &format!("/api/v1/assets/{node}"),
                Some(json!({"parent_asset_id": parent})),
            )
            .await
            .assert_error(400, "invalid", Some("parent_asset_id"));
        assert!(msg.contains("cycle") || msg.contains("own parent"), "{msg}");
    }
    // Moving a leaf elsewhere, or to the top, is fine.
    let r = api
        .call(
            "PATCH",
            &format!("/api/v1/assets/{c}"),
            Some(json!({"parent_asset_id": a})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = api
        .call(
            "PATCH",
            &format!("/api/v1/assets/{b}"),
            Some(json!({"parent_asset_id": null})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["parent_asset_id"], Value::Null);
}

#[tokio::test]
async fn the_token_is_required_and_checked() {
    let api = Api::start().await;
    let no_token = api.raw("GET /api/v1/portfolios HTTP/1.1", b"").await;
    no_token.assert_error(401, "unauthorized", None);
    assert!(
        no_token
            .head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{no_token:?}"
    );
    for header in [
        "Authorization: Bearer wrong",
        "Authorization: Bearer test-token",
        &format!("Authorization: Bearer {TOKEN}x"),
        &format!("Authorization: Basic {TOKEN}"),
        "Authorization: Bearer",
    ] {
        let r = api
            .raw(&format!("GET /api/v1/portfolios HTTP/1.1\r\n{header}"), b"")
            .await;
        let message = r.assert_error(401, "unauthorized", None);
        assert_eq!(message, "missing or invalid bearer token");
    }
    // Writes are refused before anything else is looked at.
    let r = api
        .raw(
            "POST /api/v1/portfolios HTTP/1.1\r\nContent-Type: application/json",
            br#"{"name": "x"}"#,
        )
        .await;
    r.assert_error(401, "unauthorized", None);
    assert_eq!(counts(&api.db().await).await["portfolios"], 0);
    for path in [
        "/api/v1/openapi.json",
        "/api/v1/nothing",
        "/api/v1/rejections",
    ] {
        let r = api.raw(&format!("GET {path} HTTP/1.1"), b"").await;
        r.assert_error(401, "unauthorized", None);
    }
    let ok = api
        .raw(
            &format!("GET /api/v1/portfolios HTTP/1.1\r\nAuthorization: bearer {TOKEN}"),
            b"",
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json(), json!({"items": [], "next_cursor": null}));
}

#[tokio::test]
async fn merged_into_another_router_the_token_guards_only_the_api() {
    let db = support::migrated_db().await;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .merge(admin::router(state(&db), TOKEN.to_string()));
    let (port, server) = serve(app).await;
    let healthz = support::http_get(port, "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.0 200"), "{healthz}");
    let unknown = support::http_get(port, "/elsewhere").await;
    assert!(unknown.starts_with("HTTP/1.0 404"), "{unknown}");
    let api = support::http_get(port, "/api/v1/meters").await;
    assert!(api.starts_with("HTTP/1.0 401"), "{api}");
    server.abort();
}

#[tokio::test]
async fn without_a_configured_token_the_loopback_api_is_open() {
    let api = Api::start_with(&support::migrated_db().await, "").await;
    let r = api.raw("GET /api/v1/portfolios HTTP/1.1", b"").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn the_api_refuses_to_listen_beyond_loopback_without_a_token() {
    let err = admin::check_listen("0.0.0.0:9464".parse().unwrap(), "").unwrap_err();
    assert!(err.contains("ENALYSIS_ADMIN_TOKEN"), "{err}");
    assert!(admin::check_listen("[::]:9464".parse().unwrap(), "").is_err());
    assert!(admin::check_listen("127.0.0.1:9464".parse().unwrap(), "").is_ok());
    assert!(admin::check_listen("0.0.0.0:9464".parse().unwrap(), "t").is_ok());
}

#[tokio::test]
async fn bodies_that_are_too_large_malformed_or_not_json_get_json_errors() {
    let api = Api::start().await;
    let auth = format!("Authorization: Bearer {TOKEN}");
    let post =
        format!("POST /api/v1/portfolios HTTP/1.1\r\n{auth}\r\nContent-Type: application/json");
    let mut big = br#"{"name": "big", "description": ""#.to_vec();
    big.resize(admin::MAX_BODY_BYTES + 100, b'x');
    big.extend_from_slice(br#""}"#);
    api.raw(&post, &big)
        .await
        .assert_error(413, "too_large", None);
    let msg = api
        .raw(&post, br#"{"name": "x",}"#)
        .await
        .assert_error(400, "invalid", Some("body"));
    assert!(msg.contains("line 1 column"), "serde's position: {msg}");
    api.raw(&post, b"")
        .await
        .assert_error(400, "invalid", Some("body"));
    api.raw(&post, br#"["x"]"#)
        .await
        .assert_error(400, "invalid", Some("body"));
    api.raw(
        &format!("POST /api/v1/portfolios HTTP/1.1\r\n{auth}\r\nContent-Type: text/plain"),
        br#"{"name": "x"}"#,
    )
    .await
    .assert_error(415, "unsupported_media_type", None);
    assert_eq!(counts(&api.db().await).await["portfolios"], 0);
    // Just under the limit is accepted (in metadata: text columns have their own limits).
    let mut fits = br#"{"name": "fits", "metadata": {"x": ""#.to_vec();
    fits.resize(admin::MAX_BODY_BYTES - 100, b'x');
    fits.extend_from_slice(br#""}}"#);
    assert_eq!(api.raw(&post, &fits).await.status, 201);
}

#[tokio::test]
async fn sql_shaped_input_is_stored_verbatim() {
    let api = Api::start().await;
    let nasty = [
        "x'); DROP TABLE meters; --",
        "Robert'); DELETE FROM portfolios WHERE ('1'='1",
        "$1::text; SELECT pg_sleep(10)",
        "\" OR 1=1 --",
        "名前 😀 \\ \n\t",
    ];
    for (i, name) in nasty.iter().enumerate() {
        let row = api
            .create(
                "portfolios",
                json!({"name": name, "description": name, "metadata": {name.to_string(): name}}),
            )
            .await;
        assert_eq!(row["name"], *name);
        let got = api
            .get(&format!("/api/v1/portfolios/{}", id(&row)))
            .await
            .json();
        assert_eq!(got["description"], *name);
        assert_eq!(got["metadata"][name], *name);
        assert_eq!(counts(&api.db().await).await["portfolios"], i as i64 + 1);
    }
    let client = api.db().await;
    let stored: String = client
        .query_one("SELECT name FROM portfolios WHERE name LIKE 'x''%'", &[])
        .await
        .expect("the meters table still exists and the name is stored")
        .get(0);
    assert_eq!(stored, nasty[0]);
    client
        .query_one("SELECT count(*) FROM meters", &[])
        .await
        .expect("meters still exists");
    // As a filter value too: a malformed id, not a query.
    api.get("/api/v1/sites?portfolio_id=1'%20OR%20'1'='1")
        .await
        .assert_error(400, "invalid", Some("portfolio_id"));
}

#[tokio::test]
async fn a_database_outage_is_a_503_with_a_json_body() {
    let url = format!(
        "postgres://nobody@127.0.0.1:{}/none?connect_timeout=2",
        common::free_port()
    );
    let api = Api::start_with(&url, TOKEN).await;
    let r = api.get("/api/v1/portfolios").await;
    r.assert_error(503, "unavailable", None);
    assert!(
        !r.body.contains("127.0.0.1"),
        "no connection details: {r:?}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let api = Api::start().await;
    let doc = api.get("/api/v1/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for t in crud::TABLES {
        let collection = &doc["paths"][format!("/api/v1/{}", t.path)];
        assert!(collection["get"].is_object(), "{}", t.path);
        let item = &doc["paths"][format!("/api/v1/{}/{{id}}", t.path)];
        assert!(item["get"].is_object(), "{}", t.path);
    }
    assert!(doc["paths"]["/api/v1/meters/{id}/measurements"]["get"].is_object());
    let meter = &doc["components"]["schemas"]["Meter"]["properties"];
    assert_eq!(
        meter["category"]["enum"],
        json!(["CONS", "PROD", "INJ", "STOR"])
    );
}

/// The static table descriptions agree with the migrated schema: same columns, same
/// nullability and defaults, same enum labels in the same order.
#[tokio::test]
async fn the_table_descriptions_match_the_schema() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    for t in crud::TABLES {
        let rows = client
            .query(
                "SELECT column_name::text, is_nullable = 'YES', column_default IS NOT NULL,
                        udt_name::text
                 FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                &[&t.name],
            )
            .await
            .expect("columns");
        let db_cols: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let described: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
        assert_eq!(db_cols, described, "{}", t.name);
        for (row, col) in rows.iter().zip(t.columns) {
            let (nullable, has_default): (bool, bool) = (row.get(1), row.get(2));
            let what = format!("{}.{}", t.name, col.name);
            assert_eq!(col.nullable, nullable, "{what} nullable");
            if col.writable {
                assert_eq!(col.required, !nullable && !has_default, "{what} required");
            }
            if let crud::Kind::Enum { sql_type, labels } = col.kind {
                let udt: String = row.get(3);
                assert_eq!(udt, sql_type, "{what}");
                let db_labels: Vec<String> = client
                    .query(
                        "SELECT e.enumlabel::text FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
                         WHERE t.typname = $1 ORDER BY e.enumsortorder",
                        &[&sql_type],
                    )
                    .await
                    .expect("labels")
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                assert_eq!(db_labels, labels, "{what} labels");
            }
        }
    }
}

/// The defaults of the table descriptions (what `provision` writes for a key a file leaves
/// out) are the schema's: every writable column with a DEFAULT declares the same value, and no
/// other column declares one.
#[tokio::test]
async fn the_declared_defaults_are_the_schemas() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let mut checked = 0;
    for t in crud::TABLES {
        for col in t.columns.iter().filter(|c| c.writable) {
            let default: Option<String> = client
                .query_one(
                    "SELECT column_default::text FROM information_schema.columns
                     WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
                    &[&t.name, &col.name],
                )
                .await
                .expect("a column")
                .get(0);
            // `'{}'::jsonb`, `'UTC'::text`, `'out'::direction_enum`, `true`: the value only.
            let default = default.map(|d| {
                let value = d.split("::").next().unwrap_or(&d);
                value.trim_matches('\'').to_string()
            });
            let what = format!("{}.{}", t.name, col.name);
            assert_eq!(col.default.map(str::to_string), default, "{what}");
            checked += usize::from(default.is_some());
        }
    }
    assert!(checked >= 20, "{checked} defaults");
}

// ---- Regressions of issue #11 (schemathesis) -----------------------------------------------

/// PostgreSQL prints a jsonb number in full decimal digits (f64::MAX as 309 digits); the row
/// must read back as the number that was sent, in the create's answer and in every GET after.
#[tokio::test]
async fn the_largest_numbers_in_metadata_are_stored_and_read_back() {
    let api = Api::start().await;
    let metadata = json!({"min": f64::MIN, "max": f64::MAX, "tiny": 5e-324, "neg_zero": -0.0});
    let row = api
        .create("portfolios", json!({"name": "Huge", "metadata": metadata}))
        .await;
    let back = |row: &Value| {
        assert_eq!(row["metadata"]["min"].as_f64(), Some(f64::MIN), "{row}");
        assert_eq!(row["metadata"]["max"].as_f64(), Some(f64::MAX), "{row}");
        assert_eq!(row["metadata"]["tiny"].as_f64(), Some(5e-324), "{row}");
        assert_eq!(row["metadata"]["neg_zero"].as_f64(), Some(0.0), "{row}");
    };
    back(&row);
    back(
        &api.get(&format!("/api/v1/portfolios/{}", id(&row)))
            .await
            .json(),
    );
    let list = api.get("/api/v1/portfolios").await;
    assert_eq!(list.status, 200, "{list:?}");
    back(&list.json()["items"][0]);
    let patched = api
        .call(
            "PATCH",
            &format!("/api/v1/portfolios/{}", id(&row)),
            Some(json!({"metadata": {"min": -1.7976931348623157e308}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.json()["metadata"]["min"].as_f64(), Some(f64::MIN));
    // Beyond f64 is not a number the API takes: a 400 for the body, nothing written.
    let post = format!(
        "POST /api/v1/portfolios HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json"
    );
    let msg = api
        .raw(&post, br#"{"name": "Beyond", "metadata": {"x": -1e400}}"#)
        .await
        .assert_error(400, "invalid", Some("body"));
    assert!(msg.contains("number out of range"), "{msg}");
    assert_eq!(counts(&api.db().await).await["portfolios"], 1);
}

/// `to_jsonb` of a float8 column goes through numeric, with the same full-digit printing.
#[tokio::test]
async fn the_largest_float_in_a_column_is_stored_and_read_back() {
    let api = Api::start().await;
    let client = api.db().await;
    let ids = support::insert_hierarchy(&client).await;
    let row = api
        .create(
            "energy-sources",
            json!({"meter_id": ids.meter, "name": "Sun", "kind": "solar",
                   "capacity_kw": 1.7976931348623157e308, "storage_capacity_kwh": 5e-324}),
        )
        .await;
    assert_eq!(row["capacity_kw"].as_f64(), Some(f64::MAX), "{row}");
    assert_eq!(row["storage_capacity_kwh"].as_f64(), Some(5e-324), "{row}");
    let stored: f64 = client
        .query_one(
            "SELECT capacity_kw FROM energy_sources WHERE id = $1::text::uuid",
            &[&id(&row)],
        )
        .await
        .expect("stored")
        .get(0);
    assert_eq!(stored, f64::MAX);
    let list = api
        .get(&format!("/api/v1/energy-sources?meter_id={}", ids.meter))
        .await;
    assert_eq!(list.status, 200, "{list:?}");
    let items = list.json()["items"].clone();
    assert!(
        items
            .as_array()
            .expect("items")
            .iter()
            .any(|r| r["capacity_kw"].as_f64() == Some(f64::MAX)),
        "{items}"
    );
}

#[tokio::test]
async fn a_million_character_name_is_refused_naming_the_field() {
    let api = Api::start().await;
    let name = "x".repeat(1_000_000);
    let r = api
        .call("POST", "/api/v1/portfolios", Some(json!({"name": name})))
        .await;
    let message = r.assert_error(400, "invalid", Some("name"));
    assert!(message.contains("200"), "the limit is named: {message}");
    assert_eq!(counts(&api.db().await).await["portfolios"], 0);
}

/// One declaration of each text limit (`crud::TABLES`), two copies: the schema's CHECK
/// `{table}_{column}_length` (read from pg_catalog) must say the same, every text column of the
/// schema has one, and the OpenAPI document states it as `maxLength`.
#[tokio::test]
async fn text_limits_agree_between_the_api_the_schema_and_the_openapi_document() {
    let api = Api::start().await;
    let client = api.db().await;
    let doc = api.get("/api/v1/openapi.json").await.json();
    let mut checked = 0;
    for t in crud::TABLES {
        let text_columns: Vec<String> = client
            .query(
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = $1 AND data_type = 'text'",
                &[&t.name],
            )
            .await
            .expect("columns")
            .iter()
            .map(|r| r.get(0))
            .collect();
        for column in text_columns {
            let what = format!("{}.{column}", t.name);
            let max = crud::max_chars(t.name, &column)
                .unwrap_or_else(|| panic!("{what} has no declared limit"));
            let def: Option<String> = client
                .query_opt(
                    "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
                     WHERE c.conrelid = $1::text::regclass AND c.conname = $2",
                    &[&t.name, &format!("{}_{column}_length", t.name)],
                )
                .await
                .expect("constraint")
                .map(|r| r.get(0));
            assert_eq!(
                def.as_deref(),
                Some(format!("CHECK ((char_length({column}) <= {max}))").as_str()),
                "{what}"
            );
            let schema = &doc["components"]["schemas"][crud::schema_name(t)]["properties"][&column];
            assert_eq!(schema["maxLength"], max, "{what}: {schema}");
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked} text columns");

    // The CHECK is real: through SQL, the limit passes and one more character fails.
    let max = crud::max_chars("portfolios", "name").expect("a limit");
    client
        .execute(
            "INSERT INTO portfolios (name) VALUES ($1)",
            &[&"é".repeat(max)],
        )
        .await
        .expect("the limit fits");
    let err = client
        .execute(
            "INSERT INTO portfolios (name) VALUES ($1)",
            &[&"é".repeat(max + 1)],
        )
        .await
        .expect_err("one more does not");
    assert_eq!(
        err.as_db_error().and_then(|e| e.constraint()),
        Some("portfolios_name_length")
    );
}

/// Every text column's limit over the API: at the limit it is stored, one character more is a
/// 400 naming the field, in a create and in a patch.
#[tokio::test]
async fn text_over_its_limit_is_refused_by_create_and_patch() {
    let api = Api::start().await;
    let client = api.db().await;
    let ids = support::insert_hierarchy(&client).await;
    let before = counts(&client).await;
    let meter = format!("/api/v1/meters/{}", ids.meter);
    for (collection, base, field) in [
        ("portfolios", json!({}), "name"),
        ("portfolios", json!({"name": "P1"}), "description"),
        (
            "sites",
            json!({"portfolio_id": ids.portfolio, "name": "S1"}),
            "timezone",
        ),
        (
            "sites",
            json!({"portfolio_id": ids.portfolio, "name": "S2"}),
            "location",
        ),
        (
            "meters",
            json!({"site_id": ids.site, "category": "CONS", "name": "M"}),
            "external_id",
        ),
        (
            "assets",
            json!({"meter_id": ids.meter, "name": "A"}),
            "manufacturer",
        ),
        (
            "energy-sources",
            json!({"meter_id": ids.meter, "kind": "wind"}),
            "name",
        ),
        (
            "grid-links",
            json!({"site_id": ids.site, "name": "G", "direction": "in"}),
            "provider",
        ),
        (
            "recommendations",
            json!({"site_id": ids.site, "title": "R", "category": "tariff"}),
            "currency",
        ),
    ] {
        let table = crud::TABLES
            .iter()
            .find(|t| t.path == collection)
            .expect("a table");
        let max = crud::max_chars(table.name, field).expect("a limit");
        let mut body = base.clone();
        body[field] = json!("x".repeat(max + 1));
        let r = api
            .call("POST", &format!("/api/v1/{collection}"), Some(body.clone()))
            .await;
        let message = r.assert_error(400, "invalid", Some(field));
        assert!(message.contains(&max.to_string()), "{message}");
        assert_eq!(counts(&client).await, before, "{collection}.{field}");
        // A time zone must also be one PostgreSQL knows: a POSIX rule of that length is.
        body[field] = if field == "timezone" {
            json!(format!("{}0", "X".repeat(max - 1)))
        } else {
            json!("x".repeat(max))
        };
        let row = api.create(collection, body).await;
        assert_eq!(row[field].as_str().map(|s| s.chars().count()), Some(max));
        api.call(
            "DELETE",
            &format!("/api/v1/{collection}/{}?hard=true", id(&row)),
            None,
        )
        .await;
    }
    api.call(
        "PATCH",
        &meter,
        Some(json!({"description": "d".repeat(10_001)})),
    )
    .await
    .assert_error(400, "invalid", Some("description"));
    assert_eq!(api.get(&meter).await.json()["description"], Value::Null);
}

/// A site's time zone is one PostgreSQL can compute with (migration 0008's trigger): an unknown
/// one is a 400 naming `timezone` in a create and in a patch, and nothing is written; a known
/// one (any case) is stored.
#[tokio::test]
async fn an_unknown_time_zone_is_refused_by_create_and_patch() {
    let api = Api::start().await;
    let client = api.db().await;
    let ids = support::insert_hierarchy(&client).await;
    let before = counts(&client).await;
    for zone in ["Mars/Olympus", "Europe/Bruxelles", ""] {
        let r = api
            .call(
                "POST",
                "/api/v1/sites",
                Some(json!({"portfolio_id": ids.portfolio, "name": "TZ", "timezone": zone})),
            )
            .await;
        let message = r.assert_error(400, "invalid", Some("timezone"));
        assert!(message.contains("time zone"), "{zone:?}: {message}");
    }
    assert_eq!(counts(&client).await, before);
    let site = format!("/api/v1/sites/{}", ids.site);
    let r = api
        .call("PATCH", &site, Some(json!({"timezone": "Nowhere/Land"})))
        .await;
    r.assert_error(400, "invalid", Some("timezone"));
    let stored: String = client
        .query_one("SELECT timezone FROM sites WHERE id = $1", &[&ids.site])
        .await
        .expect("site")
        .get(0);
    assert_ne!(stored, "Nowhere/Land");
    for zone in ["Europe/Brussels", "europe/amsterdam", "UTC"] {
        let r = api
            .call("PATCH", &site, Some(json!({"timezone": zone})))
            .await;
        assert_eq!(r.status, 200, "{zone}: {}", r.body);
    }
}

/// A write whose answer cannot be made writes nothing. Here the row cannot be read back because
/// a trigger (standing in for any other writer) stores a jsonb number beyond f64; the client
/// gets a JSON 500 and the create, the patch and the soft delete are all rolled back.
#[tokio::test]
async fn a_write_whose_row_cannot_be_read_back_is_rolled_back() {
    let api = Api::start().await;
    let client = api.db().await;
    let ids = support::insert_hierarchy(&client).await;
    client
        .batch_execute(
            "CREATE FUNCTION unreadable() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.metadata := '{\"x\": 1e400}'; RETURN NEW; END $$;
             CREATE TRIGGER unreadable BEFORE INSERT OR UPDATE ON meters
                 FOR EACH ROW EXECUTE FUNCTION unreadable();",
        )
        .await
        .expect("trigger");
    let before = counts(&client).await;
    let path = format!("/api/v1/meters/{}", ids.meter);
    let snapshot = || async {
        client
            .query_one(
                "SELECT name, active, metadata::text FROM meters WHERE id = $1",
                &[&ids.meter],
            )
            .await
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, bool>(1),
                    r.get::<_, String>(2),
                )
            })
            .expect("the meter")
    };
    let was = snapshot().await;
    let requests = [
        (
            "POST",
            "/api/v1/meters".to_string(),
            Some(json!({"site_id": ids.site, "name": "M", "category": "CONS"})),
        ),
        ("PATCH", path.clone(), Some(json!({"name": "renamed"}))),
        ("DELETE", path.clone(), None),
    ];
    for (method, path, body) in requests {
        api.call(method, &path, body)
            .await
            .assert_error(500, "internal", None);
        assert_eq!(counts(&client).await, before, "{method} {path}");
        assert_eq!(snapshot().await, was, "{method} {path}");
    }
    // Reads of such a row are a JSON 500 too, not a dropped connection.
    client
        .execute("ALTER TABLE meters DISABLE TRIGGER unreadable", &[])
        .await
        .expect("disable");
    client
        .execute(
            "UPDATE meters SET metadata = '{\"x\": 1e400}' WHERE id = $1",
            &[&ids.meter],
        )
        .await
        .expect("store it directly");
    api.get(&path).await.assert_error(500, "internal", None);
    api.get("/api/v1/meters")
        .await
        .assert_error(500, "internal", None);
}

/// A panicking handler under the API's panic layer answers a JSON 500 (not a closed
/// connection), every time, and the server goes on serving.
#[tokio::test]
async fn a_panic_in_a_handler_is_a_json_500_not_a_dropped_connection() {
    let db = support::migrated_db().await;
    let app = axum::Router::new()
        .route(
            "/api/v1/boom",
            axum::routing::get(|| async {
                let items: Vec<u8> = Vec::new();
                // An index out of bounds: the kind of bug the layer is for.
                items[usize::from(items.is_empty())].to_string()
            }),
        )
        .route_layer(admin::catch_panic())
        .merge(admin::router(state(&db), TOKEN.to_string()));
    let (port, server) = serve(app).await;
    let api = Api {
        port,
        token: TOKEN.to_string(),
        db_url: db,
        server,
    };
    for _ in 0..2 {
        api.get("/api/v1/boom")
            .await
            .assert_error(500, "internal", None);
    }
    assert_eq!(api.get("/api/v1/portfolios").await.status, 200);
}

/// The read side decodes rows with `try_get` too. A server with the legacy
/// `extra_float_digits = 0` prints f64::MAX rounded to 15 digits, past f64's range, so the row
/// cannot be decoded: a JSON 500 (and a log line), never a dropped connection.
#[tokio::test]
async fn readings_the_api_cannot_decode_are_a_json_500() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let ids = support::insert_hierarchy(&client).await;
    client
        .execute(
            "INSERT INTO measurements (entity_type, entity_id, metric, ts, value, unit)
             VALUES ('meter', $1, 'power', now() - interval '1 minute', $2, 'kW')",
            &[&ids.meter, &f64::MAX],
        )
        .await
        .expect("a reading");
    let api = Api::start_with(&db, TOKEN).await;
    let path = format!("/api/v1/meters/{}/measurements", ids.meter);
    let ok = api.get(&path).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["items"][0]["value"].as_f64(), Some(f64::MAX));
    // New connections of the pool get the setting; the ones already open keep theirs.
    client
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET extra_float_digits = 0',
                                        current_database()); END $$",
        )
        .await
        .expect("legacy float output");
    let legacy = Api::start_with(&db, TOKEN).await;
    legacy.get(&path).await.assert_error(500, "internal", None);
}

// ---- One lock for parent-asset changes (issue #12, item 2) ---------------------------------

/// Backends of this database waiting for a lock (a row lock or an advisory lock).
async fn lock_waiters(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// The one text value `sql` selects for `arg`.
async fn one_text(client: &tokio_postgres::Client, sql: &str, arg: &str) -> String {
    client
        .query_one(sql, &[&arg])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Polls until `n` backends wait for a lock, or `done` says the other side finished.
async fn until_waiting(client: &tokio_postgres::Client, n: i64, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while lock_waiters(client).await < n && !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} lock waiters never appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A PATCH of `parent_asset_id` through the API and a `provision` run, at once, cannot close a
/// parent cycle between them: assets a and b exist without parents; the API sets b's parent to
/// a while the file sets a's parent to b. The test makes the interleaving that closes the cycle
/// when the two take different locks, deterministically: it holds a row lock from its own
/// connection so that the first writer stops after its cycle check and before its write, starts
/// the second, waits until that one has finished or waits on a lock too, and only then lets the
/// first go on. Both orders (the file first, the API first). With one lock, the second writer
/// waits for the first, sees its parent, and is refused; exactly one of the two succeeds.
#[tokio::test]
async fn a_patch_and_a_provision_run_at_once_cannot_close_a_parent_cycle() {
    for provision_first in [true, false] {
        let url = support::migrated_db().await;
        let api = std::sync::Arc::new(Api::start_with(&url, TOKEN).await);
        let db = state(&url).db;
        let dir = tempfile::tempdir().expect("tempdir");
        let head = "portfolios:
  - name: P
    sites:
      - name: S
        industry_type: office
        meters:
          - external_id: m
            name: M
            category: CONS
            assets:
";
        let both = dir.path().join("both.yaml");
        std::fs::write(
            &both,
            format!("{head}              - {{external_id: a, name: A}}\n              - {{external_id: b, name: B}}\n"),
        )
        .expect("write");
        enalysis_ingest::admin::provision::run(&db, &both, false)
            .await
            .expect("a and b");
        // Only a: b stays what the database says (the file does not clear its parent).
        let a_under_b = dir.path().join("a_under_b.yaml");
        std::fs::write(
            &a_under_b,
            format!("{head}              - {{external_id: a, name: A, parent: b}}\n"),
        )
        .expect("write");
        let client = api.db().await;
        let (a, b) = (
            one_text(
                &client,
                "SELECT id::text FROM assets WHERE external_id = $1",
                "a",
            )
            .await,
            one_text(
                &client,
                "SELECT id::text FROM assets WHERE external_id = $1",
                "b",
            )
            .await,
        );

        // The first writer stops at the row it writes: a for the file, b for the API.
        let mut holder = support::connect(&url).await;
        let hold = holder.transaction().await.expect("begin");
        let held = if provision_first { "a" } else { "b" };
        hold.query(
            "SELECT 1 FROM assets WHERE external_id = $1 FOR UPDATE",
            &[&held],
        )
        .await
        .expect("row lock");

        let run = {
            let (db, path) = (db.clone(), a_under_b.clone());
            move || {
                tokio::spawn(async move {
                    enalysis_ingest::admin::provision::run(&db, &path, false).await
                })
            }
        };
        let patch = {
            let (api, path, a) = (api.clone(), format!("/api/v1/assets/{b}"), a.clone());
            move || {
                tokio::spawn(async move {
                    api.call("PATCH", &path, Some(json!({"parent_asset_id": a})))
                        .await
                })
            }
        };
        let (provisioned, patched) = if provision_first {
            let first = run();
            until_waiting(&client, 1, || first.is_finished()).await;
            let second = patch();
            until_waiting(&client, 2, || second.is_finished()).await;
            hold.rollback().await.expect("release");
            (first.await.expect("join"), second.await.expect("join"))
        } else {
            let first = patch();
            until_waiting(&client, 1, || first.is_finished()).await;
            let second = run();
            until_waiting(&client, 2, || second.is_finished()).await;
            hold.rollback().await.expect("release");
            (second.await.expect("join"), first.await.expect("join"))
        };

        let parent =
            "SELECT coalesce(parent_asset_id::text, '') FROM assets WHERE id = $1::text::uuid";
        let (a_parent, b_parent) = (
            one_text(&client, parent, &a).await,
            one_text(&client, parent, &b).await,
        );
        let order = if provision_first {
            "the file first"
        } else {
            "the API first"
        };
        assert!(
            !(a_parent == b && b_parent == a),
            "{order}: a and b are each other's parent (provision: {:?}, PATCH: {} {})",
            provisioned.as_ref().map(|p| p.changes()),
            patched.status,
            patched.body
        );
        // Exactly one wins; the other is refused for the cycle, and wrote nothing.
        if provision_first {
            assert_eq!(a_parent, b, "{order}: the file's parent");
            let message = patched.assert_error(400, "invalid", Some("parent_asset_id"));
            assert!(message.contains("cycle"), "{message}");
        } else {
            assert_eq!(patched.status, 200, "{order}: {patched:?}");
            assert_eq!(b_parent, a, "{order}: the API's parent");
            let err = provisioned.expect_err("the file closes the cycle");
            assert!(
                format!("{err:#}").contains("parents form a cycle"),
                "{err:#}"
            );
        }
    }
}
