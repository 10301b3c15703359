//! Bearer-token checks shared by the command API (every request) and the
//! admin server (its write routes), when `http.api_token` is set.
//!
//! Guarantee: the token is compared in constant time and never logged or
//! echoed; a missing or wrong token is the same 401 problem.

use actix_web::http::header;
use actix_web::HttpRequest;

use super::errors::ApiError;

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() != expected.len()) as u8;
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Ok when no token is configured, or `Authorization: Bearer <token>` matches.
pub fn require_bearer(token: Option<&str>, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-124", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-1234", b"secret-token-123"));
        assert!(!constant_time_eq(b"", b"secret-token-123"));
    }

    #[test]
    fn bearer_forms() {
        let req = |v: Option<&str>| {
            let r = TestRequest::default();
            match v {
                Some(v) => r.insert_header((header::AUTHORIZATION, v)).to_http_request(),
                None => r.to_http_request(),
            }
        };
        let t = Some("0123456789abcdef");
        assert!(require_bearer(None, &req(None)).is_ok());
        assert!(require_bearer(t, &req(Some("Bearer 0123456789abcdef"))).is_ok());
        assert!(require_bearer(t, &req(Some("bearer  0123456789abcdef "))).is_ok());
        for bad in [None, Some("Bearer nope"), Some("Basic 0123456789abcdef"), Some("0123456789abcdef")] {
            assert_eq!(require_bearer(t, &req(bad)).unwrap_err().status.as_u16(), 401, "{bad:?}");
        }
    }
}
