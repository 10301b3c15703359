//! `outboxd dlq list|replay|discard`: parked aggregates and dead letters
//! from the command line.
//!
//! Guarantees: `list` only reads; `replay` and `discard` are requests the
//! active relay carries out (or this process under the relay lease when no
//! relay runs, see `relay_ops`); a discard keeps an audit row; the exit code
//! is 1 when the request failed.

use outboxd::config::Config;
use outboxd::store::requests::RequestKind;

use super::{open_existing, relay_ops, BadInput, Failure};
use crate::DlqCmd;

pub async fn run(cfg: &Config, c: DlqCmd) -> Result<u8, Failure> {
    match c {
        DlqCmd::List { limit } => {
            let store = super::open_to_read(cfg).await?;
            let parked = store.parked(&cfg.relay.consumer_name).await?;
            let letters = store.dlq_list(limit).await?;
            let (n_parked, n_letters) = (parked.len(), letters.len());
            for p in parked {
                let mut v = serde_json::to_value(&p)?;
                v["kind"] = "parked".into();
                out!("{v}");
            }
            for l in letters {
                let mut v = serde_json::to_value(&l)?;
                v["kind"] = "dead_letter".into();
                out!("{v}");
            }
            // On stderr (stdout stays JSON lines): an empty list reads as one,
            // not as a command that printed nothing.
            // Counted only when the page is full: a shorter page is all of them.
            let all = if n_letters < limit { n_letters as u64 } else { store.dlq_count().await? };
            let shown = if all as usize > n_letters { format!(" ({n_letters} shown: --limit)") } else { String::new() };
            eprintln!("{n_parked} parked aggregates, {all} dead letters{shown}");
            Ok(0)
        }
        DlqCmd::Replay { aggregate, id, all, no_progress, wait } => {
            // One --timeout for the command: `--all`'s second request gets what the first left.
            let deadline = wait.deadline();
            let kinds = match (aggregate, id, all) {
                (Some(a), None, false) => vec![RequestKind::ReplayAggregate { aggregate_id: a }],
                (None, Some(id), false) => vec![RequestKind::ReplayDeadLetters { ids: Some(vec![id]) }],
                (None, None, true) => vec![RequestKind::ReplayAllParked, RequestKind::ReplayDeadLetters { ids: None }],
                _ => {
                    return Err(BadInput(
                        "say what to replay: --aggregate ID (a parked aggregate), --id ID (a dead letter) or --all"
                            .into(),
                    )
                    .into())
                }
            };
            let store = open_existing(cfg).await?;
            let parked = store.parked(&cfg.relay.consumer_name).await?;
            let held: u64 = parked.iter().map(|p| p.held_events).sum();
            let letters = store.dlq_count().await?;
            let mut code = 0;
            // `--all` with nothing of a kind: that request is not submitted
            // (it had nothing to do, and without a relay it would wait for
            // the lease and the broker to say so).
            let kinds: Vec<RequestKind> = kinds
                .into_iter()
                .filter(|k| match k {
                    RequestKind::ReplayAllParked => !parked.is_empty(),
                    RequestKind::ReplayDeadLetters { ids: None } => letters > 0,
                    _ => true,
                })
                .collect();
            // One listener for both requests of `--all`.
            let interrupt = relay_ops::Interrupt::install();
            for (i, kind) in kinds.into_iter().enumerate() {
                if i > 0 && deadline.left().is_zero() {
                    eprintln!(
                        "replay --all: --timeout ({:?}) ran out before the dead letters' replay was submitted; run it again",
                        deadline.total()
                    );
                    code = code.max(1);
                    break;
                }
                let bar = (!no_progress).then(|| progress_bar(&kind, parked.len(), held, letters));
                code = code.max(relay_ops::request(cfg, kind, bar, deadline, &interrupt).await?);
                if code == relay_ops::INTERRUPTED {
                    break;
                }
            }
            if all {
                let left_parked = store.parked(&cfg.relay.consumer_name).await?.len();
                let left_letters = store.dlq_count().await?;
                eprintln!(
                    "replay --all: {} parked aggregates ({held} held events) and {letters} dead letters before; {left_parked} parked aggregates and {left_letters} dead letters left",
                    parked.len()
                );
            }
            Ok(code)
        }
        DlqCmd::Discard { id, reason, wait } => {
            // The same rule as POST /dlq/discard.
            if let Err(why) = outboxd::http::relay_ops::check_discard_reason(&reason) {
                return Err(BadInput(format!("--reason: {why}")).into());
            }
            relay_ops::request(
                cfg,
                RequestKind::Discard { event_id: id, reason },
                None,
                wait.deadline(),
                &relay_ops::Interrupt::install(),
            )
            .await
        }
    }
}

fn progress_bar(kind: &RequestKind, parked: usize, held: u64, letters: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let what = match kind {
        RequestKind::ReplayAllParked => format!("replaying {parked} parked aggregates ({held} held events)"),
        RequestKind::ReplayDeadLetters { ids: None } => format!("replaying {letters} dead letters"),
        _ => "replaying".to_string(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {msg}") {
        bar.set_style(style);
    }
    bar.set_prefix(what);
    bar
}
