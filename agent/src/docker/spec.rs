//! The worker container as the engine creates it, from the settings: a pure
//! function, so the request shape (GPU device requests above all) is tested
//! without an engine. Also [`SpecHash`]: what of the settings the container is
//! made of, hashed into its labels, so that a change of the settings is seen
//! on the running container (and rolled out) after a reload or a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{LABEL_AGENT, LABEL_DIGEST, LABEL_MANAGED, LABEL_SPEC, LABEL_SPEC_KEYS};
use crate::config::{Gpus, GpusVia, WorkerSettings};

/// The worker's container settings as the container carries them: the hash
/// of them all (`gpu-agent.spec`, `sha256:…`) and a short hash of each key
/// (`gpu-agent.spec.keys`, a JSON object: `command`, `env`, `env.<NAME>` for
/// each variable, `volumes`, `ports`, `network`, `shm_size`, `restart`,
/// `gpus`, `gpus_via`, `stop_timeout`), so that a change can be named by key
/// without keeping any value. The health and drain settings are not the
/// container's: they are not in it. Hashes only: an env value is never
/// written anywhere but the container's own environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecHash {
    pub hash: String,
    pub keys: BTreeMap<String, String>,
}

/// The keys a [`SpecHash`] covers besides `env.<NAME>`.
const SPEC_KEYS: [&str; 10] = [
    "command",
    "env",
    "volumes",
    "ports",
    "network",
    "shm_size",
    "restart",
    "gpus",
    "gpus_via",
    "stop_timeout",
];

fn key_hash(key: &str, value: &serde_json::Value) -> String {
    let d = sha2::Sha256::digest(format!("{key}\n{value}").as_bytes());
    format!("{d:x}")[..16].to_string()
}

impl SpecHash {
    /// The hash of the settings a worker container is made of.
    pub fn of(w: &WorkerSettings) -> SpecHash {
        use serde_json::json;
        let gpus = match &w.gpus {
            Gpus::None => json!("none"),
            Gpus::All => json!("all"),
            Gpus::Count(n) => json!(n),
            Gpus::Uuids(ids) => json!(ids),
        };
        let ports: Vec<_> = w
            .ports
            .iter()
            .map(|p| json!([p.host_ip, p.host_port, p.container_port, p.protocol]))
            .collect();
        let values = [
            ("command", json!(w.command)),
            ("env", json!(w.env)),
            ("volumes", json!(w.volumes)),
            ("ports", json!(ports)),
            ("network", json!(w.network)),
            ("shm_size", json!(w.shm_size)),
            ("restart", json!([w.restart, w.restart_max_retries])),
            ("gpus", gpus),
            (
                "gpus_via",
                json!(match w.gpus_via {
                    GpusVia::Docker => "docker",
                    GpusVia::Cdi => "cdi",
                }),
            ),
            ("stop_timeout", json!(w.stop_timeout.as_millis() as u64)),
        ];
        debug_assert!(values.iter().map(|(k, _)| *k).eq(SPEC_KEYS));
        let mut keys: BTreeMap<String, String> = values
            .iter()
            .map(|(k, v)| (k.to_string(), key_hash(k, v)))
            .collect();
        for (name, value) in &w.env {
            let k = format!("env.{name}");
            keys.insert(k.clone(), key_hash(&k, &json!(value)));
        }
        SpecHash::from_keys(keys)
    }

    fn from_keys(keys: BTreeMap<String, String>) -> SpecHash {
        let mut h = sha2::Sha256::new();
        for (k, v) in &keys {
            h.update(format!("{k}={v}\n").as_bytes());
        }
        SpecHash {
            hash: format!("sha256:{:x}", h.finalize()),
            keys,
        }
    }

    /// The spec a container's labels carry; `None` for a container created
    /// before containers carried it. A keys label that does not parse leaves
    /// the keys empty (the hash alone is compared).
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<SpecHash> {
        let hash = labels.get(LABEL_SPEC)?.clone();
        let keys = labels
            .get(LABEL_SPEC_KEYS)
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default();
        Some(SpecHash { hash, keys })
    }

