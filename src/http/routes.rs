//! One shape for every route of both servers: a resource that serves one
//! method and answers every other with a 405 problem whose `Allow` header
//! names what it serves.
//!
//! Guarantee: a GET route also serves HEAD with the same handler, so the
//! same status and headers (`ETag`, `Content-Length`, ...) and no body
//! (RFC 9110 9.3.2; actix-http never writes the body of a HEAD response).

use actix_web::{web, FromRequest, Handler, Resource, Responder};

use super::errors::method_not_allowed;

/// `GET path` (and `HEAD path`) served by `handler`.
pub fn get<F, Args>(path: &str, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path.to_string())
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(method_not_allowed("GET, HEAD"))
}

/// `POST path` served by `handler`.
pub fn post<F, Args>(path: &str, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path.to_string()).route(web::post().to(handler)).default_service(method_not_allowed("POST"))
}
