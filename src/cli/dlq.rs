//! `outboxd dlq list|replay`: the dead-letter queue from the command line.
//!
//! Guarantee: replay removes only dead letters the broker confirmed; the
//! exit code is 1 when any failed.

use outboxd::config::Config;

use super::{open, BadInput, Failure};
use crate::DlqCmd;

pub async fn run(cfg: &Config, c: DlqCmd) -> Result<u8, Failure> {
    let store = open(cfg).await?;
    match c {
        DlqCmd::List { limit } => {
            for l in store.dlq_list(limit).await? {
                println!("{}", serde_json::to_string(&l)?);
            }
            Ok(0)
        }
        DlqCmd::Replay { id, all } => {
            let letters = store.dlq_list(100_000).await?;
            let chosen: Vec<_> = match (id, all) {
                (Some(id), _) => {
                    let l: Vec<_> = letters.into_iter().filter(|l| l.id == id).collect();
                    if l.is_empty() {
                        return Err(BadInput(format!("no dead letter with id {id}")).into());
                    }
                    l
                }
                (None, true) => letters,
                (None, false) => {
                    return Err(BadInput("say which dead letters to replay: --id ID or --all".into()).into())
                }
            };
            let publisher = outboxd::relay::KafkaPublisher::new(&cfg.kafka).map_err(|e| BadInput(e.message))?;
            let report = outboxd::relay::dlq::replay(&store, &publisher, chosen, &cfg.service.default_currency).await?;
            for id in &report.replayed {
                println!("replayed {id}");
            }
            for (id, e) in &report.failed {
                eprintln!("failed {id}: {e}");
            }
            Ok(if report.failed.is_empty() { 0 } else { 1 })
        }
    }
}
