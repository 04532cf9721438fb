//! Signs images in cosign's format and pushes the signatures to a real registry.
//!
//! cosign's "simple signing": the payload
//! `{"critical":{"identity":{"docker-reference":R},"image":{"docker-manifest-digest":D},"type":"cosign container image signature"},"optional":null}`
//! is a layer of media type `application/vnd.dev.cosign.simplesigning.v1+json`,
//! its ECDSA P-256/SHA-256 signature (DER, base64) in the layer annotation
//! `dev.cosignproject.cosign/signature`, in an OCI manifest pushed under the tag
//! `sha256-<hex>.sig` of the same repository (what `cosign sign --key` writes).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::json;

use super::real::{Pushed, Pusher, OCI_MANIFEST};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// A P-256 key pair (deterministic from `seed`: test keys only).
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    pub fn from_seed(seed: u8) -> Signer {
        Signer {
            key: SigningKey::from_slice(&[seed; 32]).unwrap(),
        }
    }

    /// The public key as `cosign generate-key-pair` writes cosign.pub.
    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    pub fn write_public(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.public_pem()).unwrap();
        path
    }

    /// The base64 DER ECDSA P-256/SHA-256 signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: DerSignature = self.key.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(sig.as_bytes())
    }
}

/// The simple-signing payload for `digest` of `reference` (`host/repo`).
pub fn payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap()
}

/// The tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &str) -> String {
    format!("sha256-{}.sig", digest.trim_start_matches("sha256:"))
}

/// Pushes a signature manifest for `digest` of `repo` with one layer per
/// `(payload, base64 signature)`.
pub async fn push_signatures(
    pusher: &Pusher,
    repo: &str,
    digest: &str,
    signatures: &[(Vec<u8>, String)],
) -> Pushed {
    let config =
        br#"{"architecture":"","config":{},"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let (config_digest, config_size) = pusher.blob(repo, config).await;
    let mut layers = Vec::new();
    for (payload, signature) in signatures {
        let (layer_digest, size) = pusher.blob(repo, payload).await;
        layers.push(json!({
            "mediaType": SIMPLE_SIGNING,
            "size": size,
            "digest": layer_digest,
            "annotations": {SIGNATURE_ANNOTATION: signature},
        }));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": config_size,
            "digest": config_digest,
        },
        "layers": layers,
    });
    pusher
        .manifest(repo, &signature_tag(digest), OCI_MANIFEST, &manifest)
        .await
}

/// Signs `digest` of `host/repo` with `signer` and pushes the signature.
pub async fn sign_and_push(
    pusher: &Pusher,
    host: &str,
    repo: &str,
    digest: &str,
    signer: &Signer,
) -> Pushed {
    let payload = payload(&format!("{host}/{repo}"), digest);
    let signature = signer.sign(&payload);
    push_signatures(pusher, repo, digest, &[(payload, signature)]).await
}
