//! `/openapi.json`: OpenAPI 3.1, written from the route table the router is built from.

use serde_json::{Map, Value, json};

use super::routes::ROUTES;

/// The service's OpenAPI document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "parameters": params,
            "responses": {
                r.answers.0.to_string(): {"description": r.answers.1},
                "400": {"description": "a malformed body or parameter; the error names the field"},
            },
        });
        if let Some(schema) = r.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema()}}});
        }
        if r.authed {
            op["security"] = json!([{"api_key": []}]);
            op["responses"]["401"] = json!({"description": "missing or wrong API key"});
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "astra-worker", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"securitySchemes": {"api_key": {"type": "http", "scheme": "bearer",
            "description": "ASTRA_WORKER_API_KEY"}}},
    })
}
