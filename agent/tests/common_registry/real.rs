//! The real registry (`docker-registry`, distribution 2.8) on a free loopback
//! port with its own storage, killed on drop; and [`Pusher`], which puts images
//! into it through the registry API (no Docker daemon needed).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpu_agent::registry::ImageName;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use serde_json::json;

use super::sha256;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// How the registry checks who is asking.
pub enum Auth<'a> {
    None,
    /// An htpasswd file with these bcrypt lines.
    Htpasswd(&'a str),
    /// Bearer tokens from `realm`, signed by the key of `cert_pem`.
    Token {
        realm: &'a str,
        cert_pem: &'a str,
    },
}

pub struct Registry {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry and waits until `/v2/` answers.
    pub async fn start(auth: Auth<'_>) -> Registry {
        let mut last_log = String::new();
        // A port picked free can be taken before the registry binds it: try again.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let config = config_yaml(dir.path(), port, &auth);
            std::fs::write(dir.path().join("registry.yml"), config).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.path().join("registry.yml"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("docker-registry must be installed (apt-get install docker-registry)");
            let mut registry = Registry { port, child, dir };
            if registry.wait_ready().await {
                return registry;
            }
            last_log = std::fs::read_to_string(registry.dir.path().join("registry.log"))
                .unwrap_or_default();
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    async fn wait_ready(&mut self) -> bool {
        let http = {
            gpu_agent::init_tls();
            reqwest::Client::new()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if http
                .get(format!("{}/v2/", self.base()))
                .send()
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn image(&self, repository: &str) -> ImageName {
        ImageName::parse(&format!("{}/{repository}", self.host())).unwrap()
    }

    /// A pusher sending `auth` (an `Authorization` value) with every request.
    pub fn pusher(&self, auth: Option<String>) -> Pusher {
        Pusher {
            http: {
                gpu_agent::init_tls();
                reqwest::Client::new()
            },
            base: self.base(),
            auth: auth.map(|a| HeaderValue::from_str(&a).unwrap()),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config_yaml(dir: &Path, port: u16, auth: &Auth) -> String {
    let data = dir.join("data");
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        data.display()
    );
    match auth {
        Auth::None => {}
        Auth::Htpasswd(lines) => {
            let file = dir.join("htpasswd");
            std::fs::write(&file, lines).unwrap();
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            );
        }
        Auth::Token { realm, cert_pem } => {
            let file = dir.join("token-cert.pem");
            std::fs::write(&file, cert_pem).unwrap();
            yaml += &format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                super::token::SERVICE,
                super::token::ISSUER,
                file.display()
            );
        }
    }
    yaml
}

/// A manifest as pushed: its bytes and their digest.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub media_type: &'static str,
    pub size: usize,
}

/// Uploads blobs and manifests through the registry API.
pub struct Pusher {
    http: reqwest::Client,
    base: String,
    auth: Option<HeaderValue>,
}

impl Pusher {
    /// A pusher to the registry at `base` (`http://127.0.0.1:PORT`), anonymous.
    pub fn to(base: &str) -> Pusher {
        Pusher {
            http: {
                gpu_agent::init_tls();
                reqwest::Client::new()
            },
            base: base.to_string(),
            auth: None,
        }
    }

    fn with_auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(auth) => req.header(AUTHORIZATION, auth.clone()),
            None => req,
        }
    }

    /// A monolithic blob upload: POST, then PUT to the Location with `?digest=`.
    pub async fn blob(&self, repo: &str, bytes: &[u8]) -> (String, usize) {
        let digest = sha256(bytes);
        let start = self
            .with_auth(
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            start.status().as_u16(),
            202,
            "starting an upload: {:?}",
            start
        );
        let location = start.headers()[LOCATION].to_str().unwrap();
        let mut url = url::Url::parse(&self.base).unwrap().join(location).unwrap();
        url.query_pairs_mut().append_pair("digest", &digest);
        let put = self
            .with_auth(self.http.put(url))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 201, "finishing an upload: {:?}", put);
        (digest, bytes.len())
    }

    /// PUTs `manifest` under `reference`; checks the registry computed the same digest.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &'static str,
        manifest: &serde_json::Value,
    ) -> Pushed {
        let bytes = serde_json::to_vec_pretty(manifest).unwrap();
        let digest = sha256(&bytes);
        let resp = self
            .with_auth(
                self.http
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header(CONTENT_TYPE, media_type)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let registry_digest = resp
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            status,
            201,
            "pushing {repo}:{reference}: {}",
            resp.text().await.unwrap()
        );
        assert_eq!(registry_digest.as_deref(), Some(digest.as_str()));
        Pushed {
            digest,
            media_type,
            size: bytes.len(),
        }
    }

    /// An image (config + one layer) for `arch`, made unique by `label`, tagged `tag`.
    /// `media_type` is [`DOCKER_MANIFEST`] or [`OCI_MANIFEST`].
    pub async fn image(
        &self,
        repo: &str,
        tag: &str,
        media_type: &'static str,
        arch: &str,
        label: &str,
    ) -> Pushed {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"test": label}},
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        let (config_digest, config_size) = self.blob(repo, config.to_string().as_bytes()).await;
        let (layer_digest, layer_size) = self
            .blob(repo, format!("layer {label} {arch}").as_bytes())
            .await;
        let (config_type, layer_type) = if media_type == OCI_MANIFEST {
            (
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "size": config_size, "digest": config_digest},
            "layers": [{"mediaType": layer_type, "size": layer_size, "digest": layer_digest}],
        });
        self.manifest(repo, tag, media_type, &manifest).await
    }

    /// A multi-arch index (`OCI_INDEX` with OCI children, or `DOCKER_LIST` with
    /// Docker children) over an amd64 and an arm64 image. Returns (index, amd64, arm64).
    pub async fn multi_arch(
        &self,
        repo: &str,
        tag: &str,
        index_type: &'static str,
    ) -> (Pushed, Pushed, Pushed) {
        let child_type = if index_type == OCI_INDEX {
            OCI_MANIFEST
        } else {
            DOCKER_MANIFEST
        };
        let mut children = Vec::new();
        for arch in ["amd64", "arm64"] {
            let digest_ref = format!("{tag}-{arch}");
            children.push(self.image(repo, &digest_ref, child_type, arch, tag).await);
        }
        let entries: Vec<_> = children
            .iter()
            .zip(["amd64", "arm64"])
            .map(|(child, arch)| {
                json!({
                    "mediaType": child.media_type,
                    "size": child.size,
                    "digest": child.digest,
                    "platform": {"architecture": arch, "os": "linux"},
                })
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": entries});
        let index = self.manifest(repo, tag, index_type, &index).await;
        let arm64 = children.pop().unwrap();
        let amd64 = children.pop().unwrap();
        (index, amd64, arm64)
    }
}
