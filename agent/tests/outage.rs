//! The outage paths of the fault matrix's second pass (docs/reliability.md,
//! cases 38-45), against the real engine and registry: a disk that fills
//! while the new worker is verified must not block the rollback; a container
//! that holds `<name>-next` is not the image's fault; a worker that refuses
//! `DELETE` on its drain endpoint gets its jobs back by a restart once it has
//! none in flight.

mod common;

use common::*;
use serde_json::Value;

/// Waits until `agentctl status --json` satisfies `ok`; returns that status.
async fn wait_status(s: &Setup, agent: &Agent, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let found = wait_for(WAIT, || async {
        let v = status(s).await;
        ok(&v).then_some(v)
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "status never showed {what}: {:#}\nagent log:\n{}",
            s.state(),
            agent.log()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_during_the_verification_does_not_block_the_rollback() {
    let s = Setup::new("o-fullroll");
    let fs = Tmpfs::mount(&s.state_dir(), "64k");
    let v1 = s.push("v1", "stable");
    let cfg = s
        .config("tag = \"stable\"", &s.env("CRASH_AFTER = \"5\""), "")
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;

    // A new image that starts, then crashes during its verification.
    let bad = s.push("crash", "stable");
    ctl(&s, &["check"]).await.expect(0);
    wait_status(&s, &agent, "the verification", |v| {
        v["phase"] == "verifying"
    })
    .await;
    fs.fill();

    // The rollback goes on from memory: the last good worker serves again.
    s.wait_running(&v1, "v1", &agent).await;
    let st = wait_status(&s, &agent, "the rollback ended", |v| v["phase"] == "idle").await;
    assert_eq!(st["current_digest"], v1.as_str());
    let unsaved = st["state_unsaved"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        unsaved.contains("no space"),
        "status says the disk is full: {st:#}"
    );
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("rolled back"),
        "{st:#}"
    );
    assert!(
        st["bad_digests"].to_string().contains(&bad),
        "the crashing image is marked bad (in memory): {st:#}"
    );

    // Space again: the next turn writes the state and the history.
    fs.free();
    ctl(&s, &["check", "--wait"]).await;
    let st = wait_status(&s, &agent, "everything written", |v| {
        v["state_unsaved"].is_null()
    })
    .await;
    assert_eq!(st["current_digest"], v1.as_str());
    let disk = s.state();
    assert_eq!(disk["current_digest"], v1.as_str(), "{disk:#}");
    assert!(disk["pending"].is_null(), "{disk:#}");
    assert!(s.is_marked_bad(&bad), "{disk:#}");
    s.wait_history(&bad, "rolled_back", &agent).await;
    agent.kill9();
}

/// A container of someone else's, removed when the test ends (also when it fails).
struct Foreign(String);

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .env("DOCKER_HOST", docker_host())
            .args(["rm", "-f", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_holding_the_next_name_is_not_held_against_the_image() {
    let s = Setup::new("o-nextname");
    let next = Foreign(format!("{}-next", s.name));
    drop(Foreign(next.0.clone()));
    let v1 = s.push("v1", "stable");
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let worker = s.running().await.unwrap();
    // Someone else's container holds <name>-next.
    docker(&["create", "--name", &next.0, &image("v1"), "true"]);

    let v2 = s.push("v2", "stable");
    for _ in 0..4 {
        let r = ctl(&s, &["check", "--wait", "--json"]).await;
        assert_ne!(r.code, 0, "{r:#?}");
        let said = r.json().to_string();
        assert!(
            said.contains(&next.0) && said.contains("does not manage"),
            "the answer names the container in the way: {said}"
        );
    }
    assert!(
        !s.is_marked_bad(&v2),
        "a good image was marked bad: {:#}",
        s.state()
    );
    assert_eq!(
        s.running().await.unwrap().id,
        worker.id,
        "the worker was touched"
    );

    // Once it is gone, the update goes through.
    drop(next);
    ctl(&s, &["check", "--wait"]).await.expect(0);
    s.wait_running(&v2, "v2", &agent).await;
    agent.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_refuses_delete_is_restarted_once_its_jobs_finish() {
    let s = Setup::new("o-nodelete");
    let v1 = s.push("v1", "stable");
    let env = s.env("INFLIGHT_JOBS = \"2\", JOB_SECONDS = \"3\", DRAIN_DELETE = \"refuse\"");
    let cfg = s.config(
        "tag = \"stable\"",
        &env,
        &format!("{}on_timeout = \"abort\"\n", s.drain_table("2s")),
    );
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let worker = s.running().await.unwrap();

    // A maintenance drain that times out with jobs in flight: DELETE is
    // refused, so the worker would refuse jobs until restarted.
    let r = ctl(&s, &["drain", "--timeout", "2s", "--wait", "--json"]).await;
    let said = r.json().to_string();
    assert!(
        said.contains("DELETE") && said.contains("in-flight jobs finish"),
        "the answer says the worker is restarted once its jobs finish: {said}"
    );
    // Its jobs finish (6 s after the drain began); the next turn restarts it.
    let entry = wait_for(WAIT, || async {
        s.history().into_iter().find(|e| {
            e["kind"] == "undrain" && e["reason"].as_str().unwrap_or("").contains("restarted")
        })
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no restart in the history: {:#?}\n{}",
            s.history(),
            agent.log()
        )
    });
    assert_eq!(entry["outcome"], "success");
    let after = s.running().await.unwrap();
    assert_eq!(after.id, worker.id, "the same container, restarted");
    let drain: Value = reqwest::get(s.drain_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(drain["draining"], false, "it takes jobs again: {drain}");
    agent.kill9();
}
