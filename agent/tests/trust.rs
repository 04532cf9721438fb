//! Image trust against the real registry (`docker-registry` on loopback, images
//! and cosign signatures pushed through its API): signed digests verify;
//! unsigned ones, ones signed by another key, signatures naming another digest,
//! tampered signatures and payloads are refused with the reason. Also `min_age`
//! from the image's `created` time, the size caps (tag lists, worker probes),
//! and untrusted text shown escaped by agentctl.

#[allow(dead_code)]
mod common_registry;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use common_registry::cosign::{payload, push_signatures, sign_and_push, Signer};
use common_registry::mock::{reply, Mock};
use common_registry::options;
use common_registry::real::{Auth, Pushed, Pusher, Registry, OCI_INDEX, OCI_MANIFEST};
use gpu_agent::registry::{RegistryClient, RegistryError, MAX_TAG_LIST_BYTES};
use gpu_agent::trust::{image_created, CosignKeys, TrustError, Verifier};
use serde_json::json;

const REPO: &str = "test/signed";

struct Fixture {
    registry: Registry,
    pusher: Pusher,
    dir: tempfile::TempDir,
    trusted: Signer,
    trusted_key: PathBuf,
}

impl Fixture {
    async fn start() -> Fixture {
        let registry = Registry::start(Auth::None).await;
        let pusher = registry.pusher(None);
        let dir = tempfile::tempdir().unwrap();
        let trusted = Signer::from_seed(1);
        let trusted_key = trusted.write_public(dir.path(), "cosign.pub");
        Fixture {
            registry,
            pusher,
            dir,
            trusted,
            trusted_key,
        }
    }

    fn verifier(&self, keys: &[PathBuf]) -> Verifier {
        Verifier::new(
            RegistryClient::new(options()).unwrap(),
            CosignKeys::load(keys).unwrap(),
        )
    }

    async fn image(&self, label: &str) -> String {
        self.pusher
            .image(REPO, label, OCI_MANIFEST, "amd64", label)
            .await
            .digest
    }

    async fn verify(&self, digest: &str) -> Result<gpu_agent::trust::Verified, TrustError> {
        self.verifier(std::slice::from_ref(&self.trusted_key))
            .verify(&self.registry.image(REPO), digest)
            .await
    }
}

#[tokio::test]
async fn a_digest_signed_by_a_configured_key_verifies() {
    let f = Fixture::start().await;
    let digest = f.image("v1").await;
    sign_and_push(&f.pusher, &f.registry.host(), REPO, &digest, &f.trusted).await;
    let ok = f.verify(&digest).await.unwrap();
    assert_eq!(ok.digest, digest);
    assert_eq!(ok.key, f.trusted_key);

    // Any of several keys will do; the answer names the one that verified.
    let other = Signer::from_seed(2).write_public(f.dir.path(), "other.pub");
    let ok = f
        .verifier(&[other, f.trusted_key.clone()])
        .verify(&f.registry.image(REPO), &digest)
        .await
        .unwrap();
    assert_eq!(ok.key, f.trusted_key);

    // One good signature among bad ones is enough.
    let d2 = f.image("v2").await;
    let stranger = Signer::from_seed(3);
    let p = payload(&format!("{}/{REPO}", f.registry.host()), &d2);
    let bad = (p.clone(), stranger.sign(&p));
    let good = (p.clone(), f.trusted.sign(&p));
    push_signatures(&f.pusher, REPO, &d2, &[bad, good]).await;
    assert_eq!(f.verify(&d2).await.unwrap().key, f.trusted_key);
}

#[tokio::test]
async fn an_unsigned_digest_is_refused_as_unsigned() {
    let f = Fixture::start().await;
    let digest = f.image("v1").await;
    let e = f.verify(&digest).await.unwrap_err();
    assert!(matches!(e, TrustError::Unsigned { .. }), "{e:?}");
    assert!(!e.is_transient());
    let text = e.to_string();
    assert!(
        text.contains("is not signed") && text.contains("cosign sign"),
        "{text}"
    );
    assert!(text.contains(&digest), "{text}");
}

#[tokio::test]
async fn a_signature_by_another_key_is_refused() {
    let f = Fixture::start().await;
    let digest = f.image("v1").await;
    sign_and_push(
        &f.pusher,
        &f.registry.host(),
        REPO,
        &digest,
        &Signer::from_seed(9),
    )
    .await;
    let e = f.verify(&digest).await.unwrap_err();
    assert!(
        matches!(e, TrustError::NotVerified { signatures: 1, .. }),
        "{e:?}"
    );
    assert_eq!(e.kind(), "not_verified");
    let text = e.to_string();
    assert!(text.contains("not signed by a trusted key"), "{text}");
    assert!(
        text.contains("cosign.pub"),
        "the message names the keys: {text}"
    );
}

