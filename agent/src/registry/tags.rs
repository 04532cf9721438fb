//! Tag lists and versions: `GET /v2/<repo>/tags/list` with `Link` pagination,
//! and picking the highest tag in a semver range.
//!
//! Registries return tags unsorted (distribution 2.8 also ignores `n`/`last`), so
//! the whole list is read and sorted here. Tags are versions when they parse as
//! semver after dropping a leading `v`, two-part tags (`2.4`) counting as `2.4.0`.

use std::collections::HashSet;

use reqwest::header::LINK;
use reqwest::Method;
use semver::{Version, VersionReq};

use tracing::debug;

use super::client::Session;
use super::http::read_body;
use super::RegistryError;

/// Bound on the pages of one tag list.
const MAX_TAG_PAGES: usize = 1000;
/// Bound on one page of a tag list.
const MAX_TAG_PAGE_BYTES: usize = 16 << 20;
/// Bound on all the pages of one tag list together (about a million tags):
/// a registry that pages without end must not fill the agent's memory.
pub const MAX_TAG_LIST_BYTES: usize = 32 << 20;

impl Session<'_> {
    /// The highest tag of the repository in `req`.
    pub(super) async fn pick_version(&mut self, req: &VersionReq) -> Result<String, RegistryError> {
        let tags = self.list_tags().await?;
        let (tag, version) =
            select_version(&tags, req).ok_or_else(|| RegistryError::NoMatchingVersion {
                repository: self.image.to_string(),
                range: req.to_string(),
                tags_seen: tags.len(),
            })?;
        debug!(image = %self.image, range = %req, tag, version = %version, "picked version");
        Ok(tag)
    }

    /// Every tag of the repository, following `Link: <..>; rel="next"`; sorted, without duplicates.
    pub(super) async fn list_tags(&mut self) -> Result<Vec<String>, RegistryError> {
        let first = self.url("tags/list")?;
        let mut url = first.clone();
        let mut visited = HashSet::new();
        let mut tags = Vec::new();
        let mut total = 0;
        for _ in 0..MAX_TAG_PAGES {
            let garbage = |reason: String| RegistryError::Garbage {
                url: url.to_string(),
                reason,
            };
            if !visited.insert(url.clone()) {
                return Err(garbage("the next-page links loop".into()));
            }
            let resp = self.send(Method::GET, &url, "application/json").await?;
            if resp.status().as_u16() != 200 {
                let what = format!("repository {}", self.image);
                return Err(self.unexpected(&what, &url, resp).await);
            }
            let mut next = None;
            for value in resp.headers().get_all(LINK) {
                let value = value
                    .to_str()
                    .map_err(|_| garbage("Link header is not text".into()))?;
                if let Some(target) = parse_next_link(value) {
                    next = Some(target);
                    break;
                }
            }
            let left = MAX_TAG_LIST_BYTES - total;
            let body = read_body(resp, url.as_str(), MAX_TAG_PAGE_BYTES.min(left))
                .await
                .map_err(|e| match e {
                    RegistryError::Garbage { .. } if left < MAX_TAG_PAGE_BYTES => garbage(format!(
                        "the tag list is larger than {} MiB in all",
                        MAX_TAG_LIST_BYTES >> 20
                    )),
                    e => e,
                })?;
            total += body.len();
            tags.extend(parse_tag_list(&body).map_err(garbage)?);
            let Some(next) = next else {
                tags.sort();
                tags.dedup();
                return Ok(tags);
            };
            let next_url = url
                .join(&next)
                .map_err(|e| garbage(format!("next-page link {next:?} is not a URL: {e}")))?;
            if next_url.origin() != first.origin() {
                // Credentials are for this registry only.
                return Err(garbage(format!(
                    "next-page link {next_url} points away from the registry"
                )));
            }
            url = next_url;
        }
        Err(RegistryError::TooManyPages {
            url: first.to_string(),
            max: MAX_TAG_PAGES,
        })
    }
}

/// The target of the `rel="next"` link in one `Link` header value, if any.
pub(super) fn parse_next_link(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let start = rest.find('<')?;
        let end = start + rest[start..].find('>')?;
        let target = &rest[start + 1..end];
        rest = &rest[end + 1..];
        // Parameters run to the next link ("<"); a quoted value may not hold one in practice.
        let params_end = rest.find('<').unwrap_or(rest.len());
        let params = &rest[..params_end];
        let is_next = params.split(';').any(|param| {
            let Some((name, value)) = param.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.trim().to_string());
        }
        rest = &rest[params_end..];
    }
}

/// `{"name": "...", "tags": [...]}`; `"tags": null` is an empty list.
pub(super) fn parse_tag_list(body: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct TagList {
        #[serde(rename = "name")]
        _name: String,
        tags: Option<Vec<String>>,
    }
    let list: TagList = serde_json::from_slice(body).map_err(|e| {
        let start: String = String::from_utf8_lossy(body).chars().take(80).collect();
        format!("tag list is not {{\"name\", \"tags\"}} JSON ({e}): {start:?}")
    })?;
    Ok(list.tags.unwrap_or_default())
}

/// The version a tag names: `1.2.3`, `v1.2.3`, `1.2` (as `1.2.0`), with optional
/// pre-release and build parts. Anything else (`latest`, `2`, `1.2.3.4`) is not a version.
pub(super) fn parse_version_tag(tag: &str) -> Option<Version> {
    let s = tag.strip_prefix('v').unwrap_or(tag);
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let core_end = s.find(['-', '+']).unwrap_or(s.len());
    let (core, rest) = s.split_at(core_end);
    match core.matches('.').count() {
        2 => Version::parse(s).ok(),
        1 => Version::parse(&format!("{core}.0{rest}")).ok(),
        _ => None,
    }
}