    /// The settings that differ from `self` (the running container's) in
    /// `want` (the config's), named as in the config (`worker.env.HUB_URL`,
    /// `worker.volumes`); empty when the container is what the config says.
    /// A key the container's labels do not name (made by a version that did
    /// not cover it) is not compared, nor is one this version does not know.
    pub fn changes(&self, want: &SpecHash) -> Vec<String> {
        if self.hash == want.hash {
            return Vec::new();
        }
        if self.keys.is_empty() {
            return vec!["worker".into()];
        }
        let covers = |k: &str| {
            self.keys.contains_key(k) || (k.starts_with("env.") && self.keys.contains_key("env"))
        };
        let mut changed = BTreeSet::new();
        for (k, v) in &want.keys {
            if k != "env" && covers(k) && self.keys.get(k) != Some(v) {
                changed.insert(k.clone());
            }
        }
        for k in self.keys.keys() {
            if k.starts_with("env.") && !want.keys.contains_key(k) {
                changed.insert(k.clone());
            }
        }
        changed.into_iter().map(|k| format!("worker.{k}")).collect()
    }
}

/// Everything needed to create one worker container.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub worker: Arc<WorkerSettings>,
    pub agent_id: String,
    /// `registry/repository@sha256:…`
    pub image_ref: String,
    pub digest: String,
}

impl WorkerSpec {
    /// The hash of the container's settings (its `gpu-agent.spec` labels).
    pub fn spec_hash(&self) -> SpecHash {
        SpecHash::of(&self.worker)
    }
}

impl WorkerSpec {
    pub fn create_body(&self) -> ContainerCreateBody {
        let w = &*self.worker;
        let mut env: Vec<String> = w.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("GPU_AGENT_ID={}", self.agent_id));
        env.push(format!("GPU_AGENT_DIGEST={}", self.digest));
        let spec = self.spec_hash();
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_DIGEST.to_string(), self.digest.clone()),
            (LABEL_AGENT.to_string(), self.agent_id.clone()),
            (LABEL_SPEC.to_string(), spec.hash),
            (
                LABEL_SPEC_KEYS.to_string(),
                serde_json::to_string(&spec.keys).unwrap_or_default(),
            ),
        ]);
        let mut exposed = Vec::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &w.ports {
            let key = format!("{}/{}", p.container_port, p.protocol);
            exposed.push(key.clone());
            if p.host_port.is_some() || p.host_ip.is_some() {
                bindings
                    .entry(key)
                    .or_insert_with(|| Some(vec![]))
                    .get_or_insert_with(Vec::new)
                    .push(PortBinding {
                        host_ip: p.host_ip.clone(),
                        host_port: p.host_port.map(|n| n.to_string()),
                    });
            }
        }
        let host_config = HostConfig {
            binds: (!w.volumes.is_empty()).then(|| w.volumes.clone()),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            network_mode: Some(w.network.clone()),
            shm_size: w.shm_size.map(|s| s as i64),
            restart_policy: Some(restart_policy(&w.restart, w.restart_max_retries)),
            device_requests: match w.gpus_via {
                GpusVia::Docker => device_requests(&w.gpus),
                GpusVia::Cdi => cdi_device_requests(&w.gpus),
            },
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.image_ref.clone()),
            cmd: w.command.clone(),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            stop_timeout: Some(w.stop_timeout.as_secs() as i64),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

pub fn restart_policy(name: &str, max_retries: Option<u32>) -> RestartPolicy {
    let name = match name {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        _ => RestartPolicyNameEnum::NO,
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: max_retries.map(i64::from),
    }
}

/// `gpus` exactly as `docker run --gpus` sends it: driver left empty (the
/// engine picks the one that serves the `gpu` capability), `all` → Count -1.
pub fn device_requests(gpus: &Gpus) -> Option<Vec<DeviceRequest>> {
    let base = DeviceRequest {
        driver: Some(String::new()),
        capabilities: Some(vec![vec!["gpu".to_string()]]),
        options: Some(HashMap::new()),
        ..Default::default()
    };
    match gpus {
        Gpus::None => None,
        Gpus::All => Some(vec![DeviceRequest {
            count: Some(-1),
            ..base
        }]),
        Gpus::Count(n) => Some(vec![DeviceRequest {
            count: Some(i64::from(*n)),
            ..base
        }]),
        Gpus::Uuids(ids) => Some(vec![DeviceRequest {
            count: Some(0),
            device_ids: Some(ids.clone()),
            ..base
        }]),
    }
}

