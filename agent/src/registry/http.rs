//! Shared HTTP helpers of the registry modules: bounded body reads, the error
//! for an unexpected status (with the registry's own message), and the scheme
//! check. They depend on nothing else in the registry but its errors.

use reqwest::Response;
use url::Url;

use super::RegistryError;

/// Error bodies are quoted in errors, shortened to this.
const MAX_DETAIL: usize = 300;

/// Refuses plain http unless `insecure` (reqwest would too, less clearly).
pub(super) fn check_scheme(url: &Url, insecure: bool) -> Result<(), RegistryError> {
    if url.scheme() != "https" && !insecure {
        return Err(RegistryError::InsecureUrl {
            url: url.to_string(),
        });
    }
    Ok(())
}

/// Reads a body of at most `limit` bytes.
pub(super) async fn read_body(
    mut resp: Response,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| RegistryError::Network {
            url: url.to_string(),
            source,
        })?
    {
        if body.len() + chunk.len() > limit {
            return Err(RegistryError::Garbage {
                url: url.to_string(),
                reason: format!("answer larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A [`RegistryError::Status`] with the registry's own message when it gave one.
pub(super) async fn status_error(url: &str, resp: Response) -> RegistryError {
    let status = resp.status().as_u16();
    let body = read_body(resp, url, 64 * 1024).await.unwrap_or_default();
    RegistryError::Status {
        url: url.to_string(),
        status,
        detail: error_detail(&body),
    }
}

/// `CODE: message` of the first entry of a distribution error body, else the text.
pub(super) fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Errors>(body) {
        Ok(Errors { errors }) if !errors.is_empty() => {
            format!("{}: {}", errors[0].code, errors[0].message)
        }
        _ => String::from_utf8_lossy(body).trim().to_string(),
    };
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::text::sanitize(&text, MAX_DETAIL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details() {
        assert_eq!(
            error_detail(br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#),
            "DENIED: requested access to the resource is denied"
        );
        assert_eq!(
            error_detail(b"  upstream\n  timed out "),
            "upstream timed out"
        );
        assert_eq!(error_detail(b""), "");
        assert_eq!(
            error_detail(&[b'x'; 1000]),
            format!("{}… (700 more characters)", "x".repeat(MAX_DETAIL))
        );
        // Escape sequences in the registry's message arrive escaped.
        assert_eq!(
            error_detail(
                br#"{"errors":[{"code":"DENIED","message":"\u001b[2J\u001b]0;owned\u0007 no"}]}"#
            ),
            "DENIED: \\u{1b}[2J\\u{1b}]0;owned\\u{7} no"
        );
        assert_eq!(
            error_detail(b"a\x1b[31mb\x9bc\x7f"),
            "a\\u{1b}[31mb\u{fffd}c\\u{7f}"
        );
    }
}
