//! `agent.ca_file`: a registry and a hub behind TLS with a private CA are
//! trusted with the CA file (beside the system's roots) and refused without
//! it; a CA file that is not PEM is a config error naming the key.

use std::io::Write;
use std::sync::Arc;

use gpu_agent::registry::{ClientOptions, ImageName, Policy, RegistryClient};
use hub_client::{HubClient, HubOptions, TokenSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A CA, and a TLS server on 127.0.0.1 with a certificate it signed, that
/// answers the registry's manifest HEAD and the hub's `desired`.
struct TlsServer {
    port: u16,
    ca_pem: String,
}

async fn tls_server() -> TlsServer {
    gpu_agent::init_tls();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gpu-agent test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // One request per connection: enough for these clients.
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if head.starts_with("HEAD /v2/") {
                    format!("HTTP/1.1 200 OK\r\nDocker-Content-Digest: {DIGEST}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                } else if head.starts_with("GET /v2/") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                        .to_string()
                } else if head.starts_with("GET /v1/agents/") {
                    "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string()
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsServer {
        port,
        ca_pem: ca.pem(),
    }
}

fn write_ca(dir: &tempfile::TempDir, pem: &str) -> std::path::PathBuf {
    let p = dir.path().join("ca.pem");
    std::fs::File::create(&p)
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    p
}

#[tokio::test]
async fn a_registry_and_a_hub_with_a_private_ca_are_trusted_only_with_agent_ca_file() {
    let server = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(&dir, &server.ca_pem);
    let roots = gpu_agent::config::read_ca_file(&ca).unwrap();
    let image = ImageName::parse(&format!("127.0.0.1:{}/acme/worker", server.port)).unwrap();
    let policy = Policy::Tag("stable".into());

    // The registry, https only (insecure = false).
    let with_ca = RegistryClient::new(ClientOptions {
        extra_roots: roots.clone(),
        retries: 0,
        ..ClientOptions::default()
    })
    .unwrap();
    let got = with_ca.resolve(&image, &policy).await.unwrap();
    assert_eq!(got.digest, DIGEST);
    let without = RegistryClient::new(ClientOptions {
        retries: 0,
        ..ClientOptions::default()
    })
    .unwrap();
    let e = without.resolve(&image, &policy).await.unwrap_err();
    let msg = gpu_agent::error_chain(&e);
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");

    // The hub.
    let url = url::Url::parse(&format!("https://127.0.0.1:{}/", server.port)).unwrap();
    let mut opts = HubOptions::new(url.clone(), "h1", TokenSource::none());
    opts.extra_roots = roots;
    opts.retries = 0;
    assert_eq!(HubClient::new(opts).unwrap().desired().await.unwrap(), None);
    let mut opts = HubOptions::new(url, "h1", TokenSource::none());
    opts.retries = 0;
    let e = HubClient::new(opts).unwrap().desired().await.unwrap_err();
    assert_eq!(e.kind(), hub_client::ErrorKind::Unavailable, "{e}");
}

#[test]
fn a_ca_file_that_is_not_pem_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(&dir, "not a certificate\n");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nca_file = \"{}\"\n[image]\nrepository = \"ghcr.io/acme/worker\"\n",
            ca.display()
        ),
    )
    .unwrap();
    let e = gpu_agent::config::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("agent.ca_file") && e.contains("no certificate"),
        "{e}"
    );
    let missing = dir.path().join("nope.pem");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nca_file = \"{}\"\n[image]\nrepository = \"ghcr.io/acme/worker\"\n",
            missing.display()
        ),
    )
    .unwrap();
    let e = gpu_agent::config::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("agent.ca_file") && e.contains("cannot read"),
        "{e}"
    );
}
