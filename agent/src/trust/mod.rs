//! Image trust: which digests may be deployed at all (`[image.verify]`).
//!
//! - [`Verifier::verify`]: a digest must carry a valid cosign signature by one of
//!   the configured public keys (cosign's "simple signing" format: an OCI
//!   manifest under the tag `sha256-<hex>.sig` of the same repository, one layer
//!   per signature). The signature manifest and payloads are fetched through the
//!   agent's own [`RegistryClient`](crate::registry::RegistryClient) (its
//!   credentials, CA file, timeouts, retries and size caps); the keys and the
//!   ECDSA/RSA/Ed25519 check are the `sigstore` crate's (its crypto module only).
//! - [`deployable_at`] / [`Verifier::deployable_at`]: `min_age`, from the image's
//!   `created` time or the time the agent first saw the digest, whichever is later.
//! - [`CosignKeys::load`]: the public keys, read and checked when the config loads.
//! - [`SwapLimiter`]: at most a few hub-triggered swaps per hour.
//!
//! Files: `cosign.rs` (keys, signature manifests, verification), `age.rs`
//! (min_age), `limit.rs` (the hub's swap budget).

mod age;
mod cosign;
mod limit;

pub use age::{deployable_at, image_created};
pub use cosign::{
    CosignKeys, KeyError, TrustError, Verified, Verifier, MAX_SIGNATURES, SIGNATURE_MEDIA_TYPE,
};
pub use limit::{SwapLimiter, DEFAULT_BURST, DEFAULT_WINDOW};
