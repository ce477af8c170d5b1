//! The API's OpenAPI 3.1 document, generated from the code and served at
//! `GET /v1/openapi.json` (without a key: it describes, it grants nothing).
//!
//! Every handler carries a `#[utoipa::path]` with its route, parameters, body and
//! the statuses its own logic answers; the bodies are the typed structs of
//! [`super::wire`] (requests) and [`super::replies`] (answers), and every error is
//! [`super::error::ErrorBody`]. This module gathers them, adds the security schemes,
//! adds to each operation the statuses of the layers it passes through (see
//! [`add_layer_statuses`]: path decoding, keys, body limits, the proposer's
//! admission, the bounds on long polls and streams), and renders the document once.
//! A unit test reads the router's source and fails when a route is not documented.
//!
//! Check it with `openapi-spec-validator` or run `schemathesis` against a cluster:
//! `tests/openapi.rs` does both.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{cluster, events, listing, miners, page, replies, sessions, steps, tasks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Session Queue",
        description = "A Raft-replicated task queue for AI inference tasks with commit-reveal results. \
            Every node serves this API; writes answer once committed by a majority and applied. \
            Ids are strings with a kind prefix (`s-`, `m-`, `t-`), bytes are standard base64, times \
            are milliseconds. Errors are `{\"error\": {\"code\", \"message\"}}`; each operation lists \
            the statuses it can answer and, in their descriptions, the codes.\n\n\
            Besides those: a path no route takes answers 404 `not_found`, a method a path does not take \
            405 `method_not_allowed` (with `Allow`). Before any route, the HTTP server answers a malformed \
            request line or header 400, a URI too long 414 and headers too large 431, with an empty body; \
            it closes, without an answer, a connection past `--max-connections`, one whose request headers \
            take longer than `--header-read-timeout-ms` (no 408 is sent), and one idle for `--idle-timeout-ms`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        sessions::create,
        listing::sessions,
        sessions::read,
        sessions::close,
        tasks::submit,
        tasks::submit_batch,
        events::stream,
        tasks::read,
        tasks::cancel,
        miners::register,
        miners::read,
        miners::deregister,
        miners::heartbeat,
        miners::drain,
        miners::assignments,
        tasks::ack,
        tasks::precommit,
        tasks::commit,
        steps::steps,
        miners::pool,
        listing::miners,
        cluster::status,
        cluster::add_member,
        cluster::remove_member,
        cluster::health,
        cluster::ready,
        cluster::metrics,
        document,
        page::index,
        page::script,
        page::style,
    ),
    components(schemas(
        replies::SessionEventMessage,
        replies::StreamEvent,
        replies::TransitionEvent,
        replies::LaggedEvent,
        replies::ResyncEvent
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "sessions", description = "Users: sessions and their event streams"),
        (name = "tasks", description = "Users and routers: submit, read, cancel"),
        (name = "miners", description = "Miners: registration, heartbeats, assignments, ack, precommit, commit (reveal), and those steps in bulk"),
        (name = "cluster", description = "Operators: status and membership"),
        (name = "operator", description = "Liveness, readiness, metrics, this document, the operator page"),
    ),
)]
pub struct ApiDoc;

/// The bearer schemes the operations name: which key a call carries.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        components.add_security_scheme(
            "api_key",
            bearer("The node's API key (`--api-key`), when it has one: user, router and operator reads."),
        );
        components.add_security_scheme(
            "admin_key",
            bearer("The admin key (`--admin-key`): membership changes; refused (403) when the node has none."),
        );
        components.add_security_scheme(
            "miner_key",
            bearer("The miner registration key (`--miner-key`), when set (the API key is accepted too)."),
        );
        components.add_security_scheme(
            "miner_token",
            bearer("The miner's own token, returned by `POST /v1/miners`."),
        );
    }
}

/// The document as JSON text, rendered once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
        fix_links(&mut doc);
        add_layer_statuses(&mut doc);
        serde_json::to_string_pretty(&doc).expect("the document serializes")
    })
}

