//! deploy/grafana/dashboards/outboxd.json: an `instance` template variable
//! fed by the outboxd scrape job, every metric selector of every panel
//! filtered by it, and a panel that shows which instance holds the relay
//! lease (`relay_leader`). With two replicas a panel that ignores the
//! selector would silently mix both instances' figures. Every metric the
//! dashboard and deploy/prometheus/alerts.yml query is one outboxd registers.

mod harness;

use serde_json::Value;

fn dashboard() -> Value {
    let p = harness::repo_root().join("deploy/grafana/dashboards/outboxd.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).expect("dashboard is JSON")
}

fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p);
        for inner in p.get("panels").and_then(Value::as_array).into_iter().flatten() {
            out.push(inner);
        }
    }
    out
}

/// Metric names in a PromQL expression: identifiers directly followed by a
/// `{` selector or standing alone, that are not functions, keywords or label
/// names inside `by (...)`/`{...}`.
fn metric_selectors(expr: &str) -> Vec<(String, String)> {
    const WORDS: &[&str] = &[
        "sum",
        "max",
        "min",
        "avg",
        "count",
        "rate",
        "increase",
        "histogram_quantile",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "le",
        "offset",
        "irate",
        "delta",
        "abs",
        "clamp_min",
    ];
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut depth_brace = 0;
    let mut in_by = false;
    while i < b.len() {
        let c = b[i] as char;
        match c {
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            ')' => in_by = false,
            '"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
            }
            '[' => {
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
            }
            _ if (c.is_ascii_alphabetic() || c == '_') && depth_brace == 0 => {
                let start = i;
                while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                    i += 1;
                }
                let word = &expr[start..i];
                if word == "by" || word == "without" || word == "on" || word == "ignoring" {
                    in_by = true;
                }
                let next = expr[i..].trim_start();
                if !WORDS.contains(&word) && !in_by && !next.starts_with('(') {
                    let sel = if next.starts_with('{') {
                        next[..next.find('}').unwrap() + 1].to_string()
                    } else {
                        String::new()
                    };
                    out.push((word.to_string(), sel));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[test]
fn selector_parser() {
    let s = metric_selectors(
        r#"histogram_quantile(0.99, sum(rate(x_bucket{instance=~"$instance"}[1m])) by (le, instance))"#,
    );
    assert_eq!(s, [("x_bucket".to_string(), r#"{instance=~"$instance"}"#.to_string())]);
    assert_eq!(metric_selectors("sum(y) by (a)"), [("y".to_string(), String::new())]);
}

#[test]
fn instance_variable_comes_from_the_outboxd_job() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let v = vars.iter().find(|v| v["name"] == "instance").expect("an `instance` variable");
    assert_eq!(v["type"], "query");
    assert!(v["definition"].as_str().unwrap().contains(r#"up{job="outboxd"}"#), "{v}");
    assert_eq!(v["includeAll"], true);
    assert_eq!(v["multi"], true);
}

#[test]
fn every_panel_filters_by_instance() {
    let d = dashboard();
    let mut seen = 0;
    for p in panels(&d) {
        for t in p.get("targets").and_then(Value::as_array).into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            let sels = metric_selectors(expr);
            assert!(!sels.is_empty(), "panel {:?}: no metric in {expr}", p["title"]);
            for (metric, sel) in sels {
                assert!(
                    sel.contains(r#"instance=~"$instance""#),
                    "panel {:?}: {metric} not filtered by $instance in {expr}",
                    p["title"]
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 20, "{seen} selectors checked");
}

#[test]
fn a_panel_shows_the_active_relay() {
    let d = dashboard();
    let p = panels(&d)
        .into_iter()
        .find(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["expr"].as_str().unwrap_or_default().starts_with("relay_leader"))
        })
        .expect("a panel on relay_leader");
    let mappings = p["fieldConfig"]["defaults"]["mappings"].to_string();
    assert!(mappings.contains("active") && mappings.contains("standby"), "{mappings}");
}

/// Every metric the alert rules and the dashboard query is one outboxd
/// registers (a histogram by its `_bucket`/`_sum`/`_count` series), or
/// Prometheus's own `up`: promtool's rule tests feed made-up series, so a
/// metric renamed in the code left its alert silently never firing.
#[test]
fn every_metric_the_alerts_and_the_dashboard_query_is_registered() {
    let registered = outboxd::metrics::Metrics::new().catalogue();
    let known = |name: &str| {
        name == "up"
            || registered.iter().any(|r| {
                r == name || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s) == Some(r.as_str()))
            })
    };
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(harness::repo_root().join("deploy/prometheus/alerts.yml")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for g in rules["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?").to_string();
            exprs.push((format!("alerts.yml {name}"), r["expr"].as_str().expect("expr").to_string()));
        }
    }
    assert!(exprs.len() >= 10, "the alert rules were read: {exprs:?}");
    let d = dashboard();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                exprs.push((format!("dashboard panel {}", p["title"]), e.to_string()));
            }
        }
    }
    let unknown: Vec<String> = exprs
        .iter()
        .flat_map(|(at, e)| metric_selectors(e).into_iter().map(move |(m, _)| (at, m)))
        .filter(|(_, m)| !known(m))
        .map(|(at, m)| format!("{at}: {m}"))
        .collect();
    assert!(unknown.is_empty(), "queried but never registered: {unknown:#?}");
}
