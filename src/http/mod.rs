//! actix-web servers: the command API and the admin server.
//!
//! Both bind 127.0.0.1 by default (`http.listen`, `http.admin_listen`).
//! Every response is counted in `http_requests_total{route,status}` with the
//! route *pattern* written `/orders/:id` (or `unmatched`), so the label set
//! stays bounded whatever paths clients send. (`:id` rather than actix's
//! `{id}`: braces inside label values break common exposition parsers.) Every error is JSON
//! (`errors::ApiError`), including the ones actix-web's extractors raise.

pub mod admin;
pub mod api;
pub mod auth;
pub mod errors;
pub mod input;
pub mod json_body;
pub mod openapi;
pub mod query;
pub mod relay_ops;
pub mod routes;

pub use openapi::openapi;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServerHandle, Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::{web, App, HttpMessage, HttpServer, ResponseError};
use futures::future::{Either, FutureExt};
use std::net::SocketAddr;

use crate::config::HttpConfig;
use crate::metrics::Metrics;

pub use admin::AdminState;
pub use api::ApiState;

/// Counts the response of every request by route pattern and status.
fn count<S, B>(
    requests: prometheus::IntCounterVec,
) -> impl Fn(ServiceRequest, &S) -> futures::future::LocalBoxFuture<'static, Result<ServiceResponse<B>, actix_web::Error>>
       + Clone
       + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: 'static,
{
    move |req: ServiceRequest, srv: &S| {
        let route = req.match_pattern().map(|p| route_label(&p)).unwrap_or_else(|| "unmatched".to_string());
        let requests = requests.clone();
        let fut = srv.call(req);
        async move {
            let res = fut.await;
            let status = match &res {
                Ok(r) => r.status(),
                Err(e) => e.as_response_error().status_code(),
            };
            requests.with_label_values(&[&route, status.as_str()]).inc();
            res
        }
        .boxed_local()
    }
}

/// `/orders/{id}/ship` -> `/orders/:id/ship`.
pub fn route_label(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    // 0: literal, 1: parameter name, 2: parameter regex (dropped)
    let mut state = 0;
    for c in pattern.chars() {
        match (state, c) {
            (0, '{') => {
                state = 1;
                out.push(':');
            }
            (1 | 2, '}') => state = 0,
            (1, ':') => state = 2,
            (2, _) => {}
            (_, c) => out.push(c),
        }
    }
    out
}

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(errors::json_error)
}

/// The command API as an actix-web `App` (also usable with `actix_web::test`).
pub fn api_app(
    st: ApiState,
    metrics: Metrics,
    max_body_bytes: usize,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(st))
        .app_data(json_config(max_body_bytes))
        .app_data(web::PayloadConfig::new(max_body_bytes))
        .app_data(input::BodyLimit(max_body_bytes))
        .app_data(web::PathConfig::default().error_handler(errors::path_error))
        .app_data(web::QueryConfig::default().error_handler(errors::query_error))
        .configure(api::routes)
        .default_service(web::to(errors::route_not_found))
        .wrap_fn(|req, srv| {
            let st = req.app_data::<web::Data<ApiState>>().cloned();
            let checked = match &st {
                Some(st) => api::gate(st, req.request()),
                None => Ok(uuid::Uuid::now_v7()),
            };
            match checked {
                Ok(cid) => {
                    req.extensions_mut().insert(api::CorrelationId(cid));
                    let fut = srv.call(req);
                    Either::Left(async move {
                        let mut res = fut.await?;
                        let (k, v) = api::correlation_header(cid);
                        res.headers_mut().insert(k, v);
                        Ok(res.map_into_left_body())
                    })
                }
                Err((e, cid)) => {
                    let mut res = req.into_response(e.error_response());
                    if let Some(cid) = cid {
                        let (k, v) = api::correlation_header(cid);
                        res.headers_mut().insert(k, v);
                    }
                    Either::Right(futures::future::ready(Ok(res.map_into_right_body())))
                }
            }
        })
        .wrap_fn(count(metrics.http_requests.clone()))
}

