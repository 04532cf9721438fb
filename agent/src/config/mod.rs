//! Configuration: files → fragments → validated [`Settings`].
//!
//! The main file (default `/etc/gpu-agent/agent.toml`) is read first, then the
//! drop-ins in the `agent.d/` folder beside it in lexical order; a later file
//! overrides single keys of an earlier one (tables merge, arrays replace).
//! Every file is checked on its own, so an unknown key or a wrong type names
//! the file; validation errors name the key and the file that set it.

mod fragments;
mod notify;
mod preflight;
mod settings;
mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use fragments::Fragment;
pub use notify::{NotifyFormat, NotifySettings};
pub use preflight::preflight;
pub use settings::*;
pub use units::{parse_duration, parse_size};

/// The main config path when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/gpu-agent/agent.toml";
/// `agent.control_socket` when the config does not set it (also agentctl's default).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/gpu-agent/agent.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` (set in {origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
    /// Found by [`preflight`]: the config reads well but does not fit this host.
    #[error("config key `{key}`: {message}")]
    Host { key: String, message: String },
    #[error("config: `{key}` is required (add it to {main})")]
    Missing { key: String, main: PathBuf },
}

/// The files that make up a config: the main file and its drop-ins, in order.
pub fn config_files(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = vec![main.to_path_buf()];
    let dir = main
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("agent.d");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut dropins: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            dropins.sort();
            files.extend(dropins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    }
    Ok(files)
}

/// Loads and validates the config whose main file is `main` (plus drop-ins).
pub fn load(main: &Path) -> Result<Settings, ConfigError> {
    let files = config_files(main)?;
    let mut sources = Vec::with_capacity(files.len());
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        sources.push((path.clone(), text));
    }
    load_from_strs(&sources)
}

/// Loads from in-memory `(path, text)` pairs, in override order.
pub fn load_from_strs(sources: &[(PathBuf, String)]) -> Result<Settings, ConfigError> {
    let mut merged = toml::Table::new();
    let mut origins = Origins::new();
    for (path, text) in sources {
        // Parse each file on its own first: unknown keys and wrong types name it.
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        toml::from_str::<Fragment>(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        merge_table(&mut merged, table, "", path, &mut origins);
    }
    let fragment: Fragment =
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: sources.last().map(|(p, _)| p.clone()).unwrap_or_default(),
                message: e.to_string(),
            })?;
    let main = sources.first().map(|(p, _)| p.clone()).unwrap_or_default();
    settings::validate(fragment, &Origin { origins, main })
}

/// Which file last set each dotted key.
pub(crate) type Origins = BTreeMap<String, PathBuf>;

/// Where keys came from, for error messages.
pub(crate) struct Origin {
    origins: Origins,
    main: PathBuf,
}

impl Origin {
    pub(crate) fn of(&self, key: &str) -> String {
        self.origins
            .get(key)
            .unwrap_or(&self.main)
            .display()
            .to_string()
    }

    pub(crate) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            origin: self.of(key),
            message: message.into(),
        }
    }

    pub(crate) fn missing(&self, key: &str) -> ConfigError {
        ConfigError::Missing {
            key: key.to_string(),
            main: self.main.clone(),
        }
    }
}

fn merge_table(
    into: &mut toml::Table,
    from: toml::Table,
    prefix: &str,
    path: &Path,
    origins: &mut Origins,
) {
    for (k, v) in from {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(new)) => {
                merge_table(existing, new, &key, path, origins);
            }
            (_, v) => {
                record_origins(&v, &key, path, origins);
                into.insert(k, v);
            }
        }
    }
}

fn record_origins(v: &toml::Value, key: &str, path: &Path, origins: &mut Origins) {
    origins.insert(key.to_string(), path.to_path_buf());
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            record_origins(v, &format!("{key}.{k}"), path, origins);
        }
    }
}

#[cfg(test)]
mod tests;
