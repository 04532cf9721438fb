//! The worker container as the engine creates it, from the settings: a pure
//! function, so the request shape (GPU device requests above all) is tested
//! without an engine.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};

use super::{LABEL_AGENT, LABEL_DIGEST, LABEL_MANAGED};
use crate::config::{Gpus, GpusVia, WorkerSettings};

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
    pub fn create_body(&self) -> ContainerCreateBody {
        let w = &*self.worker;
        let mut env: Vec<String> = w.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("GPU_AGENT_ID={}", self.agent_id));
        env.push(format!("GPU_AGENT_DIGEST={}", self.digest));
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_DIGEST.to_string(), self.digest.clone()),
            (LABEL_AGENT.to_string(), self.agent_id.clone()),
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

    #[test]
    fn defaults_leave_the_image_command() {
        let b = serde_json::to_value(spec("").create_body()).unwrap();
        assert!(b.get("Cmd").is_none());
        assert!(b["HostConfig"].get("Binds").is_none());
        assert_eq!(b["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
        assert_eq!(b["HostConfig"]["DeviceRequests"][0]["Count"], -1);
    }
}
