//! The protocol documents (`docs/hub-api.md`, `docs/hub-api.yaml`) against the
//! wire types: every example parses and passes the client's checks, and every
//! call of the protocol is in both.

use std::collections::BTreeSet;
use std::path::PathBuf;

use hub_client::sse::Parser;
use hub_client::wire::is_sha256_digest;
use hub_client::{Desired, DrainNotice, Nudge, Report, WorkerView};
use serde_json::{Map, Value};

/// The calls of protocol v1: (method, path).
const CALLS: [(&str, &str); 5] = [
    ("GET", "/v1/agents/{agent_id}/desired"),
    ("GET", "/v1/agents/{agent_id}/events"),
    ("POST", "/v1/agents/{agent_id}/report"),
    ("POST", "/v1/agents/{agent_id}/drain"),
    ("GET", "/v1/workers/{agent_id}"),
];

/// The fields of `agentctl status --json` (SPEC), which every report carries.
const STATUS_FIELDS: [&str; 10] = [
    "agent_id",
    "phase",
    "current_digest",
    "last_good_digest",
    "drained",
    "pinned",
    "bad_digests",
    "last_check",
    "next_check",
    "last_error",
];

/// The fields of a history entry (SPEC), `downtime_ms` aside.
const EVENT_FIELDS: [&str; 7] = ["at", "kind", "from", "to", "outcome", "trigger", "error"];

fn doc(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn keys_within(v: &Value, allowed: &[&str]) -> Result<(), String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown field {k:?}")),
        None => Ok(()),
    }
}

fn has_fields(obj: &Map<String, Value>, fields: &[&str]) -> Result<(), String> {
    match fields.iter().find(|f| !obj.contains_key(**f)) {
        Some(f) => Err(format!("missing field {f:?}")),
        None => Ok(()),
    }
}

fn digest_or_null(v: &Value, what: &str) -> Result<(), String> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) if is_sha256_digest(s) => Ok(()),
        other => Err(format!("{what} is not a digest or null: {other}")),
    }
}

fn check_event(e: &Value) -> Result<(), String> {
    let obj = e.as_object().ok_or("event is not an object")?;
    has_fields(obj, &EVENT_FIELDS)?;
    digest_or_null(&e["from"], "event.from")?;
    digest_or_null(&e["to"], "event.to")
}

/// Checks `v` as an example of the protocol type `ty`, the way the client would.
fn check(ty: &str, v: &Value) -> Result<(), String> {
    let parse_err = |e: serde_json::Error| e.to_string();
    match ty {
        "Desired" => {
            keys_within(v, &["repository", "digest"])?;
            let d: Desired = serde_json::from_value(v.clone()).map_err(parse_err)?;
            d.validate()
        }
        "Nudge" => {
            keys_within(v, &["reason", "digest"])?;
            Nudge::parse(&v.to_string()).map(|_| ())
        }
        "DrainNotice" => {
            keys_within(v, &["draining", "reason"])?;
            serde_json::from_value::<DrainNotice>(v.clone())
                .map(|_| ())
                .map_err(parse_err)
        }
        "WorkerView" => {
            keys_within(v, &["registered", "digest", "in_flight"])?;
            let w: WorkerView = serde_json::from_value(v.clone()).map_err(parse_err)?;
            digest_or_null(&serde_json::to_value(w.digest).unwrap(), "digest")
        }
        "Report" => {
            let r: Report = serde_json::from_value(v.clone()).map_err(parse_err)?;
            has_fields(&r.status, &STATUS_FIELDS)?;
            digest_or_null(&r.status["current_digest"], "current_digest")?;
            digest_or_null(&r.status["last_good_digest"], "last_good_digest")?;
            match &r.event {
                Some(e) => check_event(e),
                None => Ok(()),
            }
        }
        "HistoryEntry" => check_event(v),
        "Error" => {
            keys_within(v, &["error"])?;
            v["error"]
                .as_str()
                .map(|_| ())
                .ok_or_else(|| "'error' is not a string".into())
        }
        other => Err(format!("no check for type {other:?}")),
    }
}

/// `(marker, fence info, block)` for every `<!-- example: X -->` of the page.
fn marked_blocks(md: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut lines = md.lines();
    while let Some(line) = lines.next() {
        let Some(marker) = line
            .trim()
            .strip_prefix("<!-- example:")
            .and_then(|r| r.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        let info = fence
            .strip_prefix("```")
            .unwrap_or_else(|| panic!("example {marker:?} is not followed by a ``` block"));
        let mut block = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            block.push_str(l);
            block.push('\n');
        }
        out.push((marker.trim().to_string(), info.to_string(), block));
    }
    out
}

#[test]
fn every_example_in_the_page_is_a_valid_protocol_body() {
    let md = doc("hub-api.md");
    let blocks = marked_blocks(&md);
    let mut seen = BTreeSet::new();
    for (ty, info, block) in &blocks {
        if ty == "event-stream" {
            assert_eq!(info, "text");
            check_event_stream(block);
        } else {
            assert_eq!(info, "json", "example {ty}");
            let v: Value = serde_json::from_str(block)
                .unwrap_or_else(|e| panic!("example {ty} is not JSON: {e}\n{block}"));
            check(ty, &v).unwrap_or_else(|e| panic!("example {ty}: {e}\n{block}"));
        }
        seen.insert(ty.as_str());
    }
    let want = [
        "Desired",
        "DrainNotice",
        "Error",
        "Nudge",
        "Report",
        "WorkerView",
        "event-stream",
    ];
    assert_eq!(seen, BTreeSet::from(want));
    // No JSON example escapes the checks.
    assert_eq!(
        md.lines().filter(|l| l.trim() == "```json").count(),
        blocks.iter().filter(|b| b.1 == "json").count(),
        "every ```json block of hub-api.md needs an <!-- example: Type --> marker"
    );
}

