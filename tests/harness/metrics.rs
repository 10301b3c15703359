//! /metrics as tests read it: parsed Prometheus text, values by name and labels.

/// A parsed /metrics page.
pub struct Metrics {
    pub scrape: prometheus_parse::Scrape,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("/metrics parses as Prometheus text");
        Metrics { scrape, text: text.to_string() }
    }

    /// Metric family names (histograms under their base name).
    pub fn names(&self) -> std::collections::HashSet<String> {
        self.scrape.samples.iter().map(|s| s.metric.clone()).collect()
    }

    /// Sum of the samples of `name` whose labels include all of `labels`
    /// (histograms: their count); 0 when none matches, so `value(..) == 0.0`
    /// also holds for a metric missing from the page: assert a 0 with
    /// [`Metrics::sample`].
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// As [`Metrics::value`], but panics when no series of `name` has all of
    /// `labels`: a missing metric is not a 0.
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        if self.matching(name, labels).next().is_none() {
            let family: Vec<&str> = self.text.lines().filter(|l| l.starts_with(name)).collect();
            panic!("no series {name}{labels:?} on /metrics; the page's lines of {name}: {family:?}");
        }
        self.value(name, labels)
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.scrape
            .samples
            .iter()
            .filter(move |s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }
}

/// `promtool check metrics` on a /metrics page (the Prometheus project's
/// own lint: naming, units, help and type lines): its findings, or why it
/// could not run. `Ok(false)`: promtool is not installed (SKIPPED, as the
/// other external tools' checks; `make test` installs it: Debian `prometheus`).
pub fn promtool_findings(text: &str) -> Result<bool, String> {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot run promtool: {e}")),
    };
    child.stdin.take().expect("piped").write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() {
        Ok(true)
    } else {
        Err(format!("promtool check metrics ({}): {said}", out.status))
    }
}
