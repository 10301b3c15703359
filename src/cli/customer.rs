//! `outboxd customer ...`: Customer commands and `customer show`.
//!
//! Guarantee: email and phone are validated before the store is opened; a
//! refused command changes nothing (exit 2).

use uuid::Uuid;

use outboxd::app::AppError;
use outboxd::config::Config;
use outboxd::domain::{Customer, CustomerCommand, Email, PhoneNumber};

use super::{meta, open_for, service, Failure};
use crate::CustomerCmd;

pub async fn run(cfg: &Config, c: CustomerCmd) -> Result<u8, Failure> {
    // An id this command made up names nothing stored: a refusal omits it.
    let generated_id = matches!(&c, CustomerCmd::Register { id: None, .. });
    let (id, cmd, m) = match c {
        CustomerCmd::Show { id } => {
            let svc = service(cfg, super::open_to_read(cfg).await?);
            let loaded = svc.load::<Customer>(id).await?;
            if loaded.version == 0 {
                return Err(Failure::from(AppError::Domain(outboxd::domain::DomainError::CustomerNotFound))
                    .context(format!("customer {id}")));
            }
            let events = svc.store().load(id).await?;
            out!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"id": id, "version": loaded.version, "state": loaded.state, "events": events})
                )?
            );
            return Ok(0);
        }
        CustomerCmd::Register { name, email, phone, id, meta: m } => {
            let email = Email::new(&email)?;
            let phone = phone.as_deref().map(PhoneNumber::new).transpose()?;
            (id.unwrap_or_else(Uuid::now_v7), CustomerCommand::Register { name, email, phone }, m)
        }
        CustomerCmd::ChangeEmail { id, email, meta: m } => {
            (id, CustomerCommand::ChangeEmail { email: Email::new(&email)? }, m)
        }
    };
    let is_create = matches!(cmd, CustomerCommand::Register { .. });
    let svc = service(cfg, open_for(cfg, is_create).await?);
    let out = svc.execute::<Customer>(id, &cmd, meta(&m), m.expected_version).await.map_err(|e| {
        if generated_id {
            Failure::from(e)
        } else {
            Failure::from(e).context(format!("customer {id}"))
        }
    })?;
    if is_create {
        out!("{id}");
    } else {
        out!("customer {id}: version {}", out.version);
    }
    Ok(0)
}
