//! The OpenAPI and AsyncAPI documents are complete, and every `$ref` between the files resolves.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use events::envelope;
use serde_json::Value;

use crate::event_strategies::{event_types, one_of_each};
use crate::{CLOUDEVENT_SCHEMA, HTTP_METHODS, read_json, read_yaml, schema_file_of, schemas_dir};

// ---------------------------------------------------------------------------------
// OpenAPI
// ---------------------------------------------------------------------------------

#[test]
fn every_path_parameter_is_declared() {
    let openapi = read_yaml(&schemas_dir().join("openapi.yaml"));
    let resolve = |p: &Value| match p.get("$ref").and_then(Value::as_str) {
        Some(pointer) => openapi
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("schemas/openapi.yaml: unresolved {pointer}"))
            .clone(),
        None => p.clone(),
    };
    let mut problems = Vec::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for method in HTTP_METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let declared: BTreeSet<String> = [&item["parameters"], &operation["parameters"]]
                .into_iter()
                .filter_map(Value::as_array)
                .flatten()
                .map(resolve)
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect();
            let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
            if declared != in_path {
                problems.push(format!(
                    "{} {path}: path has {in_path:?}, parameters declare {declared:?}",
                    method.to_uppercase()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "schemas/openapi.yaml: {problems:#?}");
}

// ---------------------------------------------------------------------------------
// AsyncAPI
// ---------------------------------------------------------------------------------

/// Follows a local `$ref` (`#/...`) if `value` is one.
fn deref<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) if pointer.starts_with('#') => document
            .pointer(&pointer[1..])
            .unwrap_or_else(|| panic!("schemas/asyncapi.yaml: unresolved $ref {pointer}")),
        _ => value,
    }
}

/// Every `$ref` string anywhere under `value`.
fn refs_in(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("$ref", Value::String(target)) => found.push(target.clone()),
                    _ => refs_in(field, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs_in(item, found)),
        _ => {}
    }
}

#[test]
fn the_asyncapi_document_names_every_event_subject() {
    let asyncapi = read_yaml(&schemas_dir().join("asyncapi.yaml"));
    assert!(
        asyncapi["asyncapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "schemas/asyncapi.yaml must be AsyncAPI 3"
    );
    let channels = asyncapi["channels"]
        .as_object()
        .expect("schemas/asyncapi.yaml has no `channels`");
    let by_address: BTreeMap<&str, &Value> = channels
        .values()
        .filter_map(|c| Some((c["address"].as_str()?, c)))
        .collect();

    let mut problems = Vec::new();
    for event in one_of_each() {
        let event_type = event.event_type();
        let subject = format!("events.{event_type}");
        let Some(channel) = by_address.get(subject.as_str()) else {
            problems.push(format!("no channel with address {subject}"));
            continue;
        };
        let data_schema = format!(
            "./{}",
            schema_file_of(&envelope::dataschema(event_type, event.schema_version()))
        );
        let messages = channel["messages"].as_object().cloned().unwrap_or_default();
        if messages.is_empty() {
            problems.push(format!("{subject}: the channel has no message"));
        }
        for (id, message) in &messages {
            let message = deref(&asyncapi, message);
            if message["contentType"] != "application/cloudevents+json" {
                problems.push(format!(
                    "{subject}: message {id} must have contentType application/cloudevents+json"
                ));
            }
            let headers = deref(&asyncapi, &message["headers"]);
            let required = headers["required"].as_array().cloned().unwrap_or_default();
            for header in ["Nats-Msg-Id", "content-type"] {
                if !required.contains(&Value::from(header)) {
                    problems.push(format!(
                        "{subject}: message {id} must require header {header}"
                    ));
                }
            }
            let mut refs = Vec::new();
            refs_in(&message["payload"], &mut refs);
            for needed in [format!("./{CLOUDEVENT_SCHEMA}"), data_schema.clone()] {
                if !refs.contains(&needed) {
                    problems.push(format!(
                        "{subject}: the payload of message {id} does not reference {needed}"
                    ));
                }
            }
        }
    }

    let types = event_types();
    for address in by_address.keys() {
        let stray = address
            .strip_prefix("events.")
            .is_some_and(|event_type| !types.contains(event_type));
        if stray {
            problems.push(format!("channel {address} names no event type"));
        }
    }
    if !by_address.contains_key("notify.user.{user_id}") {
        problems.push("no channel with address notify.user.{user_id}".to_owned());
    }
    let dead_letters = channels
        .values()
        .any(|c| c["x-keel-stream"] == "EVENTS_DLQ" || c["title"] == "EVENTS_DLQ");
    if !dead_letters {
        problems.push("no channel describes the dead-letter stream EVENTS_DLQ".to_owned());
    }
    assert!(problems.is_empty(), "schemas/asyncapi.yaml: {problems:#?}");
}

// ---------------------------------------------------------------------------------
// References between the files
// ---------------------------------------------------------------------------------

#[test]
fn every_reference_in_the_schemas_resolves() {
    let dir = schemas_dir();
    let mut documents: Vec<(String, Value)> = vec![
        (
            "openapi.yaml".to_owned(),
            read_yaml(&dir.join("openapi.yaml")),
        ),
        (
            "asyncapi.yaml".to_owned(),
            read_yaml(&dir.join("asyncapi.yaml")),
        ),
    ];
    for entry in fs::read_dir(dir.join("events")).unwrap() {
        let name = format!("events/{}", entry.unwrap().file_name().to_string_lossy());
        let value = read_json(&dir.join(&name));
        documents.push((name, value));
    }

    let mut problems = Vec::new();
    for (name, document) in &documents {
        let mut refs = Vec::new();
        refs_in(document, &mut refs);
        for target in refs {
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if file.is_empty() {
                document.pointer(fragment).is_some()
            } else {
                let base = Path::new(name).parent().unwrap_or(Path::new(""));
                let path = dir.join(base).join(file);
                path.is_file() && read_json(&path).pointer(fragment).is_some()
            };
            if !resolved {
                problems.push(format!("schemas/{name}: $ref {target} does not resolve"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
