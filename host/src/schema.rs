//! JSON Schema pieces the OpenAPI document's derived types share where a field attribute
//! cannot say it: maps whose keys follow a pattern, and lists whose items carry constraints.
//! The request types name these with `#[schema(schema_with = …)]`; each states the rule the
//! server's own check enforces (the contract test sends schemathesis requests at both).

use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::schema::{AdditionalProperties, Array, ArrayBuilder, Object, ObjectBuilder};
use utoipa::openapi::{RefOr, Schema, Type};

/// A string of `min..=max` characters matching `pattern` (when given).
fn text(min: usize, max: usize, pattern: Option<&str>) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(pattern)
        .build()
}

fn list(items: Object, max_items: usize, nullable: bool) -> Array {
    let kind = if nullable {
        SchemaType::from_iter([Type::Array, Type::Null])
    } else {
        SchemaType::Type(Type::Array)
    };
    ArrayBuilder::new()
        .schema_type(kind)
        .items(RefOr::T(Schema::Object(items)))
        .max_items(Some(max_items))
        .build()
}

/// A task id, as `id` and `depends_on` take it.
pub const TASK_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";
/// A plugin, task type or user name: no `/` and no control characters.
pub const NAME_PATTERN: &str = "^[^/\\x00-\\x1f\\x7f-\\x9f]+$";

/// `labels` of a new task: at most 32, keys `[A-Za-z0-9._/-]{1,64}`, values up to 256
/// characters without `=` or control characters.
pub fn task_labels() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(32))
        .property_names(Some(text(1, 64, Some("^[A-Za-z0-9._/-]{1,64}$"))))
        .additional_properties(Some(AdditionalProperties::RefOr(
            Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(256))
                    .pattern(Some("^[^=\\x00-\\x1f\\x7f]*$"))
                    .build(),
            )
            .into(),
        )))
        .build()
}

/// `depends_on`: at most 100 task ids.
pub fn task_ids() -> Array {
    list(text(1, 128, Some(TASK_ID_PATTERN)), 100, false)
}

/// `reporters` of an external task: at most 16 user names.
pub fn reporters() -> Array {
    list(text(1, 64, Some(NAME_PATTERN)), 16, false)
}

/// Progress `metrics`: at most 64 numbers, names `[A-Za-z0-9_.:/*-]{1,64}`.
pub fn metrics() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(64))
        .property_names(Some(text(1, 64, Some("^[A-Za-z0-9_.:/*-]{1,64}$"))))
        .additional_properties(Some(AdditionalProperties::RefOr(
            Schema::Object(ObjectBuilder::new().schema_type(Type::Number).build()).into(),
        )))
        .build()
}

/// An API key's explicit `permissions`: at most 64 (`<plugin>:<action>`, `tasks:report`…).
pub fn permissions() -> Array {
    list(
        ObjectBuilder::new().schema_type(Type::String).build(),
        64,
        true,
    )
}

/// The labels a runner-registering key may claim: at most 64.
pub fn key_runner_labels() -> Array {
    list(text(1, 64, None), 64, true)
}

/// A runner's labels at registration: at most 32.
pub fn runner_labels() -> Array {
    list(text(1, 128, None), 32, false)
}

/// JSON Schema's `integer`: any number whose fractional part is zero, so `5.0` is an integer
/// as much as `5` is. serde alone refuses `5.0` for an integer field; request fields the
/// document declares as integers deserialize through here to accept what it promises.
pub mod integer {
    use serde::de::{Deserialize, Deserializer, Error};

    fn whole<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
        number: serde_json::Number,
    ) -> Result<T, D::Error> {
        let value = number
            .as_i64()
            .map(i128::from)
            .or_else(|| number.as_u64().map(i128::from))
            .or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1e38)
                    .map(|f| f as i128)
            });
        match value {
            Some(value) => T::try_from(value)
                .map_err(|_| D::Error::custom(format!("{number} is out of range"))),
            None => Err(D::Error::custom(format!("{number} is not a whole number"))),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
        whole::<D, T>(serde_json::Number::deserialize(d)?)
    }

    /// For `Option<integer>` fields (which also need `#[serde(default)]`).
    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
            d: D,
        ) -> Result<Option<T>, D::Error> {
            Option::<serde_json::Number>::deserialize(d)?
                .map(whole::<D, T>)
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Counts {
        #[serde(default, deserialize_with = "super::integer::option::deserialize")]
        processed: Option<u64>,
        #[serde(deserialize_with = "super::integer::deserialize")]
        priority: i32,
    }

    fn parse(text: &str) -> Result<Counts, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_or_out_of_range_values_are_not() {
        let counts = parse(r#"{"processed": 1805.0, "priority": -3}"#).expect("whole numbers");
        assert_eq!((counts.processed, counts.priority), (Some(1805), -3));
        assert_eq!(parse(r#"{"priority": 1}"#).expect("absent").processed, None);
        assert!(parse(r#"{"processed": 1.5, "priority": 1}"#).is_err());
        assert!(parse(r#"{"processed": -1, "priority": 1}"#).is_err());
        assert!(parse(r#"{"priority": 3000000000}"#).is_err());
        assert!(parse(r#"{"priority": "1"}"#).is_err());
    }
}
