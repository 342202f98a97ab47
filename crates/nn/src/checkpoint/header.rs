//! The one check of a safetensors header that the safetensors crate cannot
//! make: that no name is given twice.
//!
//! The crate deserialises the header's JSON object into a map, and a JSON
//! object that gives a key twice becomes a map that silently keeps one of the
//! two values. A file naming `down.0.conv1.weight` twice would load one of
//! the two tensors and say nothing of the other, so the keys are read here
//! one by one, in the file's order, before the crate sees them.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// A key that a header gives twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Duplicate {
    /// A tensor's name (a key of the top-level object).
    Tensor(String),
    /// A key of the `__metadata__` object, or `__metadata__` itself.
    Metadata(String),
}

/// The key the safetensors format reserves for the string metadata.
const METADATA: &str = "__metadata__";

/// The first key that `header` (the JSON text after the 8-byte length) gives
/// twice: at the top level, or inside `__metadata__`. `None` if there is
/// none, and also if the text is not a JSON object: the safetensors crate
/// then refuses it, with its own reason.
pub(super) fn first_duplicate(header: &[u8]) -> Option<Duplicate> {
    let mut de = serde_json::Deserializer::from_slice(header);
    let first = de.deserialize_map(Keys { level: Level::Top }).ok()?;
    // Only whitespace may follow the object (the padding safetensors writes).
    de.end().ok()?;
    first
}

#[derive(Clone, Copy)]
enum Level {
    /// The header object: tensor names, and `__metadata__`.
    Top,
    /// The `__metadata__` object: string keys and values.
    Metadata,
}

/// Walks one JSON object's keys, remembering those already seen; the values
/// are skipped ([`IgnoredAny`]) except `__metadata__`'s, whose keys are walked
/// the same way.
struct Keys {
    level: Level,
}

impl<'de> Visitor<'de> for Keys {
    type Value = Option<Duplicate>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        let mut first = None;
        // The whole object is read even after a duplicate is found: serde_json
        // checks the closing brace when the visitor returns.
        while let Some(key) = map.next_key::<String>()? {
            let inner = match self.level {
                Level::Top if key == METADATA => map.next_value_seed(Keys { level: Level::Metadata })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    None
                }
            };
            let repeated = (!seen.insert(key.clone())).then(|| match self.level {
                Level::Top if key != METADATA => Duplicate::Tensor(key),
                _ => Duplicate::Metadata(key),
            });
            first = first.or(inner).or(repeated);
        }
        Ok(first)
    }
}

impl<'de> DeserializeSeed<'de> for Keys {
    type Value = Option<Duplicate>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(json: &str) -> Option<Duplicate> {
        first_duplicate(json.as_bytes())
    }

    #[test]
    fn finds_the_first_key_given_twice() {
        let info = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        assert_eq!(dup(&format!(r#"{{"a":{info},"b":{info}}}"#)), None);
        assert_eq!(dup(&format!(r#"{{"a":{info},"b":{info},"a":{info}}}"#)), Some(Duplicate::Tensor("a".into())));
        // JSON escapes name the same key: "\u0061" is "a".
        assert_eq!(dup(&format!(r#"{{"a":{info},"\u0061":{info}}}"#)), Some(Duplicate::Tensor("a".into())));
        // Inside __metadata__, and __metadata__ itself.
        let meta = r#""__metadata__":{"step":"1","format":"x","step":"2"}"#;
        assert_eq!(dup(&format!(r#"{{{meta},"a":{info}}}"#)), Some(Duplicate::Metadata("step".into())));
        let twice = r#""__metadata__":{},"__metadata__":{}"#;
        assert_eq!(dup(&format!("{{{twice}}}")), Some(Duplicate::Metadata("__metadata__".into())));
        // A name inside a tensor's description is not a tensor's name.
        assert_eq!(dup(r#"{"a":{"shape":[1],"shape":[2]}}"#), None);
    }

    #[test]
    fn leaves_what_is_not_a_json_object_to_the_safetensors_crate() {
        for text in ["", "[1, 2]", "{\"a\": 1", "not json", "{\"a\":1,\"a\":2} trailing"] {
            assert_eq!(dup(text), None, "{text}");
        }
    }
}
