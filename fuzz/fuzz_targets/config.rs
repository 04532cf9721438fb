//! The config: TOML files → fragments → validated Settings, the path
//! `gpu-agent check-config` and a SIGHUP reload take (config::load_from_strs).
//!
//! Input: the main file's text; a NUL byte starts a drop-in (agent.d/) text.
#![no_main]

use std::path::PathBuf;

use gpu_agent::config::{load_from_strs, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources: Vec<(PathBuf, String)> = text
        .split('\0')
        .take(3)
        .enumerate()
        .map(|(i, t)| {
            let path = if i == 0 {
                PathBuf::from("/etc/gpu-agent/agent.toml")
            } else {
                PathBuf::from(format!("/etc/gpu-agent/agent.d/{i}.toml"))
            };
            (path, t.to_string())
        })
        .collect();
    match load_from_strs(&sources) {
        Ok(s) => {
            assert!(!s.image.name.repository.is_empty() && !s.image.name.registry.is_empty());
            assert!(!s.agent.id.is_empty());
            // Loading is a function of the text.
            assert_eq!(
                format!("{s:?}"),
                format!("{:?}", load_from_strs(&sources).unwrap())
            );
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("config"), "{shown}");
            // Errors name the file or key they come from.
            match e {
                ConfigError::Parse { path, .. } => assert!(sources.iter().any(|(p, _)| *p == path)),
                ConfigError::Invalid { key, .. } | ConfigError::Missing { key, .. } => {
                    assert!(!key.is_empty())
                }
                ConfigError::Read { .. } => panic!("read error without files: {shown}"),
                // Only `preflight` (checks on the host) gives these, not a load.
                ConfigError::Host { .. } => panic!("a host check from a load: {shown}"),
            }
        }
    }
});
