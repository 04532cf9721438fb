//! A token server for distribution's `auth: token`: checks basic credentials and
//! issues ES256 JWTs with an `x5c` chain, signed by a P-256 key whose self-signed
//! certificate is the registry's `rootcertbundle`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::mock::reply;

pub const SERVICE: &str = "test-registry";
pub const ISSUER: &str = "test-issuer";

pub struct TokenServer {
    pub addr: SocketAddr,
    /// The PEM certificate for the registry's `rootcertbundle`.
    pub cert_pem: String,
    hits: Arc<AtomicUsize>,
    signer: Arc<Signer>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Signer {
    key: EncodingKey,
    cert_der_b64: String,
}

impl Signer {
    /// A JWT for `subject` granting `access` (`[{type, name, actions}]`).
    fn sign(&self, subject: &str, access: serde_json::Value) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{}", rand::random::<u64>()),
            "access": access,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.x5c = Some(vec![self.cert_der_b64.clone()]);
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

impl TokenServer {
    /// Serves `GET /token`: `user`/`pass` get what they ask for (pull, push);
    /// anonymous callers get a token granting nothing; wrong credentials get 401.
    pub async fn start(user: &str, pass: &str) -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["token-issuer".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let signer = Arc::new(Signer {
            key: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
            cert_der_b64: base64::engine::general_purpose::STANDARD.encode(cert.der()),
        });
        let hits: Arc<AtomicUsize> = Arc::default();
        let expected = format!("Basic {}", super::b64(&format!("{user}:{pass}")));
        let (app_signer, app_hits) = (signer.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/token",
            axum::routing::get(move |req: Request| {
                let (signer, hits, expected) =
                    (app_signer.clone(), app_hits.clone(), expected.clone());
                async move { issue(&signer, &hits, &expected, req) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TokenServer {
            addr,
            cert_pem: cert.pem(),
            hits,
            signer,
            task,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// How many token requests came in.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// A pull+push token for `repository`, minted directly (for uploads).
    pub fn push_token(&self, repository: &str) -> String {
        self.signer.sign(
            "uploader",
            json!([{"type": "repository", "name": repository, "actions": ["pull", "push"]}]),
        )
    }
}

fn issue(signer: &Signer, hits: &AtomicUsize, expected: &str, req: Request) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let subject = match auth {
        None => None,
        Some(a) if a == expected => Some("agent"),
        Some(_) => return reply(401, &[], r#"{"details": "bad credentials"}"#),
    };
    let query = req.uri().query().unwrap_or("");
    let mut access = Vec::new();
    for (key, scope) in url::form_urlencoded::parse(query.as_bytes()) {
        if key != "scope" || subject.is_none() {
            continue;
        }
        // repository:<name>:<actions>
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        access.push(json!({
            "type": kind,
            "name": name,
            "actions": actions.split(',').collect::<Vec<_>>(),
        }));
    }
    let token = signer.sign(subject.unwrap_or(""), serde_json::Value::Array(access));
    let issued_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = json!({"token": token, "expires_in": 300, "issued_at": issued_at});
    reply(
        200,
        &[("Content-Type", "application/json")],
        body.to_string(),
    )
}
