//! cosign signatures of a digest, checked against the configured public keys.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sigstore::crypto::{CosignVerificationKey, Signature};
use tracing::debug;

use crate::registry::{is_sha256_digest, ImageName, RegistryClient, RegistryError};
use hub_client::text::{sanitize, MAX_TEXT};

/// The media type of a cosign signature layer (the simple-signing payload).
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the base64 signature of the payload.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Signature layers looked at per digest; more are ignored (a flood of
/// signatures must not cost a fetch each).
pub const MAX_SIGNATURES: usize = 32;
/// A signature manifest is a few hundred bytes per signature.
const MAX_SIGNATURE_MANIFEST: usize = 256 << 10;
/// A simple-signing payload is a few hundred bytes.
const MAX_PAYLOAD: usize = 64 << 10;
/// The manifest types a signature manifest may have.
const SIGNATURE_MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A public key file that cannot be used; says which file and why.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read cosign public key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not a cosign public key ({reason}); expected PEM \
         \"-----BEGIN PUBLIC KEY-----\" as `cosign generate-key-pair` writes to cosign.pub",
        path.display()
    )]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "no cosign public key given: list at least one file in image.verify.cosign_public_keys"
    )]
    None,
}

/// The configured public keys, each with the file it came from. Cheap to clone.
#[derive(Clone)]
pub struct CosignKeys {
    keys: Arc<Vec<(PathBuf, CosignVerificationKey)>>,
}

impl fmt::Debug for CosignKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(p, _)| p))
            .finish()
    }
}

impl CosignKeys {
    /// Reads and checks every key file (PEM public keys: ECDSA P-256/384/521, RSA, Ed25519).
    pub fn load(paths: &[PathBuf]) -> Result<CosignKeys, KeyError> {
        if paths.is_empty() {
            return Err(KeyError::None);
        }
        let keys = paths
            .iter()
            .map(|path| Ok((path.clone(), load_key(path)?)))
            .collect::<Result<Vec<_>, KeyError>>()?;
        Ok(CosignKeys {
            keys: Arc::new(keys),
        })
    }

    /// The files the keys came from, in order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.keys.iter().map(|(p, _)| p.as_path())
    }

    /// The file of the first key that `signature` (base64) of `payload` verifies with.
    fn signer(&self, signature: &str, payload: &[u8]) -> Option<&Path> {
        self.keys.iter().find_map(|(path, key)| {
            key.verify_signature(Signature::Base64Encoded(signature.as_bytes()), payload)
                .ok()
                .map(|()| path.as_path())
        })
    }
}

fn load_key(path: &Path) -> Result<CosignVerificationKey, KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    CosignVerificationKey::try_from_pem(&pem).map_err(|e| KeyError::Invalid {
        path: path.to_path_buf(),
        reason: sanitize(&e.to_string(), MAX_TEXT),
    })
}

/// Why a digest may not be deployed (or could not be checked).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "{digest} is not signed: {repository} has no cosign signature for it \
         (no tag {tag}); sign it with `cosign sign --key <key> {repository}@{digest}`"
    )]
    Unsigned {
        repository: String,
        digest: String,
        tag: String,
    },
    #[error(
        "{digest} is not signed by a trusted key: none of its {signatures} cosign signature(s) \
         verifies with {keys} (signed by another key, or altered)"
    )]
    NotVerified {
        digest: String,
        signatures: usize,
        keys: String,
    },
    #[error(
        "{digest} has no signature of its own: its cosign signature(s) name {named} instead \
         (a signature copied from another image)"
    )]
    OtherDigest { digest: String, named: String },
    #[error("{digest}: its cosign signature is malformed: {reason}")]
    Malformed { digest: String, reason: String },
    #[error("cannot check the signature of {digest}: {source}")]
    Registry {
        digest: String,
        #[source]
        source: RegistryError,
    },
}

impl TrustError {
    /// A registry fault worth retrying: the digest is not known to be bad, only unchecked.
    pub fn is_transient(&self) -> bool {
        matches!(self, TrustError::Registry { source, .. } if source.is_transient())
    }