/// The admin server as an actix-web `App`; its routes that read a body
/// (`/dlq/replay`, `/dlq/discard`, `/relay/rewind`) take up to
/// `max_body_bytes` (`http.max_body_bytes`, as the command API does).
pub fn admin_app(
    st: AdminState,
    max_body_bytes: usize,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let metrics = st.metrics.clone();
    let fault_injection = st.fault_injection;
    let token = st.token.clone();
    App::new()
        .app_data(web::Data::new(st))
        .app_data(json_config(max_body_bytes))
        .app_data(web::PayloadConfig::new(max_body_bytes))
        .app_data(input::BodyLimit(max_body_bytes))
        .app_data(web::PathConfig::default().error_handler(errors::path_error))
        .app_data(web::QueryConfig::default().error_handler(errors::query_error))
        .configure(move |c| admin::routes(c, fault_injection))
        .default_service(web::to(errors::route_not_found))
        .wrap_fn(move |req, srv| {
            // Operator safety: with `http.api_token` set, every write route
            // of the admin server (DLQ replay, ...) needs the bearer token;
            // the test-only fault injection is exempt.
            let write = !matches!(*req.method(), Method::GET | Method::HEAD);
            let checked = if write && !req.path().starts_with("/debug/fail/") {
                auth::require_bearer(token.as_deref(), req.request())
            } else {
                Ok(())
            };
            // As on the command API: a compressed body is refused, never decoded.
            let checked = checked.and_then(|()| input::content_encoding(req.request()));
            match checked {
                Ok(()) => Either::Left(srv.call(req).map(|r| r.map(|r| r.map_into_left_body()))),
                Err(e) => {
                    let res = req.into_response(e.error_response()).map_into_right_body();
                    Either::Right(futures::future::ready(Ok(res)))
                }
            }
        })
        .wrap_fn(count(metrics.http_requests.clone()))
}

/// Both servers, bound and running (spawned on the current actix system).
pub struct Servers {
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub api: ServerHandle,
    pub admin: ServerHandle,
}

impl Servers {
    /// Stops accepting connections and lets in-flight requests finish, both
    /// servers at once (each within its shutdown timeout: one grace, not two).
    pub async fn stop(&self) {
        tokio::join!(self.api.stop(true), self.admin.stop(true));
    }
}

fn bind_error(key: &str, addr: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("cannot listen on {key} = {addr}: {e}"))
}

/// Whether both listen addresses can be bound now (each bound and released
/// at once; like the servers' bind, one of a name's addresses is enough):
/// checked before the daemon starts its actors and takes leases, so a taken
/// port ends the start before anything else began.
pub fn check_listen(cfg: &HttpConfig) -> std::io::Result<()> {
    use std::net::ToSocketAddrs;
    let mut held = Vec::new();
    for (key, addr) in [("http.listen", &cfg.listen), ("http.admin_listen", &cfg.admin_listen)] {
        let mut last = None;
        let mut bound = false;
        for a in addr.to_socket_addrs().map_err(|e| bind_error(key, addr, e))? {
            match std::net::TcpListener::bind(a) {
                Ok(l) => {
                    held.push(l);
                    bound = true;
                }
                Err(e) => last = Some(e),
            }
        }
        if !bound {
            let e = last.unwrap_or_else(|| std::io::Error::other("the name resolved to no address"));
            return Err(bind_error(key, addr, e));
        }
    }
    Ok(())
}

/// Binds both servers and spawns them on the current actix system. Must be
/// called inside an actix `System`.
pub fn start(
    cfg: &HttpConfig,
    shutdown_deadline_ms: u64,
    api: ApiState,
    admin: AdminState,
    metrics: Metrics,
) -> std::io::Result<Servers> {
    let max_body = cfg.max_body_bytes;
    let grace = (shutdown_deadline_ms / 1000).clamp(1, 30);
    let api_server = HttpServer::new(move || api_app(api.clone(), metrics.clone(), max_body))
        .workers(cfg.workers.max(1))
        .disable_signals()
        .shutdown_timeout(grace)
        .bind(&cfg.listen)
        .map_err(|e| bind_error("http.listen", &cfg.listen, e))?;
    let api_addr =
        api_server.addrs().first().copied().ok_or_else(|| std::io::Error::other("http.listen bound no address"))?;
    let admin_server = HttpServer::new(move || admin_app(admin.clone(), max_body))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(grace)
        .bind(&cfg.admin_listen)
        .map_err(|e| bind_error("http.admin_listen", &cfg.admin_listen, e))?;
    let admin_addr = admin_server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("http.admin_listen bound no address"))?;
    let api_server: Server = api_server.run();
    let admin_server: Server = admin_server.run();
    let servers = Servers { api_addr, admin_addr, api: api_server.handle(), admin: admin_server.handle() };
    actix::spawn(async move {
        if let Err(e) = api_server.await {
            tracing::error!(error = %e, "command API server failed");
        }
    });
    actix::spawn(async move {
        if let Err(e) = admin_server.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    tracing::info!(addr = %api_addr, "command API listening on http://{api_addr}");
    tracing::info!(addr = %admin_addr, "admin server listening on http://{admin_addr} (/metrics, /health)");
    Ok(servers)
}

#[cfg(test)]
mod app_tests;

#[cfg(test)]
mod tests {
    #[test]
    fn route_labels() {
        assert_eq!(super::route_label("/orders/{id}/ship"), "/orders/:id/ship");
        assert_eq!(super::route_label("/orders"), "/orders");
        assert_eq!(super::route_label("/debug/fail/{actor}"), "/debug/fail/:actor");
        assert_eq!(super::route_label("/a/{id:\\d+}/b"), "/a/:id/b");
    }
}