/// The event-stream example, through the client's parser: nudges with ids and
/// valid data, and a `retry`.
fn check_event_stream(text: &str) {
    let mut p = Parser::new(hub_client::client::MAX_EVENT);
    let events = p.push(text.as_bytes()).unwrap();
    assert!(!events.is_empty(), "the event-stream example has no event");
    for ev in &events {
        assert_eq!(ev.event, "nudge");
        assert!(ev.id.is_some(), "nudges carry an id");
        Nudge::parse(&ev.data).unwrap();
    }
    assert!(p.retry_ms().is_some(), "the example starts with retry:");
}

/// Every `example` in the OpenAPI document, with the schema it illustrates.
fn yaml_examples(v: &Value, path: &str, schema_name: Option<&str>, out: &mut Vec<Example>) {
    match v {
        Value::Object(m) => {
            if let Some(ex) = m.get("example") {
                // A media type or a parameter: its schema's $ref (or inline type);
                // a schema under components/schemas: its own name.
                let ty = m
                    .get("schema")
                    .and_then(|s| s.get("$ref"))
                    .and_then(Value::as_str)
                    .and_then(|r| r.rsplit('/').next())
                    .map(str::to_string)
                    .or_else(|| schema_name.map(str::to_string))
                    .or_else(|| {
                        let t = m.get("schema").and_then(|s| s.get("type"))?;
                        Some(format!("inline {}", t.as_str()?))
                    });
                out.push(Example {
                    at: path.to_string(),
                    ty,
                    value: ex.clone(),
                });
            }
            for (k, child) in m {
                if k == "example" {
                    continue;
                }
                let name = path.ends_with("/components/schemas").then_some(k.as_str());
                yaml_examples(child, &format!("{path}/{k}"), name, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                yaml_examples(child, &format!("{path}/{i}"), None, out);
            }
        }
        _ => {}
    }
}

struct Example {
    at: String,
    ty: Option<String>,
    value: Value,
}

fn openapi() -> Value {
    serde_norway::from_str(&doc("hub-api.yaml")).expect("hub-api.yaml is YAML")
}

#[test]
fn every_example_in_the_openapi_document_is_a_valid_protocol_body() {
    let api = openapi();
    assert_eq!(api["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let schemas = &api["components"]["schemas"];
    let mut examples = Vec::new();
    yaml_examples(&api, "", None, &mut examples);
    let mut checked = BTreeSet::new();
    for ex in &examples {
        let ty = ex
            .ty
            .as_deref()
            .unwrap_or_else(|| panic!("{}: an example of no known schema", ex.at));
        if ty == "inline string" {
            assert!(ex.value.is_string(), "{}", ex.at);
            continue;
        }
        check(ty, &ex.value).unwrap_or_else(|e| panic!("{} ({ty}): {e}", ex.at));
        // And it has what its schema requires.
        if let Some(required) = schemas[ty]["required"].as_array() {
            for f in required {
                let f = f.as_str().unwrap();
                assert!(
                    ex.value.get(f).is_some(),
                    "{} ({ty}): missing required {f:?}",
                    ex.at
                );
            }
        }
        checked.insert(ty.to_string());
    }
    for ty in [
        "Desired",
        "DrainNotice",
        "Nudge",
        "Report",
        "WorkerView",
        "Error",
        "HistoryEntry",
    ] {
        assert!(checked.contains(ty), "no example of {ty} in hub-api.yaml");
    }
    // The schema's required status fields are the SPEC's.
    let required: BTreeSet<&str> = schemas["Report"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(STATUS_FIELDS));
}

#[test]
fn every_call_is_in_both_documents_and_nothing_else_is() {
    let md = doc("hub-api.md");
    let api = openapi();
    let paths = api["paths"].as_object().expect("paths");
    for (method, path) in CALLS {
        assert!(
            md.contains(&format!("## `{method} {path}`")),
            "hub-api.md has no section for {method} {path}"
        );
        assert!(
            md.contains(&format!("| `{method} {path}` |")),
            "hub-api.md's overview lacks {method} {path}"
        );
        let op = &paths
            .get(path)
            .unwrap_or_else(|| panic!("hub-api.yaml lacks {path}"))[method.to_lowercase()];
        assert!(op.is_object(), "hub-api.yaml lacks {method} {path}");
    }
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let protocol: BTreeSet<&str> = CALLS.iter().map(|c| c.1).collect();
    assert_eq!(documented, protocol, "hub-api.yaml documents other paths");
}

#[test]
fn the_doc_checker_refuses_bad_examples() {
    let d = "sha256:4d0c2bd5d0b9c2cf4f0f4b2a8e0e1a3c5b7d9f1e3a5c7b9d1f3e5a7c9b1d3f5e";
    let bad = [
        (
            "Desired",
            serde_json::json!({"repository": "r", "digest": "latest"}),
        ),
        (
            "Desired",
            serde_json::json!({"repository": "r", "digest": d, "tag": "x"}),
        ),
        ("Nudge", serde_json::json!({"digest": "sha256:00"})),
        ("DrainNotice", serde_json::json!({"draining": "yes"})),
        (
            "WorkerView",
            serde_json::json!({"registered": true, "digest": "v1"}),
        ),
        ("Report", serde_json::json!({"agent_id": "h"})),
        ("HistoryEntry", serde_json::json!({"at": "x"})),
        ("Error", serde_json::json!({"error": 3})),
        ("Unknown", serde_json::json!({})),
    ];
    for (ty, v) in bad {
        assert!(check(ty, &v).is_err(), "{ty} {v} passed");
    }
}