    /// A short name for metrics and the status: `unsigned`, `not_verified`,
    /// `other_digest`, `malformed`, `registry`.
    pub fn kind(&self) -> &'static str {
        match self {
            TrustError::Unsigned { .. } => "unsigned",
            TrustError::NotVerified { .. } => "not_verified",
            TrustError::OtherDigest { .. } => "other_digest",
            TrustError::Malformed { .. } => "malformed",
            TrustError::Registry { .. } => "registry",
        }
    }
}

/// A digest that passed: which key signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub digest: String,
    /// The key file whose key verified a signature.
    pub key: PathBuf,
}

/// Checks digests against the configured keys through the agent's registry client.
#[derive(Debug, Clone)]
pub struct Verifier {
    registry: RegistryClient,
    keys: CosignKeys,
}

#[derive(Deserialize)]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The `type` of a cosign image signature payload.
const CRITICAL_TYPE_NAME: &str = "cosign container image signature";

/// The parts of cosign's simple-signing payload that are checked (the
/// signature covers the payload's bytes, so nothing here needs to be
/// canonical): `{"critical": {"image": {"docker-manifest-digest": D}, "type": T, ..}, ..}`.
#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: SignedImage,
    #[serde(rename = "type")]
    type_name: String,
}

#[derive(Deserialize)]
struct SignedImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// What one signature layer says, once fetched and checked.
enum LayerVerdict {
    /// Verifies with a configured key and names this digest.
    Good(PathBuf),
    /// Verifies with a configured key but names another digest.
    TrustedForOther(String),
    /// Names another digest and does not verify.
    Other(String),
    /// Names this digest, does not verify with any key.
    Unverified,
    Malformed(String),
}

impl Verifier {
    pub fn new(registry: RegistryClient, keys: CosignKeys) -> Verifier {
        Verifier { registry, keys }
    }

