//! The API's OpenAPI 3.1 document, generated from the code and served at
//! `GET /v1/openapi.json` (without a key: it describes, it grants nothing).
//!
//! Every handler carries a `#[utoipa::path]` with its route, parameters, body and
//! every status it can answer; the bodies are the typed structs of [`super::wire`]
//! (requests) and [`super::replies`] (answers), and every error is
//! [`super::error::ErrorBody`]. This module only gathers them, adds the security
//! schemes, and renders the document once.
//!
//! Check it with `openapi-spec-validator` or run `schemathesis` against a cluster:
//! `tests/openapi.rs` does both.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{cluster, events, miners, replies, sessions, tasks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Session Queue",
        description = "A Raft-replicated task queue for AI inference tasks with commit-reveal results. \
            Every node serves this API; writes answer once committed by a majority and applied. \
            Ids are strings with a kind prefix (`s-`, `m-`, `t-`), bytes are standard base64, times \
            are milliseconds. Errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        sessions::create,
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
        miners::pool,
        cluster::status,
        cluster::add_member,
        cluster::remove_member,
        cluster::health,
        cluster::ready,
        cluster::metrics,
        document,
    ),
    components(schemas(
        replies::StreamEvent,
        replies::TransitionEvent,
        replies::LaggedEvent,
        replies::ResyncEvent
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "sessions", description = "Users: sessions and their event streams"),
        (name = "tasks", description = "Users and routers: submit, read, cancel"),
        (name = "miners", description = "Miners: registration, heartbeats, assignments, ack, precommit, commit (reveal)"),
        (name = "cluster", description = "Operators: status and membership"),
        (name = "operator", description = "Liveness, readiness, metrics, this document"),
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

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operator", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = serde_json::Value)))]
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes `super::super::router` serves (keep in step with it: a route added
    /// there and not documented fails this test).
    const ROUTES: &[(&str, &str)] = &[
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions/{id}"),
        ("POST", "/v1/sessions/{id}/close"),
        ("POST", "/v1/sessions/{id}/tasks"),
        ("POST", "/v1/sessions/{id}/tasks:batch"),
        ("GET", "/v1/sessions/{id}/events"),
        ("GET", "/v1/tasks/{id}"),
        ("POST", "/v1/tasks/{id}/cancel"),
        ("GET", "/v1/pool"),
        ("GET", "/v1/cluster"),
        ("GET", "/metrics"),
        ("POST", "/v1/cluster/members"),
        ("DELETE", "/v1/cluster/members/{id}"),
        ("POST", "/v1/miners"),
        ("GET", "/v1/miners/{id}"),
        ("DELETE", "/v1/miners/{id}"),
        ("POST", "/v1/miners/{id}/heartbeat"),
        ("POST", "/v1/miners/{id}/drain"),
        ("GET", "/v1/miners/{id}/assignments"),
        ("POST", "/v1/tasks/{id}/ack"),
        ("POST", "/v1/tasks/{id}/precommit"),
        ("POST", "/v1/tasks/{id}/commit"),
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/v1/openapi.json"),
    ];

    /// Every route of the router is in the document, and nothing else.
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
        let mut routed: Vec<String> = ROUTES.iter().map(|(m, p)| format!("{m} {p}")).collect();
        routed.sort();
        assert_eq!(documented, routed);
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