#[tokio::test]
async fn a_signature_naming_another_digest_is_refused() {
    let f = Fixture::start().await;
    let wanted = f.image("v1").await;
    let signed = f.image("v2").await;
    // A valid signature by the trusted key, but of another image, copied under
    // the signature tag of `wanted`.
    let p = payload(&format!("{}/{REPO}", f.registry.host()), &signed);
    let s = f.trusted.sign(&p);
    push_signatures(&f.pusher, REPO, &wanted, &[(p, s)]).await;
    let e = f.verify(&wanted).await.unwrap_err();
    match &e {
        TrustError::OtherDigest { digest, named } => {
            assert_eq!(digest, &wanted);
            assert_eq!(named, &signed);
        }
        other => panic!("expected OtherDigest, got {other:?}"),
    }
    assert!(e.to_string().contains("copied from another image"), "{e}");
}

#[tokio::test]
async fn a_tampered_signature_or_payload_is_refused() {
    let f = Fixture::start().await;
    let reference = format!("{}/{REPO}", f.registry.host());
    let b64 = base64::engine::general_purpose::STANDARD;

    // The signature's bytes changed (the last byte of `s`).
    let d1 = f.image("v1").await;
    let p = payload(&reference, &d1);
    let mut sig = b64.decode(f.trusted.sign(&p)).unwrap();
    *sig.last_mut().unwrap() ^= 1;
    push_signatures(&f.pusher, REPO, &d1, &[(p, b64.encode(&sig))]).await;
    let e = f.verify(&d1).await.unwrap_err();
    assert!(matches!(e, TrustError::NotVerified { .. }), "{e:?}");

    // The payload changed after signing (a new docker-reference, same digest).
    let d2 = f.image("v2").await;
    let signed = payload(&reference, &d2);
    let s = f.trusted.sign(&signed);
    let altered = payload("evil.example/other", &d2);
    push_signatures(&f.pusher, REPO, &d2, &[(altered, s)]).await;
    let e = f.verify(&d2).await.unwrap_err();
    assert!(matches!(e, TrustError::NotVerified { .. }), "{e:?}");

    // Not base64 at all.
    let d3 = f.image("v3").await;
    let p = payload(&reference, &d3);
    push_signatures(&f.pusher, REPO, &d3, &[(p, "%%% not base64 %%%".into())]).await;
    let e = f.verify(&d3).await.unwrap_err();
    assert!(matches!(e, TrustError::NotVerified { .. }), "{e:?}");

    // A payload that is not a simple-signing document.
    let d4 = f.image("v4").await;
    let junk = b"\x1b[2J not json".to_vec();
    let s = f.trusted.sign(&junk);
    push_signatures(&f.pusher, REPO, &d4, &[(junk, s)]).await;
    let e = f.verify(&d4).await.unwrap_err();
    assert!(matches!(e, TrustError::Malformed { .. }), "{e:?}");
    assert!(!gpu_agent::text::has_control(&e.to_string()), "{e}");
}

#[tokio::test]
async fn a_signature_tag_without_cosign_layers_is_malformed() {
    let f = Fixture::start().await;
    let digest = f.image("v1").await;
    // Something else pushed under the signature tag.
    let tag = common_registry::cosign::signature_tag(&digest);
    f.pusher
        .image(REPO, &tag, OCI_MANIFEST, "amd64", "not-a-signature")
        .await;
    let e = f.verify(&digest).await.unwrap_err();
    assert!(matches!(e, TrustError::Malformed { .. }), "{e:?}");
    assert!(e.to_string().contains("no layer of type"), "{e}");
}

#[tokio::test]
async fn a_registry_that_is_down_is_a_transient_error_not_a_verdict() {
    let f = Fixture::start().await;
    let digest = f.image("v1").await;
    let image = f.registry.image(REPO);
    let verifier = f.verifier(std::slice::from_ref(&f.trusted_key));
    drop(f.registry);
    let e = verifier.verify(&image, &digest).await.unwrap_err();
    assert!(matches!(e, TrustError::Registry { .. }), "{e:?}");
    assert!(e.is_transient(), "{e}");
}

/// An image whose config says it was created at `created`.
async fn image_created_at(pusher: &Pusher, tag: &str, created: &str, arch: &str) -> Pushed {
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let (config_digest, config_size) = pusher.blob(REPO, config.to_string().as_bytes()).await;
    let (layer_digest, layer_size) = pusher.blob(REPO, format!("{tag}{arch}").as_bytes()).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config_size, "digest": config_digest},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": layer_size, "digest": layer_digest}],
    });
    pusher
        .manifest(REPO, &format!("{tag}-{arch}"), OCI_MANIFEST, &manifest)
        .await
}

