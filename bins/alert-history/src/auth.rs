//! Who may call what: one bearer token per kind of caller.
//!
//! * `WEBHOOK_TOKEN` guards `POST /webhook`;
//! * `API_TOKEN` guards the admin routes (`POST /admin/...`);
//! * reads (history, timelines, report, dashboard and its JSON, `/metrics`,
//!   `/health/detailed`) are open unless `READ_TOKEN` is set or
//!   `API_TOKEN_FOR_READS` makes `API_TOKEN` cover them; once guarded,
//!   either token is accepted on them.
//!
//! Liveness and readiness stay open for probes. The scheme is matched
//! case-insensitively (`Bearer`, `bearer`, `BEARER`: RFC 9110 §11.1). A
//! browser cannot add a bearer header to a page load, so guarded reads also
//! take HTTP Basic credentials whose password is the token (any user name)
//! and their 401 asks for them: the dashboard then works from a browser.

use axum::http::{HeaderMap, HeaderValue, header};

/// The `WWW-Authenticate` challenge of a refused read: bearer for
/// programs, Basic so that a browser asks for the token.
pub(crate) const READ_CHALLENGE: HeaderValue =
    HeaderValue::from_static("Bearer, Basic realm=\"alert-history\", charset=\"UTF-8\"");

/// The tokens of one service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokens {
    /// `WEBHOOK_TOKEN`.
    pub(crate) webhook: Option<String>,
    /// `API_TOKEN`.
    pub(crate) api: Option<String>,
    /// The tokens accepted on reads; empty: reads are open.
    pub(crate) read: Vec<String>,
}

impl Tokens {
    /// The tokens configured by `READ_TOKEN`, `API_TOKEN` and
    /// `API_TOKEN_FOR_READS`.
    pub(crate) fn new(
        webhook: Option<String>,
        api: Option<String>,
        read: Option<String>,
        api_for_reads: bool,
    ) -> Self {
        let mut reads: Vec<String> = read.into_iter().collect();
        if (api_for_reads || !reads.is_empty())
            && let Some(api) = &api
        {
            reads.push(api.clone());
        }
        Tokens {
            webhook,
            api,
            read: reads,
        }
    }

    /// Whether the request may post webhooks.
    pub(crate) fn webhook_allowed(&self, headers: &HeaderMap) -> bool {
        self.webhook
            .as_deref()
            .is_none_or(|t| bearer(headers).is_some_and(|g| same(&g, t)))
    }

    /// Whether the request may call admin routes.
    pub(crate) fn admin_allowed(&self, headers: &HeaderMap) -> bool {
        self.api
            .as_deref()
            .is_none_or(|t| bearer(headers).is_some_and(|g| same(&g, t)))
    }

    /// Whether the request may read.
    pub(crate) fn read_allowed(&self, headers: &HeaderMap) -> bool {
        if self.read.is_empty() {
            return true;
        }
        let Some(given) = bearer(headers).or_else(|| basic_password(headers)) else {
            return false;
        };
        // Every token is compared, so the time taken does not say which
        // one came close.
        self.read
            .iter()
            .fold(false, |ok, token| same(&given, token) | ok)
    }
}

/// The credentials of `Authorization: <scheme> <credentials>` when the
/// scheme is `scheme` (any case).
fn credentials<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.trim_start().split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
        .filter(|c| !c.is_empty())
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    credentials(headers, "bearer").map(str::to_owned)
}

/// The password of `Authorization: Basic base64(user:password)`.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let decoded = base64_decode(credentials(headers, "basic")?)?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// Standard base64 (RFC 4648 §4, padding optional).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Compares in time that depends on the lengths only.
fn same(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let t = Tokens::new(Some("s3cret".into()), None, None, false);
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "BeArEr  s3cret ",
        ] {
            assert!(t.webhook_allowed(&with(value)), "{value}");
        }
        for value in ["Bearer s3cre", "Bearer", "Token s3cret", "Bearers3cret"] {
            assert!(!t.webhook_allowed(&with(value)), "{value}");
        }
        assert!(!t.webhook_allowed(&HeaderMap::new()));
    }

    #[test]
    fn reads_are_open_until_a_token_covers_them() {
        let open = Tokens::new(None, Some("admin".into()), None, false);
        assert!(open.read_allowed(&HeaderMap::new()));
        assert!(!open.admin_allowed(&HeaderMap::new()));
        let api = Tokens::new(None, Some("admin".into()), None, true);
        assert!(!api.read_allowed(&HeaderMap::new()));
        assert!(api.read_allowed(&with("Bearer admin")));
        let read = Tokens::new(None, Some("admin".into()), Some("viewer".into()), false);
        assert!(read.read_allowed(&with("bearer viewer")));
        assert!(read.read_allowed(&with("Bearer admin")));
        assert!(!read.read_allowed(&with("Bearer nobody")));
        assert!(!read.admin_allowed(&with("Bearer viewer")));
        // A browser's Basic credentials: any user, the token as password.
        // "anyone:viewer" and "x:viewer".
        assert!(read.read_allowed(&with("Basic YW55b25lOnZpZXdlcg==")));
        assert!(read.read_allowed(&with("basic eDp2aWV3ZXI")));
        assert!(!read.read_allowed(&with("Basic eDpub3BlZA==")));
        assert!(!read.read_allowed(&with("Basic !!!")));
    }

    #[test]
    fn base64_decodes_rfc4648_vectors() {
        for (encoded, decoded) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(base64_decode(encoded).unwrap(), decoded.as_bytes());
        }
    }
}