/// utoipa 5.5 writes a Link object's fields in snake case (`operation_id`), which
/// OpenAPI does not know (`operationId`; openapi-spec-validator refuses them): renamed.
fn fix_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(|r| r.as_object_mut()))
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links").and_then(|l| l.as_object_mut()))
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (from, to) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(from) {
                link.insert(to.to_string(), value);
            }
        }
    }
}

/// Operations that propose a command to the Raft log: every write but the membership
/// changes (which go through Raft's own membership change, not the proposer).
const PROPOSES: &[&str] = &[
    "create_session",
    "close_session",
    "submit_task",
    "submit_batch",
    "cancel_task",
    "register_miner",
    "heartbeat_miner",
    "drain_miner",
    "deregister_miner",
    "ack_task",
    "precommit_task",
    "commit_task",
    "miner_steps",
];

/// Operations under the long-poll bound (`--max-long-polls`) when they ask to wait.
const LONG_POLLS: &[&str] = &["read_task", "miner_assignments"];

/// Operations under the event-stream bound (`--max-event-streams`).
const STREAMS: &[&str] = &["session_events"];

/// Error codes that more than one layer or handler check answers (a handler's
/// description naming one does not cover a layer's).
const CODES_OF_MANY_CAUSES: &[&str] = &["invalid", "too_large", "unavailable"];

/// One status a layer in front of (or under) a handler can answer.
struct LayerStatus {
    status: &'static str,
    /// A sentence naming the error code.
    says: &'static str,
    retry_after: bool,
}

const fn layer(status: &'static str, says: &'static str, retry_after: bool) -> LayerStatus {
    LayerStatus {
        status,
        says,
        retry_after,
    }
}

/// The layers an operation passes through, read from its own description (path
/// parameters, body, security) and from the lists above, and what each can answer.
fn layer_statuses(id: &str, path: &str, op: &Value) -> Vec<LayerStatus> {
    let mut out = Vec::new();
    if path.contains('{') {
        out.push(layer(
            "400",
            "A path segment that is not UTF-8 once percent-decoded (`invalid`).",
            false,
        ));
    }
    let has_body = op.get("requestBody").is_some();
    if has_body {
        out.push(layer(
            "400",
            "The body is not the expected JSON: malformed, a wrong type, or an unknown field (`invalid`).",
            false,
        ));
        out.push(layer(
            "413",
            "The body is over the route's limit (`too_large`; `--max-body-bytes`, 64 KiB for miner \
             calls other than a reveal, `--max-steps-body-bytes` for miner steps).",
            false,
        ));
        out.push(layer(
            "408",
            "The body did not arrive within `--body-read-timeout-ms` of the headers \
             (`request_timeout`); nothing written.",
            false,
        ));
    }
    let schemes: Vec<&str> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|requirement| requirement.as_object())
        .flat_map(|requirement| requirement.keys().map(String::as_str))
        .collect();
    if schemes.contains(&"miner_token") {
        out.push(layer(
            "401",
            "Missing or unknown miner token (`unauthorized`).",
            false,
        ));
    }
    if schemes.contains(&"admin_key") {
        out.push(layer(
            "401",
            "Missing or unknown key (`unauthorized`).",
            false,
        ));
        out.push(layer(
            "403",
            "Not the admin key, or the node has none: membership changes over HTTP are then \
             disabled (`forbidden`).",
            false,
        ));
    }
    if schemes.contains(&"api_key") || schemes.contains(&"miner_key") {
        out.push(layer(
            "401",
            "Missing or wrong key, when the node has one (`unauthorized`).",
            false,
        ));
    }
    if PROPOSES.contains(&id) {
        out.push(layer(
            "429",
            "Too many writes wait on this node (`overloaded`; `--max-pending-proposals`, \
             `--max-pending-bytes`); nothing written.",
            true,
        ));
        out.push(layer(
            "503",
            "No leader in time or the leader unreachable (`unavailable`; nothing written), or the \
             outcome is unknown (`outcome_unknown`: it may have been applied; retry, with the same \
             idempotency key for a submit).",
            true,
        ));
        out.push(layer(
            "500",
            "The node's Raft stopped on a fatal error, such as its storage failing (`internal`).",
            false,
        ));
        if has_body {
            out.push(layer(
                "413",
                "The write encodes to more than one Raft entry carries (`too_large`; \
                 `--max-batch-bytes`); nothing written.",
                false,
            ));
        }
    }
    if LONG_POLLS.contains(&id) {
        out.push(layer(
            "503",
            "The request asks to wait and this node already holds `--max-long-polls` long polls \
             (`too_many_waiters`); retry later or ask another node.",
            true,
        ));
    }
    if STREAMS.contains(&id) {
        out.push(layer(
            "503",
            "This node already holds `--max-event-streams` streams (`too_many_waiters`); retry \
             later or ask another node.",
            true,
        ));
    }
    out
}

