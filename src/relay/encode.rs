//! One stored event -> one Kafka record, without re-encoding what is stored.
//!
//! The value is the event envelope JSON consumers read (the serde form of
//! [`crate::envelope::EventEnvelope`], byte for byte), spliced from the row's
//! columns with the stored payload text copied verbatim: no JSON parse, no
//! re-encode per event. The headers are the CloudEvents Kafka binding
//! attributes (`ce_*`) plus sequence, correlation, causation, schema
//! version and the W3C trace context when the command carried one. Both
//! feeds (SQLite positions, Scylla CDC) publish through this encoder.
//!
//! Guarantee (tested): `value(raw) == serde_json::to_vec(&raw.to_envelope())`
//! for every event, and the payload bytes on the topic are the stored bytes.

use chrono::{DateTime, Datelike, Timelike, Utc};
use foldhash::{HashMap, HashMapExt};
use rdkafka::message::{Header, OwnedHeaders};
use std::sync::Arc;
use uuid::Uuid;

use crate::config::TopicRouting;
use crate::relay::topics::topic_for;
use crate::store::feed::RawEvent;

/// `ce_type` of the marker published in place of a discarded event.
pub const DISCARDED_TYPE: &str = "outboxd.EventDiscarded";

/// Renders records; caches per-type strings (topics, `ce_source`), looked
/// up by `&str` (no allocation per event), and reuses one buffer for the
/// headers' rendered numbers.
#[derive(Debug, Clone)]
pub struct Encoder {
    routing: TopicRouting,
    prefix: String,
    source: String,
    /// aggregate type -> event type -> topic.
    topics: HashMap<String, HashMap<String, Arc<str>>>,
    sources: HashMap<String, Arc<str>>,
    scratch: Vec<u8>,
}

/// `2026-11-25T13:20:29.900Z`: RFC 3339, UTC, always milliseconds (as stored).
pub fn write_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    let y = t.year();
    if !(0..=9999).contains(&y) {
        out.extend_from_slice(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).as_bytes());
        return;
    }
    // Digit by digit: this runs twice per published event (value and `ce_time`).
    write_digits(out, y as u64, 4);
    for (sep, n) in [(b'-', t.month()), (b'-', t.day()), (b'T', t.hour()), (b':', t.minute()), (b':', t.second())] {
        out.push(sep);
        write_digits(out, u64::from(n), 2);
    }
    out.push(b'.');
    write_digits(out, u64::from(t.timestamp_subsec_millis().min(999)), 3);
    out.push(b'Z');
}

/// `n` in decimal, zero-padded to at least `width` digits.
fn write_digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let from = i.min(buf.len() - width.min(buf.len()));
    out.extend_from_slice(&buf[from..]);
}

fn write_uuid(out: &mut Vec<u8>, u: &Uuid) {
    let mut buf = [0u8; 36];
    out.extend_from_slice(u.hyphenated().encode_lower(&mut buf).as_bytes());
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping, the same the envelope's serde form uses.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_int(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_digits(out, n.unsigned_abs(), 1);
}

