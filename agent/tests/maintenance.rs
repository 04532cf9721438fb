//! The maintenance commands as an operator runs them, against a running
//! `gpu-agent` on the real engine and registry: drain (with its reason, its
//! timeout, its refusals) and undrain behind the health gate, a drain that
//! survives an agent restart, rollback, pin and unpin, health, and the
//! Prometheus metrics.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// An hourly poll: only agentctl (and the check at start) moves the worker.
fn hourly(config: String) -> String {
    let c = config.replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    assert_ne!(c, config);
    c
}

fn events(s: &Setup) -> Vec<String> {
    s.events().into_iter().map(|(_, _, e)| e).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_jobs_stops_the_worker_holds_updates_and_survives_a_restart() {
    let s = Setup::new("mt-drain");
    let v1 = s.push("v1", "stable");
    let cfg = hourly(s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"2\", JOB_SECONDS = \"1\""),
        &s.drain_table("60s"),
    ));
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;

    let r = ctl(
        &s,
        &["drain", "--reason", "kernel upgrade", "--wait", "--json"],
    )
    .await;
    r.expect(0);
    assert_eq!(r.json()["outcome"], "drained", "{r:#?}");
    assert!(s.running().await.is_none(), "the worker is stopped");
    let ev = events(&s);
    let idle = ev.iter().position(|e| e == "idle");
    let term = ev.iter().position(|e| e == "sigterm");
    assert!(
        idle.is_some() && idle < term,
        "in-flight jobs finished before the stop: {ev:?}"
    );
    let st = ctl(&s, &["status", "--json"]).await.json();
    assert_eq!(st["drained"], true);
    assert_eq!(st["phase"], "drained");
    assert_eq!(st["drain_reason"], "kernel upgrade");
    let text = ctl(&s, &["status"]).await;
    assert!(text.stdout.contains("kernel upgrade"), "{text:#?}");

    // Updates are held and say why.
    let v2 = s.push("v2", "stable");
    let r = ctl(&s, &["check", "--wait"]).await;
    r.expect(4);
    assert!(r.stderr.contains("agentctl undrain"), "{r:#?}");
    let r = ctl(&s, &["update", "--digest", &v2]).await;
    r.expect(4);
    let r = ctl(&s, &["drain"]).await;
    r.expect(4);
    assert!(r.stderr.contains("already drained"), "{r:#?}");

    // The drain survives an agent restart (and the engine does not bring the worker back).
    assert_eq!(agent.terminate(), Some(0));
    let agent = s.start_agent(&cfg);
    agent.wait_log("control socket ready").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.running().await.is_none(), "{}", agent.log());
    let st = ctl(&s, &["status", "--json"]).await.json();
    assert_eq!(
        (st["drained"].clone(), st["phase"].clone()),
        (Value::Bool(true), "drained".into())
    );

    // Undrain: the same digest comes back behind the health gate; then the held update runs.
    let r = ctl(&s, &["undrain", "--json"]).await;
    r.expect(0);
    assert_eq!(r.json()["outcome"], "undrained", "{r:#?}");
    s.wait_running(&v1, "v1", &agent).await;
    let r = ctl(&s, &["undrain"]).await;
    r.expect(4);
    assert!(r.stderr.contains("not drained"), "{r:#?}");
    let r = ctl(&s, &["check", "--wait", "--json"]).await;
    r.expect(0);
    assert_eq!(r.json()["outcome"], "updated");
    s.wait_running(&v2, "v2", &agent).await;

    let h = ctl(&s, &["history", "--json"]).await.json();
    let kinds: Vec<(&str, &str)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("update", "success"),
            ("drain", "success"),
            ("undrain", "success"),
            ("update", "success")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_times_out_says_how_many_jobs_were_in_flight_and_keeps_the_worker() {
    let s = Setup::new("mt-drain-timeout");
    let v1 = s.push("v1", "stable");
    let cfg = hourly(s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"5\", JOB_SECONDS = \"10\""),
        &s.drain_table("60s"),
    ));
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;

    let r = ctl(&s, &["drain", "--timeout", "2s", "--wait", "--json"]).await;
    r.expect(1);
    let a = r.json();
    assert_eq!(a["outcome"], "aborted", "{a:#}");
    let err = a["error"].as_str().unwrap();
    assert!(
        err.contains("jobs still in flight") && err.contains("5"),
        "{err}"
    );
    let c = s.running().await.expect("the worker keeps serving");
    assert_eq!(c.digest.as_deref(), Some(v1.as_str()));
    assert!(
        events(&s).iter().any(|e| e == "undrain"),
        "it got its jobs back"
    );
    let st = ctl(&s, &["status", "--json"]).await.json();
    assert_eq!(st["drained"], false);
    let r = ctl(&s, &["drain", "--timeout", "soon"]).await;
    r.expect(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undrain_during_a_drain_cancels_it() {
    let s = Setup::new("mt-drain-cancel");
    let v1 = s.push("v1", "stable");
    let cfg = hourly(s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"5\", JOB_SECONDS = \"10\""),
        &s.drain_table("10m"),
    ));
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    ctl(&s, &["drain"]).await.expect(0);
    let draining = wait_for(WAIT, || async {
        let st = ctl(&s, &["status", "--json"]).await.json();
        (st["phase"] == "draining").then_some(())
    })
    .await;
    assert!(draining.is_some(), "{}", agent.log());
    let r = ctl(&s, &["undrain", "--json"]).await;
    r.expect(0);
    let back = wait_for(WAIT, || async {
        let st = ctl(&s, &["status", "--json"]).await.json();
        (st["phase"] == "idle" && st["drained"] == false).then_some(())
    })
    .await;
    assert!(back.is_some(), "{}", agent.log());
    assert!(s.running().await.is_some());
    assert!(events(&s).iter().any(|e| e == "undrain"));
    let h = s.history();
    let last = h.last().unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["outcome"].as_str()),
        (Some("drain"), Some("aborted"))
    );
    assert!(last["error"].as_str().unwrap().contains("agentctl undrain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_goes_back_one_good_digest_and_polling_does_not_bring_the_other_back() {
    let s = Setup::new("mt-rollback");
    let v1 = s.push("v1", "stable");
    // A fast poll: the test shows polling keeps away from the digest rolled back from.
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let r = ctl(&s, &["rollback"]).await;
    r.expect(4);
    assert!(r.stderr.contains("no earlier good digest"), "{r:#?}");

    let v2 = s.push("v2", "stable");
    s.wait_history(&v2, "success", &agent).await;
    let r = ctl(&s, &["rollback", "--json"]).await;
    r.expect(0);
    let a = r.json();
    assert_eq!(
        (a["outcome"].as_str(), a["digest"].as_str()),
        (Some("updated"), Some(v1.as_str())),
        "{a:#}"
    );
    s.wait_running(&v1, "v1", &agent).await;
    // The tag still names v2; several polls go by and leave v1 running.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        s.running().await.unwrap().digest.as_deref(),
        Some(v1.as_str())
    );
    let st = ctl(&s, &["status", "--json"]).await.json();
    assert_eq!(st["current_digest"], v1);
    assert!(
        st["bad_digests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["digest"] == v2),
        "{st:#}"
    );
    let h = s.history();
    let e = h
        .iter()
        .rev()
        .find(|e| e["kind"] == "rollback")
        .expect("a rollback entry");
    assert_eq!(
        (e["from"].as_str(), e["to"].as_str(), e["outcome"].as_str()),
        (Some(v2.as_str()), Some(v1.as_str()), Some("success"))
    );
    assert!(e["downtime_ms"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_holds_a_tag_or_digest_clears_its_bad_mark_and_unpin_releases_it() {
    let s = Setup::new("mt-pin");
    let v1 = s.push("v1", "stable");
    let v2 = s.push("v2", "candidate");
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;

    // Pin a tag: its digest is deployed and held, even though "stable" is followed.
    let r = ctl(&s, &["pin", "candidate", "--json"]).await;
    r.expect(0);
    assert_eq!(r.json()["digest"], v2, "{r:#?}");
    s.wait_running(&v2, "v2", &agent).await;
    let st = ctl(&s, &["status", "--json"]).await.json();
    assert_eq!(
        (st["pinned"].as_str(), st["pinned_digest"].as_str()),
        (Some("candidate"), Some(v2.as_str()))
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.running().await.unwrap().digest.as_deref(),
        Some(v2.as_str()),
        "polls are held"
    );
    let r = ctl(&s, &["update", "--digest", &v1]).await;
    r.expect(4);
    assert!(r.stderr.contains("pinned to candidate"), "{r:#?}");
    let r = ctl(&s, &["rollback"]).await;
    r.expect(4);

    // A broken digest marked bad; the operator's pin of it clears the mark (and it rolls back).
    let bad = s.push("broken", "broken");
    let r = ctl(&s, &["pin", &bad, "--json"]).await;
    r.expect(1);
    assert_eq!(r.json()["outcome"], "rolled_back");
    assert!(s.is_marked_bad(&bad));
    let st = ctl(&s, &["status", "--json"]).await.json();
    assert_eq!(
        st["pinned"], "candidate",
        "a failed pin keeps the earlier one"
    );
    s.wait_running(&v2, "v2", &agent).await;

    let r = ctl(&s, &["pin", "not/a:tag"]).await;
    r.expect(2);

    // Unpin: the next poll follows "stable" again.
    let r = ctl(&s, &["unpin", "--json"]).await;
    r.expect(0);
    assert_eq!(r.json()["outcome"], "unpinned");
    s.wait_running(&v1, "v1", &agent).await;
    let r = ctl(&s, &["unpin"]).await;
    r.expect(4);
    // The history line follows the commit the health answer shows.
    let kinds = wait_for(WAIT, || async {
        let k: Vec<String> = s
            .history()
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["kind"].as_str().unwrap(),
                    e["outcome"].as_str().unwrap()
                )
            })
            .collect();
        (k.len() >= 5).then_some(k)
    })
    .await
    .expect("five history entries");
    assert_eq!(
        kinds,
        [
            "update:success",
            "pin:success",
            "pin:rolled_back",
            "unpin:success",
            "update:success"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_worker_now() {
    let s = Setup::new("mt-health");
    let v1 = s.push("v1", "stable");
    let cfg = hourly(s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"0\""),
        &s.drain_table("30s"),
    ));
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let r = ctl(&s, &["health", "--json"]).await;
    r.expect(0);
    let h = r.json();
    assert_eq!(h["verdict"], "healthy", "{h:#}");
    assert_eq!(h["worker"]["digest"], v1);
    assert_eq!(h["worker"]["state"], "running");
    assert_eq!(h["worker"]["http"]["ok"], true);
    assert_eq!(h["worker"]["in_flight"], 0);
    assert_eq!(h["hub"]["verdict"], "not_configured");
    let text = ctl(&s, &["health"]).await;
    text.expect(0);
    assert!(text.stdout.contains("healthy"), "{text:#?}");

    // The worker dies behind the agent's back: health says so at once.
    docker(&["kill", &s.name]);
    let r = ctl(&s, &["health", "--json"]).await;
    r.expect(1);
    let h = r.json();
    assert_eq!(h["verdict"], "unhealthy", "{h:#}");
    assert!(
        h["worker"]["problem"]
            .as_str()
            .unwrap()
            .contains("not running"),
        "{h:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_updates_and_follow_the_phase() {
    let s = Setup::new("mt-metrics");
    let v1 = s.push("v1", "stable");
    let port = free_port();
    let cfg = hourly(s.config("tag = \"stable\"", &s.env(""), "")).replace(
        "[agent]\n",
        &format!("[agent]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let scrape = || async move {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap();
        assert!(r.status().is_success());
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        r.text().await.unwrap()
    };
    let text = scrape().await;
    for line in [
        "gpu_agent_update_total{kind=\"update\",outcome=\"success\"} 1".to_string(),
        "gpu_agent_update_phase{phase=\"idle\"} 1".to_string(),
        format!("gpu_agent_worker_digest_info{{digest=\"{v1}\",last_good=\"{v1}\"}} 1"),
        "gpu_agent_worker_drained 0".to_string(),
        "gpu_agent_update_downtime_seconds_count 1".to_string(),
        "gpu_agent_registry_requests_total{status=\"200\"}".to_string(),
    ] {
        assert!(text.contains(&line), "{line:?} not in\n{text}");
    }
    ctl(&s, &["drain", "--wait"]).await.expect(0);
    let text = scrape().await;
    assert!(text.contains("gpu_agent_worker_drained 1"), "{text}");
    assert!(
        text.contains("gpu_agent_update_phase{phase=\"drained\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gpu_agent_update_total{kind=\"drain\",outcome=\"success\"} 1"),
        "{text}"
    );
}
