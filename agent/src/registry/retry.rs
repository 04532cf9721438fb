//! Retrying one request: which failures are retried (429, 5xx, connect errors,
//! timeouts), exponential backoff with jitter, and `Retry-After`.

use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Response};
use time::OffsetDateTime;
use tracing::warn;

use super::error::is_retryable_status;
use super::RegistryError;

/// The longest backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured; a registry asking for more gets this.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How many times to retry, and the first delay.
#[derive(Debug, Clone)]
pub(super) struct RetryPolicy {
    pub retries: u32,
    pub base_delay: Duration,
    /// Told each answer's status (metrics).
    pub on_answer: Option<super::AnswerObserver>,
}

impl RetryPolicy {
    /// Sends the request built by `build` until it gets an answer that is not
    /// 429/5xx, a non-transient error, or the retries run out. The last 429/5xx
    /// answer becomes a [`RegistryError::Status`].
    pub(super) async fn send(
        &self,
        url: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let mut attempt: u32 = 0;
        loop {
            let sent = build().send().await;
            if let Some(observe) = &self.on_answer {
                (observe.0)(sent.as_ref().ok().map(|r| r.status().as_u16()));
            }
            let delay = match sent {
                Ok(resp) if is_retryable_status(resp.status().as_u16()) => {
                    let status = resp.status().as_u16();
                    if attempt >= self.retries {
                        return Err(super::http::status_error(url, resp).await);
                    }
                    let delay = retry_after(resp.headers(), OffsetDateTime::now_utc())
                        .unwrap_or_else(|| backoff(self.base_delay, attempt));
                    warn!(
                        url,
                        status,
                        attempt = attempt + 1,
                        delay_ms = delay.as_millis() as u64,
                        "registry answered with a retryable status: retrying"
                    );
                    delay
                }
                Ok(resp) => return Ok(resp),
                Err(source) => {
                    let err = RegistryError::Network {
                        url: url.to_string(),
                        source,
                    };
                    if attempt >= self.retries || !err.is_transient() {
                        return Err(err);
                    }
                    let delay = backoff(self.base_delay, attempt);
                    warn!(
                        url,
                        error = %error_chain(&err),
                        attempt = attempt + 1,
                        delay_ms = delay.as_millis() as u64,
                        "registry request failed: retrying"
                    );
                    delay
                }
            };
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// `base * 2^attempt`, capped at 10s, of which the upper half is random
/// ("equal jitter": never less than half the nominal delay).
pub(super) fn backoff(base: Duration, attempt: u32) -> Duration {
    let nominal = base
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_BACKOFF);
    let half = nominal / 2;
    let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

/// The delay a `Retry-After` header asks for (capped), if it has a usable one.
pub(super) fn retry_after(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, now).map(|d| d.min(MAX_RETRY_AFTER))
}

/// `Retry-After` is either delta-seconds or an HTTP date (IMF-fixdate).
pub(super) fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    let wait = at - now;
    Some(if wait.is_negative() {
        Duration::ZERO
    } else {
        wait.unsigned_abs()
    })
}

/// An error with its causes, `a: b: c`, for one log field.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use time::macros::datetime;

    #[test]
    fn retry_after_seconds() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn retry_after_http_date() {
        let now = datetime!(2015-10-21 07:27:30 UTC);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00", now), None);
        assert_eq!(parse_retry_after("2015-10-21T07:28:00Z", now), None);
    }

    #[test]
    fn retry_after_header_is_capped() {
        let now = OffsetDateTime::now_utc();
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(retry_after(&headers, now), Some(MAX_RETRY_AFTER));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(2)));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(500);
        for _ in 0..100 {
            let first = backoff(base, 0);
            assert!(
                first >= Duration::from_millis(250) && first <= base,
                "{first:?}"
            );
            let third = backoff(base, 2);
            assert!(
                third >= Duration::from_millis(1000) && third <= Duration::from_millis(2000),
                "{third:?}"
            );
            let late = backoff(base, 30);
            assert!(late >= MAX_BACKOFF / 2 && late <= MAX_BACKOFF, "{late:?}");
        }
    }

    #[test]
    fn error_chain_joins_causes() {
        let inner = std::io::Error::other("connection refused");
        let outer = RegistryError::ReadAuthFile {
            path: "/etc/x.json".into(),
            source: inner,
        };
        assert_eq!(
            error_chain(&outer),
            "reading auth file /etc/x.json: connection refused"
        );
    }
}
