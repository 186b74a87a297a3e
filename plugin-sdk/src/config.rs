//! Config types the SDK provides for [`crate::Plugin::Config`].

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// The config of a plugin that takes none: accepts `{}` (or `null`, or no config at all).
///
/// Any key is refused, e.g. ``unknown field `mode`, this plugin takes no config``, so a
/// binding that configures the wrong plugin fails at load instead of being silently ignored.
/// Any other JSON value is refused as well. A plugin that should accept and ignore whatever
/// config it is given can use [`serde::de::IgnoredAny`] instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NoConfig;

impl<'de> Deserialize<'de> for NoConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_any`, not `deserialize_map`: `null` must be accepted too, because a
        // caller deserializing on its own (without `json::parse_config`) may pass it.
        deserializer.deserialize_any(NoConfigVisitor)
    }
}

struct NoConfigVisitor;

impl<'de> Visitor<'de> for NoConfigVisitor {
    type Value = NoConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an empty object (this plugin takes no config)")
    }

    fn visit_unit<E: de::Error>(self) -> Result<NoConfig, E> {
        Ok(NoConfig)
    }

    fn visit_none<E: de::Error>(self) -> Result<NoConfig, E> {
        Ok(NoConfig)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoConfig, A::Error> {
        match map.next_key::<String>()? {
            None => Ok(NoConfig),
            Some(key) => Err(de::Error::custom(format_args!(
                "unknown field `{key}`, this plugin takes no config"
            ))),
        }
    }
}
