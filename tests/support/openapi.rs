//! Holds HTTP exchanges and webhooks to the OpenAPI document
//! (`openapi/openapi.json`): a request is sent, then judged on both sides -
//! whether the document allows what was sent (as the test says it should or
//! should not), and whether the answer's status, headers and body are the
//! ones the document gives that operation - and every operation, status and
//! webhook seen is counted, so a test can demand that none the document
//! names went unseen.
//!
//! Schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect), checked with
//! the `jsonschema` crate, formats included. A schema is compiled as the
//! whole document with a `$ref` to the schema's place in it, so the
//! document's own `#/components/...` references resolve as they are.
//!
//! Only `tests/openapi.rs` includes it (`#[path]`), next to `support`:
//! left out of `support/mod.rs`, the other test binaries need not compile
//! the validator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::support::blocking;
use crate::support::http::{self, Response};
use crate::support::webhook_receiver::Received;

/// The document as committed (the same bytes the binary serves).
pub const DOCUMENT: &str = include_str!("../../openapi/openapi.json");

/// Headers of the HTTP layer itself, never part of an operation's answer.
const TRANSPORT_HEADERS: [&str; 5] = ["content-type", "content-length", "date", "connection", "transfer-encoding"];

/// Headers of a webhook POST that are the HTTP layer's, not the document's.
const WEBHOOK_TRANSPORT_HEADERS: [&str; 5] =
    ["host", "content-type", "content-length", "connection", "transfer-encoding"];

/// Request headers every client sends, which no operation declares.
const CLIENT_HEADERS: [&str; 5] = ["host", "connection", "content-type", "content-length", "authorization"];

/// The HTTP methods an OpenAPI path item may hold.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// What the document is expected to say about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Everything sent is what the document allows.
    Conforming,
    /// The document forbids something sent (the server refuses it too): a
    /// document laxer than the server fails this.
    Violating,
    /// Beyond what a schema can say (a number libphonenumber refuses, a
    /// language the config does not list, a user that does not exist).
    Unjudged,
}

/// A request to send and judge.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Headers besides `Host`, `Connection` and `Content-Length`.
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
    /// Declare a `Content-Length` this many bytes larger than the body sent,
    /// so the server waits for bytes that never come (its body timeout).
    pub withheld: usize,
    /// The client address (a 127.x.y.z), to keep per-address limits apart.
    pub source: Option<IpAddr>,
    /// What the document is expected to say about it.
    pub intent: Intent,
}

