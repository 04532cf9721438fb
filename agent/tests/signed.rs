//! `[image.verify]` through the agent, against the real engine and registry
//! (signatures written in cosign's format by the test signer): a signed
//! digest is deployed; an unsigned one, or one signed by another key, is
//! refused before anything is pulled, marked bad with the reason, the worker
//! kept; an operator's `update --digest` is checked too.

mod common;
#[allow(dead_code)]
mod common_registry;

use common::*;
use common_registry::cosign::{sign_and_push, Signer};
use common_registry::real::Pusher;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_digests_signed_by_a_trusted_key_are_deployed() {
    let s = Setup::new("t-signed");
    let host = s.registry.host();
    let pusher = Pusher::to(&format!("http://{host}"));
    let trusted = Signer::from_seed(7);
    let key = trusted.write_public(s.dir.path(), "cosign.pub");
    let other = Signer::from_seed(9);

    let v1 = s.push("v1", "stable");
    sign_and_push(&pusher, &host, &s.repo, &v1, &trusted).await;
    let verify = format!(
        "tag = \"stable\"\n[image.verify]\ncosign_public_keys = [\"{}\"]",
        key.display()
    );
    let cfg = s
        .config(&verify, &s.env(""), "")
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let worker = s.running().await.unwrap();

    // Unsigned: refused before the pull, marked bad with the reason.
    let v2 = s.push("v2", "stable");
    let r = ctl(&s, &["check", "--wait", "--json"]).await;
    assert_ne!(r.code, 0, "{r:#?}");
    let e = s.wait_history(&v2, "failed", &agent).await;
    let why = e["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("not signed") && why.contains("cosign sign"),
        "{why}"
    );
    assert!(s.is_marked_bad(&v2));
    assert_eq!(
        s.running().await.unwrap().id,
        worker.id,
        "the worker was touched"
    );
    // Refused before the pull: the agent never pulled it nor made its container.
    let log = agent.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("pulling") && l.contains(&v2)),
        "the unsigned image was pulled:\n{log}"
    );
    assert_eq!(s.managed().await.len(), 1, "{:#?}", s.managed().await);

    // Signed by a key this host does not trust: refused the same way.
    let v3 = s.push("v3", "stable");
    sign_and_push(&pusher, &host, &s.repo, &v3, &other).await;
    ctl(&s, &["check", "--wait"]).await;
    let e = s.wait_history(&v3, "failed", &agent).await;
    assert!(
        e["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not signed by a trusted key"),
        "{e:#}"
    );
    assert_eq!(s.running().await.unwrap().id, worker.id);

    // Once signed by the trusted key, an operator deploys it (the check is
    // not skipped: it passes).
    sign_and_push(&pusher, &host, &s.repo, &v2, &trusted).await;
    ctl(&s, &["update", "--digest", &v2]).await.expect(0);
    s.wait_running(&v2, "v2", &agent).await;
    let e = s.wait_history(&v2, "success", &agent).await;
    assert!(
        e["user"].as_str().unwrap_or_default().contains("uid"),
        "{e:#}"
    );
    agent.kill9();
}
