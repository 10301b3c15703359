//! The arguments of the aggregate and dead-letter commands (`outboxd order`,
//! `customer`, `dlq`) as clap reads them; their handlers are the files
//! beside this one. Guarantee: every id is parsed as a UUID and every count
//! checked by clap before a handler runs (a bad one is one line, exit 2).

use clap::{Args, Subcommand};
use uuid::Uuid;

use crate::Wait;

#[derive(Args)]
pub struct Meta {
    /// Correlation id to stamp on the events (default: a new one).
    #[arg(long, value_parser = outboxd::args::uuid)]
    pub correlation_id: Option<Uuid>,
    /// Fail with a conflict unless the aggregate is at this version (0 or more).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(0..))]
    pub expected_version: Option<i64>,
}

#[derive(Subcommand)]
pub enum OrderCmd {
    /// Create an order; prints its id.
    Create {
        /// The customer's id (a UUID; the customer need not be registered).
        #[arg(long, value_parser = outboxd::args::uuid)]
        customer: Uuid,
        /// An item as SKU:QUANTITY:UNIT_PRICE_MINOR (repeatable), e.g. BOOK-1:2:1999.
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        /// Currency of every price (an ISO 4217 code such as EUR; other codes are refused).
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Use this order id instead of a new one.
        #[arg(long, value_parser = outboxd::args::uuid)]
        id: Option<Uuid>,
        #[command(flatten)]
        meta: Meta,
    },
    /// Replace the items of a created (unconfirmed) order.
    UpdateItems {
        #[arg(value_parser = outboxd::args::uuid)]
        id: Uuid,
        /// An item as SKU:QUANTITY:UNIT_PRICE_MINOR (repeatable), e.g. BOOK-1:3:1999.
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        /// Currency of every price (an ISO 4217 code); default: the order's current currency.
        #[arg(long)]
        currency: Option<String>,
        #[command(flatten)]
        meta: Meta,
    },
    /// Confirm a created order (OrderConfirmed).
    Confirm {
        #[arg(value_parser = outboxd::args::uuid)]
        id: Uuid,
        #[command(flatten)]
        meta: Meta,
    },
    /// Ship a confirmed order (OrderShipped).
    Ship {
        #[arg(value_parser = outboxd::args::uuid)]
        id: Uuid,
        /// The carrier's tracking number.
        #[arg(long)]
        tracking_number: String,
        /// The carrier, e.g. DHL.
        #[arg(long)]
        carrier: String,
        #[command(flatten)]
        meta: Meta,
    },
    /// Record a shipped order's delivery (OrderDelivered).
    Deliver {
        #[arg(value_parser = outboxd::args::uuid)]
        id: Uuid,
        /// Who signed for the delivery.
        #[arg(long)]
        signature: String,
        #[command(flatten)]
        meta: Meta,
    },
    /// Cancel a created or confirmed order (OrderCancelled).
    Cancel {
        #[arg(value_parser = outboxd::args::uuid)]
        id: Uuid,
        /// Why the order is cancelled.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        meta: Meta,
    },
    /// Print state and events of one order as JSON.
    Show {
        #[arg(value_parser = outboxd::args::uuid)]
        id: Uuid,
    },
}

#[derive(Subcommand)]
pub enum CustomerCmd {
    /// Register a customer; prints its id.
    Register {
        /// The customer's name (at most 200 characters).
        #[arg(long)]
        name: String,
        /// An email address, e.g. ada@example.com.
        #[arg(long)]
        email: String,
        /// A phone number in international format, e.g. +4915112345678.
        #[arg(long)]
        phone: Option<String>,
        /// Use this customer id instead of a new one.
        #[arg(long, value_parser = outboxd::args::uuid)]
        id: Option<Uuid>,
        #[command(flatten)]
        meta: Meta,
    },
    /// Change a customer's email (CustomerEmailChanged).
    ChangeEmail {
        #[arg(value_parser = outboxd::args::uuid)]
        id: Uuid,
        /// The new email address.
        #[arg(long)]
        email: String,
        #[command(flatten)]
        meta: Meta,
    },
    /// Print state and events of one customer as JSON.
    Show {
        #[arg(value_parser = outboxd::args::uuid)]
        id: Uuid,
    },
}

#[derive(Subcommand)]
pub enum DlqCmd {
    /// List parked aggregates (first held event, error, held events) and dead letters as JSON lines.
    List {
        /// At most this many dead letters (1 to 100000; every parked aggregate is listed).
        #[arg(long, default_value_t = 100, value_parser = outboxd::args::list_limit)]
        limit: usize,
    },
    /// Publish a parked aggregate's held events in order and unpark it (--aggregate), a dead
    /// letter (--id), or everything (--all); carried out by the active relay.
    Replay {
        #[arg(long, conflicts_with_all = ["id", "all"])]
        aggregate: Option<String>,
        #[arg(long, conflicts_with = "all", value_parser = outboxd::args::uuid)]
        id: Option<Uuid>,
        #[arg(long)]
        all: bool,
        /// No progress display.
        #[arg(long)]
        no_progress: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Drop the first held event of a parked aggregate on an operator's decision: an audit row
    /// is kept, a marker record (ce_type=outboxd.EventDiscarded) takes its place, the rest flows.
    Discard {
        /// Event id of the parked aggregate's first held event (outboxd dlq list).
        #[arg(long)]
        id: String,
        /// Why (kept in the audit row).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        wait: Wait,
    },
}
