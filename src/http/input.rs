//! Request bodies -> commands, naming the field at fault.
//!
//! Bodies are parsed as raw JSON first (syntax errors are 400), then read
//! field by field into value objects, so a wrong type, a missing field, an
//! unknown field, a key given twice in one object or a value a constructor
//! refuses is a 422 that names the field, e.g. `items[2].unit_price.currency`.

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{Currency, DomainError, Email, Money, OrderItem, PhoneNumber, Sku};

use super::errors::ApiError;
use super::json_body::JsonBody;

/// The whole number `v` is, as JSON Schema's `integer` reads one: an
/// integer literal in i64, or a number with a decimal point or exponent
/// whose value is whole (`1.0`, `1e2`: what clients that serialise floats
/// send) up to 2^53, where a float still holds every whole number exactly.
pub(super) fn whole_number(v: &Value) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let n = v.as_number()?;
    n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() <= EXACT).map(|f| f as i64))
}

/// A UUID in the one form the API describes (`format: uuid`, RFC 9562's
/// 36-character hyphenated text, either case); the other spellings
/// `Uuid::parse_str` takes (32 bare digits, braces, `urn:uuid:`) are refused.
/// One definition with the CLI's (`args::uuid`).
pub(super) fn uuid_text(s: &str) -> Option<Uuid> {
    crate::args::uuid(s).ok()
}

/// One JSON object being read, with its path for error messages.
pub struct Input<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Input<'a> {
    /// The request body: must be an object with only `allowed` keys. (A
    /// handler reads a [`JsonBody`] with [`Input::request`], which also
    /// refuses a key given twice.)
    pub fn body(v: &'a Value, allowed: &[&str]) -> Result<Input<'a>, ApiError> {
        match v {
            Value::Object(map) => Input::checked(map, String::new(), allowed),
            other => Err(ApiError::new(
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                format!("the body must be a JSON object, not {}", kind_of(other)),
            )
            .with_field("$")),
        }
    }

    /// A request body ([`JsonBody`]): [`Input::body`], and no key given
    /// twice in one object (serde_json would keep the last silently): a 422
    /// naming the first repeated key, e.g. `items[0].sku`.
    pub fn request(body: &'a JsonBody, allowed: &[&str]) -> Result<Input<'a>, ApiError> {
        let input = Input::body(body, allowed)?;
        match body.duplicate() {
            Some(path) => Err(ApiError::invalid(path, format!("{path} is given more than once"))),
            None => Ok(input),
        }
    }

    fn checked(map: &'a Map<String, Value>, prefix: String, allowed: &[&str]) -> Result<Input<'a>, ApiError> {
        let input = Input { map, prefix };
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            let shown: String = k.chars().filter(|c| !c.is_control()).take(40).collect();
            let expected = match allowed {
                [] => "this body takes no fields (send none, or `{}`)".to_string(),
                _ => format!("expected one of: {}", allowed.join(", ")),
            };
            return Err(ApiError::invalid(input.path(&shown), format!("unknown field `{shown}`; {expected}")));
        }
        Ok(input)
    }

    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// A present, non-null value.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Result<&'a Value, ApiError> {
        self.get(key).ok_or_else(|| ApiError::invalid(self.path(key), format!("{} is required", self.path(key))))
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> ApiError {
        ApiError::invalid(self.path(key), format!("{} must be {want}, not {}", self.path(key), kind_of(got)))
    }

    pub fn string(&self, key: &str) -> Result<String, ApiError> {
        let v = self.required(key)?;
        let s = v.as_str().ok_or_else(|| self.wrong(key, "a string", v))?;
        if s.chars().any(|c| c.is_control()) {
            return Err(ApiError::invalid(
                self.path(key),
                format!("{} must not contain control characters", self.path(key)),
            ));
        }
        Ok(s.to_string())
    }

    pub fn opt_string(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.string(key).map(Some),
        }
    }

    pub fn int(&self, key: &str) -> Result<i64, ApiError> {
        let v = self.required(key)?;
        match v {
            Value::Number(_) => whole_number(v).ok_or_else(|| {
                ApiError::invalid(
                    self.path(key),
                    format!(
                        "{} must be a whole number between -2^63 and 2^63-1 (2^53 when written with a decimal point or exponent)",
                        self.path(key)
                    ),
                )
            }),
            other => Err(self.wrong(key, "a whole number", other)),
        }
    }

    pub fn uuid(&self, key: &str) -> Result<Uuid, ApiError> {
        let v = self.required(key)?;
        let s = v.as_str().ok_or_else(|| self.wrong(key, "a UUID string", v))?;
        uuid_text(s).ok_or_else(|| {
            ApiError::invalid(
                self.path(key),
                format!("{} must be a UUID such as 0192d3a4-5b6c-7d8e-9f00-112233445566", self.path(key)),
            )
        })
    }

    pub fn opt_uuid(&self, key: &str) -> Result<Option<Uuid>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.uuid(key).map(Some),
        }
    }

    pub fn object(&self, key: &str, allowed: &[&str]) -> Result<Input<'a>, ApiError> {
        let v = self.required(key)?;
        match v {
            Value::Object(map) => Input::checked(map, self.path(key), allowed),
            other => Err(self.wrong(key, "an object", other)),
        }
    }

    pub fn array(&self, key: &str) -> Result<&'a Vec<Value>, ApiError> {
        let v = self.required(key)?;
        v.as_array().ok_or_else(|| self.wrong(key, "an array", v))
    }
}

