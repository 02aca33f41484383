//! Layered configuration: checked-in defaults < config file < `EDDY_*`
//! environment < command-line flags (the caller applies flags last).
//!
//! Environment keys are `EDDY_<KEY>` for top-level keys and
//! `EDDY_<SECTION>__<KEY>` for nested ones, upper-case, `-` written as `_`.
//! The environment is passed in, so tests stay hermetic.

use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config in {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Merges the layers and deserializes the result.
pub fn load<T: DeserializeOwned>(
    defaults_toml: &str,
    file: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<T, Error> {
    let mut merged: toml::Table =
        defaults_toml
            .parse()
            .map_err(|e: toml::de::Error| Error::Invalid {
                origin: "built-in defaults".into(),
                message: e.to_string(),
            })?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Invalid {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
        merge(&mut merged, table);
    }
    apply_env(&mut merged, env)?;
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Invalid {
            origin: "merged config".into(),
            message: e.to_string(),
        })
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Overrides keys that exist in the defaults from `EDDY_*` variables. Only
/// known keys are matched, so unrelated `EDDY_` variables (like `EDDY_URL`)
/// are ignored; values are parsed as the type of the default they replace.
fn apply_env(table: &mut toml::Table, env: &HashMap<String, String>) -> Result<(), Error> {
    fn walk(
        table: &mut toml::Table,
        prefix: &str,
        env: &HashMap<String, String>,
    ) -> Result<(), Error> {
        for (key, value) in table.iter_mut() {
            let var = format!("{prefix}{}", key.to_uppercase().replace('-', "_"));
            match value {
                toml::Value::Table(t) => walk(t, &format!("{var}__"), env)?,
                v => {
                    if let Some(raw) = env.get(&var) {
                        *v = parse_like(v, raw).ok_or_else(|| Error::Invalid {
                            origin: format!("environment variable {var}"),
                            message: format!("{raw:?} is not a valid {}", v.type_str()),
                        })?;
                    }
                }
            }
        }
        Ok(())
    }
    walk(table, "EDDY_", env)
}

fn parse_like(current: &toml::Value, raw: &str) -> Option<toml::Value> {
    Some(match current {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().ok()?),
        toml::Value::Float(_) => toml::Value::Float(raw.trim().parse().ok()?),
        toml::Value::Boolean(_) => toml::Value::Boolean(raw.trim().parse().ok()?),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct Cfg {
        name: String,
        slots: i64,
        net: Net,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct Net {
        rpc_addr: String,
        peers: Vec<String>,
    }

    const DEFAULTS: &str =
        "name = \"a\"\nslots = 1\n[net]\nrpc-addr = \"127.0.0.1:0\"\npeers = []\n";

    #[test]
    fn load_env_overrides_file_overrides_defaults() {
        let dir = tempfile_dir();
        let file = dir.join("c.toml");
        std::fs::write(&file, "slots = 2\n[net]\nrpc-addr = \"0.0.0.0:1\"\n").unwrap();
        let env = HashMap::from([
            ("EDDY_SLOTS".to_string(), "4".to_string()),
            ("EDDY_NET__PEERS".to_string(), "a:1, b:2".to_string()),
            ("EDDY_URL".to_string(), "ignored".to_string()),
        ]);
        let cfg: Cfg = load(DEFAULTS, Some(&file), &env).unwrap();
        assert_eq!(
            cfg,
            Cfg {
                name: "a".into(),
                slots: 4,
                net: Net {
                    rpc_addr: "0.0.0.0:1".into(),
                    peers: vec!["a:1".into(), "b:2".into()]
                }
            }
        );
    }

    #[test]
    fn load_bad_env_value_names_variable() {
        let env = HashMap::from([("EDDY_SLOTS".to_string(), "many".to_string())]);
        let err = load::<Cfg>(DEFAULTS, None, &env).unwrap_err().to_string();
        assert!(err.contains("EDDY_SLOTS"), "{err}");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("eddy-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
