//! Config changes are updates, on the real engine: a change of the worker's
//! env on SIGHUP replaces the container through the update's own steps
//! (trigger `config`, the keys named, no value written); settings that make
//! the worker exit are rolled back to the old container and held until the
//! config changes.

mod common;

use common::*;
use serde_json::Value;

fn hup(agent: &Agent) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

/// The config-triggered history entries.
fn config_entries(s: &Setup) -> Vec<Value> {
    s.history()
        .into_iter()
        .filter(|e| e["trigger"] == "config")
        .collect()
}

/// Waits for the `n`th config-triggered entry.
async fn nth_config_entry(s: &Setup, agent: &Agent, n: usize) -> Value {
    wait_for(WAIT, || async { config_entries(s).get(n - 1).cloned() })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no config entry #{n} in {:#?}\nagent log:\n{}",
                s.history(),
                agent.log()
            )
        })
}

/// Waits until the agent has planned two more polls (each poll sets the next).
async fn two_polls(s: &Setup) {
    for _ in 0..2 {
        let seen = status(s).await["next_check"].clone();
        wait_for(WAIT, || async {
            (status(s).await["next_check"] != seen).then_some(())
        })
        .await
        .expect("the agent polls on");
    }
}

fn env_of(id: &str) -> String {
    docker(&["inspect", "--format", "{{json .Config.Env}}", id])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_env_is_rolled_out_and_failing_settings_roll_back_and_are_held() {
    let s = Setup::new("cfgroll");
    let v1 = s.push("v1", "stable");
    let cfg = |env: &str| s.config("tag = \"stable\"", &s.env(env), "");
    let agent = s.start_agent(&cfg("MODEL = \"a\", API_TOKEN = \"tok-int-1f\""));
    s.wait_history(&v1, "success", &agent).await;
    let first = s.running().await.expect("a worker runs");

    // A new env on SIGHUP: a new container with it, the same digest.
    let good = cfg("MODEL = \"b\", API_TOKEN = \"tok-int-2e\"");
    s.write_config(&good);
    hup(&agent);
    let e = nth_config_entry(&s, &agent, 1).await;
    assert_eq!(
        e["outcome"],
        "success",
        "{e:#}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(
        (e["from"].as_str(), e["to"].as_str()),
        (Some(v1.as_str()), Some(v1.as_str()))
    );
    assert_eq!(
        e["changed"],
        serde_json::json!(["worker.env.API_TOKEN", "worker.env.MODEL"])
    );
    s.wait_running(&v1, "v1", &agent).await;
    let second = s.running().await.unwrap();
    assert_ne!(second.id, first.id, "the container was replaced");
    assert!(
        env_of(&second.id).contains("MODEL=b"),
        "{}",
        env_of(&second.id)
    );
    assert_eq!(s.managed().await.len(), 1, "the old container is gone");

    // Settings that make the worker exit (the test worker refuses an
    // INFLIGHT_JOBS that is not a number): rolled back, and held.
    s.write_config(&cfg(
        "MODEL = \"b\", API_TOKEN = \"tok-int-2e\", INFLIGHT_JOBS = \"many\"",
    ));
    hup(&agent);
    let e = nth_config_entry(&s, &agent, 2).await;
    assert_eq!(
        e["outcome"],
        "rolled_back",
        "{e:#}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(
        e["changed"],
        serde_json::json!(["worker.env.INFLIGHT_JOBS"])
    );
    s.wait_running(&v1, "v1", &agent).await;
    assert_eq!(
        s.running().await.unwrap().id,
        second.id,
        "the old container itself is back"
    );
    assert!(!s.is_marked_bad(&v1), "the digest is not to blame");
    let st = status(&s).await;
    assert_eq!(
        st["config_held"]["changed"],
        serde_json::json!(["worker.env.INFLIGHT_JOBS"]),
        "{st:#}"
    );
    assert!(
        st["last_error"].as_str().unwrap_or("").contains("held"),
        "{st:#}"
    );

    // Held: the polls that follow (every second) do not try it again.
    two_polls(&s).await;
    assert_eq!(config_entries(&s).len(), 2, "{:#?}", s.history());
    assert_eq!(s.running().await.unwrap().id, second.id);

    // The config changed back: the hold and the error go, nothing restarts.
    s.write_config(&good);
    hup(&agent);
    let cleared = wait_for(WAIT, || async {
        let st = status(&s).await;
        (st["config_held"].is_null() && st["last_error"].is_null()).then_some(st)
    })
    .await;
    assert!(
        cleared.is_some(),
        "{:#}\nagent log:\n{}",
        status(&s).await,
        agent.log()
    );
    two_polls(&s).await;
    assert_eq!(s.running().await.unwrap().id, second.id);
    assert_eq!(config_entries(&s).len(), 2);

    // Names only: no env value in the history, the state or the status.
    let written = format!(
        "{}\n{}\n{}",
        std::fs::read_to_string(s.state_dir().join("history.jsonl")).unwrap(),
        std::fs::read_to_string(s.state_dir().join("state.json")).unwrap(),
        status(&s).await
    );
    for value in ["tok-int-1f", "tok-int-2e"] {
        assert!(!written.contains(value), "{value} written: {written}");
    }
}
