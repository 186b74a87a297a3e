//! Where a configuration comes from: a TOML file, then overrides from the environment and from
//! flags, each kept with its origin so an error names the variable or flag that was wrong.
//!
//! The one environment scheme is `SWITCHYARD__<SECTION>__<KEY>=value` (any key of the file).
//! The older per-flag variables (`SWITCHYARD_LISTEN`, `SWITCHYARD_REDIS_URL`, ...) still work
//! for this release, with a deprecation warning; they weigh as much as the flag they stood
//! for. `SWITCHYARD_CONFIG` names the file itself and stays.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Environment variables of the form `SWITCHYARD__SECTION__KEY=value` override file keys.
const ENV_PREFIX: &str = "SWITCHYARD__";

/// Variables of the older scheme, each standing for a flag: (variable, key, a list?).
const DEPRECATED: [(&str, &str, bool); 6] = [
    ("SWITCHYARD_LISTEN", "server.listen", false),
    ("SWITCHYARD_REDIS_URL", "broker.redis_url", false),
    ("SWITCHYARD_REDIS_CLUSTER", "broker.redis_cluster", true),
    ("SWITCHYARD_NODE_ID", "server.node_id", false),
    ("SWITCHYARD_LOG_FORMAT", "log.format", false),
    ("SWITCHYARD_LOG", "log.filter", false),
];

/// One value that overrides the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Dotted key, e.g. `server.listen`.
    pub key: String,
    /// The value as a TOML value (a bare word that is not one is taken as a string).
    pub value: String,
    /// Where it came from, for errors: `environment variable X`, `flag --listen`.
    pub origin: String,
}

/// Everything a configuration is loaded from; a node keeps it to reload the same way.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// Applied over the file in order: a later one wins.
    pub overrides: Vec<Override>,
    /// Deprecations noticed while gathering the sources, to log once logging is set up.
    pub warnings: Vec<String>,
}

impl Source {
    /// `file` and the overrides in `env` (the process environment, or a test's): first every
    /// `SWITCHYARD__SECTION__KEY`, then the deprecated flag variables.
    pub fn new(file: Option<PathBuf>, env: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut source = Source {
            file,
            ..Source::default()
        };
        let mut deprecated = Vec::new();
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        // Variables in a stable order, so two that set one key always resolve the same way.
        env.sort();
        for (name, value) in env {
            if let Some(path) = name.strip_prefix(ENV_PREFIX) {
                source.overrides.push(Override {
                    key: path
                        .split("__")
                        .collect::<Vec<_>>()
                        .join(".")
                        .to_ascii_lowercase(),
                    value,
                    origin: format!("environment variable {name}"),
                });
            } else if let Some((_, key, list)) = DEPRECATED.iter().find(|(n, ..)| *n == name) {
                let new = format!(
                    "{ENV_PREFIX}{}",
                    key.replace('.', "__").to_ascii_uppercase()
                );
                source.warnings.push(format!(
                    "environment variable {name} is deprecated and will be removed: use {new}"
                ));
                let value = if *list { toml_list(&value) } else { value };
                deprecated.push(Override {
                    key: (*key).to_owned(),
                    value,
                    origin: format!("environment variable {name}"),
                });
            }
        }
        source.overrides.extend(deprecated);
        source
    }

    /// Adds a flag's value for `key`: it wins over the file and the environment.
    pub fn flag(&mut self, flag: &str, key: &str, value: impl Into<String>) {
        self.overrides.push(Override {
            key: key.to_owned(),
            value: value.into(),
            origin: format!("flag {flag}"),
        });
    }
}

/// `a,b` as a TOML array of strings, for the variables and flags that take a list.
pub fn toml_list(items: &str) -> String {
    let items: Vec<toml::Value> = items
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| toml::Value::String(s.to_owned()))
        .collect();
    toml::Value::Array(items).to_string()
}