    pub fn keys(&self) -> &CosignKeys {
        &self.keys
    }

    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// Whether `digest` of `image` carries a valid cosign signature by one of the
    /// keys. Call it before the digest is pulled into service (before any drain).
    pub async fn verify(&self, image: &ImageName, digest: &str) -> Result<Verified, TrustError> {
        let malformed = |reason: String| TrustError::Malformed {
            digest: digest.to_string(),
            reason,
        };
        if !is_sha256_digest(digest) {
            return Err(malformed(format!(
                "{:?} is not a sha256 digest",
                sanitize(digest, 100)
            )));
        }
        let tag = format!("sha256-{}.sig", &digest["sha256:".len()..]);
        let registry = |source: RegistryError| TrustError::Registry {
            digest: digest.to_string(),
            source,
        };
        let manifest = match self
            .registry
            .manifest(
                image,
                &tag,
                &SIGNATURE_MANIFEST_TYPES,
                MAX_SIGNATURE_MANIFEST,
            )
            .await
        {
            Ok(m) => m,
            Err(RegistryError::NotFound { .. }) => {
                return Err(TrustError::Unsigned {
                    repository: image.to_string(),
                    digest: digest.to_string(),
                    tag,
                })
            }
            Err(e) => return Err(registry(e)),
        };
        let manifest: SignatureManifest = serde_json::from_slice(&manifest.body).map_err(|e| {
            malformed(format!(
                "the manifest of tag {tag} is not an image manifest ({e})"
            ))
        })?;
        let layers: Vec<&Layer> = manifest
            .layers
            .iter()
            .filter(|l| l.media_type == SIGNATURE_MEDIA_TYPE)
            .take(MAX_SIGNATURES)
            .collect();
        if layers.is_empty() {
            return Err(malformed(format!(
                "tag {tag} holds no layer of type {SIGNATURE_MEDIA_TYPE}"
            )));
        }
        let mut verdicts = Vec::new();
        for layer in &layers {
            let verdict = self.layer(image, digest, layer).await.map_err(registry)?;
            if let LayerVerdict::Good(key) = verdict {
                debug!(image = %image, digest, key = %key.display(), "cosign signature verified");
                return Ok(Verified {
                    digest: digest.to_string(),
                    key,
                });
            }
            verdicts.push(verdict);
        }
        // No good signature: the most telling reason wins.
        let trusted_other = verdicts.iter().find_map(|v| match v {
            LayerVerdict::TrustedForOther(d) => Some(d.clone()),
            _ => None,
        });
        if let Some(named) = trusted_other {
            return Err(TrustError::OtherDigest {
                digest: digest.to_string(),
                named,
            });
        }
        let unverified = verdicts
            .iter()
            .filter(|v| matches!(v, LayerVerdict::Unverified))
            .count();
        if unverified > 0 {
            return Err(TrustError::NotVerified {
                digest: digest.to_string(),
                signatures: unverified,
                keys: self
                    .keys
                    .paths()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        for v in verdicts {
            match v {
                LayerVerdict::Other(named) => {
                    return Err(TrustError::OtherDigest {
                        digest: digest.to_string(),
                        named,
                    })
                }
                LayerVerdict::Malformed(reason) => return Err(malformed(reason)),
                _ => {}
            }
        }
        unreachable!("at least one layer, each with a verdict")
    }

    /// Fetches and judges one signature layer. `Err` only for registry faults.
    async fn layer(
        &self,
        image: &ImageName,
        digest: &str,
        layer: &Layer,
    ) -> Result<LayerVerdict, RegistryError> {
        if !is_sha256_digest(&layer.digest) {
            return Ok(LayerVerdict::Malformed(format!(
                "layer digest {:?} is not a sha256 digest",
                sanitize(&layer.digest, 100)
            )));
        }
        let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
            return Ok(LayerVerdict::Malformed(format!(
                "layer {} has no {SIGNATURE_ANNOTATION} annotation",
                layer.digest
            )));
        };
        let payload = match self.registry.blob(image, &layer.digest, MAX_PAYLOAD).await {
            Ok(p) => p,
            // A payload that is not what the manifest says it is.
            Err(RegistryError::Garbage { reason, .. }) => {
                return Ok(LayerVerdict::Malformed(format!(
                    "payload {}: {reason}",
                    layer.digest
                )))
            }
            Err(e) => return Err(e),
        };
        let signing: SimpleSigning = match serde_json::from_slice(&payload) {
            Ok(s) => s,
            Err(e) => {
                return Ok(LayerVerdict::Malformed(format!(
                    "payload {} is not a simple-signing document ({e})",
                    layer.digest
                )))
            }
        };
        if signing.critical.type_name != CRITICAL_TYPE_NAME {
            return Ok(LayerVerdict::Malformed(format!(
                "payload {} is of type {:?}, not {CRITICAL_TYPE_NAME:?}",
                layer.digest,
                sanitize(&signing.critical.type_name, 100)
            )));
        }
        let named = signing.critical.image.docker_manifest_digest;
        let signer = self.keys.signer(signature.trim(), &payload);
        Ok(match (signer, named == digest) {
            (Some(key), true) => LayerVerdict::Good(key.to_path_buf()),
            (Some(_), false) => LayerVerdict::TrustedForOther(sanitize(&named, 100)),
            (None, true) => LayerVerdict::Unverified,
            (None, false) => LayerVerdict::Other(sanitize(&named, 100)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn keys_are_checked_when_loaded_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A P-256 public key (SubjectPublicKeyInfo PEM, as cosign.pub).
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        let key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let good = write(dir.path(), "cosign.pub", &pem);
        let keys = CosignKeys::load(std::slice::from_ref(&good)).unwrap();
        assert_eq!(keys.paths().collect::<Vec<_>>(), vec![good.as_path()]);
        assert!(format!("{keys:?}").contains("cosign.pub"));

        let junk = write(dir.path(), "junk.pub", "not a key\n");
        let e = CosignKeys::load(&[good.clone(), junk])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("junk.pub") && e.contains("is not a cosign public key"),
            "{e}"
        );
        let cert = write(
            dir.path(),
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        let e = CosignKeys::load(&[cert]).unwrap_err().to_string();
        assert!(e.contains("cert.pem"), "{e}");
        let e = CosignKeys::load(&[dir.path().join("missing.pub")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read") && e.contains("missing.pub"),
            "{e}"
        );
        assert!(matches!(CosignKeys::load(&[]), Err(KeyError::None)));
    }
}