#[tokio::test]
async fn min_age_counts_from_the_images_created_time_or_first_seen() {
    use time::macros::datetime;
    let f = Fixture::start().await;
    let client = RegistryClient::new(options()).unwrap();
    let image = f.registry.image(REPO);
    let single = image_created_at(&f.pusher, "one", "2026-05-01T10:00:00Z", "amd64").await;
    assert_eq!(
        image_created(&client, &image, &single.digest)
            .await
            .unwrap(),
        Some(datetime!(2026-05-01 10:00 UTC))
    );

    // An index: the entry for this machine's architecture counts.
    let amd64 = image_created_at(&f.pusher, "multi", "2026-05-02T10:00:00Z", "amd64").await;
    let arm64 = image_created_at(&f.pusher, "multi", "2026-05-03T10:00:00Z", "arm64").await;
    let entry = |p: &Pushed, arch: &str| {
        json!({"mediaType": p.media_type, "size": p.size, "digest": p.digest,
               "platform": {"architecture": arch, "os": "linux"}})
    };
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [entry(&arm64, "arm64"), entry(&amd64, "amd64")]});
    let index = f.pusher.manifest(REPO, "multi", OCI_INDEX, &index).await;
    let expected = match std::env::consts::ARCH {
        "aarch64" => datetime!(2026-05-03 10:00 UTC),
        _ => datetime!(2026-05-02 10:00 UTC),
    };
    assert_eq!(
        image_created(&client, &image, &index.digest).await.unwrap(),
        Some(expected)
    );

    // Through the verifier: the later of created and first seen, plus min_age.
    let verifier = f.verifier(std::slice::from_ref(&f.trusted_key));
    let h2 = Duration::from_secs(7200);
    let seen_before = datetime!(2026-05-01 09:00 UTC);
    assert_eq!(
        verifier
            .deployable_at(&image, &single.digest, seen_before, h2)
            .await
            .unwrap(),
        datetime!(2026-05-01 12:00 UTC)
    );
    let seen_after = datetime!(2026-06-01 00:00 UTC);
    assert_eq!(
        verifier
            .deployable_at(&image, &single.digest, seen_after, h2)
            .await
            .unwrap(),
        datetime!(2026-06-01 02:00 UTC)
    );

    // An image without `created` counts from first seen.
    let plain = f.image("no-created").await;
    assert_eq!(image_created(&client, &image, &plain).await.unwrap(), None);
}

#[tokio::test]
async fn a_tag_list_without_end_is_cut_at_the_total_cap() {
    // Pages of ~1 MiB each, every one linking to a next page.
    let page = |n: usize| {
        let tags: Vec<String> = (0..40_000).map(|i| format!("t{n}-{i:08}")).collect();
        json!({"name": "test/worker", "tags": tags}).to_string()
    };
    let mock = Mock::start(move |seen| {
        let n: usize = seen
            .query
            .strip_prefix("page=")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let next = format!("</v2/test/worker/tags/list?page={}>; rel=\"next\"", n + 1);
        reply(
            200,
            &[("Content-Type", "application/json"), ("Link", &next)],
            page(n),
        )
    })
    .await;
    let client = RegistryClient::new(options()).unwrap();
    let e = client.list_tags(&mock.image()).await.unwrap_err();
    assert!(matches!(e, RegistryError::Garbage { .. }), "{e:?}");
    assert!(e.to_string().contains("larger than 32 MiB in all"), "{e}");
    let pages = mock.requests().len();
    let page_bytes = page(0).len();
    assert!(
        pages <= MAX_TAG_LIST_BYTES / page_bytes + 1,
        "{pages} pages of {page_bytes} bytes read"
    );
}

