//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of both HTTP APIs
//! (`openapi/openapi.json`), compiled into the binary so that what a daemon
//! serves describes that daemon, whatever files lie around it.
//!
//! Unauthenticated: the document holds no secret, and clients and tools
//! fetch it before they have credentials. `tests/openapi.rs` keeps it true
//! by driving a live daemon through every operation it names.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};

use super::HttpResponse;
use super::problem::problem;

/// The document, as committed.
pub const DOCUMENT: &str = include_str!("../../openapi/openapi.json");

/// The path it is served at.
pub const PATH: &str = "/v1/openapi.json";

/// The document for GET (and HEAD, whose body hyper leaves out); `405` with
/// `Allow: GET` for anything else.
pub(super) fn handle(method: &Method) -> HttpResponse {
    if method != Method::GET && method != Method::HEAD {
        let mut resp = problem(StatusCode::METHOD_NOT_ALLOWED, "use GET", None);
        resp.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_of_this_version() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi/openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        // The package's version is what `voice-otp --version` prints; the
        // document describes that build.
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"), "bump info.version with Cargo.toml's");
        assert!(doc["paths"][PATH]["get"].is_object(), "the document names its own path");
    }

    #[test]
    fn only_get_and_head_are_served() {
        assert_eq!(handle(&Method::GET).status(), StatusCode::OK);
        assert_eq!(handle(&Method::HEAD).status(), StatusCode::OK);
        let resp = handle(&Method::POST);
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[hyper::header::ALLOW], "GET");
    }
}
