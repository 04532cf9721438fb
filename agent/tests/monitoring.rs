//! What the package ships for monitoring: the alerting rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`, Debian's
//! `prometheus` package), every query in the rules and the Grafana dashboard
//! names a metric the agent exposes, and a real Prometheus scrapes a real
//! agent on loopback and evaluates every rule without an error.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

fn rules_file() -> PathBuf {
    packaging().join("prometheus/gpu-agent.rules.yml")
}

fn promtool(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e} (install Debian's prometheus package; scripts/test.sh does)")
        })
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = packaging().join("prometheus");
    for args in [
        &["check", "rules", "gpu-agent.rules.yml"][..],
        &["test", "rules", "gpu-agent.rules.test.yml"],
    ] {
        let out = promtool(args, &dir);
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The sample names an OpenMetrics text offers, from its `# TYPE` lines (so
/// a family with no series yet counts), plus Prometheus's own `up`.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::from(["up".to_string()]);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The `gpu_agent_*` names a PromQL expression uses.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("gpu_agent_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every alert's expression in the rules file.
fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    // The file's layout: `- alert: NAME` then `expr: ONE LINE` or `expr: |` and an indented block.
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut alert = String::new();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("- alert: ") {
            alert = a.to_string();
        } else if let Some(e) = t.strip_prefix("expr: ") {
            let expr = if e == "|" {
                let indent = |l: &str| l.len() - l.trim_start().len();
                let base = indent(line);
                let mut block = Vec::new();
                while let Some(l) = lines.peek() {
                    if l.trim().is_empty() || indent(l) <= base {
                        break;
                    }
                    block.push(l.trim().to_string());
                    lines.next();
                }
                block.join(" ")
            } else {
                e.to_string()
            };
            out.push((alert.clone(), expr));
        }
    }
    out
}

/// Every query string in the dashboard: panel targets, variables, annotations.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(packaging().join("grafana/gpu-agent.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    walk(&dash, &mut out);
    out
}

/// The process's metrics with every family given a series (a family with
/// none is left out of the text): an update, a GPU reading, an XID, a
/// registry answer, a worker reading.
fn agent_text() -> String {
    use gpu_agent::gpu::{Assessment, GpuReading, Snapshot, Xid, XidAction, XidClass};
    use gpu_agent::update::{HistoryEntry, Kind, Outcome, Trigger};
    let m = gpu_agent::metrics::global();
    let now = time::OffsetDateTime::now_utc();
    m.observe(
        &HistoryEntry {
            at: now,
            kind: Kind::Update,
            from: None,
            to: Some(format!("sha256:{}", "ab".repeat(32))),
            outcome: Outcome::Success,
            trigger: Trigger::Poll,
            error: None,
            downtime_ms: Some(100),
            reason: None,
            user: None,
            marked_bad: None,
            gpu_hold: None,
            changed: Vec::new(),
            spec: None,
        },
        Some(now - time::Duration::seconds(3)),
    );
    let gpu = GpuReading {
        index: 0,
        uuid: "GPU-0".into(),
        name: "test".into(),
        memory_total_mib: 1024,
        memory_used_mib: 10,
        temperature_c: Some(40),
        ecc_dbe_volatile: Some(0),
        remapped_rows_pending: None,
        remapped_rows_failed: None,
        retired_pages_pending: None,
        pcie_width: None,
        pcie_max_width: None,
        thermal_throttled: None,
        persistence_mode: None,
    };
    m.observe_gpus(
        &Snapshot {
            driver_version: "550".into(),
            cuda_version: None,
            gpus: vec![gpu],
        },
        &Assessment {
            healthy: true,
            problems: vec![],
        },
    );
    m.observe_xid(&Xid {
        seq: 1,
        at: now,
        gpu_index: Some(0),
        gpu_uuid: None,
        code: 13,
        class: XidClass::Application,
        action: XidAction::RestartApp,
        meaning: "test",
    });
    gpu_agent::metrics::registry_request(Some(200));
    m.set_worker_healthy("gpu-worker", true);
    m.set_fleet_etcd_reachable("h100", true);
    m.render(&Default::default())
}

#[test]
fn every_query_of_the_rules_and_the_dashboard_names_a_metric_the_agent_exposes() {
    let exposed = exposed_names(&agent_text());
    let rules = rule_exprs();
    assert!(rules.len() >= 7, "{rules:?}");
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    let mut used = BTreeSet::new();
    for (what, expr) in rules
        .iter()
        .map(|(a, e)| (format!("rule {a}"), e.clone()))
        .chain(queries.iter().map(|q| ("dashboard".to_string(), q.clone())))
    {
        let names = names_in(&expr);
        assert!(
            !names.is_empty() || expr.contains("up{"),
            "{what}: {expr} uses no metric"
        );
        for n in names {
            assert!(
                exposed.contains(&n),
                "{what}: {n} is not a metric the agent exposes ({expr})"
            );
            used.insert(n);
        }
    }
    // The checker itself: a made-up name would have been caught.
    assert!(!exposed.contains("gpu_agent_update_rolled_back_total"));
    // What alerts need is on the dashboard or in the rules.
    for n in [
        "gpu_agent_update_total",
        "gpu_agent_phase_since_timestamp_seconds",
        "gpu_agent_worker_healthy",
        "gpu_agent_gpu_healthy",
        "gpu_agent_fleet_rollout_state",
        "gpu_agent_check_total",
    ] {
        assert!(used.contains(n), "{n} is used nowhere");
    }
}