/// The configuration in `text` (from `origin`) with `overrides` applied, not yet validated.
/// Deserialized after the file and after each override, so an error names its source.
pub(super) fn build(
    text: &str,
    origin: &str,
    overrides: &[Override],
) -> Result<Config, ConfigError> {
    let parse_error = |origin: &str, message: String| ConfigError::Parse {
        origin: origin.to_owned(),
        message,
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| parse_error(origin, e.to_string()))?;
    let mut config = deserialize(&table).map_err(|m| parse_error(origin, m))?;
    for o in overrides {
        set_path(&mut table, &o.key, &o.value).map_err(|m| parse_error(&o.origin, m))?;
        config = deserialize(&table)
            .map_err(|m| parse_error(&o.origin, format!("{} = {:?}: {m}", o.key, o.value)))?;
    }
    Ok(config)
}

fn deserialize(table: &toml::Table) -> Result<Config, String> {
    Config::deserialize(toml::Value::Table(table.clone())).map_err(|e| e.to_string())
}

/// Sets dotted `key` (case-insensitive) in `table` to `value`, read as a TOML value when it
/// parses as one (numbers, booleans, arrays) and as a string otherwise.
fn set_path(table: &mut toml::Table, key: &str, value: &str) -> Result<(), String> {
    let keys: Vec<String> = key.split('.').map(str::to_ascii_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err(format!("{key:?}: empty key segment"));
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut cur = table;
    for k in parents {
        cur = cur
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a table"))?;
    }
    cur.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let mut source = Source::new(
            None,
            env(&[
                ("SWITCHYARD__LIMITS__MAX_SUBSCRIPTIONS", "7"),
                ("SWITCHYARD__BROKER__PREFIX", "sy:"),
                ("SWITCHYARD__SERVER__LISTEN", "127.0.0.1:1"),
                ("UNRELATED", "x"),
            ]),
        );
        source.flag("--listen", "server.listen", "127.0.0.1:2");
        let c = build("[limits]\nmax_subscriptions = 3\n", "t", &source.overrides).unwrap();
        assert_eq!(c.limits.max_subscriptions, 7);
        assert_eq!(c.broker.prefix, "sy:");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:2");
        assert!(source.warnings.is_empty());
    }

    #[test]
    fn the_old_variables_still_work_with_a_warning() {
        let source = Source::new(
            None,
            env(&[
                ("SWITCHYARD_LISTEN", "127.0.0.1:3"),
                ("SWITCHYARD__SERVER__LISTEN", "127.0.0.1:1"),
                ("SWITCHYARD_REDIS_CLUSTER", "redis://a:1, redis://b:2"),
            ]),
        );
        let c = build("", "t", &source.overrides).unwrap();
        assert_eq!(
            c.server.listen.to_string(),
            "127.0.0.1:3",
            "as the flag did"
        );
        assert_eq!(c.broker.redis_cluster, ["redis://a:1", "redis://b:2"]);
        assert_eq!(source.warnings.len(), 2);
        assert!(
            source.warnings[0].contains("SWITCHYARD__BROKER__REDIS_CLUSTER")
                || source.warnings[1].contains("SWITCHYARD__BROKER__REDIS_CLUSTER"),
            "{:?}",
            source.warnings
        );
    }

    #[test]
    fn errors_name_the_source_of_the_bad_value() {
        let mut source = Source::new(
            None,
            env(&[("SWITCHYARD__LIMITS__MAX_CONNECTIONS", "lots")]),
        );
        let e = build("", "gw.toml", &source.overrides)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("environment variable SWITCHYARD__LIMITS__MAX_CONNECTIONS"),
            "{e}"
        );
        source.overrides.clear();
        source.flag("--listen", "server.listen", "not-an-address");
        let e = build("", "gw.toml", &source.overrides)
            .unwrap_err()
            .to_string();
        assert!(e.contains("flag --listen"), "{e}");
        let e = build("[limits]\nmax_connections = \"x\"\n", "gw.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("gw.toml"), "{e}");
    }
}
