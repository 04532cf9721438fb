//! `min_age`: a digest younger than this is not deployed yet.
//!
//! A digest's age counts from the later of the image's own `created` time (in
//! its config blob) and the moment this agent first saw the digest: a `created`
//! date set far in the past cannot skip the wait, and a digest that was pushed
//! long ago but only now tagged still waits `min_age` from now.

use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::registry::{is_sha256_digest, ImageName, RegistryClient, RegistryError};

use super::Verifier;

/// Manifests and image configs are small; anything bigger is refused.
const MAX_MANIFEST: usize = 4 << 20;
const MAX_CONFIG: usize = 4 << 20;

/// When a digest first seen at `first_seen`, whose image says it was created
/// at `created`, may be deployed under `min_age`.
pub fn deployable_at(
    created: Option<OffsetDateTime>,
    first_seen: OffsetDateTime,
    min_age: Duration,
) -> OffsetDateTime {
    let start = created.map_or(first_seen, |c| c.max(first_seen));
    start.saturating_add(time::Duration::try_from(min_age).unwrap_or(time::Duration::MAX))
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    created: Option<String>,
}

/// The `created` time of the image `digest` names (for an index: of its
/// linux entry for this machine's architecture, else its first entry);
/// `None` when the image does not say or says something that is not a time.
pub async fn image_created(
    registry: &RegistryClient,
    image: &ImageName,
    digest: &str,
) -> Result<Option<OffsetDateTime>, RegistryError> {
    let manifest = fetch_manifest(registry, image, digest).await?;
    let manifest = if manifest.config.is_none() && !manifest.manifests.is_empty() {
        let arch = host_architecture();
        let entry = manifest
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .unwrap_or(&manifest.manifests[0]);
        if !is_sha256_digest(&entry.digest) {
            return Ok(None);
        }
        fetch_manifest(registry, image, &entry.digest).await?
    } else {
        manifest
    };
    let Some(config) = manifest.config.filter(|c| is_sha256_digest(&c.digest)) else {
        return Ok(None);
    };
    let blob = registry.blob(image, &config.digest, MAX_CONFIG).await?;
    let created = serde_json::from_slice::<ImageConfig>(&blob)
        .ok()
        .and_then(|c| c.created)
        .and_then(|s| {
            OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok()
        });
    Ok(created)
}

async fn fetch_manifest(
    registry: &RegistryClient,
    image: &ImageName,
    digest: &str,
) -> Result<Manifest, RegistryError> {
    let m = registry
        .manifest(
            image,
            digest,
            &crate::registry::MANIFEST_MEDIA_TYPES,
            MAX_MANIFEST,
        )
        .await?;
    serde_json::from_slice(&m.body).map_err(|e| RegistryError::Garbage {
        url: format!("{image}@{digest}"),
        reason: format!("the manifest is not JSON of a manifest or index ({e})"),
    })
}

/// The OCI name of this machine's architecture.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl Verifier {
    /// [`deployable_at`] with the image's `created` time fetched through this
    /// verifier's registry client.
    pub async fn deployable_at(
        &self,
        image: &ImageName,
        digest: &str,
        first_seen: OffsetDateTime,
        min_age: Duration,
    ) -> Result<OffsetDateTime, RegistryError> {
        let created = image_created(self.registry(), image, digest).await?;
        Ok(deployable_at(created, first_seen, min_age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_later_of_created_and_first_seen_counts() {
        let h2 = Duration::from_secs(2 * 3600);
        let seen = datetime!(2026-05-01 12:00 UTC);
        assert_eq!(
            deployable_at(None, seen, h2),
            datetime!(2026-05-01 14:00 UTC)
        );
        // Created long ago: first seen counts.
        assert_eq!(
            deployable_at(Some(datetime!(2020-01-01 0:00 UTC)), seen, h2),
            datetime!(2026-05-01 14:00 UTC)
        );
        // Created after it was first seen (a clock ahead, or a lie): created counts.
        assert_eq!(
            deployable_at(Some(datetime!(2026-05-01 13:00 UTC)), seen, h2),
            datetime!(2026-05-01 15:00 UTC)
        );
        assert_eq!(deployable_at(None, seen, Duration::ZERO), seen);
        // No overflow on absurd values.
        let _ = deployable_at(None, seen, Duration::MAX);
    }
}
