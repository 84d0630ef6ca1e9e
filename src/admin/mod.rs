//! The admin HTTP API under `/api/v1` (CONTRACT.md §5): create, read, list, update and delete the
//! hierarchy, plus the operators' read side ([`read`]). Every route sits behind a bearer token.
//!
//! - [`schema`]: the tables, columns, rules and value checks, declared once.
//! - [`crud`]: one generic set of handlers driven by the schema.
//! - [`openapi`]: the OpenAPI document, built from the schema and the read side's parameters.
//! - [`read`]: readings of one entity and recent rejections.
//! - [`provision`]: `provision FILE`, the declarative inventory, checked by the same schema.
//!
//! Errors always have the JSON shape `{"error": {"code", "message", "field"}}`; nothing from SQL
//! or the driver reaches a response body (it is logged instead).

pub mod crud;
pub mod openapi;
pub mod provision;
pub mod read;
pub mod schema;

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tower_http::catch_panic::CatchPanicLayer;

use crate::db::{Db, DbError, pg_error_message};

/// Largest request body the API reads; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every admin handler needs.
#[derive(Clone)]
pub struct AdminState {
    pub db: Db,
    /// `completeness.silence_factor`, for `GET /api/v1/silent`.
    pub silence_factor: f64,
}

/// An API error, rendered as `{"error": {"code": "...", "message": "...", "field": "..."|null}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable code: `invalid`, `not_found`, `conflict`, `unauthorized`, …
    pub code: &'static str,
    /// A sentence for a human: which rule was broken. Never SQL or driver text.
    pub message: String,
    /// The JSON field (or query parameter) at fault, when there is one.
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 400 `invalid`: the value of `field` breaks a rule.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid", message)
        }
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`: a unique key is taken.
    pub fn conflict(field: Option<String>, message: impl Into<String>) -> Self {
        Self {
            field,
            ..Self::new(StatusCode::CONFLICT, "conflict", message)
        }
    }

    /// 401 `unauthorized`, saying nothing about why (missing, malformed or wrong token).
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }

    /// 503 `unavailable`: the database cannot be reached; trying again later may work.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500 `internal`. The caller logs the real cause; the client only learns that it failed.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    /// 413 `too_large`.
    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    }

    /// Maps a database error to the client's fault (4xx, naming the field where the constraint
    /// says which) or the server's (5xx, logged here with the driver's text).
    pub fn from_pg(e: &tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No SQLSTATE: the connection broke (I/O, closed), or a client-side bug such as a
            // type mismatch between a Rust value and a column.
            let io = e.is_closed()
                || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
            if io {
                tracing::warn!(error = %pg_error_message(e), "admin API: database connection lost");
                return Self::unavailable("the database is unavailable; try again later");
            }
            tracing::error!(error = %pg_error_message(e), "admin API: database error");
            return Self::internal();
        };
        let code = db.code();
        let table = db.table().unwrap_or("");
        let constraint = db.constraint().unwrap_or("");
        let known = schema::constraint_rule(constraint);
        let field = known
            .map(|(f, _)| f.to_string())
            .or_else(|| db.column().map(str::to_string))
            .or_else(|| constraint_column(table, constraint));
        let rule = |default: String| known.map(|(_, m)| m.to_string()).unwrap_or(default);
        let name = field.clone().unwrap_or_else(|| "a value".into());
        let invalid = |message: String| Self {
            field: field.clone(),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid", message)
        };
        let class = code.code().get(..2).unwrap_or("");
        if *code == SqlState::UNIQUE_VIOLATION {
            Self::conflict(field, rule(format!("another row already has this {name}")))
        } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
            invalid(rule(format!("{name} does not refer to an existing row")))
        } else if *code == SqlState::CHECK_VIOLATION || *code == SqlState::NOT_NULL_VIOLATION {
            invalid(rule(format!("{name} breaks a rule of the schema")))
        } else if *code == SqlState::PROGRAM_LIMIT_EXCEEDED {
            // A value too large for an index entry; the API's own limits should make this
            // unreachable, but it is still the client's value, not a server fault.
            invalid(format!("{name} is too large for the schema"))
        } else if class == "22" {
            // Data exceptions: invalid text representation, out of range, …
            invalid(format!("{name} has the wrong type or format"))
        } else if ["08", "40", "53", "57"].contains(&class) {
            // Connection exceptions, serialization failures and deadlocks, insufficient
            // resources, operator intervention (shutdown): trying again later can succeed.
            tracing::warn!(error = %pg_error_message(e), sqlstate = code.code(), "admin API: database unavailable");
            Self::unavailable("the database is unavailable; try again later")
        } else {
            tracing::error!(error = %pg_error_message(e), sqlstate = code.code(), "admin API: database error");
            Self::internal()
        }
    }
}

/// The column named by a constraint with PostgreSQL's default name: `meters_site_id_fkey` →
/// `site_id`, `sites_latitude_check` → `latitude`, `meters_external_id_key` → `external_id`;
/// and by the text limits of `migrations/0005_text_limits.sql`: `meters_name_length` → `name`.
fn constraint_column(table: &str, constraint: &str) -> Option<String> {
    let rest = constraint.strip_prefix(table)?.strip_prefix('_')?;
    ["_fkey", "_check", "_key", "_length"]
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "field": self.field,
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What a panicking handler answers: the JSON 500 of [`ApiError::internal`], and an ERROR log
/// line with the panic's message. Without it the panic would end the connection's task, and the
/// client would get no answer at all.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    tracing::error!(panic = message, "HTTP handler panicked; answered 500");
    ApiError::internal().into_response()
}

/// The layer that turns a panic in a handler (or a middleware under it) into
/// [`panic_response`]. The admin router carries it; `http::serve` puts it on its own routes.
pub fn catch_panic() -> CatchPanicLayer<fn(Box<dyn Any + Send + 'static>) -> Response> {
    CatchPanicLayer::custom(panic_response as fn(Box<dyn Any + Send + 'static>) -> Response)
}

/// So that handlers can use `?` on the driver's results: [`ApiError::from_pg`].
impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::from_pg(&e)
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::warn!(error = %e, "admin API: no database connection");
        Self::unavailable("the database is unavailable; try again later")
    }
}

/// A JSON object request body. Unlike `axum::Json`, every failure is an [`ApiError`]: 413 over
/// [`MAX_BODY_BYTES`], 415 without `Content-Type: application/json` (which also makes a browser
/// send a CORS preflight, so a web page cannot post to the API), 400 with serde's message for
/// malformed JSON or a body that is not an object.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(Value::Object(map))) => Ok(Self(map)),
            Ok(axum::Json(other)) => Err(ApiError::bad_request(
                "body",
                format!("expected a JSON object, got {}", json_type(&other)),
            )),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError {
            field: None,
            ..ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            )
        },
        _ => ApiError::bad_request("body", rejection.body_text()),
    }
}

/// The JSON type of a value, for error messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The configured token, kept only as its SHA-256 digest. `None`: no token configured, the
/// API is open (allowed only on a loopback listener, see [`check_listen`]).
#[derive(Clone)]
struct Auth {
    digest: Option<Arc<[u8; 32]>>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Compares digests in time independent of where they differ. Hashing first also hides the
/// token's length.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let raw = value.as_bytes();
    let (scheme, token) = raw.split_at(raw.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

async fn require_token(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let Some(expected) = &auth.digest else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(bearer)
        .map(digest);
    match presented {
        Some(d) if same_digest(&d, expected) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// All `/api/v1` routes (the CRUD of [`crud`], the read side of [`read`], the OpenAPI document),
/// behind the bearer token, with a 1 MiB body limit; a panic in any of them is a JSON 500
/// ([`catch_panic`]).
///
/// An empty `token` means none is configured: the API is then open to every client that can
/// reach the listener, a convenience for development that [`check_listen`] allows only on a
/// loopback address. The caller must call [`check_listen`] before serving.
///
/// The router has no fallback (so it can be merged into the daemon's); unknown paths under
/// `/api/v1` get a JSON 404 from a catch-all route.
pub fn router(state: AdminState, token: String) -> Router {
    let auth = Auth {
        digest: (!token.is_empty()).then(|| Arc::new(digest(token.as_bytes()))),
    };
    if auth.digest.is_none() {
        tracing::warn!(
            "admin API without a token (admin.token is empty): open to every client of the loopback listener"
        );
    }
    crud::routes()
        .merge(read::routes())
        .merge(openapi::routes())
        .route(
            "/api/v1/{*rest}",
            axum::routing::any(|| async { ApiError::not_found("no such route") }),
        )
        // route_layer, not layer: the fallback stays untouched, so merged into the daemon's
        // router, a path outside the API is still a plain 404, not a 401.
        .route_layer(middleware::from_fn_with_state(auth, require_token))
        .route_layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost, so a panic in the token check is caught too.
        .route_layer(catch_panic())
        .with_state(state)
}

/// Refuses to serve the admin API on a non-loopback address without a token: the rule is the
/// configuration's (`Config::listen_addr`).
pub fn check_listen(addr: SocketAddr, token: &str) -> Result<(), String> {
    crate::config::check_listen(addr, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_without_a_token_is_allowed_only_on_loopback() {
        let cases = [
            ("127.0.0.1:9464", "", true),
            ("127.0.0.2:9464", "", true),
            ("[::1]:9464", "", true),
            ("[::ffff:127.0.0.1]:9464", "", true),
            ("0.0.0.0:9464", "", false),
            ("[::]:9464", "", false),
            ("192.168.1.10:9464", "", false),
            ("0.0.0.0:9464", "s3cret", true),
            ("[::]:9464", "s3cret", true),
        ];
        for (addr, token, ok) in cases {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(check_listen(addr, token).is_ok(), ok, "{addr} {token:?}");
        }
    }

    #[test]
    fn bearer_tokens_are_parsed_from_the_header() {
        let cases = [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ];
        for (header, token) in cases {
            let value = HeaderValue::from_str(header).unwrap();
            assert_eq!(bearer(&value), token.map(str::as_bytes), "{header:?}");
        }
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(same_digest(&digest(b"a"), &digest(b"a")));
        assert!(!same_digest(&digest(b"a"), &digest(b"b")));
        assert!(!same_digest(&digest(b"a"), &digest(b"")));
    }

    /// Collects what a tracing subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_panic_is_answered_with_a_json_500_and_logged() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        // Thread-local; panic_response is called on this thread.
        let _guard = tracing::subscriber::set_default(subscriber);
        let payloads: [Box<dyn Any + Send>; 3] = [
            Box::new("a static message"),
            Box::new(String::from("a formatted message 42")),
            Box::new(7_u8),
        ];
        for payload in payloads {
            let response = panic_response(payload);
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .expect("body");
            let body: Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(
                body,
                json!({"error": {"code": "internal", "message": "internal error; see the server log", "field": null}})
            );
        }
        let text = String::from_utf8(log.0.lock().expect("not poisoned").clone()).expect("UTF-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (line, message) in lines.iter().zip([
            "a static message",
            "a formatted message 42",
            "(a panic without a message)",
        ]) {
            assert_eq!(line["level"], "ERROR", "{line}");
            assert_eq!(line["fields"]["panic"], message, "{line}");
        }
    }

    #[test]
    fn default_constraint_names_give_their_column() {
        let cases = [
            ("meters", "meters_site_id_fkey", Some("site_id")),
            ("sites", "sites_latitude_check", Some("latitude")),
            ("meters", "meters_external_id_key", Some("external_id")),
            ("sites", "sites_timezone_length", Some("timezone")),
            ("meters", "other_site_id_fkey", None),
            ("meters", "meters_pkey", None),
        ];
        for (table, constraint, column) in cases {
            assert_eq!(
                constraint_column(table, constraint).as_deref(),
                column,
                "{constraint}"
            );
        }
    }
}