/// Writes the envelope JSON of `e` into `out` (cleared first): the record
/// value, and the payload of its dead letter. The stored payload text is
/// spliced in verbatim (key order, number spelling, spacing kept).
pub fn envelope_json(e: &RawEvent, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(e.payload.get().len() + 400);
    out.extend_from_slice(b"{\"event_id\":\"");
    write_uuid(out, &e.event_id);
    out.extend_from_slice(b"\",\"aggregate_type\":");
    write_str(out, &e.aggregate_type);
    out.extend_from_slice(b",\"aggregate_id\":\"");
    write_uuid(out, &e.aggregate_id);
    out.extend_from_slice(b"\",\"sequence\":");
    write_int(out, e.sequence);
    out.extend_from_slice(b",\"event_type\":");
    write_str(out, &e.event_type);
    out.extend_from_slice(b",\"schema_version\":");
    write_int(out, e.schema_version as i64);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(e.payload.get().as_bytes());
    out.extend_from_slice(b",\"causation_id\":");
    match &e.causation_id {
        Some(c) => {
            out.push(b'"');
            write_uuid(out, c);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"correlation_id\":\"");
    write_uuid(out, &e.correlation_id);
    out.extend_from_slice(b"\",\"timestamp\":\"");
    write_time(out, &e.timestamp);
    out.push(b'"');
    if let Some(t) = &e.trace {
        out.extend_from_slice(b",\"trace\":{\"traceparent\":");
        write_str(out, &t.traceparent);
        if let Some(s) = &t.tracestate {
            out.extend_from_slice(b",\"tracestate\":");
            write_str(out, s);
        }
        out.push(b'}');
    }
    out.push(b'}');
}

/// [`envelope_json`] as text.
pub fn envelope_text(e: &RawEvent) -> String {
    let mut out = Vec::new();
    envelope_json(e, &mut out);
    // Every piece written is UTF-8 (JSON text, digits, ASCII punctuation).
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Encoder {
    pub fn new(routing: TopicRouting, prefix: &str, source: &str) -> Encoder {
        Encoder {
            routing,
            prefix: prefix.to_string(),
            source: source.trim_end_matches('/').to_string(),
            topics: HashMap::new(),
            sources: HashMap::new(),
            scratch: Vec::with_capacity(64),
        }
    }

    pub fn from_config(k: &crate::config::KafkaConfig) -> Encoder {
        Encoder::new(k.topic_routing, &k.topic_prefix, &k.source)
    }

    /// The topic of an event.
    pub fn topic(&mut self, aggregate_type: &str, event_type: &str) -> Arc<str> {
        if let Some(t) = self.topics.get(aggregate_type).and_then(|m| m.get(event_type)) {
            return t.clone();
        }
        let per_event_type = self.routing == TopicRouting::PerEventType;
        let t: Arc<str> = topic_for(per_event_type, &self.prefix, aggregate_type, event_type).into();
        self.topics.entry(aggregate_type.to_string()).or_default().insert(event_type.to_string(), t.clone());
        t
    }

    fn source(&mut self, aggregate_type: &str) -> Arc<str> {
        if let Some(s) = self.sources.get(aggregate_type) {
            return s.clone();
        }
        let s: Arc<str> = format!("{}/{aggregate_type}", self.source).into();
        self.sources.insert(aggregate_type.to_string(), s.clone());
        s
    }

    /// Writes the record value (the envelope JSON) of `e` into `out` (cleared first).
    pub fn value(&self, e: &RawEvent, out: &mut Vec<u8>) {
        envelope_json(e, out);
    }

    /// The record headers of `e`.
    pub fn headers(&mut self, e: &RawEvent) -> OwnedHeaders {
        let source = self.source(&e.aggregate_type);
        let mut ids = [[0u8; 36]; 4];
        let [id, subject, corr, cause] = &mut ids;
        // Time, sequence and schema version rendered side by side in one reused buffer.
        let mut nums = std::mem::take(&mut self.scratch);
        nums.clear();
        write_time(&mut nums, &e.timestamp);
        let time_end = nums.len();
        write_int(&mut nums, e.sequence);
        let seq_end = nums.len();
        write_int(&mut nums, i64::from(e.schema_version));
        let (time, rest) = nums.split_at(time_end);
        let (seq, ver) = rest.split_at(seq_end - time_end);
        let mut h = OwnedHeaders::new_with_capacity(13)
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "ce_id", value: Some(e.event_id.hyphenated().encode_lower(id) as &str) })
            .insert(Header { key: "ce_type", value: Some(e.event_type.as_str()) })
            .insert(Header { key: "ce_source", value: Some(&*source) })
            .insert(Header { key: "ce_time", value: Some(time) })
            .insert(Header {
                key: "ce_subject",
                value: Some(e.aggregate_id.hyphenated().encode_lower(subject) as &str),
            })
            .insert(Header { key: "ce_sequence", value: Some(seq) })
            .insert(Header {
                key: "ce_correlationid",
                value: Some(e.correlation_id.hyphenated().encode_lower(corr) as &str),
            })
            .insert(Header { key: "ce_dataschemaversion", value: Some(ver) })
            .insert(Header { key: "content-type", value: Some("application/json") });
        if let Some(c) = &e.causation_id {
            h = h.insert(Header { key: "ce_causationid", value: Some(c.hyphenated().encode_lower(cause) as &str) });
        }
        if let Some(t) = &e.trace {
            h = h.insert(Header { key: "traceparent", value: Some(t.traceparent.as_str()) });
            if let Some(s) = &t.tracestate {
                h = h.insert(Header { key: "tracestate", value: Some(s.as_str()) });
            }
        }
        self.scratch = nums;
        h
    }

    /// The marker published in place of a discarded event: same key, same
    /// `ce_sequence` and `ce_id`, `ce_type = outboxd.EventDiscarded`.
    pub fn discarded(&mut self, e: &Discarded) -> (Vec<u8>, OwnedHeaders) {
        let value = serde_json::to_vec(&serde_json::json!({
            "event_id": e.event_id,
            "aggregate_type": e.aggregate_type,
            "aggregate_id": e.aggregate_key.to_string(),
            "sequence": e.sequence,
            "event_type": DISCARDED_TYPE,
            "discarded_event_type": e.event_type,
            "reason": e.reason,
            "discarded_at": e.discarded_at,
        }))
        .unwrap_or_default();
        let source = self.source(&e.aggregate_type);
        let mut time = Vec::with_capacity(24);
        write_time(&mut time, &e.discarded_at);
        let (id, seq) = (e.event_id.to_string(), e.sequence.to_string());
        let h = OwnedHeaders::new_with_capacity(9)
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "ce_id", value: Some(id.as_str()) })
            .insert(Header { key: "ce_type", value: Some(DISCARDED_TYPE) })
            .insert(Header { key: "ce_source", value: Some(&*source) })
            .insert(Header { key: "ce_time", value: Some(&time[..]) })
            .insert(Header { key: "ce_subject", value: Some(&*e.aggregate_key) })
            .insert(Header { key: "ce_sequence", value: Some(seq.as_str()) })
            .insert(Header { key: "content-type", value: Some("application/json") });
        (value, h)
    }
}

