//! The admin server (`http.admin_listen`, default 127.0.0.1:9090).
//!
//! - GET /metrics: Prometheus text format 0.0.4 (`Metrics::encode`).
//! - GET /health: the HealthCheckActor's last report; 200 when Healthy or
//!   Degraded, 503 when Unhealthy or stale (older than
//!   `HealthReport::stale_after`: the actor stopped publishing).
//! - GET /health/live: 200 while the process serves requests.
//! - GET /health/ready: 200 when not shutting down and the store was
//!   reachable at the last check, and that check is not stale, else 503.
//! - GET /dlq, POST /dlq/replay, POST /dlq/discard, POST /relay/rewind,
//!   GET /relay/requests/{id}, GET /leases: the relay's operator routes
//!   (`http::relay_ops`). With `http.api_token` set, every POST route
//!   except the test-only /debug/fail needs `Authorization: Bearer <token>`
//!   (401 otherwise; checked for the whole server in `http::admin_app`).
//! - GET /openapi.json: the API description (docs/openapi.json).
//! - POST /debug/fail/{actor}?mode=stop|kill|panic: failure injection
//!   (order_actor, cdc_processor, projection_actor, dlq_actor, health_check), only
//!   when `OUTBOXD_ENABLE_FAULT_INJECTION=1` (tests).
//!
//! Every GET route also answers HEAD (`http::routes`). Query parameters
//! (`/dlq?limit=`, and those of the test-only /debug routes) are checked
//! by name (`http::query`).
//!
//! /metrics and /health read what the actors publish; they never query a
//! store or the broker.

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::actors::{
    ActorName, CoordinatorActor, DlqActor, FailureMode, HealthReport, HealthStatus, InjectFailureInto,
};
use crate::lease::pause::PauseHook;
use crate::metrics::Metrics;
use crate::store::DynStore;

use super::errors::ApiError;
use super::query::Params;
use super::relay_ops;
use super::routes;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Metrics,
    pub health: watch::Receiver<HealthReport>,
    pub coordinator: Addr<CoordinatorActor>,
    pub dlq: Addr<DlqActor>,
    /// Requests and leases are read from the store directly.
    pub store: DynStore,
    /// The relay consumer (`relay.consumer_name`) whose parks requests name.
    pub consumer: String,
    /// This instance's id in the lease table.
    pub instance: String,
    pub relay_pause: PauseHook,
    /// A health report older than this answers 503 (`HealthReport::stale_after`
    /// of `health.interval_ms`).
    pub health_stale_after: Duration,
    pub fault_injection: bool,
    /// `http.api_token`: required on the write routes when set; never logged.
    pub token: Option<Arc<str>>,
}

async fn metrics(st: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(st.metrics.encode())
}

async fn health(st: web::Data<AdminState>) -> HttpResponse {
    let report = st.health.borrow().clone();
    health_response(&report, Utc::now(), st.health_stale_after)
}

