//! Every event's data and CloudEvent envelope validate against the schemas in `schemas/events/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use domain::envelope;
use jsonschema::Validator;
use proptest::prelude::*;
use serde_json::Value;

use crate::event_strategies::{any_recorded_event, event_types, one_of_each, recorded};
use crate::{
    CLOUDEVENT_SCHEMA, DATASCHEMA_PREFIX, compile, read_json, schema_file_of, schemas_dir,
    violations,
};

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// The compiled schema of each event type, by the `dataschema` naming it.
fn event_validators() -> BTreeMap<String, Validator> {
    one_of_each()
        .iter()
        .map(|event| {
            let urn = envelope::dataschema(event.event_type(), event.schema_version());
            let file = schema_file_of(&urn);
            let validator = compile(&file, &read_json(&schemas_dir().join(&file)));
            (urn, validator)
        })
        .collect()
}

#[test]
fn every_event_validates_against_its_schema() {
    let data_schemas = event_validators();
    let cloudevent = compile(
        CLOUDEVENT_SCHEMA,
        &read_json(&schemas_dir().join(CLOUDEVENT_SCHEMA)),
    );
    proptest!(|((event, recorded) in any_recorded_event())| {
        let urn = envelope::dataschema(event.event_type(), event.schema_version());
        let validator = &data_schemas[&urn];
        let data = event.data();
        let errors = violations(validator, &data);
        prop_assert!(
            errors.is_empty(),
            "the data of {} does not validate against {urn}:\n  {}\ndata: {data}",
            event.event_type(),
            errors.join("\n  ")
        );

        let json = envelope::to_json(&recorded);
        let errors = violations(&cloudevent, &json);
        prop_assert!(
            errors.is_empty(),
            "the CloudEvent of {} does not validate against schemas/{CLOUDEVENT_SCHEMA}:\n  {}\nevent: {json}",
            event.event_type(),
            errors.join("\n  ")
        );
    });
}

#[test]
fn every_event_type_has_a_schema_and_every_schema_an_event_type() {
    let types = event_types();
    let expected: BTreeSet<String> = one_of_each()
        .iter()
        .map(|e| schema_file_of(&envelope::dataschema(e.event_type(), e.schema_version())))
        .collect();

    let dir = schemas_dir().join("events");
    let present: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| format!("events/{}", entry.unwrap().file_name().to_string_lossy()))
        .filter(|file| file != CLOUDEVENT_SCHEMA)
        .collect();

    let missing: Vec<_> = expected.difference(&present).collect();
    let orphaned: Vec<_> = present.difference(&expected).collect();
    assert!(
        missing.is_empty() && orphaned.is_empty(),
        "schemas/ and the event types disagree.\n  event types without a schema file: {missing:?}\n  schema files without an event type: {orphaned:?}"
    );

    for file in &expected {
        let schema = read_json(&schemas_dir().join(file));
        compile(file, &schema);
        let urn = format!("{DATASCHEMA_PREFIX}{file}");
        assert_eq!(schema["$schema"], DRAFT_2020_12, "schemas/{file}: $schema");
        assert_eq!(
            schema["$id"],
            urn.as_str(),
            "schemas/{file}: $id must be its dataschema"
        );
        assert_eq!(
            schema["additionalProperties"], false,
            "schemas/{file}: events deny unknown fields, so must the schema"
        );
    }

    let cloudevent = read_json(&schemas_dir().join(CLOUDEVENT_SCHEMA));
    let listed: BTreeSet<&str> = cloudevent["properties"]["type"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("schemas/{CLOUDEVENT_SCHEMA}: properties.type.enum is missing"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        listed, types,
        "schemas/{CLOUDEVENT_SCHEMA}: the `type` enum must list exactly the event types"
    );
}

/// The envelope schema ties each event type to its `source` and to its kind of stream:
/// the CloudEvent of every type validates as the code builds it, and is refused with any
/// other source or a subject naming another kind of stream.
#[test]
fn the_envelope_schema_ties_each_type_to_its_source_and_stream_kind() {
    let cloudevent = compile(
        CLOUDEVENT_SCHEMA,
        &read_json(&schemas_dir().join(CLOUDEVENT_SCHEMA)),
    );
    let sources = ["/keel/users", "/keel/blog"];
    let kinds = ["user", "post", "token"];
    let mut problems = Vec::new();
    for event in one_of_each() {
        let event_type = event.event_type();
        let json = envelope::to_json(&recorded(&event));
        let subject = json["subject"].as_str().unwrap().to_owned();
        let (kind, id) = subject.split_once('-').unwrap();
        assert!(
            kinds.contains(&kind),
            "{event_type}: stream {subject} is of a kind this test does not know; add it to `kinds`"
        );
        let source = envelope::source(event_type);
        for other_source in sources {
            for other_kind in kinds {
                let mut changed = json.clone();
                changed["source"] = Value::from(other_source);
                changed["subject"] = Value::from(format!("{other_kind}-{id}"));
                let valid = cloudevent.is_valid(&changed);
                let expected = other_source == source && other_kind == kind;
                if valid != expected {
                    problems.push(format!(
                        "{event_type} with source {other_source} and subject {other_kind}-…: \
                         {} (the code uses source {source}, stream {kind}-…)",
                        if valid { "accepted" } else { "refused" }
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "schemas/{CLOUDEVENT_SCHEMA}: {problems:#?}"
    );
}
