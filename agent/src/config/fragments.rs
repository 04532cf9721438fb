//! The raw shape of one config file: every field optional, unknown keys rejected.
//!
//! Each file is parsed into a [`Fragment`] on its own (so errors name the file),
//! then the files are merged as TOML tables and validated into
//! [`super::Settings`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::{ByteSize, DurationStr};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    pub agent: Option<AgentFragment>,
    pub docker: Option<DockerFragment>,
    pub image: Option<ImageFragment>,
    pub worker: Option<WorkerFragment>,
    pub gpu: Option<GpuFragment>,
    pub hub: Option<HubFragment>,
    /// `[[notify]]` webhooks (config/notify.rs).
    pub notify: Option<Vec<NotifyFragment>>,
    pub fleet: Option<FleetFragment>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFragment {
    pub id: Option<String>,
    pub state_dir: Option<String>,
    pub control_socket: Option<String>,
    pub metrics_listen: Option<String>,
    pub stop_budget: Option<DurationStr>,
    pub ca_file: Option<String>,
    pub history_max: Option<ByteSize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerFragment {
    pub host: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFragment {
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub version: Option<String>,
    pub poll_interval: Option<DurationStr>,
    pub poll_jitter: Option<DurationStr>,
    pub pull_timeout: Option<DurationStr>,
    pub auth_file: Option<String>,
    pub insecure: Option<bool>,
    pub max_attempts: Option<u32>,
    pub verify: Option<VerifyFragment>,
}

/// `[image.verify]`: which digests may be deployed at all.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyFragment {
    pub cosign_public_keys: Option<Vec<String>>,
    pub min_age: Option<DurationStr>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFragment {
    pub name: Option<String>,
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub volumes: Option<Vec<String>>,
    pub ports: Option<Vec<String>>,
    pub network: Option<String>,
    pub shm_size: Option<ByteSize>,
    pub restart: Option<String>,
    pub gpus: Option<GpusFragment>,
    pub gpus_via: Option<String>,
    pub stop_timeout: Option<DurationStr>,
    pub health: Option<HealthFragment>,
    pub drain: Option<DrainFragment>,
}

/// `gpus = "all" | "none" | 2 | ["GPU-uuid", ...]`
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum GpusFragment {
    Count(i64),
    Word(String),
    List(Vec<String>),
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFragment {
    pub http: Option<String>,
    pub timeout: Option<DurationStr>,
    pub stable_for: Option<DurationStr>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainFragment {
    pub http: Option<String>,
    pub timeout: Option<DurationStr>,
    pub on_timeout: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuFragment {
    pub check: Option<bool>,
    pub expected_count: Option<u32>,
    pub max_temperature_c: Option<u32>,
    pub drain_on_fault: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFragment {
    pub url: Option<String>,
    pub token_file: Option<String>,
    pub desired_from_hub: Option<bool>,
    pub verify_registration: Option<bool>,
    pub registration_timeout: Option<DurationStr>,
    pub insecure: Option<bool>,
    pub max_swaps_per_hour: Option<u32>,
}

/// One `[[notify]]` webhook (config/notify.rs).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFragment {
    pub url: Option<String>,
    pub format: Option<String>,
    pub events: Option<Vec<String>>,
}

/// `[fleet]`: the etcd cluster and group of a fleet (see `fleet/`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFragment {
    pub etcd: Option<Vec<String>>,
    pub group: Option<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub insecure: Option<bool>,
}
