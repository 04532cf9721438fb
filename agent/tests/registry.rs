//! `gpu_agent::registry` against a scriptable mock registry (429, 5xx, garbage,
//! pagination, token caching, credential helpers) and against the real
//! distribution registry (`docker-registry`) on loopback, with images uploaded
//! through its API: digests, multi-arch indexes, semver ranges, htpasswd and
//! token auth.

#[allow(dead_code)]
mod common_registry;

use std::time::{Duration, Instant};

use common_registry::mock::{after, manifest_head, reply, tag_page, Mock, Seen};
use common_registry::real::{
    Auth, Registry, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use common_registry::token::TokenServer;
use common_registry::{auths_json, b64, options, process_gone, write_auth_file, write_helper};
use gpu_agent::registry::{
    ClientOptions, ImageName, Policy, RegistryClient, RegistryError, Resolved, MANIFEST_MEDIA_TYPES,
};

const MANIFEST: &str = "/v2/test/worker/manifests/stable";
const TAGS: &str = "/v2/test/worker/tags/list";

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn tag(t: &str) -> Policy {
    Policy::Tag(t.to_string())
}

fn range(r: &str) -> Policy {
    Policy::Version(semver::VersionReq::parse(r).unwrap())
}

fn client(opts: ClientOptions) -> RegistryClient {
    RegistryClient::new(opts).unwrap()
}

fn resolved(tag: &str, digest: &str) -> Resolved {
    Resolved {
        tag: tag.to_string(),
        digest: digest.to_string(),
    }
}

/// A 401 asking for a bearer token from the mock's own `/token`.
fn bearer_challenge(req: &Seen) -> axum::response::Response {
    let host = req.header("host").unwrap();
    let challenge = format!(
        r#"Bearer realm="http://{host}/token",service="mock",scope="repository:test/worker:pull""#
    );
    reply(401, &[("WWW-Authenticate", &challenge)], "")
}

/// A token endpoint answering `{"token": "tok-<n>", "expires_in": expires_in}`.
fn token_answer(req: &Seen, expires_in: u64) -> axum::response::Response {
    let body = format!(
        r#"{{"token": "tok-{}", "expires_in": {expires_in}}}"#,
        req.nth
    );
    reply(200, &[("Content-Type", "application/json")], body)
}

/// A registry whose manifest wants any `tok-*` bearer token, from a token
/// endpoint whose tokens live `expires_in` seconds.
async fn bearer_mock(expires_in: u64) -> Mock {
    Mock::start(move |req| match req.path.as_str() {
        "/token" => token_answer(req, expires_in),
        MANIFEST
            if req
                .header("authorization")
                .is_some_and(|a| a.starts_with("Bearer tok-")) =>
        {
            manifest_head(&digest(1))
        }
        MANIFEST => bearer_challenge(req),
        _ => reply(404, &[], ""),
    })
    .await
}

// ---------------------------------------------------------------------------
// Tag → digest: one HEAD, never a GET

#[tokio::test]
async fn a_tag_costs_one_head_that_accepts_all_four_manifest_types() {
    let mock = Mock::start(|req| match (req.method.as_str(), req.path.as_str()) {
        ("HEAD", MANIFEST) => manifest_head(&digest(7)),
        _ => reply(404, &[], ""),
    })
    .await;
    let got = client(options())
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap();
    assert_eq!(got, resolved("stable", &digest(7)));
    assert_eq!(mock.summary(), [format!("HEAD {MANIFEST}")]);
    let accept = mock.requests()[0].header("accept").unwrap().to_string();
    for media_type in MANIFEST_MEDIA_TYPES {
        assert!(
            accept.contains(media_type),
            "Accept {accept:?} lacks {media_type}"
        );
    }
}

#[tokio::test]
async fn a_head_answer_without_a_valid_digest_is_garbage_and_no_get_follows() {
    let answers: [&[(&str, &str)]; 4] = [
        &[("Content-Type", DOCKER_MANIFEST)],
        &[("Docker-Content-Digest", "sha256:abc")],
        &[(
            "Docker-Content-Digest",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
        )],
        // A digest, but of a manifest type that was not asked for (schema 1).
        &[
            (
                "Docker-Content-Digest",
                "sha256:0101010101010101010101010101010101010101010101010101010101010101",
            ),
            (
                "Content-Type",
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
            ),
        ],
    ];
    for headers in answers {
        let mock = Mock::start(move |_| reply(200, headers, "")).await;
        let err = client(options())
            .resolve(&mock.image(), &tag("stable"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::Garbage { .. }),
            "{headers:?}: {err:?}"
        );
        assert!(err.to_string().contains(MANIFEST), "{err}");
        assert!(!err.is_transient());
        assert_eq!(mock.summary(), [format!("HEAD {MANIFEST}")], "{headers:?}");
    }
}

#[tokio::test]
async fn a_missing_tag_is_not_found_without_a_get_or_a_retry() {
    let mock =
        Mock::start(|_| reply(404, &[], r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#)).await;
    let err = client(options())
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"stable\"") && msg.contains(&format!("{}{MANIFEST}", mock.base())),
        "{msg}"
    );
    assert!(!err.is_transient());
    assert_eq!(mock.summary(), [format!("HEAD {MANIFEST}")]);
}

#[tokio::test]
async fn other_client_errors_are_not_retried() {
    let mock = Mock::start(|_| reply(400, &[], "")).await;
    let err = client(options())
        .head_digest(&mock.image(), "stable")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 400, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(mock.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// Retries: 429 with Retry-After, 5xx, timeouts, nothing listening

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let mock = Mock::start(|req| match req.nth {
        0 => reply(429, &[("Retry-After", "1")], ""),
        _ => manifest_head(&digest(2)),
    })
    .await;
    let got = client(options())
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap();
    assert_eq!(got.digest, digest(2));
    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert!(waited < Duration::from_secs(3), "retried after {waited:?}");
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_as_transient() {
    let mock = Mock::start(|_| {
        reply(
            503,
            &[],
            r#"{"errors":[{"code":"UNAVAILABLE","message":"back soon"}]}"#,
        )
    })
    .await;
    let opts = ClientOptions {
        retries: 3,
        ..options()
    };
    let err = client(opts).list_tags(&mock.image()).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 503, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("UNAVAILABLE: back soon"), "{err}");
    let seen = mock.requests();
    assert_eq!(seen.len(), 4, "one try and three retries");
    // Backoff doubles (with jitter of at most half): 20ms, 40ms, 80ms nominal.
    assert!(seen[3].at - seen[2].at >= Duration::from_millis(40));
}

#[tokio::test]
async fn a_server_error_then_success_is_success() {
    let mock = Mock::start(|req| match req.nth {
        0 => reply(502, &[], "bad gateway"),
        1 => reply(500, &[], ""),
        _ => manifest_head(&digest(3)),
    })
    .await;
    let got = client(options())
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap();
    assert_eq!(got.digest, digest(3));
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test]
async fn every_request_has_a_timeout() {
    let mock = Mock::start(|_| after(Duration::from_secs(10), manifest_head(&digest(1)))).await;
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(300),
        retries: 1,
        ..options()
    };
    let started = Instant::now();
    let err = client(opts)
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap_err();
    let RegistryError::Network { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(source.is_timeout(), "{source:?}");
    assert!(err.is_transient());
    assert_eq!(mock.requests().len(), 2, "timed out, retried once");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_registry_that_is_down_is_a_quick_transient_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let image = ImageName::parse(&format!("127.0.0.1:{port}/test/worker")).unwrap();
    let started = Instant::now();
    let err = client(options())
        .resolve(&image, &tag("stable"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Network { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn plain_http_is_refused_unless_insecure() {
    let mock = Mock::start(|_| manifest_head(&digest(1))).await;
    let opts = ClientOptions {
        insecure: false,
        retries: 0,
        ..options()
    };
    // The client speaks https to the plain-http mock: no request gets through.
    assert!(client(opts)
        .resolve(&mock.image(), &tag("stable"))
        .await
        .is_err());
    assert_eq!(mock.requests().len(), 0);
    assert!(client(options())
        .resolve(&mock.image(), &tag("stable"))
        .await
        .is_ok());
}

// ---------------------------------------------------------------------------
// Tag lists: pagination, garbage, semver

#[tokio::test]
async fn tag_lists_follow_relative_and_absolute_links_across_three_pages() {
    let mock = Mock::start(|req| match (req.path.as_str(), req.query.as_str()) {
        (TAGS, "") => tag_page(
            &["1.0.0", "latest"],
            Some("/v2/test/worker/tags/list?last=latest&n=2"),
        ),
        (TAGS, "last=latest&n=2") => {
            let next = format!(
                "http://{}/v2/test/worker/tags/list?last=2.4&n=2",
                req.header("host").unwrap()
            );
            tag_page(&["v2.3.1", "2.4"], Some(&next))
        }
        (TAGS, "last=2.4&n=2") => tag_page(&["2.10.0", "3.0.0-rc1"], None),
        ("/v2/test/worker/manifests/2.10.0", _) => manifest_head(&digest(10)),
        _ => reply(404, &[], ""),
    })
    .await;
    let c = client(options());
    let got = c.resolve(&mock.image(), &range("^2")).await.unwrap();
    assert_eq!(got, resolved("2.10.0", &digest(10)));
    let queries: Vec<_> = mock.to(TAGS).iter().map(|s| s.query.clone()).collect();
    assert_eq!(queries, ["", "last=latest&n=2", "last=2.4&n=2"]);
    assert_eq!(mock.to("/v2/test/worker/manifests/2.10.0").len(), 1);
    assert_eq!(
        c.list_tags(&mock.image()).await.unwrap(),
        ["1.0.0", "2.10.0", "2.4", "3.0.0-rc1", "latest", "v2.3.1"]
    );
}

#[tokio::test]
async fn looping_or_foreign_next_links_are_refused() {
    let mock = Mock::start(|req| match req.query.as_str() {
        "" => tag_page(&["1.0.0"], Some("/v2/test/worker/tags/list?page=2")),
        "page=2" => tag_page(&["1.0.1"], Some("/v2/test/worker/tags/list")),
        _ => reply(404, &[], ""),
    })
    .await;
    let err = client(options())
        .list_tags(&mock.image())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Garbage { .. }) && err.to_string().contains("loop"),
        "{err}"
    );
    assert_eq!(mock.requests().len(), 2);

    let mock = Mock::start(|_| {
        tag_page(
            &["1.0.0"],
            Some("http://127.0.0.2:9/v2/test/worker/tags/list?p=2"),
        )
    })
    .await;
    let err = client(options())
        .list_tags(&mock.image())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("points away from the registry"),
        "{err}"
    );
}

#[tokio::test]
async fn a_garbage_tag_list_is_garbage() {
    for body in [
        "<html>maintenance</html>",
        r#"{"name": "test/worker", "tags": "latest"}"#,
        "",
    ] {
        let mock =
            Mock::start(move |_| reply(200, &[("Content-Type", "application/json")], body)).await;
        let err = client(options())
            .resolve(&mock.image(), &range("^1"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::Garbage { .. }),
            "{body:?}: {err:?}"
        );
        assert!(err.to_string().contains(TAGS), "{err}");
        assert_eq!(
            mock.summary(),
            [format!("GET {TAGS}")],
            "no HEAD after a garbage list"
        );
    }
}

#[tokio::test]
async fn no_matching_version_names_the_range_and_the_tags_seen() {
    let mock = Mock::start(|_| tag_page(&["1.0.0", "latest", "3.0.0-rc1"], None)).await;
    let err = client(options())
        .resolve(&mock.image(), &range("^2"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::NoMatchingVersion { range, tags_seen: 3, .. } if range == "^2"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("^2") && err.to_string().contains("3 tags seen"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Auth: bearer tokens, their cache, basic

#[tokio::test]
async fn a_bearer_token_is_fetched_once_and_reused() {
    let mock = bearer_mock(300).await;
    let c = client(options());
    for _ in 0..2 {
        let got = c.resolve(&mock.image(), &tag("stable")).await.unwrap();
        assert_eq!(got.digest, digest(1));
    }
    let token = mock.to("/token");
    assert_eq!(token.len(), 1, "token endpoint hit once for two resolves");
    assert!(
        token[0].query.contains("service=mock"),
        "{}",
        token[0].query
    );
    assert!(
        token[0]
            .query
            .contains("scope=repository%3Atest%2Fworker%3Apull"),
        "{}",
        token[0].query
    );
    assert_eq!(
        token[0].header("authorization"),
        None,
        "anonymous without an auth file"
    );
    let auths: Vec<_> = mock
        .to(MANIFEST)
        .iter()
        .map(|s| s.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(
        auths,
        [
            None,
            Some("Bearer tok-0".into()),
            Some("Bearer tok-0".into())
        ]
    );
}

#[tokio::test]
async fn an_expired_token_is_fetched_again() {
    let mock = bearer_mock(1).await;
    let c = client(options());
    c.resolve(&mock.image(), &tag("stable")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.resolve(&mock.image(), &tag("stable")).await.unwrap();
    assert_eq!(mock.to("/token").len(), 2);
    // The new token is fetched before the request, not after a 401.
    let auths: Vec<_> = mock
        .to(MANIFEST)
        .iter()
        .map(|s| s.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(
        auths,
        [
            None,
            Some("Bearer tok-0".into()),
            Some("Bearer tok-1".into())
        ]
    );
}

#[tokio::test]
async fn a_token_the_registry_refuses_ends_the_dance_after_one_round() {
    let mock = Mock::start(|req| match req.path.as_str() {
        "/token" => token_answer(req, 300),
        _ => bearer_challenge(req),
    })
    .await;
    let err = client(options())
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err:?}");
    assert!(err.to_string().contains("image.auth_file"), "{err}");
    assert_eq!(mock.to(MANIFEST).len(), 2);
    assert_eq!(mock.to("/token").len(), 1);
}

#[tokio::test]
async fn the_token_request_carries_the_auth_file_credentials() {
    let mock = bearer_mock(300).await;
    let dir = tempfile::tempdir().unwrap();
    let auth_file = write_auth_file(
        dir.path(),
        &auths_json(&mock.addr.to_string(), "agent", "s3cret"),
    );
    let opts = ClientOptions {
        auth_file: Some(auth_file),
        ..options()
    };
    client(opts)
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap();
    let expected = format!("Basic {}", b64("agent:s3cret"));
    assert_eq!(
        mock.to("/token")[0].header("authorization"),
        Some(expected.as_str())
    );
    assert!(mock.to("/token")[0].query.contains("account=agent"));
}

#[tokio::test]
async fn an_identity_token_is_exchanged_with_an_oauth2_post() {
    let mock = Mock::start(|req| match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/token") => reply(
            200,
            &[],
            r#"{"access_token": "tok-oauth", "expires_in": 300}"#,
        ),
        (_, MANIFEST) if req.header("authorization") == Some("Bearer tok-oauth") => {
            manifest_head(&digest(4))
        }
        (_, MANIFEST) => bearer_challenge(req),
        _ => reply(405, &[], ""),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let json = format!(
        r#"{{"auths": {{"https://{}": {{"identitytoken": "refresh-me"}}}}}}"#,
        mock.addr
    );
    let opts = ClientOptions {
        auth_file: Some(write_auth_file(dir.path(), &json)),
        ..options()
    };
    let got = client(opts)
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap();
    assert_eq!(got.digest, digest(4));
    let post = &mock.to("/token")[0];
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&post.body)
        .into_owned()
        .collect();
    for pair in [
        ("grant_type", "refresh_token"),
        ("refresh_token", "refresh-me"),
        ("service", "mock"),
        ("scope", "repository:test/worker:pull"),
    ] {
        assert!(
            form.contains(&(pair.0.into(), pair.1.into())),
            "{form:?} lacks {pair:?}"
        );
    }
}

/// A registry wanting Basic `agent:s3cret`.
async fn basic_mock() -> Mock {
    let expected = format!("Basic {}", b64("agent:s3cret"));
    Mock::start(move |req| {
        if req.header("authorization") == Some(expected.as_str()) {
            manifest_head(&digest(5))
        } else {
            reply(401, &[("WWW-Authenticate", r#"Basic realm="test""#)], "")
        }
    })
    .await
}

#[tokio::test]
async fn basic_auth_is_answered_then_sent_up_front() {
    let mock = basic_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let auth_file = write_auth_file(
        dir.path(),
        &auths_json(&mock.addr.to_string(), "agent", "s3cret"),
    );
    let c = client(ClientOptions {
        auth_file: Some(auth_file),
        ..options()
    });
    for _ in 0..2 {
        assert_eq!(
            c.resolve(&mock.image(), &tag("stable"))
                .await
                .unwrap()
                .digest,
            digest(5)
        );
    }
    let statuses: Vec<_> = mock
        .requests()
        .iter()
        .map(|s| s.header("authorization").is_some())
        .collect();
    assert_eq!(
        statuses,
        [false, true, true],
        "second resolve sends credentials at once"
    );
}

#[tokio::test]
async fn basic_auth_errors_say_what_to_do() {
    let mock = basic_mock().await;
    let err = client(options())
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err:?}");
    assert!(
        err.to_string().contains("add them to image.auth_file"),
        "{err}"
    );
    assert_eq!(mock.requests().len(), 1);

    let dir = tempfile::tempdir().unwrap();
    let auth_file = write_auth_file(
        dir.path(),
        &auths_json(&mock.addr.to_string(), "agent", "wrong"),
    );
    let opts = ClientOptions {
        auth_file: Some(auth_file),
        ..options()
    };
    let err = client(opts)
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert!(
        !format!("{err} {err:?}").contains("wrong"),
        "no secret in errors: {err:?}"
    );
}

#[tokio::test]
async fn a_401_without_a_usable_challenge_is_reported() {
    let mock = Mock::start(|_| reply(401, &[("WWW-Authenticate", "Negotiate abc")], "")).await;
    let err = client(options())
        .resolve(&mock.image(), &tag("stable"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::UnsupportedChallenge { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Negotiate"), "{err}");
}

// ---------------------------------------------------------------------------
// Credential helpers and the auth file

/// A helper that logs the server it was asked about to `dir/asked` and answers.
const ANSWERING_HELPER: &str = r#"[ "$1" = get ] || exit 3
read -r server
echo "$server" >> "$(dirname "$0")/asked"
printf '{"ServerURL": "%s", "Username": "helper-user", "Secret": "helper-pass"}' "$server""#;

#[tokio::test]
async fn a_credential_helper_answers_and_cred_helpers_beat_creds_store() {
    let mock = bearer_mock(300).await;
    let dir = tempfile::tempdir().unwrap();
    write_helper(dir.path(), "test", ANSWERING_HELPER);
    // credsStore names a helper that does not exist: it must not be asked.
    let json = format!(
        r#"{{"credsStore": "absent", "credHelpers": {{"{}": "test"}}}}"#,
        mock.addr
    );
    let c = client(ClientOptions {
        auth_file: Some(write_auth_file(dir.path(), &json)),
        helper_dir: Some(dir.path().to_path_buf()),
        ..options()
    });
    c.resolve(&mock.image(), &tag("stable")).await.unwrap();
    let expected = format!("Basic {}", b64("helper-user:helper-pass"));
    assert_eq!(
        mock.to("/token")[0].header("authorization"),
        Some(expected.as_str())
    );
    let asked = std::fs::read_to_string(dir.path().join("asked")).unwrap();
    assert_eq!(asked.trim(), mock.addr.to_string());

    let engine = c.engine_credentials(&mock.image()).await.unwrap().unwrap();
    assert_eq!(engine.username.as_deref(), Some("helper-user"));
    assert_eq!(engine.password.as_deref(), Some("helper-pass"));
    assert_eq!(engine.serveraddress, mock.addr.to_string());
}

#[tokio::test]
async fn a_helper_without_credentials_means_anonymous_or_the_inline_entry() {
    let mock = bearer_mock(300).await;
    let dir = tempfile::tempdir().unwrap();
    write_helper(
        dir.path(),
        "empty",
        "echo 'credentials not found in native keychain'\nexit 1",
    );
    let auth_file = write_auth_file(dir.path(), r#"{"credsStore": "empty"}"#);
    let c = client(ClientOptions {
        auth_file: Some(auth_file.clone()),
        helper_dir: Some(dir.path().to_path_buf()),
        ..options()
    });
    c.resolve(&mock.image(), &tag("stable")).await.unwrap();
    assert_eq!(mock.to("/token")[0].header("authorization"), None);
    assert_eq!(c.engine_credentials(&mock.image()).await.unwrap(), None);

    // The file is read on every use: an inline entry added now is used next.
    let json = format!(
        r#"{{"credsStore": "empty", "auths": {{"{}": {{"auth": "{}"}}}}}}"#,
        mock.addr,
        b64("inline:pw")
    );
    std::fs::write(&auth_file, json).unwrap();
    let engine = c.engine_credentials(&mock.image()).await.unwrap().unwrap();
    assert_eq!(engine.username.as_deref(), Some("inline"));
}

#[tokio::test]
async fn a_failing_helper_is_an_error_that_quotes_it() {
    let dir = tempfile::tempdir().unwrap();
    write_helper(
        dir.path(),
        "broken",
        "echo 'keychain is locked' >&2\nexit 2",
    );
    let c = client(ClientOptions {
        auth_file: Some(write_auth_file(dir.path(), r#"{"credsStore": "broken"}"#)),
        helper_dir: Some(dir.path().to_path_buf()),
        ..options()
    });
    let image = ImageName::parse("ghcr.io/acme/worker").unwrap();
    let err = c.engine_credentials(&image).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::CredentialHelper { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("keychain is locked"), "{err}");
}

#[tokio::test]
async fn a_helper_token_username_means_an_identity_token() {
    let dir = tempfile::tempdir().unwrap();
    write_helper(
        dir.path(),
        "tok",
        r#"read -r server; printf '{"ServerURL": "%s", "Username": "<token>", "Secret": "refresh"}' "$server""#,
    );
    let c = client(ClientOptions {
        auth_file: Some(write_auth_file(
            dir.path(),
            r#"{"credHelpers": {"docker.io": "tok"}}"#,
        )),
        helper_dir: Some(dir.path().to_path_buf()),
        ..options()
    });
    let engine = c
        .engine_credentials(&ImageName::parse("ubuntu").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(engine.identitytoken.as_deref(), Some("refresh"));
    assert_eq!(engine.password, None);
    assert_eq!(engine.serveraddress, "https://index.docker.io/v1/");
}

#[tokio::test]
async fn a_hanging_helper_is_killed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    write_helper(
        dir.path(),
        "hang",
        &format!("echo $$ > {}\nexec sleep 30", pid_file.display()),
    );
    let c = client(ClientOptions {
        auth_file: Some(write_auth_file(dir.path(), r#"{"credsStore": "hang"}"#)),
        helper_dir: Some(dir.path().to_path_buf()),
        helper_timeout: Duration::from_millis(500),
        ..options()
    });
    let started = Instant::now();
    let err = c
        .engine_credentials(&ImageName::parse("ghcr.io/acme/worker").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::CredentialHelperTimeout { .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "helper {pid} still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_missing_or_broken_auth_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = ImageName::parse("ghcr.io/acme/worker").unwrap();
    let missing = dir.path().join("nope.json");
    let c = client(ClientOptions {
        auth_file: Some(missing.clone()),
        ..options()
    });
    let err = c.engine_credentials(&image).await.unwrap_err();
    assert!(matches!(err, RegistryError::ReadAuthFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let broken = write_auth_file(dir.path(), r#"{"auths": "#);
    let c = client(ClientOptions {
        auth_file: Some(broken.clone()),
        ..options()
    });
    let err = c.engine_credentials(&image).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::ParseAuthFile { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&broken.display().to_string()),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// The real registry (distribution 2.8)

#[tokio::test]
async fn real_registry_docker_and_oci_manifests_resolve_to_the_sha256_of_their_bytes() {
    let registry = Registry::start(Auth::None).await;
    let pusher = registry.pusher(None);
    let docker = pusher
        .image("test/worker", "docker", DOCKER_MANIFEST, "amd64", "docker")
        .await;
    let oci = pusher
        .image("test/worker", "oci", OCI_MANIFEST, "amd64", "oci")
        .await;
    assert_ne!(docker.digest, oci.digest);
    let c = client(options());
    let image = registry.image("test/worker");
    assert_eq!(
        c.resolve(&image, &tag("docker")).await.unwrap(),
        resolved("docker", &docker.digest)
    );
    assert_eq!(
        c.resolve(&image, &tag("oci")).await.unwrap(),
        resolved("oci", &oci.digest)
    );
}

#[tokio::test]
async fn real_registry_index_tags_resolve_to_the_index_not_the_amd64_child() {
    let registry = Registry::start(Auth::None).await;
    let pusher = registry.pusher(None);
    let image = registry.image("test/worker");
    let c = client(options());
    for index_type in [OCI_INDEX, DOCKER_LIST] {
        let (index, amd64, arm64) = pusher.multi_arch("test/worker", "multi", index_type).await;
        assert!(index.digest != amd64.digest && index.digest != arm64.digest);
        let got = c.head_digest(&image, "multi").await.unwrap();
        assert_eq!(got, index.digest, "{index_type}");
    }
    // Why all four types are asked for: without the list type, distribution
    // silently answers with the amd64 child.
    let (_, amd64, _) = pusher.multi_arch("test/worker", "list", DOCKER_LIST).await;
    let narrow = reqwest::Client::new()
        .head(format!("{}/v2/test/worker/manifests/list", registry.base()))
        .header("Accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(
        narrow.headers()["docker-content-digest"].to_str().unwrap(),
        amd64.digest
    );
}

#[tokio::test]
async fn real_registry_semver_picks_the_highest_tag_in_range() {
    let registry = Registry::start(Auth::None).await;
    let pusher = registry.pusher(None);
    let mut pushed = std::collections::HashMap::new();
    for t in ["1.0.0", "v2.3.1", "2.4", "2.10.0", "3.0.0-rc1", "latest"] {
        pushed.insert(
            t,
            pusher
                .image("test/worker", t, DOCKER_MANIFEST, "amd64", t)
                .await
                .digest,
        );
    }
    let c = client(options());
    let image = registry.image("test/worker");
    for (req, want) in [
        ("^2", "2.10.0"),
        ("~2.3", "v2.3.1"),
        (">=2.4, <2.5", "2.4"),
        ("<2", "1.0.0"),
        (">=3.0.0-rc1", "3.0.0-rc1"),
    ] {
        let got = c.resolve(&image, &range(req)).await.unwrap();
        assert_eq!(got, resolved(want, &pushed[want]), "{req}");
    }
    // A plain range never picks a pre-release.
    let err = c.resolve(&image, &range(">=2.10.1")).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::NoMatchingVersion { tags_seen: 6, .. }),
        "{err:?}"
    );
    assert_eq!(
        c.list_tags(&image).await.unwrap(),
        ["1.0.0", "2.10.0", "2.4", "3.0.0-rc1", "latest", "v2.3.1"]
    );
}

#[tokio::test]
async fn real_registry_missing_tags_and_repositories_are_not_found() {
    let registry = Registry::start(Auth::None).await;
    registry
        .pusher(None)
        .image("test/worker", "stable", OCI_MANIFEST, "amd64", "x")
        .await;
    let c = client(options());
    let err = c
        .resolve(&registry.image("test/worker"), &tag("nope"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    let err = c
        .resolve(&registry.image("test/absent"), &range("^1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("repository"), "{err}");
}

/// `htpasswd -Bbn agent s3cret`
const HTPASSWD: &str = "agent:$2y$05$3C6Pz7zQ18E46SI1nfzeEeptbo2NovKJmgIkcW9uDsw1SPaMGka0i\n";

#[tokio::test]
async fn real_registry_htpasswd_auth_works_with_the_auth_file_and_fails_clearly_without() {
    let registry = Registry::start(Auth::Htpasswd(HTPASSWD)).await;
    let pushed = registry
        .pusher(Some(format!("Basic {}", b64("agent:s3cret"))))
        .image("test/worker", "stable", DOCKER_MANIFEST, "amd64", "x")
        .await;
    let image = registry.image("test/worker");
    let dir = tempfile::tempdir().unwrap();
    let good = write_auth_file(dir.path(), &auths_json(&registry.host(), "agent", "s3cret"));
    let c = client(ClientOptions {
        auth_file: Some(good),
        ..options()
    });
    assert_eq!(
        c.resolve(&image, &tag("stable")).await.unwrap().digest,
        pushed.digest
    );
    // The tag list needs the credentials too: it is read, and "stable" is no version.
    let err = c.resolve(&image, &range("*")).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::NoMatchingVersion { tags_seen: 1, .. }),
        "{err:?}"
    );
    let engine = c.engine_credentials(&image).await.unwrap().unwrap();
    assert_eq!(engine.username.as_deref(), Some("agent"));
    assert_eq!(engine.serveraddress, registry.host());

    let err = client(options())
        .resolve(&image, &tag("stable"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err:?}");
    assert!(err.to_string().contains("image.auth_file"), "{err}");

    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, auths_json(&registry.host(), "agent", "nope")).unwrap();
    let err = client(ClientOptions {
        auth_file: Some(wrong),
        ..options()
    })
    .resolve(&image, &tag("stable"))
    .await
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
}

#[tokio::test]
async fn real_registry_token_auth_goes_through_the_token_dance_once() {
    let tokens = TokenServer::start("agent", "s3cret").await;
    let registry = Registry::start(Auth::Token {
        realm: &tokens.realm(),
        cert_pem: &tokens.cert_pem,
    })
    .await;
    let pusher = registry.pusher(Some(format!("Bearer {}", tokens.push_token("test/worker"))));
    let stable = pusher
        .image("test/worker", "stable", OCI_MANIFEST, "amd64", "stable")
        .await;
    let v2 = pusher
        .image("test/worker", "2.0.0", OCI_MANIFEST, "amd64", "2.0.0")
        .await;
    let image = registry.image("test/worker");
    let dir = tempfile::tempdir().unwrap();
    let c = client(ClientOptions {
        auth_file: Some(write_auth_file(
            dir.path(),
            &auths_json(&registry.host(), "agent", "s3cret"),
        )),
        ..options()
    });
    assert_eq!(tokens.hits(), 0);
    assert_eq!(
        c.resolve(&image, &tag("stable")).await.unwrap().digest,
        stable.digest
    );
    assert_eq!(
        c.resolve(&image, &tag("stable")).await.unwrap().digest,
        stable.digest
    );
    assert_eq!(
        c.resolve(&image, &range("^2")).await.unwrap(),
        resolved("2.0.0", &v2.digest)
    );
    assert_eq!(tokens.hits(), 1, "one token for three resolves");
}

#[tokio::test]
async fn real_registry_token_auth_refuses_anonymous_and_wrong_credentials() {
    let tokens = TokenServer::start("agent", "s3cret").await;
    let registry = Registry::start(Auth::Token {
        realm: &tokens.realm(),
        cert_pem: &tokens.cert_pem,
    })
    .await;
    let image = registry.image("test/worker");
    // Anonymous: the token server grants nothing, the registry says 401 again.
    let err = client(options())
        .resolve(&image, &tag("stable"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err:?}");
    // Wrong password: the token server says 401.
    let dir = tempfile::tempdir().unwrap();
    let c = client(ClientOptions {
        auth_file: Some(write_auth_file(
            dir.path(),
            &auths_json(&registry.host(), "agent", "nope"),
        )),
        ..options()
    });
    let err = c.resolve(&image, &tag("stable")).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&tokens.realm()), "{err}");
}
