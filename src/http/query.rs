//! Query strings -> parameters, naming the parameter at fault.
//!
//! Guarantee: a route that takes query parameters refuses one it does not
//! know, one given twice, or a value it cannot use, with a 400 naming that
//! parameter, so a typo (`?limt=5`) is never served silently with the
//! default. (Routes that take no parameters ignore the query string.)

use std::str::FromStr;

use super::errors::ApiError;

/// The checked parameters of one request.
pub struct Params<'a> {
    pairs: &'a [(String, String)],
}

impl<'a> Params<'a> {
    /// `pairs` (from `web::Query<Vec<(String, String)>>`) with only `known`
    /// names, each at most once.
    pub fn new(pairs: &'a [(String, String)], known: &[&str]) -> Result<Params<'a>, ApiError> {
        for (i, (k, _)) in pairs.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                let shown: String = k.chars().filter(|c| !c.is_control()).take(40).collect();
                return Err(ApiError::bad_request(
                    &shown,
                    format!("unknown query parameter {shown:?}; use {}", known.join(", ")),
                ));
            }
            if pairs[..i].iter().any(|(seen, _)| seen == k) {
                return Err(ApiError::bad_request(k, format!("{k} is given more than once")));
            }
        }
        Ok(Params { pairs })
    }

    /// The value of `name` (trimmed), if given.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim())
    }

    /// `name` parsed as a `T` that `ok` accepts; anything else is a 400
    /// with `message`.
    pub fn parsed<T: FromStr>(
        &self,
        name: &str,
        ok: impl Fn(&T) -> bool,
        message: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<T>() {
                Ok(n) if ok(&n) => Ok(Some(n)),
                _ => Err(ApiError::bad_request(name, message)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn refused(p: &[(&str, &str)]) -> (u16, String, String) {
        let q = pairs(p);
        let e = Params::new(&q, &["limit", "ms"])
            .and_then(|p| p.parsed::<u64>("limit", |n| (1..=9).contains(n), "limit must be 1 to 9").map(|_| ()))
            .unwrap_err();
        (e.status.as_u16(), e.body.field.clone().unwrap_or_default(), e.body.detail.clone())
    }

    #[test]
    fn known_parameters_are_read_and_others_refused_by_name() {
        let q = pairs(&[("limit", " 5 "), ("ms", "10")]);
        let p = Params::new(&q, &["limit", "ms"]).unwrap();
        assert_eq!(p.parsed::<u64>("limit", |n| *n <= 9, "x").unwrap(), Some(5));
        assert_eq!(p.get("ms"), Some("10"));
        assert_eq!(p.parsed::<u64>("absent", |_| true, "x").unwrap(), None);

        let (status, field, detail) = refused(&[("limt", "5")]);
        assert_eq!((status, field.as_str()), (400, "limt"));
        assert!(detail.contains("use limit, ms"), "{detail}");
        assert_eq!(refused(&[("limit", "1"), ("limit", "2")]).1, "limit");
        assert_eq!(refused(&[("limit", "0")]).1, "limit");
        assert_eq!(refused(&[("limit", "ten")]).1, "limit");
        assert_eq!(refused(&[("limit", "-1")]).1, "limit");
        // A control character in a name is not echoed back.
        assert_eq!(refused(&[("a\u{7}b", "1")]).1, "ab");
    }
}
