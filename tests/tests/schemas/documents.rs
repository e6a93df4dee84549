//! The OpenAPI and AsyncAPI documents are complete, and every `$ref` between the files resolves.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use domain::envelope;
use serde_json::Value;

use crate::event_strategies::{event_types, one_of_each, stream_of};
use crate::routes::rust_files;
use crate::{
    CLOUDEVENT_SCHEMA, HTTP_METHODS, compile, read_json, read_yaml, schema_file_of, schemas_dir,
    workspace_root,
};

/// Follows a local `$ref` (`#/...`) if `value` is one.
fn deref<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) if pointer.starts_with('#') => document
            .pointer(&pointer[1..])
            .unwrap_or_else(|| panic!("unresolved $ref {pointer}")),
        _ => value,
    }
}

/// Every operation of the OpenAPI document: `(METHOD, path, operation)`.
fn operations(openapi: &Value) -> Vec<(String, String, &Value)> {
    let paths = openapi["paths"]
        .as_object()
        .expect("schemas/openapi.yaml has no `paths`");
    let mut found = Vec::new();
    for (path, item) in paths {
        for method in HTTP_METHODS {
            if let Some(operation) = item.get(method) {
                found.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    found
}

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

/// The operations the contract calls sensitive: with introspection configured, the
/// caller's token is first checked at the identity provider (inactive: 401; the
/// provider unreachable: 503).
const SENSITIVE_OPERATIONS: [(&str, &str); 5] = [
    ("PUT", "/api/users/{id}/roles"),
    ("DELETE", "/api/users/{id}"),
    ("POST", "/api/admin/revocations"),
    ("GET", "/api/events"),
    ("GET", "/api/streams/{stream_id}/events"),
];

/// Whether `operation`'s response `status` is documented with a `Retry-After` header.
fn answers_with_retry_after(openapi: &Value, operation: &Value, status: &str) -> bool {
    let response = deref(openapi, &operation["responses"][status]);
    response["headers"].get("Retry-After").is_some()
}

/// Authorization is live: any bearer-authenticated request may be refused for a revoked
/// token (401) or a deactivated user (403), and answered 503 when the instance cannot
/// confirm its authorization state (Postgres) in time.
#[test]
fn every_authenticated_operation_documents_401_403_and_503() {
    let openapi = read_yaml(&schemas_dir().join("openapi.yaml"));
    let mut problems = Vec::new();
    for (method, path, operation) in operations(&openapi) {
        let security = operation.get("security").unwrap_or(&openapi["security"]);
        let bearer = security
            .as_array()
            .is_some_and(|options| options.iter().any(|o| o.get("bearer").is_some()));
        if !bearer {
            continue;
        }
        for status in ["401", "403", "503"] {
            if operation["responses"].get(status).is_none() {
                problems.push(format!("{method} {path}: no {status} response"));
            }
        }
        if !answers_with_retry_after(&openapi, operation, "503") {
            problems.push(format!("{method} {path}: its 503 has no Retry-After"));
        }
    }
    assert!(problems.is_empty(), "schemas/openapi.yaml: {problems:#?}");
}

#[test]
fn exactly_the_sensitive_operations_are_marked_and_document_401_and_503() {
    let openapi = read_yaml(&schemas_dir().join("openapi.yaml"));
    let expected: BTreeSet<String> = SENSITIVE_OPERATIONS
        .iter()
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    let mut marked = BTreeSet::new();
    let mut problems = Vec::new();
    for (method, path, operation) in operations(&openapi) {
        match operation.get("x-keel-sensitive") {
            None | Some(Value::Bool(false)) => continue,
            Some(Value::Bool(true)) => {}
            Some(other) => {
                problems.push(format!(
                    "{method} {path}: x-keel-sensitive is {other}, not a boolean"
                ));
                continue;
            }
        }
        marked.insert(format!("{method} {path}"));
        for status in ["401", "503"] {
            if operation["responses"].get(status).is_none() {
                problems.push(format!("{method} {path}: no {status} response"));
            }
        }
        if !answers_with_retry_after(&openapi, operation, "503") {
            problems.push(format!("{method} {path}: its 503 has no Retry-After"));
        }
    }
    assert!(
        marked == expected && problems.is_empty(),
        "schemas/openapi.yaml: `x-keel-sensitive: true` must mark exactly the contract's \
         sensitive operations.\n  marked: {marked:#?}\n  expected: {expected:#?}\n  \
         problems: {problems:#?}"
    );
}

/// The stream ids the code makes match the `StreamId` of the OpenAPI document (the
/// `stream_id` of `GET /api/streams/{stream_id}/events`) and the CloudEvent `subject`,
/// and both spell the same pattern.
#[test]
fn every_kind_of_stream_id_matches_the_documented_pattern() {
    let openapi = read_yaml(&schemas_dir().join("openapi.yaml"));
    let cloudevent = read_json(&schemas_dir().join(CLOUDEVENT_SCHEMA));
    let documented = &openapi["components"]["schemas"]["StreamId"]["pattern"];
    assert_eq!(
        documented, &cloudevent["properties"]["subject"]["pattern"],
        "the StreamId pattern of schemas/openapi.yaml and the `subject` pattern of \
         schemas/{CLOUDEVENT_SCHEMA} differ"
    );
    let stream_id = compile(
        "openapi.yaml#/components/schemas/StreamId",
        &serde_json::json!({"type": "string", "pattern": documented}),
    );
    let refused: Vec<String> = one_of_each()
        .iter()
        .map(|event| stream_of(event).to_string())
        .filter(|id| !stream_id.is_valid(&Value::from(id.as_str())))
        .collect();
    assert!(
        refused.is_empty(),
        "stream ids the code makes that the StreamId pattern refuses: {refused:?}"
    );
}

// ---------------------------------------------------------------------------------
// AsyncAPI
// ---------------------------------------------------------------------------------

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
    problems.extend(policy_invalidation_problems(&asyncapi));
    let dead_letters = channels
        .values()
        .any(|c| c["x-keel-stream"] == "EVENTS_DLQ" || c["title"] == "EVENTS_DLQ");
    if !dead_letters {
        problems.push("no channel describes the dead-letter stream EVENTS_DLQ".to_owned());
    }
    assert!(problems.is_empty(), "schemas/asyncapi.yaml: {problems:#?}");
}

/// The Redis channels `policy.invalidate.<user_id>` and `policy.invalidate.all`: one
/// channel on the Redis server, which some operation sends on (the projectors) and some
/// operation receives from (command-api).
fn policy_invalidation_problems(asyncapi: &Value) -> Vec<String> {
    const ADDRESS: &str = "policy.invalidate.{target}";
    let Some((id, channel)) = asyncapi["channels"]
        .as_object()
        .into_iter()
        .flatten()
        .find(|(_, c)| c["address"] == ADDRESS)
    else {
        return vec![format!("no channel with address {ADDRESS}")];
    };
    let mut problems = Vec::new();
    let on_redis = channel["servers"]
        .as_array()
        .is_some_and(|servers| servers.iter().any(|s| s["$ref"] == "#/servers/redis"));
    if !on_redis {
        problems.push(format!("{ADDRESS}: the channel is not on the redis server"));
    }
    if channel["parameters"].get("target").is_none() {
        problems.push(format!(
            "{ADDRESS}: the parameter `target` is not described"
        ));
    }
    let reference = format!("#/channels/{id}");
    let actions: BTreeSet<&str> = asyncapi["operations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, operation)| operation["channel"]["$ref"] == reference.as_str())
        .filter_map(|(_, operation)| operation["action"].as_str())
        .collect();
    for action in ["send", "receive"] {
        if !actions.contains(action) {
            problems.push(format!("{ADDRESS}: no operation with action {action}"));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------
// WebSocket close codes
// ---------------------------------------------------------------------------------

/// The close codes the contract names (4001: the token expired; 4003: the token or the
/// user was revoked or deactivated).
const CONTRACT_CLOSE_CODES: [u16; 2] = [4001, 4003];

/// The close codes (1000–4999) named by `const NAME: u16 = <code>;` in the notification
/// hub's source, with the file and constant naming each.
fn close_codes_in_source() -> BTreeMap<u16, String> {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("command-api/src/notifications"), &mut files);
    let mut codes = BTreeMap::new();
    for path in files {
        let source = fs::read_to_string(&path).unwrap();
        for line in source.lines() {
            let Some((_, rest)) = line.split_once("const ") else {
                continue;
            };
            let Some((name, value)) = rest.split_once(": u16 = ") else {
                continue;
            };
            let value = value.trim().trim_end_matches(';').replace('_', "");
            if let Ok(code) = value.parse::<u16>()
                && (1000..=4999).contains(&code)
            {
                let file = path.strip_prefix(&root).unwrap_or(&path).display();
                codes.insert(code, format!("{} in {file}", name.trim()));
            }
        }
    }
    codes
}

/// The codes a description's `**Close codes.**` paragraph names.
fn close_codes_described(description: &str) -> BTreeSet<u16> {
    let Some(start) = description.find("**Close codes.**") else {
        return BTreeSet::new();
    };
    let paragraph = description[start..]
        .split("\n\n")
        .next()
        .unwrap_or_default();
    paragraph
        .split(|c: char| !c.is_ascii_digit())
        .filter(|word| word.len() == 4)
        .filter_map(|word| word.parse::<u16>().ok())
        .filter(|code| (1000..=4999).contains(code))
        .collect()
}

#[test]
fn every_close_code_is_described_in_both_documents() {
    let openapi = read_yaml(&schemas_dir().join("openapi.yaml"));
    let asyncapi = read_yaml(&schemas_dir().join("asyncapi.yaml"));
    let descriptions = [
        (
            "openapi.yaml: GET /ws/notifications",
            &openapi["paths"]["/ws/notifications"]["get"]["description"],
        ),
        (
            "asyncapi.yaml: channel notificationSocket",
            &asyncapi["channels"]["notificationSocket"]["description"],
        ),
    ];
    let in_source = close_codes_in_source();
    assert!(
        !in_source.is_empty(),
        "the scan found no close code constant in command-api/src/notifications; it no \
         longer reads the source"
    );
    let mut problems = Vec::new();
    for (name, description) in descriptions {
        let described = close_codes_described(description.as_str().unwrap_or_default());
        for (code, origin) in &in_source {
            if !described.contains(code) {
                problems.push(format!(
                    "{name}: close code {code} ({origin}) is not described"
                ));
            }
        }
        for code in CONTRACT_CLOSE_CODES {
            if !described.contains(&code) {
                problems.push(format!(
                    "{name}: the contract's close code {code} is not described"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the **Close codes.** paragraphs: {problems:#?}"
    );
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