/// GET /health for `report` at `now`: 503 when Unhealthy, or when the report
/// is older than `max_age` (`HealthReport::fresh`: the health check actor
/// stopped publishing; the body then says `"stale": true` and why), else 200.
pub fn health_response(report: &HealthReport, now: DateTime<Utc>, max_age: Duration) -> HttpResponse {
    let mut body = serde_json::to_value(report).unwrap_or_default();
    let mut status =
        if report.status == HealthStatus::Unhealthy { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    if let Err(reason) = report.fresh(now, max_age) {
        status = StatusCode::SERVICE_UNAVAILABLE;
        body["stale"] = json!(true);
        body["stale_reason"] = json!(reason);
    }
    HttpResponse::build(status).json(body)
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

async fn ready(st: web::Data<AdminState>) -> HttpResponse {
    let report = st.health.borrow().clone();
    ready_response(&report, Utc::now(), st.health_stale_after)
}

/// GET /health/ready for `report` at `now`: 200 when `HealthReport::ready`
/// and the report is no older than `max_age`, else 503 `not_ready` naming
/// the reason (a stale report's says "stale: ...").
pub fn ready_response(report: &HealthReport, now: DateTime<Utc>, max_age: Duration) -> HttpResponse {
    match report.ready().and_then(|()| report.fresh(now, max_age)) {
        Ok(()) => HttpResponse::Ok().json(json!({"ready": true, "status": report.status})),
        Err(reason) => {
            // A problem document, plus `"ready": false` for simple probes.
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason)
                .response_with(&[("ready", json!(false))])
        }
    }
}

async fn debug_fail(
    st: web::Data<AdminState>,
    path: web::Path<String>,
    q: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    if !st.fault_injection {
        return Err(ApiError::not_found("no such route"));
    }
    let actor = ActorName::parse(&path).ok_or_else(|| {
        ApiError::not_found(
            "unknown actor; use order_actor, cdc_processor, projection_actor, dlq_actor or health_check",
        )
    })?;
    let default = if matches!(actor, ActorName::Cdc | ActorName::Projection) { "kill" } else { "stop" };
    let mode = FailureMode::parse(Params::new(&q, &["mode"])?.get("mode").unwrap_or(default))
        .ok_or_else(|| ApiError::bad_request("mode", "mode must be stop, kill or panic"))?;
    match st.coordinator.send(InjectFailureInto { actor, mode }).await {
        Ok(Ok(())) => Ok(HttpResponse::Accepted().json(json!({"injected": actor, "mode": mode}))),
        Ok(Err(e)) => Err(ApiError::from_actor(e, "failure injection")),
        Err(_) => Err(ApiError::unavailable("coordinator unavailable")),
    }
}

pub fn routes(cfg: &mut web::ServiceConfig, fault_injection: bool) {
    cfg.service(routes::get("/metrics", metrics))
        .service(routes::get("/health", health))
        .service(routes::get("/health/live", live))
        .service(routes::get("/health/ready", ready))
        .service(routes::get("/dlq", relay_ops::dlq_list))
        .service(routes::post("/dlq/replay", relay_ops::dlq_replay))
        .service(routes::post("/dlq/discard", relay_ops::dlq_discard))
        .service(routes::post("/relay/rewind", relay_ops::relay_rewind))
        .service(routes::get("/relay/requests/{id}", relay_ops::request_status))
        .service(routes::get("/leases", relay_ops::leases))
        .service(routes::get("/openapi.json", super::openapi));
    if fault_injection {
        cfg.service(routes::post("/debug/fail/{actor}", debug_fail))
            .service(routes::post("/debug/store", relay_ops::debug_store))
            .service(routes::post("/debug/pause/relay", relay_ops::debug_pause));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::HealthReport;

    fn body(r: HttpResponse) -> serde_json::Value {
        let bytes = actix_web::body::to_bytes(r.into_body());
        let bytes = futures::executor::block_on(bytes).ok().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Review finding: /health and /health/ready served the last report
    /// whatever its age: a stalled health actor left them 200 healthy.
    #[test]
    fn a_stale_report_answers_503() {
        let bound = Duration::from_secs(60);
        let now = Utc::now();
        let mut report = HealthReport::starting();
        report.status = HealthStatus::Healthy;
        for c in report.components.values_mut() {
            c.status = HealthStatus::Healthy;
        }
        report.checked_at = Some(now - chrono::Duration::seconds(5));
        assert_eq!(health_response(&report, now, bound).status(), StatusCode::OK);
        assert_eq!(ready_response(&report, now, bound).status(), StatusCode::OK);
        // Published once, long ago, and never again.
        report.checked_at = Some(now - chrono::Duration::seconds(600));
        let r = health_response(&report, now, bound);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let b = body(r);
        assert_eq!((b["status"].as_str(), b["stale"].as_bool()), (Some("healthy"), Some(true)), "{b}");
        assert!(b["stale_reason"].as_str().unwrap().starts_with("stale:"), "{b}");
        let r = ready_response(&report, now, bound);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let b = body(r);
        assert_eq!((b["error"].as_str(), b["ready"].as_bool()), (Some("not_ready"), Some(false)), "{b}");
        assert!(b["detail"].as_str().unwrap().starts_with("stale:"), "{b}");
    }
}
