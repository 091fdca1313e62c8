//! Schema files read as JSON that refuses duplicate keys.
//!
//! serde_json keeps the last of two equal keys without a word, so a schema holding
//! `"maxLength": 10, ..., "maxLength": 1000` would be checked, built and compared as the second
//! while a reader of the file sees the first. A schema file is an input like any other: the
//! duplicate is an error naming the key and the line.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `text` as one JSON document, refusing an object with two equal keys.
pub fn parse_strict(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Strict>(text).map(|strict| strict.0)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key `{}`", key.escape_debug())));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::parse_strict;

    #[test]
    fn a_duplicate_key_at_any_depth_is_an_error_naming_it_and_its_line() {
        let error = parse_strict("{\n \"properties\": {\"a\": {\"maxLength\": 10,\n \"maxLength\": 1000}}}").unwrap_err();
        assert!(error.to_string().contains("duplicate key `maxLength` at line 3"), "{error}");
        assert!(parse_strict("[{\"a\": 1, \"a\": 1}]").unwrap_err().to_string().contains("duplicate key `a`"));
    }

    #[test]
    fn documents_without_duplicates_parse_as_serde_json_does() {
        let text = r#"{"a": [1, -2, 3.5, true, null, "x\u0000"], "b": {"c": {}}, "d": 18446744073709551615}"#;
        assert_eq!(parse_strict(text).unwrap(), serde_json::from_str::<serde_json::Value>(text).unwrap());
        assert_eq!(parse_strict("{}").unwrap(), json!({}));
    }

    #[test]
    fn hostile_text_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(parse_strict(&deep).unwrap_err().to_string().contains("recursion limit"));
        assert!(parse_strict("{\"a\": 1} trailing").is_err());
        assert!(parse_strict("").is_err());
    }
}