#[tokio::test]
async fn worker_probes_read_a_capped_body_and_follow_no_redirect() {
    use gpu_agent::worker::{ProbeError, WorkerClient, MAX_PROBE_BODY};
    let huge = format!("{{\"in_flight\": 1, \"pad\": \"{}\"}}", "x".repeat(1 << 20));
    let mock = Mock::start(move |seen| match seen.path.as_str() {
        "/huge" => reply(200, &[("Content-Type", "application/json")], huge.clone()),
        "/redirect" => reply(302, &[("Location", "/in-flight")], ""),
        "/in-flight" => reply(200, &[], r#"{"in_flight": 3}"#),
        _ => reply(200, &[], "\u{1b}[2J\u{1b}]0;owned\u{7}not json"),
    })
    .await;
    let base = format!("http://{}", mock.addr);
    let url = |p: &str| url::Url::parse(&format!("{base}{p}")).unwrap();
    let w = WorkerClient::new();
    assert_eq!(w.in_flight(&url("/in-flight")).await.unwrap(), 3);
    let e = w.in_flight(&url("/huge")).await.unwrap_err();
    assert!(
        matches!(e, ProbeError::TooLarge { max, .. } if max == MAX_PROBE_BODY),
        "{e:?}"
    );
    // A big answer to a health probe is still a 2xx: healthy, and not read past the cap.
    w.health(&url("/huge")).await.unwrap();
    let e = w.in_flight(&url("/redirect")).await.unwrap_err();
    assert!(matches!(e, ProbeError::Status { status: 302, .. }), "{e:?}");
    assert!(e.to_string().contains("does not follow"), "{e}");
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|s| s.path == "/in-flight")
            .count(),
        1,
        "the redirect was not followed"
    );
    let e = w.in_flight(&url("/garbage")).await.unwrap_err().to_string();
    assert!(
        e.contains("\\u{1b}[2J") && !gpu_agent::text::has_control(&e),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_registry_error_with_escape_sequences_arrives_escaped() {
    let mock = Mock::start(|_| {
        reply(
            400,
            &[("Content-Type", "application/json")],
            r#"{"errors":[{"code":"DENIED","message":"\u001b]0;owned\u0007\u001b[2J go away"}]}"#,
        )
    })
    .await;
    let client = RegistryClient::new(options()).unwrap();
    // A GET (a HEAD answer has no body to quote).
    let e = client
        .list_tags(&mock.image())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("DENIED: \\u{1b}]0;owned\\u{7}\\u{1b}[2J go away"),
        "{e}"
    );
    assert!(!gpu_agent::text::has_control(&e), "{e:?}");
}

/// A control socket that answers status and history with hostile text; agentctl
/// must print it escaped, in text and in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentctl_shows_escape_sequences_escaped() {
    use axum::routing::get;
    let evil = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31mred\u{7f}";
    let status = json!({
        "agent_id": "h1", "phase": "idle",
        "current_digest": null, "last_good_digest": null,
        "drained": true, "pinned": null,
        "bad_digests": [{"digest": format!("sha256:{}", "a".repeat(64)), "reason": evil, "at": "2026-05-01T10:00:00Z"}],
        "last_check": null, "next_check": null,
        "last_error": evil, "image": "r/x", "policy": "tag stable",
        "pending": null, "drain_reason": evil, "drained_at": "2026-05-01T10:00:00Z",
        "pinned_digest": null, "hub": null,
    });
    let history = json!([{
        "at": "2026-05-01T10:00:00Z", "kind": "drain", "from": null, "to": null,
        "outcome": "success", "trigger": "cli", "error": null, "reason": evil,
    }, {
        "at": "2026-05-01T11:00:00Z", "kind": "update", "from": null,
        "to": format!("sha256:{}", "b".repeat(64)),
        "outcome": "failed", "trigger": "poll", "error": evil,
    }]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let app = axum::Router::new()
        .route("/v1/status", get(move || async move { axum::Json(status) }))
        .route(
            "/v1/history",
            get(move || async move { axum::Json(history) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    for args in [
        &["status"][..],
        &["history"],
        &["status", "--json"],
        &["history", "--json"],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
        for text in [&stdout, &stderr] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{args:?} printed a raw control character: {text:?}"
            );
        }
        let shown = if args.contains(&"--json") {
            "\\u001b]0;owned\\u0007\\u001b[2J\\u009b31mred\\u007f"
        } else {
            "\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}31mred\\u{7f}"
        };
        assert!(stdout.contains(shown), "{args:?}: {stdout}");
    }
}

/// `gpu-agent check-config` refuses plain http to a hub off loopback, and with
/// `insecure = true` accepts it with a note; it says when signatures are not checked.
#[test]
fn check_config_says_what_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let key = Signer::from_seed(1).write_public(dir.path(), "cosign.pub");
    let run = |hub: &str, verify: &str| {
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "[agent]\nid = \"h1\"\n[image]\nrepository = \"ghcr.io/acme/worker\"\n{verify}\n[hub]\n{hub}\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, err) = run("url = \"http://hub.example.com\"", "");
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("hub.url") && err.contains("plain http"),
        "{err}"
    );

    let (code, out, err) = run("url = \"http://hub.example.com\"\ninsecure = true", "");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("note: hub http://hub.example.com/ is used over plain http"),
        "{out}"
    );
    assert!(
        out.contains("note: image signatures are not checked"),
        "{out}"
    );

    let verify = format!(
        "[image.verify]\ncosign_public_keys = [\"{}\"]\nmin_age = \"2h\"",
        key.display()
    );
    let (code, out, err) = run("url = \"https://hub.example.com\"", &verify);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("plain http"), "{out}");
    assert!(
        out.contains("must carry a cosign signature by one of") && out.contains("cosign.pub"),
        "{out}"
    );
}