/// A Prometheus server in a temporary folder, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: gpu-agent\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules_file().display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "prometheus: {e} (install Debian's prometheus package; scripts/test.sh does)"
                )
            });
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let url =
            url::Url::parse_with_params(&format!("http://127.0.0.1:{}{path}", self.port), query)
                .unwrap();
        let r = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Waits (at most `within`) until `query` has a result; gives it.
    async fn wait_result(&self, query: &str, within: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.get("/api/v1/query", &[("query", query)]).await {
                if v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
                {
                    return v["data"]["result"].clone();
                }
            }
            assert!(
                t0.elapsed() < within,
                "no result for {query} within {within:?}; prometheus said:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_real_agent_and_evaluates_every_rule() {
    let s = Setup::new("mon-prom");
    let v1 = s.push("v1", "stable");
    let port = free_port();
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"")
        .replace(
            "[agent]\n",
            &format!("[agent]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
        );
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let prom = Prometheus::start(&format!("127.0.0.1:{port}"));
    let within = Duration::from_secs(30);

    // Scraped: up, the build, and the update the agent just made.
    let up = prom.wait_result("up{job=\"gpu-agent\"} == 1", within).await;
    assert_eq!(up.as_array().unwrap().len(), 1, "{up}");
    let build = prom.wait_result("gpu_agent_build_info", within).await;
    assert_eq!(build[0]["metric"]["commit"], gpu_agent::COMMIT, "{build}");
    let ok = prom
        .wait_result(
            "gpu_agent_update_total{kind=\"update\",outcome=\"success\"} == 1",
            within,
        )
        .await;
    assert_eq!(ok.as_array().unwrap().len(), 1, "{ok}");
    // The counters an alert watches are there before anything happened.
    prom.wait_result(
        "gpu_agent_update_total{kind=\"update\",outcome=\"rolled_back\"} == 0",
        within,
    )
    .await;

    // Every rule loaded and evaluated without an error; none fires on a
    // healthy agent (its GPU gate is off here, its worker healthy).
    let t0 = Instant::now();
    loop {
        let rules = prom.get("/api/v1/rules", &[]).await.unwrap_or_default();
        let list: Vec<Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !list.is_empty()
            && list.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        if evaluated {
            assert_eq!(list.len(), rule_exprs().len(), "{rules}");
            for r in &list {
                assert_eq!(r["health"], "ok", "{r}");
                assert_eq!(r["state"], "inactive", "{r}");
            }
            break;
        }
        assert!(
            t0.elapsed() < within,
            "rules not evaluated: {rules}\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The names Prometheus stored are the ones the agent's text declares.
    let names = prom
        .get("/api/v1/label/__name__/values", &[])
        .await
        .unwrap();
    let stored: BTreeSet<String> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|n| n.starts_with("gpu_agent_"))
        .map(str::to_string)
        .collect();
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let declared = exposed_names(&text);
    for n in &stored {
        assert!(declared.contains(n), "{n} stored but not declared");
    }
    assert!(
        stored.contains("gpu_agent_phase_since_timestamp_seconds"),
        "{stored:?}"
    );
    drop(prom);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_healthy_gauge_follows_the_worker_between_updates() {
    let s = Setup::new("mon-health");
    let v1 = s.push("v1", "stable");
    let port = free_port();
    let cfg = s.config("tag = \"stable\"", &s.env(""), "").replace(
        "[agent]\n",
        &format!("[agent]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let agent = s.start_agent(&cfg);
    s.assert_converged(&v1, "v1", &agent).await;
    let reads = |want: f64| {
        let name = s.name.clone();
        async move {
            wait_for(WAIT, || async {
                (metric(
                    port,
                    &format!("gpu_agent_worker_healthy{{worker=\"{name}\"}}"),
                )
                .await
                    == Some(want))
                .then_some(())
            })
            .await
            .is_some()
        }
    };
    assert!(
        reads(1.0).await,
        "healthy after the deploy:\n{}",
        agent.log()
    );
    // A worker that stops answering between updates (paused: it still runs)
    // reads 0 at the next poll, and 1 again once it answers.
    docker(&["pause", &s.name]);
    let paused = reads(0.0).await;
    docker(&["unpause", &s.name]);
    assert!(
        paused,
        "the paused worker never read unhealthy:\n{}",
        agent.log()
    );
    assert!(reads(1.0).await, "healthy again:\n{}", agent.log());
    s.assert_converged(&v1, "v1", &agent).await;
}
