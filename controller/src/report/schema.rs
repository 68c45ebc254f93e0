//! The JSON Schema of `summary.json`, derived from the types that write it
//! (their doc comments become its descriptions). The repository keeps it
//! as `docs/summary.schema.json`, and a test fails when the two differ, so
//! a change to the summary is a change to the schema, made on purpose.

use serde_json::Value;

use super::summary::{SCHEMA, Summary};

/// The schema, as `controller schema` prints it.
pub fn summary() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let mut schema = generator.into_root_schema_for::<Summary>().to_value();
    if let Some(object) = schema.as_object_mut() {
        // A name, not a place: nothing fetches it.
        object.insert(
            "$id".to_owned(),
            Value::from(format!("urn:{}", SCHEMA.replace(['.', '/'], ":"))),
        );
        object.insert(
            "title".to_owned(),
            Value::from(format!("summary.json ({SCHEMA}): one stampede run")),
        );
    }
    schema
}

/// The schema as the repository keeps it: pretty JSON and a newline.
pub fn summary_text() -> String {
    let mut text = serde_json::to_string_pretty(&summary()).expect("a schema always serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/summary.schema.json` is the schema the code writes. Set
    /// `UPDATE_SNAPSHOTS=1` to accept a change.
    #[test]
    fn the_committed_schema_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/summary.schema.json");
        let text = summary_text();
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, &text).expect("the schema is written");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "docs/summary.schema.json differs from the summary's types; run with UPDATE_SNAPSHOTS=1 if the change is intended"
        );
    }

    #[test]
    fn the_schema_names_its_version() {
        let s = summary();
        assert_eq!(s["$id"], "urn:stampede:summary:1");
        assert!(s["properties"]["schema"].is_object());
    }
}
