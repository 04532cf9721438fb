//! Start-up never waits forever (the fault matrix, cases 56-57): `READY=1`,
//! the control socket and the metrics come up within seconds while the
//! engine is down or a container that is not this agent's holds the worker's
//! name; status says what the agent waits for, and it goes on by itself once
//! the cause is gone. The real agent binary, a real stopped engine socket
//! (then a proxy to the test engine on the same path), a real foreign
//! container, real `sd_notify` datagrams.

mod common;
mod proxy;
mod sd_notify;

use std::time::{Duration, Instant};

use common::*;
use sd_notify::Notify;

/// What a package upgrade's `try-restart` waits for: READY=1 (Type=notify).
const READY_WITHIN: Duration = Duration::from_secs(10);

async fn status(s: &Setup) -> serde_json::Value {
    ctl(s, &["status", "--json"]).await.expect(0).json()
}

async fn wait_last_error(s: &Setup, agent: &Agent, what: &str) -> serde_json::Value {
    match wait_for(Duration::from_secs(20), || async {
        let st = ctl(s, &["status", "--json"]).await;
        (st.code == 0 && st.json()["last_error"].as_str()?.contains(what)).then(|| st.json())
    })
    .await
    {
        Some(st) => st,
        None => panic!(
            "status never said {what:?}: {:#}\n{}",
            status(s).await,
            agent.log()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_while_the_engine_is_down_and_going_on_once_it_is_back() {
    let s = Setup::new("start-no-engine");
    let d1 = s.push("v1", "latest");
    // A stopped engine: its socket file is there, nobody listens on it.
    let sock = s.dir.path().join("engine.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let metrics = free_port();
    let config = s
        .config("", &s.env(""), "")
        .replace(&docker_host(), &format!("unix://{}", sock.display()))
        .replace(
            "[agent]\n",
            &format!("[agent]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n"),
        );
    let notify = Notify::bind(s.dir.path());
    let started = Instant::now();
    let agent = s.start_agent_env(&config, &[("NOTIFY_SOCKET", &notify.env())]);

    let ready = notify.wait("READY=1", READY_WITHIN).await;
    assert!(
        ready.is_some(),
        "no READY=1 within {READY_WITHIN:?} while the engine is down:\n{}",
        agent.log()
    );
    eprintln!("READY=1 after {:?}", ready.unwrap() - started);
    let st = wait_last_error(&s, &agent, "cannot reach the docker engine").await;
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains(&sock.display().to_string()),
        "{st:#}"
    );
    let m = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics"))
        .await
        .expect("the metrics answer while the engine is down");
    assert!(m.status().is_success());
    assert!(
        agent.log().contains("waiting for the docker engine"),
        "{}",
        agent.log()
    );

    // The engine comes back on the same socket: the agent goes on by itself.
    let upstream = docker_host().trim_start_matches("unix://").to_string();
    let _engine = proxy::unix(&sock, upstream.into());
    s.wait_running(&d1, "v1", &agent).await;
    let committed = wait_for(WAIT, || async {
        let st = status(&s).await;
        (st["current_digest"] == d1.as_str()).then_some(st)
    })
    .await
    .unwrap_or_else(|| panic!("never committed:\n{}", agent.log()));
    assert_eq!(
        committed["last_error"],
        serde_json::Value::Null,
        "{committed:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_while_a_foreign_container_holds_the_name_and_going_on_once_it_is_gone() {
    let s = Setup::new("start-foreign");
    let d1 = s.push("v1", "latest");
    // A renamed host: a container that is not this agent's holds the name
    // (one a failed run left is replaced).
    let _ = std::process::Command::new("docker")
        .env("DOCKER_HOST", docker_host())
        .args(["rm", "-f", &s.name])
        .output();
    docker(&["create", "--name", &s.name, &image("v1")]);
    let notify = Notify::bind(s.dir.path());
    let agent = s.start_agent_env(
        &s.config("", &s.env(""), ""),
        &[("NOTIFY_SOCKET", &notify.env())],
    );
    assert!(
        notify.wait("READY=1", READY_WITHIN).await.is_some(),
        "no READY=1 within {READY_WITHIN:?} while the name is held:\n{}",
        agent.log()
    );
    let st = wait_last_error(&s, &agent, "does not manage").await;
    assert!(
        st["last_error"].as_str().unwrap().contains(&s.name),
        "{st:#}"
    );
    // The foreign container is untouched while it holds the name.
    let inspect = docker(&["inspect", "-f", "{{.State.Status}}", &s.name]);
    assert_eq!(inspect.trim(), "created");

    docker(&["rm", "-f", &s.name]);
    s.wait_running(&d1, "v1", &agent).await;
}