/// The tag with the highest version matching `req`, and that version. Pre-releases
/// match only when `req` names one of the same `major.minor.patch` (semver's rule).
/// When tags name the same version (`2.4.0`, `v2.4.0`, `2.4`), the full
/// three-part form wins, then the one without `v`.
pub fn select_version(tags: &[String], req: &VersionReq) -> Option<(String, Version)> {
    let form = |tag: &str| {
        let s = tag.strip_prefix('v').unwrap_or(tag);
        let core = &s[..s.find(['-', '+']).unwrap_or(s.len())];
        (core.matches('.').count() == 2, !tag.starts_with('v'))
    };
    tags.iter()
        .filter_map(|tag| parse_version_tag(tag).map(|v| (tag, v)))
        .filter(|(_, v)| req.matches(v))
        .max_by(|(ta, va), (tb, vb)| {
            va.cmp(vb)
                .then_with(|| form(ta).cmp(&form(tb)))
                .then_with(|| tb.cmp(ta))
        })
        .map(|(tag, v)| (tag.clone(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn pick(list: &[&str], req: &str) -> Option<String> {
        select_version(&tags(list), &VersionReq::parse(req).unwrap()).map(|(t, _)| t)
    }

    #[test]
    fn version_tags() {
        let v = |s: &str| Some(Version::parse(s).unwrap());
        assert_eq!(parse_version_tag("1.2.3"), v("1.2.3"));
        assert_eq!(parse_version_tag("v2.4.1"), v("2.4.1"));
        assert_eq!(parse_version_tag("2.4"), v("2.4.0"));
        assert_eq!(parse_version_tag("v2.4"), v("2.4.0"));
        assert_eq!(parse_version_tag("2.4-rc1"), v("2.4.0-rc1"));
        assert_eq!(parse_version_tag("3.0.0-rc.1"), v("3.0.0-rc.1"));
        for not_version in [
            "latest",
            "2",
            "v",
            "1.2.3.4",
            "1.2.x",
            "01.2.3",
            "vv1.2.3",
            "stable-1.2.3",
            "",
        ] {
            assert_eq!(parse_version_tag(not_version), None, "{not_version}");
        }
    }

    #[test]
    fn highest_matching_version_wins() {
        let all = [
            "1.0.0",
            "v2.3.1",
            "2.4",
            "2.10.0",
            "3.0.0-rc1",
            "latest",
            "garbage",
            "2.9.9",
        ];
        assert_eq!(pick(&all, "^2").as_deref(), Some("2.10.0"));
        assert_eq!(pick(&all, "~2.3").as_deref(), Some("v2.3.1"));
        assert_eq!(pick(&all, ">=2.4, <2.5").as_deref(), Some("2.4"));
        assert_eq!(pick(&all, "<2").as_deref(), Some("1.0.0"));
        assert_eq!(pick(&all, "*").as_deref(), Some("2.10.0"));
        assert_eq!(pick(&all, "^4"), None);
    }

    #[test]
    fn prereleases_only_when_asked_for() {
        let all = ["2.10.0", "3.0.0-rc1", "3.0.0-rc2"];
        assert_eq!(pick(&all, ">=2").as_deref(), Some("2.10.0"));
        assert_eq!(pick(&all, ">=3.0.0-rc1").as_deref(), Some("3.0.0-rc2"));
        assert_eq!(pick(&all, "=3.0.0-rc1").as_deref(), Some("3.0.0-rc1"));
        assert_eq!(
            pick(&["3.0.0-rc1", "3.0.0"], ">=3.0.0-rc1").as_deref(),
            Some("3.0.0")
        );
    }

    #[test]
    fn same_version_prefers_the_full_plain_form() {
        assert_eq!(
            pick(&["2.4", "v2.4.0", "2.4.0"], "^2").as_deref(),
            Some("2.4.0")
        );
        assert_eq!(pick(&["2.4", "v2.4.0"], "^2").as_deref(), Some("v2.4.0"));
        assert_eq!(pick(&["v2.4", "2.4"], "^2").as_deref(), Some("2.4"));
        // The answer does not depend on the order of the list.
        assert_eq!(
            pick(&["2.4.0", "v2.4.0", "2.4"], "^2").as_deref(),
            Some("2.4.0")
        );
    }

    #[test]
    fn next_links() {
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=x&n=100>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=100")
        );
        assert_eq!(
            parse_next_link("<https://r.example/v2/a/tags/list?last=y>;rel=next").as_deref(),
            Some("https://r.example/v2/a/tags/list?last=y")
        );
        assert_eq!(
            parse_next_link(r#"</first>; rel="first", </p2>; title="a; b"; rel="prev next""#)
                .as_deref(),
            Some("/p2")
        );
        assert_eq!(parse_next_link(r#"</prev>; rel="prev""#), None);
        assert_eq!(parse_next_link(""), None);
        assert_eq!(parse_next_link("garbage"), None);
        assert_eq!(parse_next_link("</unterminated; rel=next"), None);
    }

    #[test]
    fn tag_lists() {
        assert_eq!(
            parse_tag_list(br#"{"name": "a/b", "tags": ["1.0", "latest"]}"#).unwrap(),
            tags(&["1.0", "latest"])
        );
        assert_eq!(
            parse_tag_list(br#"{"name": "a/b", "tags": null}"#).unwrap(),
            tags(&[])
        );
        for garbage in [
            &b"<html>oops</html>"[..],
            br#"{"name": "a/b", "tags": [1, 2]}"#,
            br#"{"name": "a/b", "tags": "latest"}"#,
            br#"{"tags": ["x"]}"#,
            br#"["x"]"#,
        ] {
            assert!(
                parse_tag_list(garbage).is_err(),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
    }
}
