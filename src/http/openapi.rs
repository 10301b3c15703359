//! `GET /openapi.json` on both servers: the OpenAPI 3.1 description of the
//! command API and the admin server, docs/openapi.json compiled in.
//!
//! Guarantee: the served document is byte for byte the file in docs/ of
//! the build (tests compare it; openapi-spec-validator and Schemathesis
//! check it against the running daemon in `make test`).

use actix_web::HttpResponse;

/// docs/openapi.json.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI_JSON)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_json_and_names_every_problem_kind() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let kinds: Vec<&str> = doc["components"]["schemas"]["Problem"]["properties"]["error"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut documented = kinds.clone();
        documented.sort_unstable();
        let mut code: Vec<&str> = crate::http::errors::KINDS.iter().map(|(k, _)| *k).collect();
        code.sort_unstable();
        assert_eq!(documented, code, "Problem.error enum of docs/openapi.json = errors::KINDS");
    }
}