/// Re-labels a value-object error with the exact field path.
fn at(field: String) -> impl FnOnce(DomainError) -> ApiError {
    move |e| ApiError::invalid(field, e.to_string())
}

/// Most items read from one body (the domain's limit is lower; this only
/// bounds work on hostile input).
const MAX_ITEMS_READ: usize = 1000;

/// `items: [{sku, quantity, unit_price: {amount_minor, currency}}]`.
pub fn items(body: &Input<'_>) -> Result<Vec<OrderItem>, ApiError> {
    let raw = body.array("items")?;
    if raw.len() > MAX_ITEMS_READ {
        return Err(ApiError::invalid("items", format!("too many items: {}", raw.len())));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, v) in raw.iter().enumerate() {
        let path = format!("items[{i}]");
        let item = match v {
            Value::Object(map) => Input::checked(map, path.clone(), &["sku", "quantity", "unit_price"])?,
            other => {
                return Err(ApiError::invalid(
                    path.clone(),
                    format!("{path} must be an object, not {}", kind_of(other)),
                ))
            }
        };
        let sku = Sku::new(item.string("sku")?).map_err(at(item.path("sku")))?;
        let quantity = item.int("quantity")?;
        let price = item.object("unit_price", &["amount_minor", "currency"])?;
        let amount = price.int("amount_minor")?;
        let currency = Currency::new(&price.string("currency")?).map_err(at(price.path("currency")))?;
        let money = Money::new(amount, currency).map_err(at(price.path("amount_minor")))?;
        let item = OrderItem::new(sku, quantity, money).map_err(at(item.path("quantity")))?;
        out.push(item);
    }
    Ok(out)
}

pub fn email(body: &Input<'_>) -> Result<Email, ApiError> {
    Email::new(&body.string("email")?).map_err(at(body.path("email")))
}

pub fn phone(body: &Input<'_>) -> Result<Option<PhoneNumber>, ApiError> {
    body.opt_string("phone")?.map(|p| PhoneNumber::new(&p).map_err(at(body.path("phone")))).transpose()
}

/// The raw body of a route that takes no JSON body (`POST
/// /orders/{id}/confirm`): actix's `web::Bytes` under `web::PayloadConfig`'s
/// limit, refused as problem documents like a JSON body (413
/// `payload_too_large`, 400), not actix's text/plain. (`PayloadConfig` has
/// no error handler, unlike `JsonConfig`.)
pub struct RawBody(pub web::Bytes);

/// `http.max_body_bytes`, the limit a 413 of [`RawBody`] names (the same
/// value as the app's `web::PayloadConfig`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl FromRequest for RawBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<RawBody, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req.app_data::<BodyLimit>().map(|l| l.0);
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move { body.await.map(RawBody).map_err(|e| super::errors::body_error(&e, limit)) })
    }
}