impl Request {
    /// `method target`, conforming, no headers or body.
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: None,
            withheld: 0,
            source: None,
            intent: Intent::Conforming,
        }
    }

    /// `GET target`.
    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    /// `POST target`.
    pub fn post(target: &str) -> Request {
        Request::new("POST", target)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// HTTP Basic credentials.
    pub fn basic(self, user: &str, password: &str) -> Request {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("Authorization", &format!("Basic {token}"))
    }

    /// A body of `content_type`.
    pub fn body(self, content_type: &str, body: &[u8]) -> Request {
        let mut req = self.header("Content-Type", content_type);
        req.body = Some(body.to_vec());
        req
    }

    /// A JSON body.
    pub fn json(self, body: &str) -> Request {
        self.body("application/json", body.as_bytes())
    }

    /// A form-encoded body.
    pub fn form(self, body: &str) -> Request {
        self.body("application/x-www-form-urlencoded", body.as_bytes())
    }

    /// Promises `n` more body bytes than are sent.
    pub fn withhold(mut self, n: usize) -> Request {
        self.withheld = n;
        self
    }

    /// Sent from client address `ip`.
    pub fn from(mut self, ip: IpAddr) -> Request {
        self.source = Some(ip);
        self
    }

    /// The document must forbid it.
    pub fn violating(mut self) -> Request {
        self.intent = Intent::Violating;
        self
    }

    /// The document cannot tell.
    pub fn unjudged(mut self) -> Request {
        self.intent = Intent::Unjudged;
        self
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn wire(&self) -> Vec<u8> {
        let body = self.body.as_deref().unwrap_or_default();
        let mut head = format!("{} {} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.body.is_some() || self.withheld > 0 {
            head.push_str(&format!("Content-Length: {}\r\n", body.len() + self.withheld));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

/// What was seen of the document, for [`Spec::assert_covered`].
#[derive(Debug, Default)]
struct Seen {
    /// (path template, method, status) answered by an operation.
    statuses: BTreeSet<(String, String, u16)>,
    /// Path templates answered 405 for a method they do not have.
    not_allowed: BTreeSet<String>,
    /// The 404 components seen for paths outside the document.
    not_found: BTreeSet<String>,
    /// Webhook names received.
    webhooks: BTreeSet<String>,
}

/// The document, its compiled schemas and what a test has seen of it.
pub struct Spec {
    doc: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
    seen: Mutex<Seen>,
}

impl Spec {
    /// The committed document.
    pub fn load() -> Spec {
        Spec::parse(DOCUMENT)
    }

    /// A document from text (the self-tests change one on purpose). Every
    /// schema in it must be a valid JSON Schema 2020-12.
    pub fn parse(text: &str) -> Spec {
        let doc: Value = serde_json::from_str(text).expect("the OpenAPI document is JSON");
        assert_eq!(doc["openapi"], "3.1.0", "an OpenAPI 3.1 document");
        let mut schemas = Vec::new();
        collect_schemas(&doc, "", &mut schemas);
        assert!(schemas.len() > 20, "schemas found: {}", schemas.len());
        for (pointer, schema) in schemas {
            if let Err(e) = jsonschema::meta::validate(schema) {
                panic!("{pointer} is not a valid JSON Schema: {e}");
            }
        }
        Spec { doc, validators: Mutex::new(HashMap::new()), seen: Mutex::new(Seen::default()) }
    }

    /// Sends `req` to `addr` and judges the exchange (panicking with what
    /// differs from the document); returns the response.
    pub fn call(&self, addr: SocketAddr, req: &Request) -> Response {
        let resp = blocking(|| http::raw_from(req.source, addr, &req.wire()));
        if let Err(e) = self.judge(req, &resp) {
            panic!(
                "{} {} -> {} differs from the OpenAPI document: {e}\nheaders: {:?}\nbody: {}",
                req.method, req.target, resp.status, resp.headers, resp.body
            );
        }
        resp
    }

    /// Judges an exchange: the request against what the document allows
    /// (as `req.intent` says), the response against what it promises.
    pub fn judge(&self, req: &Request, resp: &Response) -> Result<(), String> {
        let path = req.path();
        let Some((template, item)) = self.path_item(path) else {
            // A path outside the document: the 404 of its part of the API.
            let component = if path.starts_with("/v1/") { "NotFound" } else { "SeedNotFound" };
            self.check_component(component, resp)?;
            self.seen().not_found.insert(component.to_owned());
            return Ok(());
        };
        let method = req.method.to_ascii_lowercase();
        let Some(op) = item.get(&method) else {
            // A method the path does not have: 405 naming those it has.
            let component = if template == "/outbound.cgi" { "SeedMethodNotAllowed" } else { "MethodNotAllowed" };
            self.check_component(component, resp)?;
            let mut allowed: Vec<String> =
                METHODS.iter().filter(|m| item.get(**m).is_some()).map(|m| m.to_ascii_uppercase()).collect();
            let mut said: Vec<String> =
                resp.header("allow").unwrap_or("").split(',').map(|m| m.trim().to_owned()).collect();
            allowed.sort();
            said.sort();
            if allowed != said {
                return Err(format!("Allow says {said:?}, the document has {allowed:?}"));
            }
            self.seen().not_allowed.insert(template);
            return Ok(());
        };
        let pointer = format!("/paths/{}/{method}", escape(&template));
        let findings = self.request_findings(&template, item, op, &pointer, req);
        match req.intent {
            Intent::Conforming if !findings.is_empty() => {
                return Err(format!("the document does not allow this request: {}", findings.join("; ")));
            }
            Intent::Violating if findings.is_empty() => {
                return Err("the document allows this request, which the test expects it to forbid".to_owned());
            }
            // A refusal the document gives no reason for: either it is too
            // lax, or the reason is beyond a schema (say so: `unjudged`).
            Intent::Conforming if resp.status == 400 => {
                return Err("refused, though the document allows the request".to_owned());
            }
            _ => {}
        }
        let status = resp.status.to_string();
        let Some(response) = op["responses"].get(&status) else {
            return Err(format!("status {status} is not one the document gives this operation"));
        };
        let response_pointer = format!("{pointer}/responses/{status}");
        self.check_response(&response_pointer, response, resp)?;
        self.seen().statuses.insert((template, req.method.to_ascii_uppercase(), resp.status));
        Ok(())
    }

    /// Judges a webhook as received against `webhooks` in the document,
    /// found by its `X-Voice-OTP-Event` header.
    pub fn webhook(&self, hook: &Received) -> Result<(), String> {
        let event = hook.header("x-voice-otp-event").ok_or("no X-Voice-OTP-Event header")?;
        let op = self.doc["webhooks"]
            .get(event)
            .and_then(|w| w.get("post"))
            .ok_or_else(|| format!("webhook {event} is not in the document"))?;
        let pointer = format!("/webhooks/{}/post", escape(event));
        let mut findings = Vec::new();
        let params = self.parameters(&[(op, pointer.clone())]);
        for ((place, name), (param_pointer, param)) in &params {
            if place != "header" {
                findings.push(format!("webhook parameter {name} is not a header"));
                continue;
            }
            match hook.header(&name.to_ascii_lowercase()) {
                Some(value) => {
                    let value = Value::String(value.to_owned());
                    findings.extend(self.errors(&format!("{param_pointer}/schema"), &value, name));
                }
                None if param["required"] == true => findings.push(format!("header {name} is missing")),
                None => {}
            }
        }
        for (name, _) in &hook.headers {
            let declared = params.keys().any(|(_, n)| n.eq_ignore_ascii_case(name));
            if !declared && !WEBHOOK_TRANSPORT_HEADERS.contains(&name.as_str()) {
                findings.push(format!("header {name} is not in the document"));
            }
        }
        let body = self.resolve(&op["requestBody"]);
        let media = media_type(hook.header("content-type").unwrap_or(""));
        match body["content"].get(&media) {
            Some(_) => {
                let value: Value =
                    serde_json::from_str(&hook.body).map_err(|e| format!("the body is not JSON ({e})"))?;
                let body_pointer = self.target_pointer(&op["requestBody"], &format!("{pointer}/requestBody"));
                let schema_pointer = format!("{body_pointer}/content/{}/schema", escape(&media));
                findings.extend(self.errors(&schema_pointer, &value, "body"));
            }
            None => findings.push(format!("content type {media:?} is not in the document")),
        }
        if !findings.is_empty() {
            return Err(format!("webhook {event}: {}", findings.join("; ")));
        }
        self.seen().webhooks.insert(event.to_owned());
        Ok(())
    }

    /// Panics unless every operation of the document answered with every
    /// status the document gives it, every path refused a method it does
    /// not have, both 404s were seen and every webhook arrived - less the
    /// `exempt` (path, method, status, why) and `exempt_webhooks` (name,
    /// why), each of which must name something the document has and that
    /// was not seen.
    pub fn assert_covered(&self, exempt: &[(&str, &str, u16, &str)], exempt_webhooks: &[(&str, &str)]) {
        let seen = self.seen();
        let mut missing = Vec::new();
        let mut documented = BTreeSet::new();
        for (template, item) in self.doc["paths"].as_object().expect("paths") {
            for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                for status in item[*method]["responses"].as_object().expect("responses").keys() {
                    let status: u16 = status.parse().unwrap_or_else(|_| panic!("{template} {method}: status {status}"));
                    documented.insert((template.clone(), method.to_ascii_uppercase(), status));
                }
            }
            if !seen.not_allowed.contains(template) {
                missing.push(format!("{template}: no method it lacks was tried (405)"));
            }
        }
        for (path, method, status, why) in exempt {
            let key = (path.to_string(), method.to_string(), *status);
            assert!(!why.is_empty(), "an exemption says why");
            assert!(documented.contains(&key), "exempt {key:?} is not in the document");
            assert!(!seen.statuses.contains(&key), "exempt {key:?} was seen after all: drop the exemption");
        }
        for key in &documented {
            let exempted = exempt.iter().any(|(p, m, s, _)| (p.to_string(), m.to_string(), *s) == *key);
            if !exempted && !seen.statuses.contains(key) {
                missing.push(format!("{} {} -> {}", key.1, key.0, key.2));
            }
        }
        for component in ["NotFound", "SeedNotFound"] {
            if !seen.not_found.contains(component) {
                missing.push(format!("a path outside the document answered as {component}"));
            }
        }
        let webhooks: Vec<&String> = self.doc["webhooks"].as_object().expect("webhooks").keys().collect();
        for (name, why) in exempt_webhooks {
            assert!(!why.is_empty(), "an exemption says why");
            assert!(webhooks.iter().any(|w| w == name), "exempt webhook {name} is not in the document");
            assert!(!seen.webhooks.contains(*name), "exempt webhook {name} was seen after all");
        }
        for name in webhooks {
            if !seen.webhooks.contains(name) && !exempt_webhooks.iter().any(|(w, _)| w == name) {
                missing.push(format!("webhook {name}"));
            }
        }
        assert!(missing.is_empty(), "in the document but never seen:\n  {}", missing.join("\n  "));
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The document's path template matching `path`, and its path item.
    fn path_item(&self, path: &str) -> Option<(String, &Value)> {
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"].as_object()?.iter().find_map(|(template, item)| {
            let parts: Vec<&str> = template.split('/').collect();
            let fits = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| if t.starts_with('{') && t.ends_with('}') { !s.is_empty() } else { t == s });
            fits.then(|| (template.clone(), item))
        })
    }

    /// Follows a local `$ref` (possibly several).
    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {reference}"));
            value = self.doc.pointer(pointer).unwrap_or_else(|| panic!("$ref {reference} points nowhere"));
        }
        value
    }

    /// The pointer a `$ref` leads to, or `here` if `value` is no reference.
    fn target_pointer(&self, value: &Value, here: &str) -> String {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.trim_start_matches('#');
                self.target_pointer(self.doc.pointer(pointer).expect("$ref target"), pointer)
            }
            None => here.to_owned(),
        }
    }

    /// The parameters of the given levels (path item, operation; each with
    /// its pointer), the later winning, by (in, name), with the pointer of
    /// each one's definition.
    fn parameters<'a>(&'a self, levels: &[(&'a Value, String)]) -> BTreeMap<(String, String), (String, &'a Value)> {
        let mut found = BTreeMap::new();
        for (level, at) in levels {
            for (i, param) in level["parameters"].as_array().into_iter().flatten().enumerate() {
                let pointer = self.target_pointer(param, &format!("{at}/parameters/{i}"));
                let param = self.resolve(param);
                let key =
                    (param["in"].as_str().unwrap_or("").to_owned(), param["name"].as_str().unwrap_or("").to_owned());
                found.insert(key, (pointer, param));
            }
        }
        found
    }

    /// Everything about `req` that the document does not allow.
    fn request_findings(&self, template: &str, item: &Value, op: &Value, pointer: &str, req: &Request) -> Vec<String> {
        let mut findings = Vec::new();
        let item_pointer = format!("/paths/{}", escape(template));
        let params = self.parameters(&[(item, item_pointer), (op, pointer.to_owned())]);
        let declared = |place: &str, name: &str| {
            params.iter().find(|((p, n), _)| p == place && n.eq_ignore_ascii_case(name)).map(|(_, (at, v))| (at, *v))
        };

        // Path parameters.
        let segments: Vec<&str> = req.path().split('/').collect();
        for (part, segment) in template.split('/').zip(&segments) {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if let Some((at, _)) = declared("path", name) {
                    findings.extend(self.errors(&format!("{at}/schema"), &Value::String((*segment).to_owned()), name));
                } else {
                    findings.push(format!("path parameter {name} is not declared"));
                }
            }
        }
        // Query parameters: each declared, once, and valid.
        let mut given: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(req.query().as_bytes()) {
            given.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        for (name, values) in &given {
            match declared("query", name) {
                None => findings.push(format!("query parameter {name} is not in the document")),
                Some(_) if values.len() > 1 => findings.push(format!("query parameter {name} given twice")),
                Some((at, _)) => {
                    let at = format!("{at}/schema");
                    findings.extend(self.errors(&at, &self.typed(&at, &values[0]), name));
                }
            }
        }
        for ((place, name), (_, param)) in &params {
            if place == "query" && param["required"] == true && !given.contains_key(name) {
                findings.push(format!("required query parameter {name} is missing"));
            }
        }
        // Headers: the declared ones valid, no undeclared ones.
        for (name, value) in &req.headers {
            let lower = name.to_ascii_lowercase();
            match declared("header", name) {
                Some((at, _)) => {
                    findings.extend(self.errors(&format!("{at}/schema"), &Value::String(value.clone()), name))
                }
                None if CLIENT_HEADERS.contains(&lower.as_str()) => {}
                None => findings.push(format!("header {name} is not in the document")),
            }
        }
        for ((place, name), (_, param)) in &params {
            if place == "header" && param["required"] == true && req.header_value(name).is_none() {
                findings.push(format!("required header {name} is missing"));
            }
        }
        // Security: Basic credentials exactly where the document asks for them.
        let wants_basic = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("basicAuth").is_some()));
        let sends_basic = req.header_value("authorization").is_some_and(|v| v.starts_with("Basic "));
        if wants_basic && !sends_basic {
            findings.push("no HTTP Basic credentials".to_owned());
        }
        if !wants_basic && req.header_value("authorization").is_some() {
            findings.push("credentials the operation does not take".to_owned());
        }
        // The body.
        let request_body = op.get("requestBody").map(|b| self.resolve(b));
        match (request_body, &req.body) {
            (None, Some(_)) => findings.push("a body the operation does not take".to_owned()),
            (Some(b), None) if b["required"] == true => findings.push("the body is missing".to_owned()),
            (Some(b), Some(bytes)) => {
                let media = media_type(req.header_value("content-type").unwrap_or(""));
                match b["content"].get(&media) {
                    None => findings.push(format!("content type {media:?} is not in the document")),
                    Some(_) => match body_value(&media, bytes) {
                        Ok(value) => {
                            let body_pointer =
                                self.target_pointer(&op["requestBody"], &format!("{pointer}/requestBody"));
                            let at = format!("{body_pointer}/content/{}/schema", escape(&media));
                            findings.extend(self.errors(&at, &value, "body"));
                        }
                        Err(e) => findings.push(e),
                    },
                }
                if req.withheld > 0 {
                    findings.push("the body is cut short".to_owned());
                }
            }
            _ => {}
        }
        findings
    }

    /// Checks `resp` against the response at `pointer`.
    fn check_response(&self, pointer: &str, response: &Value, resp: &Response) -> Result<(), String> {
        let pointer = self.target_pointer(response, pointer);
        let response = self.resolve(response);
        let mut findings = Vec::new();
        let documented = response["headers"].as_object().cloned().unwrap_or_default();
        for (name, header) in &documented {
            let header_pointer = self.target_pointer(header, &format!("{pointer}/headers/{}", escape(name)));
            let header = self.resolve(header);
            match resp.header(&name.to_ascii_lowercase()) {
                Some(value) => {
                    let at = format!("{header_pointer}/schema");
                    findings.extend(self.errors(&at, &self.typed(&at, value), name));
                }
                None if header["required"] == true => findings.push(format!("header {name} is missing")),
                None => {}
            }
        }
        for (name, _) in &resp.headers {
            if !TRANSPORT_HEADERS.contains(&name.as_str()) && !documented.keys().any(|d| d.eq_ignore_ascii_case(name)) {
                findings.push(format!("header {name} is not in the document"));
            }
        }
        match response["content"].as_object() {
            None if !resp.body.is_empty() => findings.push("a body where the document has none".to_owned()),
            None => {}
            Some(content) => {
                let media = media_type(resp.header("content-type").unwrap_or(""));
                match content.get(&media) {
                    None => findings.push(format!(
                        "content type {media:?}; the document has {:?}",
                        content.keys().collect::<Vec<_>>()
                    )),
                    Some(_) => match body_value(&media, resp.body.as_bytes()) {
                        Ok(value) => {
                            let at = format!("{pointer}/content/{}/schema", escape(&media));
                            findings.extend(self.errors(&at, &value, "body"));
                        }
                        Err(e) => findings.push(e),
                    },
                }
            }
        }
        if findings.is_empty() { Ok(()) } else { Err(findings.join("; ")) }
    }

    /// [`Spec::check_response`] for a response in `#/components/responses`.
    fn check_component(&self, name: &str, resp: &Response) -> Result<(), String> {
        let pointer = format!("/components/responses/{name}");
        let response = self.doc.pointer(&pointer).unwrap_or_else(|| panic!("no {pointer}"));
        self.check_response(&pointer, response, resp).map_err(|e| format!("as {name}: {e}"))
    }

    /// How `value` breaks the schema at `pointer`; `what` names the value
    /// in messages.
    fn errors(&self, pointer: &str, value: &Value, what: &str) -> Vec<String> {
        let validator = self.validator(pointer);
        validator.iter_errors(value).map(|e| format!("{what}{}: {e}", e.instance_path())).collect()
    }

    /// A query or header value as the JSON the schema at `pointer`
    /// expects: an integer schema reads digits as a number (a value that is
    /// not one stays text and fails its schema).
    fn typed(&self, pointer: &str, text: &str) -> Value {
        let schema = self.resolve(self.doc.pointer(pointer).unwrap_or_else(|| panic!("no schema at {pointer}")));
        let integer = schema["type"] == "integer"
            || schema["type"].as_array().is_some_and(|t| t.contains(&Value::from("integer")));
        match text.parse::<i64>() {
            Ok(n) if integer => Value::from(n),
            _ => Value::String(text.to_owned()),
        }
    }

    fn validator(&self, pointer: &str) -> Arc<jsonschema::Validator> {
        let mut cache = self.validators.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(pointer.to_owned())
            .or_insert_with(|| {
                assert!(self.doc.pointer(pointer).is_some(), "no schema at {pointer}");
                let mut root = self.doc.clone();
                root.as_object_mut()
                    .expect("object")
                    .insert("$ref".into(), Value::String(format!("#{}", fragment(pointer))));
                let validator = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft202012)
                    .should_validate_formats(true)
                    .build(&root)
                    .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}"));
                Arc::new(validator)
            })
            .clone()
    }
}

