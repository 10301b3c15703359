//! JSON request bodies, read noting a key given twice in one object.
//!
//! serde_json's `Value` keeps the last of two equal keys and drops the
//! other without a word, so `{"items": [A], "items": [B]}` would order B
//! while a proxy or log that reads the first sees A. [`JsonBody`] reads the
//! same `Value` and also records the path of the first key given twice
//! (`items`, `items[0].sku`); `Input::request` refuses such a body with a
//! 422 naming it. It also reads every object as written: serde_json's
//! `Value` (with the `raw_value` feature) parses an object whose first key
//! is `$serde_json::private::RawValue` as the JSON text in its string, a
//! body other than the one sent; here that key is a key like any other
//! (and so an unknown field).

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;

/// A request body: any JSON value, and the first key it repeats (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonBody {
    value: Value,
    duplicate: Option<String>,
}

impl JsonBody {
    /// The path of the first key given twice in one object, e.g. `items[0].sku`.
    pub fn duplicate(&self) -> Option<&str> {
        self.duplicate.as_deref()
    }
}

impl Deref for JsonBody {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

impl<'de> Deserialize<'de> for JsonBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JsonBody, D::Error> {
        let duplicate = RefCell::new(None);
        let value = Node { at: &At::Root, duplicate: &duplicate }.deserialize(d)?;
        Ok(JsonBody { value, duplicate: duplicate.into_inner() })
    }
}

/// Where a value sits in the body; rendered only for a repeated key.
enum At<'p> {
    Root,
    Key(&'p At<'p>, &'p str),
    Index(&'p At<'p>, usize),
}

impl At<'_> {
    /// `items[0].sku`, as `Input` names fields (a key without control
    /// characters, at most 40 of its characters).
    fn render(&self) -> String {
        match self {
            At::Root => String::new(),
            At::Key(parent, key) => {
                let key: String = key.chars().filter(|c| !c.is_control()).take(40).collect();
                match parent.render() {
                    p if p.is_empty() => key,
                    p => format!("{p}.{key}"),
                }
            }
            At::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

/// Reads one value at `at`, recording the first repeated key in `duplicate`.
struct Node<'p, 's> {
    at: &'p At<'p>,
    duplicate: &'s RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) =
            seq.next_element_seed(Node { at: &At::Index(self.at, out.len()), duplicate: self.duplicate })?
        {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = At::Key(self.at, &key);
            let v = map.next_value_seed(Node { at: &at, duplicate: self.duplicate })?;
            if out.contains_key(&key) {
                self.duplicate.borrow_mut().get_or_insert_with(|| at.render());
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> JsonBody {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn reads_the_same_value_as_serde_json() {
        let text = r#"{"a": [1, -2, 3.5, 1e2, 18446744073709551615, "x\u0041", null, true, {"b": {}}], "c": []}"#;
        let body = parse(text);
        assert_eq!(*body, serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(body.duplicate(), None);
        // serde_json's raw-value token is no instruction here: the object stays as written.
        let magic = r#"{"$serde_json::private::RawValue": "{\"a\": 1}"}"#;
        assert_eq!(*parse(magic), serde_json::json!({"$serde_json::private::RawValue": "{\"a\": 1}"}));
        assert_eq!(serde_json::from_str::<Value>(magic).unwrap(), serde_json::json!({"a": 1}), "serde_json's reading");
        // serde_json's own limits still apply (nesting over 128 is an error).
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<JsonBody>(&deep).is_err());
    }

    #[test]
    fn the_first_repeated_key_is_named_by_its_path() {
        assert_eq!(parse(r#"{"items": [], "items": [1]}"#).duplicate(), Some("items"));
        let nested = r#"{"items": [{"sku": "A"}, {"sku": "A", "sku": "B"}], "x": 1, "x": 2}"#;
        assert_eq!(parse(nested).duplicate(), Some("items[1].sku"));
        assert_eq!(parse(r#"{"a": {"b": 1, "b": 1}}"#).duplicate(), Some("a.b"));
        assert_eq!(parse(r#"[{"k": 1, "k": 2}]"#).duplicate(), Some("[0].k"));
        assert_eq!(parse(r#"{"a\u0007b": 1, "a\u0007b": 2}"#).duplicate(), Some("ab"));
        // A repeat with the same value is one too; one key in two objects is not.
        assert_eq!(parse(r#"{"a": 1, "a": 1}"#).duplicate(), Some("a"));
        assert_eq!(parse(r#"[{"a": 1}, {"a": 1}]"#).duplicate(), None);
    }
}