/// What the discard marker says about the event it replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Discarded {
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_key: Arc<str>,
    pub sequence: i64,
    pub event_type: String,
    pub reason: String,
    pub discarded_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{EventEnvelope, TraceContext};
    use chrono::TimeZone;
    use rdkafka::message::Headers;

    fn envelope(ms: i64, causation: bool, payload: serde_json::Value) -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            aggregate_type: "order".into(),
            aggregate_id: Uuid::now_v7(),
            sequence: 42,
            event_type: "OrderShipped".into(),
            schema_version: 2,
            payload,
            causation_id: causation.then(Uuid::now_v7),
            correlation_id: Uuid::now_v7(),
            timestamp: Utc.timestamp_millis_opt(ms).unwrap(),
            trace: None,
        }
    }

    #[test]
    fn value_is_the_envelope_json_byte_for_byte() {
        let payloads = [
            serde_json::json!({"tracking_number": "TRK\"1\\n", "carrier": "DHL ü €", "n": [1, 2.5, null, true]}),
            serde_json::json!({}),
            serde_json::json!({"nested": {"a": {"b": [{"c": "\u{1}"}]}}}),
        ];
        let enc = Encoder::new(TopicRouting::PerAggregate, "", "/outboxd");
        let mut out = Vec::new();
        for (i, p) in payloads.into_iter().enumerate() {
            for ms in [1_764_000_000_000, 1_764_000_000_900, 1_764_000_000_012, 0] {
                let e = envelope(ms, i % 2 == 0, p.clone());
                let raw = RawEvent::from_envelope(&e, 7).unwrap();
                enc.value(&raw, &mut out);
                assert_eq!(String::from_utf8(out.clone()).unwrap(), serde_json::to_string(&e).unwrap());
            }
        }
    }

    #[test]
    fn stored_payload_text_is_copied_verbatim() {
        let e = envelope(1_764_000_000_000, false, serde_json::json!({}));
        let mut raw = RawEvent::from_envelope(&e, 1).unwrap();
        // Stored by another writer with spacing and key order of its own.
        raw.payload = crate::store::feed::raw_json(r#"{ "z": 1,  "a" : "x" }"#.into()).unwrap();
        let mut out = Vec::new();
        Encoder::new(TopicRouting::PerAggregate, "", "/o").value(&raw, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains(r#""payload":{ "z": 1,  "a" : "x" },"#), "{s}");
        let back: EventEnvelope = serde_json::from_str(&s).unwrap();
        assert_eq!(back.payload, serde_json::json!({"a": "x", "z": 1}));
    }

    #[test]
    fn time_format_matches_the_stored_form() {
        for ms in [0, 1, 999, 1_764_000_000_000, 253_402_300_799_999] {
            let t = Utc.timestamp_millis_opt(ms).unwrap();
            let mut out = Vec::new();
            write_time(&mut out, &t);
            assert_eq!(String::from_utf8(out).unwrap(), t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
    }

    #[test]
    fn integers_render_as_display_does() {
        for n in [0, 7, -7, 42, 1_000_000, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_int(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    fn header_map(h: &OwnedHeaders) -> HashMap<String, String> {
        h.iter()
            .map(|x| (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).to_string()))
            .collect()
    }

    #[test]
    fn headers_carry_the_cloudevents_attributes_and_trace() {
        let e = envelope(1_764_000_000_900, true, serde_json::json!({"a": 1}));
        let mut raw = RawEvent::from_envelope(&e, 3).unwrap();
        raw.trace =
            Some(TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Some("k=v")).unwrap());
        let mut enc = Encoder::new(TopicRouting::PerAggregate, "p.", "/outboxd/");
        let h = header_map(&enc.headers(&raw));
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_id"], e.event_id.to_string());
        assert_eq!(h["ce_type"], "OrderShipped");
        assert_eq!(h["ce_source"], "/outboxd/order");
        assert_eq!(h["ce_time"], "2025-11-24T16:00:00.900Z");
        assert_eq!(h["ce_subject"], e.aggregate_id.to_string());
        assert_eq!(h["ce_sequence"], "42");
        assert_eq!(h["ce_correlationid"], e.correlation_id.to_string());
        assert_eq!(h["ce_causationid"], e.causation_id.unwrap().to_string());
        assert_eq!(h["ce_dataschemaversion"], "2");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(h["tracestate"], "k=v");
        assert_eq!(&*enc.topic("order", "OrderShipped"), "p.order-events");
        let mut out = Vec::new();
        enc.value(&raw, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["trace"]["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    }

    #[test]
    fn discard_marker_keeps_id_key_and_sequence() {
        let mut enc = Encoder::new(TopicRouting::PerAggregate, "", "/outboxd");
        let d = Discarded {
            event_id: Uuid::now_v7(),
            aggregate_type: "order".into(),
            aggregate_key: Uuid::now_v7().to_string().into(),
            sequence: 3,
            event_type: "OrderConfirmed".into(),
            reason: "operator: payload rejected by consumers".into(),
            discarded_at: Utc::now(),
        };
        let (value, headers) = enc.discarded(&d);
        let h = header_map(&headers);
        assert_eq!((h["ce_type"].as_str(), h["ce_sequence"].as_str()), (DISCARDED_TYPE, "3"));
        assert_eq!(h["ce_id"], d.event_id.to_string());
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(v["discarded_event_type"], "OrderConfirmed");
        assert_eq!(v["reason"], d.reason);
    }
}
