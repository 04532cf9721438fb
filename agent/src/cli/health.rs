//! `agentctl health`: the worker, the GPUs and the hub, probed now.

use super::client::Client;
use super::output::{key_values, millis, short_digest, Output};
use super::{CliError, Exit};
use crate::control::api::{Health, PartHealth, Probe, WorkerHealth};

/// Show the health of the worker, the GPUs and the hub, probed now.
///
/// The worker: its container and what the engine says of it, the digest it
/// runs, its restarts, the image's HEALTHCHECK, worker.health.http probed now
/// (with its latency), the jobs in flight and what is wrong. The GPUs: what
/// NVML reports. The hub: whether it answers and what it sees of this host's
/// worker. Answered at once (within 10 s). Exits 0 when everything checked is
/// healthy or the worker is drained for maintenance, 1 otherwise. With
/// --json, the agent's full answer.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    let reply = client.health().await?;
    let ok = matches!(reply.value.verdict.as_str(), "healthy" | "drained");
    // Unhealthy is an answer, not an error: the report goes to stdout.
    out.answer(&reply, true, render);
    Ok(if ok { Exit::Ok } else { Exit::Failed })
}

/// The verdict, then one block each for the worker, the GPUs and the hub.
pub fn render(h: &Health) -> String {
    let mut rows: Vec<(&str, String)> = vec![("overall", h.verdict.clone())];
    worker(&mut rows, &h.worker);
    part(&mut rows, "gpu", &h.gpu);
    part(&mut rows, "hub", &h.hub);
    key_values(&rows)
}

fn worker(rows: &mut Vec<(&str, String)>, w: &WorkerHealth) {
    rows.push(("worker", w.verdict.clone()));
    let container = match (&w.container, &w.state) {
        (Some(c), Some(s)) => format!("{c} ({s})"),
        (Some(c), None) => c.clone(),
        (None, _) => "none".into(),
    };
    rows.push(("  container", container));
    rows.push(("  digest", short_digest(w.digest.as_deref())));
    if let Some(n) = w.restart_count {
        rows.push(("  restarts", n.to_string()));
    }
    rows.push((
        "  healthcheck",
        w.healthcheck
            .clone()
            .unwrap_or_else(|| "none in the image".into()),
    ));
    rows.push((
        "  http",
        w.http
            .as_ref()
            .map_or_else(|| "not configured".into(), probe),
    ));
    rows.push((
        "  in flight",
        w.in_flight
            .map_or_else(|| "unknown".into(), |n| n.to_string()),
    ));
    if let Some(p) = &w.problem {
        rows.push(("  problem", p.clone()));
    }
}

/// `ok in 12ms (url)` or `failed in 2.0s: error (url)`.
fn probe(p: &Probe) -> String {
    let took = millis(p.latency_ms);
    match (p.ok, &p.error) {
        (true, _) => format!("ok in {took} ({})", p.url),
        (false, Some(e)) => format!("failed in {took}: {e} ({})", p.url),
        (false, None) => format!("failed in {took} ({})", p.url),
    }
}

fn part<'a>(rows: &mut Vec<(&'a str, String)>, name: &'a str, p: &PartHealth) {
    let line = if p.detail.is_empty() {
        p.verdict.clone()
    } else {
        format!("{}: {}", p.verdict, p.detail)
    };
    rows.push((name, line));
    if let Some(gpus) = p.data.get("gpus").and_then(|g| g.as_array()) {
        gpu_rows(rows, gpus, &p.data);
        return;
    }
    let shown = match &p.data {
        serde_json::Value::Object(m) => !m.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        _ => false,
    };
    if shown {
        rows.push(("  data", p.data.to_string()));
    }
}