/// `gpus` as CDI devices, as `docker run --device nvidia.com/gpu=…` sends
/// them: one request with driver `cdi` and the fully qualified names (a
/// count names the first N GPUs by index).
pub fn cdi_device_requests(gpus: &Gpus) -> Option<Vec<DeviceRequest>> {
    let names: Vec<String> = match gpus {
        Gpus::None => return None,
        Gpus::All => vec!["all".into()],
        Gpus::Count(n) => (0..*n).map(|i| i.to_string()).collect(),
        Gpus::Uuids(ids) => ids.clone(),
    };
    Some(vec![DeviceRequest {
        driver: Some("cdi".into()),
        device_ids: Some(
            names
                .iter()
                .map(|n| format!("nvidia.com/gpu={n}"))
                .collect(),
        ),
        ..Default::default()
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_from_strs, Gpus};

    fn spec(extra: &str) -> WorkerSpec {
        let cfg =
            format!("[agent]\nid = \"h1\"\n[image]\nrepository = \"127.0.0.1:5000/w\"\n{extra}");
        let s = load_from_strs(&[("/t.toml".into(), cfg)]).unwrap();
        WorkerSpec {
            worker: Arc::new(s.worker),
            agent_id: "h1".into(),
            image_ref: "127.0.0.1:5000/w@sha256:ab".into(),
            digest: "sha256:ab".into(),
        }
    }

    #[test]
    fn gpus_as_the_docker_cli_sends_them() {
        let all = serde_json::to_value(device_requests(&Gpus::All)).unwrap();
        assert_eq!(
            all,
            serde_json::json!([{"Driver": "", "Count": -1, "Capabilities": [["gpu"]], "Options": {}}])
        );
        let two = serde_json::to_value(device_requests(&Gpus::Count(2))).unwrap();
        assert_eq!(two[0]["Count"], 2);
        let ids = serde_json::to_value(device_requests(&Gpus::Uuids(vec![
            "GPU-a".into(),
            "GPU-b".into(),
        ])))
        .unwrap();
        assert_eq!(ids[0]["DeviceIDs"], serde_json::json!(["GPU-a", "GPU-b"]));
        assert_eq!(ids[0]["Capabilities"], serde_json::json!([["gpu"]]));
        assert!(device_requests(&Gpus::None).is_none());
    }

    #[test]
    fn gpus_as_cdi_devices() {
        let all = serde_json::to_value(cdi_device_requests(&Gpus::All)).unwrap();
        assert_eq!(
            all,
            serde_json::json!([{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]}])
        );
        let two = serde_json::to_value(cdi_device_requests(&Gpus::Count(2))).unwrap();
        assert_eq!(
            two[0]["DeviceIDs"],
            serde_json::json!(["nvidia.com/gpu=0", "nvidia.com/gpu=1"])
        );
        let ids =
            serde_json::to_value(cdi_device_requests(&Gpus::Uuids(vec!["GPU-a".into()]))).unwrap();
        assert_eq!(
            ids[0]["DeviceIDs"],
            serde_json::json!(["nvidia.com/gpu=GPU-a"])
        );
        assert!(cdi_device_requests(&Gpus::None).is_none());
        let b =
            serde_json::to_value(spec("[worker]\ngpus = 1\ngpus_via = \"cdi\"\n").create_body())
                .unwrap();
        assert_eq!(b["HostConfig"]["DeviceRequests"][0]["Driver"], "cdi");
    }

    #[test]
    fn create_body_carries_spec_labels_env_and_host_config() {
        let s = spec(
            "[worker]\ncommand = [\"run\", \"--fast\"]\nenv = { A = \"1\" }\nvolumes = [\"/d:/m:ro\"]\n\
             ports = [\"127.0.0.1:8080:80\"]\nnetwork = \"host\"\nshm_size = \"1g\"\nrestart = \"on-failure:3\"\ngpus = 2\nstop_timeout = \"7s\"\n",
        );
        let b = serde_json::to_value(s.create_body()).unwrap();
        assert_eq!(b["Image"], "127.0.0.1:5000/w@sha256:ab");
        assert_eq!(b["Cmd"], serde_json::json!(["run", "--fast"]));
        assert_eq!(
            b["Env"],
            serde_json::json!(["A=1", "GPU_AGENT_ID=h1", "GPU_AGENT_DIGEST=sha256:ab"])
        );
        assert_eq!(b["Labels"]["gpu-agent.managed"], "true");
        assert_eq!(b["Labels"]["gpu-agent.digest"], "sha256:ab");
        assert_eq!(b["ExposedPorts"], serde_json::json!({"80/tcp": {}}));
        assert_eq!(b["StopTimeout"], 7);
        let h = &b["HostConfig"];
        assert_eq!(h["Binds"], serde_json::json!(["/d:/m:ro"]));
        assert_eq!(
            h["PortBindings"]["80/tcp"],
            serde_json::json!([{"HostIp": "127.0.0.1", "HostPort": "8080"}])
        );
        assert_eq!(h["NetworkMode"], "host");
        assert_eq!(h["ShmSize"], 1i64 << 30);
        assert_eq!(
            h["RestartPolicy"],
            serde_json::json!({"Name": "on-failure", "MaximumRetryCount": 3})
        );
        assert_eq!(h["DeviceRequests"][0]["Count"], 2);
    }

    fn hash(extra: &str) -> SpecHash {
        spec(extra).spec_hash()
    }

    #[test]
    fn the_spec_hash_is_labelled_and_names_what_changed() {
        let a = hash("[worker]\nenv = { A = \"1\", B = \"2\" }\nvolumes = [\"/d:/m\"]\n");
        let b = serde_json::to_value(
            spec("[worker]\nenv = { A = \"1\", B = \"2\" }\nvolumes = [\"/d:/m\"]\n").create_body(),
        )
        .unwrap();
        assert_eq!(b["Labels"]["gpu-agent.spec"], a.hash.as_str());
        let keys: BTreeMap<String, String> =
            serde_json::from_str(b["Labels"]["gpu-agent.spec.keys"].as_str().unwrap()).unwrap();
        assert_eq!(keys, a.keys);
        assert!(
            a.hash.starts_with("sha256:") && a.hash.len() == 71,
            "{}",
            a.hash
        );
        // The same settings, the same hash: nothing changed.
        assert_eq!(a.changes(&a.clone()), Vec::<String>::new());
        let cases = [
            ("env = { A = \"9\", B = \"2\" }\nvolumes = [\"/d:/m\"]", vec!["worker.env.A"]),
            ("env = { A = \"1\" }\nvolumes = [\"/d:/m\"]", vec!["worker.env.B"]),
            ("env = { A = \"1\", B = \"2\", C = \"3\" }\nvolumes = [\"/d:/m\"]", vec!["worker.env.C"]),
            ("env = { A = \"1\", B = \"2\" }", vec!["worker.volumes"]),
            (
                "env = { A = \"1\", B = \"2\" }\nvolumes = [\"/d:/m\"]\ncommand = [\"x\"]\ngpus = 2\nshm_size = \"1g\"",
                vec!["worker.command", "worker.gpus", "worker.shm_size"],
            ),
            (
                "env = { A = \"1\", B = \"2\" }\nvolumes = [\"/d:/m\"]\nports = [\"8080:80\"]\nnetwork = \"host\"\nrestart = \"always\"\nstop_timeout = \"3s\"",
                vec!["worker.network", "worker.ports", "worker.restart", "worker.stop_timeout"],
            ),
        ];
        for (worker, want) in cases {
            let b = hash(&format!("[worker]\n{worker}\n"));
            assert_ne!(a.hash, b.hash, "{worker}");
            assert_eq!(a.changes(&b), want, "{worker}");
        }
        // What is not the container's own is not in it: the health and drain
        // settings, the container name.
        let same = hash(
            "[worker]\nenv = { A = \"1\", B = \"2\" }\nvolumes = [\"/d:/m\"]\nname = \"other\"\n\
             [worker.health]\nhttp = \"http://127.0.0.1:1/h\"\n[worker.drain]\ntimeout = \"1m\"\n",
        );
        assert_eq!(a, same);
    }

    #[test]
    fn keys_a_label_does_not_name_are_not_compared() {
        let running = hash("[worker]\nenv = { A = \"1\" }\n");
        // A label made by a version that did not cover `volumes`, and one
        // this version does not know: only the keys both name count.
        let mut older = running.clone();
        older.keys.remove("volumes");
        older
            .keys
            .insert("devices".into(), "0123456789abcdef".into());
        older.hash = "sha256:older".into();
        let want = hash("[worker]\nenv = { A = \"1\" }\nvolumes = [\"/d:/m\"]\n");
        assert_eq!(older.changes(&want), Vec::<String>::new());
        assert_eq!(running.changes(&want), ["worker.volumes"]);
        // A label whose keys do not parse: the hash alone says it changed.
        let labels = HashMap::from([
            (LABEL_SPEC.to_string(), "sha256:x".to_string()),
            (LABEL_SPEC_KEYS.to_string(), "not json".to_string()),
        ]);
        let garbled = SpecHash::from_labels(&labels).unwrap();
        assert_eq!(garbled.changes(&want), ["worker"]);
        assert_eq!(SpecHash::from_labels(&HashMap::new()), None);
    }

    #[test]
    fn defaults_leave_the_image_command() {
        let b = serde_json::to_value(spec("").create_body()).unwrap();
        assert!(b.get("Cmd").is_none());
        assert!(b["HostConfig"].get("Binds").is_none());
        assert_eq!(b["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
        assert_eq!(b["HostConfig"]["DeviceRequests"][0]["Count"], -1);
    }
}