/// Refuses a request whose body is content-coded (`Content-Encoding` other
/// than `identity`; GET and HEAD are not checked): 415
/// `unsupported_media_type` naming `Content-Encoding`.
/// The servers never decode a body (actix-web is built without its
/// compression features), and `http.max_body_bytes` bounds the bytes that
/// arrive, so a compressed body could only be misread; refusing it up front
/// says why.
pub fn content_encoding(req: &HttpRequest) -> Result<(), ApiError> {
    // GET and HEAD carry no body (and their routes read none).
    if matches!(*req.method(), actix_web::http::Method::GET | actix_web::http::Method::HEAD) {
        return Ok(());
    }
    let refused = || {
        ApiError::unsupported_media_type(
            "Content-Encoding",
            "request bodies must not be compressed: send no Content-Encoding (or Content-Encoding: identity)",
        )
    };
    for v in req.headers().get_all(actix_web::http::header::CONTENT_ENCODING) {
        let v = v.to_str().map_err(|_| refused())?;
        if !v.split(',').map(str::trim).all(|c| c.is_empty() || c.eq_ignore_ascii_case("identity")) {
            return Err(refused());
        }
    }
    Ok(())
}

/// The body of a command that takes no fields: empty, or a JSON object
/// with none (`{}`); malformed JSON is the 400 `malformed_json` every
/// other body gets (`errors::json_error`), any field a 422 naming it.
pub fn no_fields(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: JsonBody =
        serde_json::from_slice(body).map_err(|e| ApiError::malformed_json(super::errors::describe_json_error(&e)))?;
    Input::request(&v, &[]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(r: Result<Vec<OrderItem>, ApiError>) -> String {
        r.unwrap_err().body.field.unwrap()
    }

    #[test]
    fn item_errors_name_the_field() {
        let ok =
            json!({"items": [{"sku": "A", "quantity": 1, "unit_price": {"amount_minor": 100, "currency": "EUR"}}]});
        assert_eq!(items(&Input::body(&ok, &["items"]).unwrap()).unwrap().len(), 1);
        let cases = [
            (
                json!({"items": [{"sku": "A", "quantity": -1, "unit_price": {"amount_minor": 1, "currency": "EUR"}}]}),
                "items[0].quantity",
            ),
            (
                json!({"items": [{"sku": "A", "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "EUR"}}, {"sku": "B", "quantity": "2", "unit_price": {"amount_minor": 1, "currency": "EUR"}}]}),
                "items[1].quantity",
            ),
            (
                json!({"items": [{"sku": "🙂", "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "EUR"}}]}),
                "items[0].sku",
            ),
            (
                json!({"items": [{"sku": "A", "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "eur"}}]}),
                "items[0].unit_price.currency",
            ),
            (
                json!({"items": [{"sku": "A", "quantity": 1, "unit_price": {"amount_minor": -5, "currency": "EUR"}}]}),
                "items[0].unit_price.amount_minor",
            ),
            (
                json!({"items": [{"sku": "A", "quantity": 18446744073709551615u64, "unit_price": {"amount_minor": 1, "currency": "EUR"}}]}),
                "items[0].quantity",
            ),
            (
                json!({"items": [{"sku": "A", "quantity": 1.5, "unit_price": {"amount_minor": 1, "currency": "EUR"}}]}),
                "items[0].quantity",
            ),
            (json!({"items": [{"sku": "A", "quantity": 1}]}), "items[0].unit_price"),
            (
                json!({"items": [{"sku": "A", "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "EUR"}, "x": 1}]}),
                "items[0].x",
            ),
            (json!({"items": [[1]]}), "items[0]"),
            (json!({"items": {"sku": "A"}}), "items"),
        ];
        for (body, want) in cases {
            let input = Input::body(&body, &["items"]).unwrap();
            assert_eq!(field(items(&input)), want, "{body}");
        }
    }

    /// Review finding: a body over the limit on a route that reads raw
    /// bytes (confirm) got actix's 413 text/plain, not a problem document.
    #[actix_web::test]
    async fn a_raw_body_over_the_limit_is_a_413_problem() {
        use actix_web::{test, App, HttpResponse};
        async fn echo(body: RawBody) -> HttpResponse {
            HttpResponse::Ok().body(body.0)
        }
        let app = test::init_service(
            App::new().app_data(web::PayloadConfig::new(16)).app_data(BodyLimit(16)).route("/", web::post().to(echo)),
        )
        .await;
        let send = |body: Vec<u8>| test::TestRequest::post().uri("/").set_payload(body).to_request();
        let r = test::call_service(&app, send(b"{}".to_vec())).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(test::read_body(r).await, "{}");
        let r = test::call_service(&app, send(vec![b' '; 17])).await;
        assert_eq!(r.status().as_u16(), 413);
        let ct = r.headers().get("content-type").unwrap().to_str().unwrap().to_string();
        assert_eq!(ct, super::super::errors::PROBLEM_JSON);
        let v: Value = serde_json::from_slice(&test::read_body(r).await).unwrap();
        assert_eq!((v["error"].as_str(), v["status"].as_u64()), (Some("payload_too_large"), Some(413)), "{v}");
        assert_eq!(v["detail"], "request body is larger than 16 bytes");
    }

    /// Review finding: a body with `Content-Encoding: gzip` was decompressed
    /// (the body limit applied to the compressed size: a decompression bomb);
    /// it is refused, naming the header.
    #[test]
    fn a_content_coded_body_is_refused_naming_the_header() {
        use actix_web::http::header::CONTENT_ENCODING;
        use actix_web::test::TestRequest;
        let coded =
            |v: &str| content_encoding(&TestRequest::post().insert_header((CONTENT_ENCODING, v)).to_http_request());
        for bad in ["gzip", "deflate", "br", "zstd", "identity, gzip", "x-gzip"] {
            let e = coded(bad).unwrap_err();
            assert_eq!((e.status.as_u16(), e.body.field.as_deref()), (415, Some("Content-Encoding")), "{bad}");
        }
        assert!(coded("identity").is_ok());
        assert!(coded("Identity").is_ok());
        assert!(content_encoding(&TestRequest::post().to_http_request()).is_ok());
        let get = TestRequest::get().insert_header((CONTENT_ENCODING, "gzip")).to_http_request();
        assert!(content_encoding(&get).is_ok(), "a GET has no body to refuse");
    }

    #[test]
    fn no_fields_takes_nothing_but_an_empty_body_or_object() {
        assert!(no_fields(b"").is_ok());
        assert!(no_fields(b" \n").is_ok());
        assert!(no_fields(b"{}").is_ok());
        let e = no_fields(b"{\"x\": 1}").unwrap_err();
        assert_eq!((e.status.as_u16(), e.kind(), e.body.field.as_deref()), (422, "validation", Some("x")));
        let e = no_fields(b"[]").unwrap_err();
        assert_eq!((e.status.as_u16(), e.body.field.as_deref()), (422, Some("$")));
        let e = no_fields(b"{\"x\"").unwrap_err();
        assert_eq!((e.status.as_u16(), e.kind()), (400, "malformed_json"));
    }

    /// Review finding: `1.0` (what clients that serialise floats send, and
    /// what JSON Schema's `integer` in our OpenAPI 3.1 description accepts)
    /// was refused as "not a whole number between -2^63 and 2^63-1".
    #[test]
    fn whole_numbers_written_with_a_decimal_point_or_exponent_are_taken() {
        let item = |q: Value| json!({"items": [{"sku": "A", "quantity": q, "unit_price": {"amount_minor": 1999.0, "currency": "EUR"}}]});
        for q in [json!(2), json!(2.0), json!(2e0), serde_json::from_str::<Value>("0.2e1").unwrap()] {
            let got = items(&Input::body(&item(q.clone()), &["items"]).unwrap()).unwrap();
            assert_eq!(got[0].quantity, 2, "{q}");
        }
        for q in [json!(1.5), json!(1e300), json!(-0.5), json!(9_007_199_254_740_994.0)] {
            let e = items(&Input::body(&item(q.clone()), &["items"]).unwrap()).unwrap_err();
            assert_eq!(e.body.field.as_deref(), Some("items[0].quantity"), "{q}");
        }
        assert_eq!(whole_number(&json!(100.0)), Some(100));
        assert_eq!(whole_number(&json!("100")), None);
    }

    #[test]
    fn bodies_must_be_objects_without_unknown_fields() {
        assert_eq!(Input::body(&json!([1]), &["a"]).err().unwrap().body.field.as_deref(), Some("$"));
        assert_eq!(Input::body(&json!({"b": 1}), &["a"]).err().unwrap().body.field.as_deref(), Some("b"));
        let v = json!({"a": "x\u{0000}y"});
        assert!(Input::body(&v, &["a"]).unwrap().string("a").is_err());
        let v = json!({"a": "مرحبا 🙂"});
        assert_eq!(Input::body(&v, &["a"]).unwrap().string("a").unwrap(), "مرحبا 🙂");
    }
}