/// One line per GPU, then the problems with what to do, then the latest XIDs.
fn gpu_rows(rows: &mut Vec<(&str, String)>, gpus: &[serde_json::Value], data: &serde_json::Value) {
    let num = |g: &serde_json::Value, k: &str| g.get(k).and_then(|v| v.as_u64());
    for g in gpus {
        let mut parts = Vec::new();
        if let Some(t) = num(g, "temperature_c") {
            parts.push(format!("{t}°C"));
        }
        if let (Some(used), Some(total)) = (num(g, "memory_used_mib"), num(g, "memory_total_mib")) {
            parts.push(format!("{used}/{total} MiB"));
        }
        if let Some(d) = num(g, "ecc_dbe_volatile") {
            parts.push(format!("ECC DBE {d}"));
        }
        if let (Some(w), Some(m)) = (num(g, "pcie_width"), num(g, "pcie_max_width")) {
            parts.push(format!("PCIe x{w}/x{m}"));
        }
        rows.push((
            "  gpu",
            format!(
                "{} {} {}: {}; {}",
                num(g, "index").unwrap_or_default(),
                g["uuid"].as_str().unwrap_or("?"),
                g["name"].as_str().unwrap_or("?"),
                g["verdict"].as_str().unwrap_or("?"),
                parts.join(", ")
            ),
        ));
    }
    for p in data["problems"].as_array().into_iter().flatten() {
        rows.push((
            "  problem",
            format!(
                "{} ({}{})",
                p["what"].as_str().unwrap_or("?"),
                p["action"].as_str().unwrap_or("?").replace('_', " "),
                if p["blocks_update"] == true {
                    "; blocks updates"
                } else {
                    ""
                }
            ),
        ));
    }
    for x in data["xids"].as_array().into_iter().flatten() {
        rows.push((
            "  xid",
            format!(
                "{} GPU {}: XID {} {} ({}): {}",
                x["at"].as_str().unwrap_or("?"),
                x["gpu_index"]
                    .as_u64()
                    .map_or("?".into(), |i| i.to_string()),
                x["code"],
                x["class"].as_str().unwrap_or("?"),
                x["action"].as_str().unwrap_or("?").replace('_', " "),
                x["meaning"].as_str().unwrap_or("")
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn health() -> Health {
        Health {
            verdict: "unhealthy".into(),
            worker: WorkerHealth {
                verdict: "unhealthy".into(),
                container: Some("gpu-worker".into()),
                state: Some("running".into()),
                digest: Some(format!("sha256:{}", "a".repeat(64))),
                restart_count: Some(2),
                healthcheck: Some("healthy".into()),
                http: Some(Probe {
                    url: "http://127.0.0.1:8080/health".into(),
                    ok: false,
                    latency_ms: 2000,
                    error: Some("timed out".into()),
                }),
                in_flight: Some(3),
                problem: Some("the HTTP health probe failed".into()),
            },
            gpu: PartHealth {
                verdict: "healthy".into(),
                detail: "2 GPUs".into(),
                data: json!([{"index": 0, "temp_c": 41}, {"index": 1, "temp_c": 55}]),
            },
            hub: PartHealth {
                verdict: "not_configured".into(),
                detail: "no [hub] in the config".into(),
                data: json!({}),
            },
        }
    }

    #[test]
    fn health_reads_at_a_glance() {
        assert_eq!(
            render(&health()),
            r#"overall:        unhealthy
worker:         unhealthy
  container:    gpu-worker (running)
  digest:       aaaaaaaaaaaa
  restarts:     2
  healthcheck:  healthy
  http:         failed in 2.0s: timed out (http://127.0.0.1:8080/health)
  in flight:    3
  problem:      the HTTP health probe failed
gpu:            healthy: 2 GPUs
  data:         [{"index":0,"temp_c":41},{"index":1,"temp_c":55}]
hub:            not_configured: no [hub] in the config
"#
        );
    }

    #[test]
    fn gpus_read_one_line_each_with_problems_and_xids() {
        let mut h = health();
        h.gpu = PartHealth {
            verdict: "unhealthy".into(),
            detail: "GPU 1 (GPU-b): 2 volatile double-bit ECC errors".into(),
            data: json!({
                "driver_version": "550.54.15", "cuda_version": "12.4",
                "gpus": [
                    {"index": 0, "uuid": "GPU-a", "name": "H100", "temperature_c": 41,
                     "memory_used_mib": 1024, "memory_total_mib": 81559, "ecc_dbe_volatile": 0,
                     "pcie_width": 16, "pcie_max_width": 16, "verdict": "healthy"},
                    {"index": 1, "uuid": "GPU-b", "name": "H100", "temperature_c": 55,
                     "memory_used_mib": 0, "memory_total_mib": 81559, "ecc_dbe_volatile": 2,
                     "verdict": "unhealthy"}
                ],
                "problems": [{"gpu_index": 1, "what": "GPU 1 (GPU-b): 2 volatile double-bit ECC errors",
                              "blocks_update": true, "action": "reset_gpu"}],
                "xids": [{"seq": 1, "at": "2026-11-22T07:00:00Z", "gpu_index": 0, "gpu_uuid": "GPU-a",
                          "code": 79, "class": "hardware", "action": "reboot_host",
                          "meaning": "GPU has fallen off the bus"}]
            }),
        };
        let text = render(&h);
        for line in [
            "  gpu: 0 GPU-a H100: healthy; 41°C, 1024/81559 MiB, ECC DBE 0, PCIe x16/x16",
            "  gpu: 1 GPU-b H100: unhealthy; 55°C, 0/81559 MiB, ECC DBE 2",
            "  problem: GPU 1 (GPU-b): 2 volatile double-bit ECC errors (reset gpu; blocks updates)",
            "  xid: 2026-11-22T07:00:00Z GPU 0: XID 79 hardware (reboot host): GPU has fallen off the bus",
        ] {
            let found = text.lines().any(|l| {
                l.split_whitespace().collect::<Vec<_>>() == line.split_whitespace().collect::<Vec<_>>()
            });
            assert!(found, "{line:?} not in\n{text}");
        }
        assert!(!text.contains("  data"), "{text}");
    }

    #[test]
    fn a_drained_worker_with_nothing_to_probe() {
        let mut h = health();
        h.verdict = "drained".into();
        h.worker = WorkerHealth::new("drained");
        h.gpu.data = serde_json::Value::Null;
        h.hub.detail = String::new();
        let text = render(&h);
        for line in [
            "overall:        drained\n",
            "worker:         drained\n",
            "  container:    none\n",
            "  digest:       -\n",
            "  healthcheck:  none in the image\n",
            "  http:         not configured\n",
            "  in flight:    unknown\n",
            "gpu:            healthy: 2 GPUs\n",
            "hub:            not_configured\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(!text.contains("restarts"), "{text}");
        assert!(!text.contains("data"), "{text}");
        assert!(!text.contains("problem"), "{text}");
        let ok = Probe {
            url: "http://x/h".into(),
            ok: true,
            latency_ms: 12,
            error: None,
        };
        assert_eq!(probe(&ok), "ok in 12ms (http://x/h)");
    }
}