/// Adds to every operation the statuses of the layers it passes through (see
/// [`layer_statuses`]): a status the handler documents already gets the layer's
/// sentence appended, unless it names the layer's code already; a new one is an
/// [`super::error::ErrorBody`] answer. Statuses that carry `Retry-After` say so.
fn add_layer_statuses(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            for added in layer_statuses(&id, path, op) {
                let responses = op["responses"]
                    .as_object_mut()
                    .expect("every operation has responses");
                let response = responses
                    .entry(added.status)
                    .or_insert_with(|| {
                        json!({
                            "description": "",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorBody"}
                            }}
                        })
                    })
                    .as_object_mut()
                    .expect("a response is an object");
                let description = response
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .trim()
                    .trim_end_matches('.')
                    .to_string();
                // The handler's description covers the layer when it names the layer's
                // code, unless that code has several causes.
                let code = added.says.split('`').nth(1).unwrap_or_default();
                let covered = !CODES_OF_MANY_CAUSES.contains(&code)
                    && description.contains(&format!("`{code}`"));
                if !covered && !description.contains(added.says.trim_end_matches('.')) {
                    let joined = if description.is_empty() {
                        added.says.to_string()
                    } else {
                        format!("{description}. {}", added.says)
                    };
                    response.insert("description".into(), Value::String(joined));
                }
                if added.retry_after {
                    let headers = response
                        .entry("headers")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .expect("headers are an object");
                    headers.entry("Retry-After").or_insert_with(|| {
                        json!({
                            "description": "Seconds to wait",
                            "schema": {"type": "integer", "format": "int64", "minimum": 0}
                        })
                    });
                }
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operator", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = serde_json::Value)))]
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes that do not go through the proposer (see [`PROPOSES`]).
    const WRITES_OFF_THE_PROPOSER: &[&str] = &["add_member", "remove_member"];

    /// The routes `super::super::router` builds, read from its source: every
    /// `.route("path", method(handler)…)` call and the methods it names.
    fn routed() -> Vec<String> {
        let source = include_str!("mod.rs");
        let mut routes = Vec::new();
        for call in source.split(".route(").skip(1) {
            let path = call.split('"').nth(1).expect("a route's path is a literal");
            // The call's arguments: up to its closing parenthesis.
            let mut depth = 1;
            let mut end = call.len();
            for (i, c) in call.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let args = &call[..end];
            for method in ["get", "post", "put", "patch", "delete"] {
                for (i, _) in args.match_indices(&format!("{method}(")) {
                    // A method router of its own (`get(` or `.get(`), not the end of
                    // another name (`x::get(`, `budget(`).
                    let before = args[..i].chars().last();
                    if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                        routes.push(format!("{} {path}", method.to_uppercase()));
                    }
                }
            }
        }
        routes.sort();
        routes
    }

    /// Every route of the router is in the document, and nothing else: a route added
    /// to the router and not documented fails this test.
    #[test]
    fn documents_every_route() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented: Vec<String> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    documented.push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        documented.sort();
        let routed = routed();
        // The reading of the router's source finds what is known to be there.
        for known in [
            "GET /",
            "GET /ui/app.js",
            "GET /ui/style.css",
            "GET /v1/sessions",
            "POST /v1/sessions",
            "GET /v1/pool/miners",
            "GET /v1/miners/{id}",
            "DELETE /v1/miners/{id}",
            "GET /v1/sessions/{id}/events",
            "POST /v1/sessions/{id}/tasks:batch",
        ] {
            assert!(
                routed.contains(&known.to_string()),
                "{known} not read from the router"
            );
        }
        assert!(routed.len() >= 30, "{routed:#?}");
        assert_eq!(documented, routed);
    }

    /// Every write is classified: it proposes through the proposer (and so may be
    /// refused `overloaded`), or it is known not to.
    #[test]
    fn every_write_is_classified() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        let mut writes = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for (method, op) in item.as_object().unwrap() {
                if method != "get" {
                    writes.push(op["operationId"].as_str().unwrap().to_string());
                }
            }
        }
        for id in &writes {
            assert!(
                PROPOSES.contains(&id.as_str()) || WRITES_OFF_THE_PROPOSER.contains(&id.as_str()),
                "{id}: add it to PROPOSES or WRITES_OFF_THE_PROPOSER"
            );
        }
        for id in PROPOSES
            .iter()
            .chain(WRITES_OFF_THE_PROPOSER)
            .chain(LONG_POLLS)
            .chain(STREAMS)
        {
            let found = doc["paths"]
                .as_object()
                .unwrap()
                .values()
                .flat_map(|item| item.as_object().unwrap().values())
                .any(|op| op["operationId"] == *id);
            assert!(found, "{id} is listed but no operation has that id");
        }
    }

    /// The statuses layers add: the proposer's bound on writes, the waiters' bounds,
    /// keys and bodies, each with its code and `Retry-After` where it is sent.
    #[test]
    fn layer_statuses_are_documented() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        let op = |path: &str, method: &str| doc["paths"][path][method].clone();
        let says = |op: &Value, status: &str, what: &str| {
            let description = op["responses"][status]["description"]
                .as_str()
                .unwrap_or_default();
            assert!(
                description.contains(what),
                "{} {status}: {description:?} does not say {what}",
                op["operationId"]
            );
        };
        let retry_after = |op: &Value, status: &str| {
            assert!(
                op["responses"][status]["headers"]["Retry-After"].is_object(),
                "{} {status} without Retry-After",
                op["operationId"]
            );
        };
        let submit = op("/v1/sessions/{id}/tasks", "post");
        for code in ["`queue_full`", "`state_full`", "`overloaded`"] {
            says(&submit, "429", code);
        }
        retry_after(&submit, "429");
        says(&submit, "413", "--max-batch-bytes");
        says(&submit, "413", "--max-body-bytes");
        says(&submit, "408", "`request_timeout`");
        says(&submit, "503", "`outcome_unknown`");
        says(&submit, "401", "`unauthorized`");
        for id in PROPOSES {
            let (path, method) = find(&doc, id);
            let write = op(path.as_str(), method.as_str());
            says(&write, "429", "`overloaded`");
            retry_after(&write, "429");
            says(&write, "503", "`unavailable`");
            retry_after(&write, "503");
        }
        for (path, method) in [
            ("/v1/tasks/{id}", "get"),
            ("/v1/miners/{id}/assignments", "get"),
            ("/v1/sessions/{id}/events", "get"),
        ] {
            says(&op(path, method), "503", "`too_many_waiters`");
            retry_after(&op(path, method), "503");
        }
        let events = op("/v1/sessions/{id}/events", "get");
        assert!(
            events["responses"]["101"].is_object(),
            "no WebSocket upgrade"
        );
        let params: Vec<&str> = events["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for name in ["id", "after", "key", "Last-Event-ID"] {
            assert!(params.contains(&name), "events: no parameter {name}");
        }
        let add = op("/v1/cluster/members", "post");
        says(&add, "403", "`forbidden`");
        says(&add, "401", "`unauthorized`");
        // Every code a node can send is named somewhere in the document.
        for code in super::super::error::CODES {
            assert!(
                json().contains(&format!("`{code}`")),
                "{code} is named nowhere"
            );
        }
    }

    /// The path and method of the operation with this id.
    fn find(doc: &Value, id: &str) -> (String, String) {
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if op["operationId"] == id {
                    return (path.clone(), method.clone());
                }
            }
        }
        panic!("no operation {id}");
    }

    /// Every error answer uses the error schema, and every operation says who may call it.
    #[test]
    fn errors_use_the_error_body() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    let code: u16 = status.parse().unwrap();
                    if code >= 400 && !(path == "/ready" && code == 503) {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }
}