/// A body as the JSON its schema judges: JSON as it is, a form as an
/// object of strings (a repeated name is refused), text as a string.
fn body_value(media: &str, bytes: &[u8]) -> Result<Value, String> {
    if media == "application/json" || media.ends_with("+json") {
        return serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON ({e})"));
    }
    if media == "application/x-www-form-urlencoded" {
        let mut object = Map::new();
        for (k, v) in form_urlencoded::parse(bytes) {
            if object.insert(k.clone().into_owned(), Value::String(v.into_owned())).is_some() {
                return Err(format!("form field {k} given twice"));
            }
        }
        return Ok(Value::Object(object));
    }
    Ok(Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The media type of a `Content-Type` value, without parameters.
fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// A JSON pointer as a URI fragment: `{id}` of a path template as `%7Bid%7D`.
fn fragment(pointer: &str) -> String {
    let mut out = String::new();
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A JSON pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Every schema in the document with its pointer: the values of `schema`
/// (parameters, headers, media types) and of `components/schemas`.
fn collect_schemas<'a>(value: &'a Value, pointer: &str, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{pointer}/{}", escape(key));
                if key == "schema" || pointer == "/components/schemas" {
                    out.push((here, child));
                } else {
                    collect_schemas(child, &here, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_schemas(child, &format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}
