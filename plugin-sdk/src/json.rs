//! JSON helpers: payloads and configs cross the plugin boundary as JSON text.
//!
//! `serde_json` is re-exported as [`crate::serde_json`] and `serde` as [`crate::serde`], so
//! plugins need no JSON dependency of their own (derive `Deserialize` for a config type with
//! `#[serde(crate = "switchyard_plugin_sdk::serde")]`).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Parse message data (JSON text) into a [`Value`].
///
/// The host guarantees that data it passes in is valid JSON, so this only fails on text a
/// plugin made up itself (e.g. in a test).
pub fn parse(data: &str) -> Result<Value, String> {
    serde_json::from_str(data).map_err(|e| format!("data is not valid JSON: {e}"))
}

/// Parse message data into a JSON object; any other JSON value is an error.
pub fn parse_object(data: &str) -> Result<Map<String, Value>, String> {
    match parse(data)? {
        Value::Object(map) => Ok(map),
        other => Err(format!("data must be a JSON object, not {}", kind(&other))),
    }
}

/// Parse message data into any `Deserialize` type, with a readable error.
pub fn from_data<T: DeserializeOwned>(data: &str) -> Result<T, String> {
    serde_json::from_str(data).map_err(|e| format!("invalid data: {e}"))
}

/// Serialise a [`Value`] back to compact JSON text.
pub fn to_string(value: &Value) -> String {
    value.to_string()
}

/// Serialise any `Serialize` value to compact JSON text.
///
/// Fails only for values JSON cannot represent (e.g. a map with non-string keys).
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("cannot serialise to JSON: {e}"))
}

/// Read a binding's config (JSON text) into `T`: what the SDK does with the text the `init`
/// export receives before it calls [`crate::Plugin::init`].
///
/// An empty config or `null` is read as `{}`, so a config struct whose fields all have
/// `#[serde(default)]` works when the binding has no `config`. Errors name the problem and
/// its position, e.g. ``invalid config: unknown field `mask`, expected ... at line 1 column 7``.
pub fn parse_config<T: DeserializeOwned>(config: &str) -> Result<T, String> {
    let trimmed = config.trim();
    let text = if trimmed.is_empty() || trimmed == "null" {
        "{}"
    } else {
        trimmed
    };
    serde_json::from_str(text).map_err(|e| format!("invalid config: {e}"))
}

/// A short name for the kind of a JSON value (`"object"`, `"array"`, `"string"`, ...).
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Cfg {
        mask: Option<String>,
        limit: u32,
    }

    #[test]
    fn empty_and_null_config_read_as_empty_object() {
        assert_eq!(parse_config::<Cfg>("").unwrap(), Cfg::default());
        assert_eq!(parse_config::<Cfg>("  null ").unwrap(), Cfg::default());
        assert_eq!(parse_config::<Cfg>("{}").unwrap(), Cfg::default());
    }

    #[test]
    fn config_errors_are_readable() {
        let err = parse_config::<Cfg>(r#"{"limit": "x"}"#).unwrap_err();
        assert!(err.starts_with("invalid config: invalid type"), "{err}");
        assert!(err.contains("line 1"), "{err}");
        let err = parse_config::<Cfg>(r#"{"nope": 1}"#).unwrap_err();
        assert!(err.contains("unknown field `nope`"), "{err}");
    }

    #[test]
    fn parse_object_rejects_non_objects() {
        assert_eq!(
            parse_object("[1]").unwrap_err(),
            "data must be a JSON object, not an array"
        );
        assert!(
            parse_object("{")
                .unwrap_err()
                .starts_with("data is not valid JSON")
        );
        assert_eq!(parse_object(r#"{"a":1}"#).unwrap()["a"], 1);
    }

    #[test]
    fn round_trip() {
        let v = parse(r#"{"a": [1, "b"]}"#).unwrap();
        assert_eq!(to_string(&v), r#"{"a":[1,"b"]}"#);
        assert_eq!(to_json(&["x"]).unwrap(), r#"["x"]"#);
    }
}
