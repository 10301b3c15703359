//! The figures of one benchmark run: printed as lines for a reader, or, with
//! `--json`, as one JSON object on stdout (the lines then go to stderr) so a
//! script can track them.
//!
//! Guarantee: the JSON object holds every figure the lines print (rates as
//! median/min/max with the samples, ratios per round), nothing more.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// Median, min and max of a set of samples (3 rounds in practice).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of the finite samples (a clock that could not be read
    /// gives NaN: left out, never a min or max); an even count's median is
    /// the mean of the two middle ones. No finite sample: all NaN.
    pub fn of(samples: &[f64]) -> Spread {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n == 0 {
            return Spread { median: f64::NAN, min: f64::NAN, max: f64::NAN };
        }
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Spread { median, min: v[0], max: v[n - 1] }
    }
}

/// Ratios per round (`num[i] / den[i]`, never median over median): their
/// spread and the JSON figure {median, min, max, samples}. The two series
/// are rounds of one run: of one length (checked, a bench bug otherwise).
fn per_round(num: &[f64], den: &[f64]) -> (Spread, Value) {
    assert_eq!(num.len(), den.len(), "a ratio per round needs as many rounds on both sides");
    let samples: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
    let r = Spread::of(&samples);
    (r, json!({ "median": r.median, "min": r.min, "max": r.max, "samples": samples }))
}

/// Collects the figures of one `outboxd bench ...` run.
pub struct Report {
    json: bool,
    figures: Map<String, Value>,
}

impl Report {
    pub fn new(bench: &str, json: bool) -> Report {
        let mut figures = Map::new();
        figures.insert("bench".into(), Value::from(bench));
        Report { json, figures }
    }

    /// A line for the reader (stderr under `--json`, so stdout is one object).
    pub fn say(&self, line: impl std::fmt::Display) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// A figure (any serializable value) under `key`.
    pub fn set(&mut self, key: &str, value: impl Serialize) {
        self.figures.insert(key.to_string(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// Rates of `what` over the rounds, with their ratio to `base` per round:
    /// one line, and `key` -> {median, min, max, samples[, ratio]}.
    pub fn rates(&mut self, key: &str, what: &str, unit: &str, rates: &[f64], base: Option<&[f64]>) -> Spread {
        let line =
            |s: Spread| format!("{what:<34}: median {:>9.0} {unit} (min {:.0}, max {:.0})", s.median, s.min, s.max);
        self.series(key, rates, base, line, "ratio ")
    }

    /// CPU per item over the rounds (microseconds), with its ratio to
    /// `base`'s per round (how many times the baseline's cost): one line,
    /// and `key` -> {median, min, max, samples[, ratio]}.
    pub fn costs(&mut self, key: &str, what: &str, costs: &[f64], base: Option<&[f64]>) -> Spread {
        let line =
            |s: Spread| format!("{what:<34}: median {:>9.2} us CPU (min {:.2}, max {:.2})", s.median, s.min, s.max);
        self.series(key, costs, base, line, "the baseline's: ")
    }

    /// One series of per-round samples: the line `line` renders, then the
    /// per-round ratio to `base` under `ratio_words`.
    fn series(
        &mut self,
        key: &str,
        samples: &[f64],
        base: Option<&[f64]>,
        line: impl Fn(Spread) -> String,
        ratio_words: &str,
    ) -> Spread {
        let s = Spread::of(samples);
        let mut fig = json!({ "median": s.median, "min": s.min, "max": s.max, "samples": samples });
        let mut text = line(s);
        if let Some(b) = base {
            let (r, ratio) = per_round(samples, b);
            text.push_str(&format!("; {ratio_words}{:.2}x (min {:.2}x, max {:.2}x)", r.median, r.min, r.max));
            fig["ratio"] = ratio;
        }
        self.say(text);
        self.figures.insert(key.to_string(), fig);
        s
    }

    /// The per-round ratio of two rates already reported (one line, and
    /// `key` -> {median, min, max, samples}).
    pub fn ratio(&mut self, key: &str, what: &str, num: &[f64], den: &[f64]) -> Spread {
        let (r, fig) = per_round(num, den);
        self.say(format!("{what:<34}: ratio {:.2}x (min {:.2}x, max {:.2}x)", r.median, r.min, r.max));
        self.figures.insert(key.to_string(), fig);
        r
    }

    /// Ends the run: under `--json` prints the object (one line) on stdout.
    pub fn finish(self) {
        if self.json {
            println!("{}", Value::Object(self.figures));
        }
    }

    #[cfg(test)]
    fn figures(&self) -> &Map<String, Value> {
        &self.figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]), Spread { median: 2.0, min: 1.0, max: 3.0 });
        assert!(Spread::of(&[]).median.is_nan());
    }

    /// Review finding: an even count took the upper middle sample, and a
    /// NaN (a CPU clock that could not be read) sorted above everything and
    /// became the max or the median.
    #[test]
    fn an_even_count_takes_the_middle_mean_and_nan_is_left_out() {
        assert_eq!(Spread::of(&[4.0, 1.0, 3.0, 2.0]), Spread { median: 2.5, min: 1.0, max: 4.0 });
        assert_eq!(Spread::of(&[3.0, f64::NAN, 1.0, 2.0]), Spread { median: 2.0, min: 1.0, max: 3.0 });
        assert!(Spread::of(&[f64::NAN]).max.is_nan());
    }

    #[test]
    fn rates_record_samples_and_per_round_ratios() {
        let mut r = Report::new("relay", true);
        r.rates("relay", "relay", "events/s", &[50.0, 80.0, 60.0], Some(&[100.0, 100.0, 200.0]));
        let f = &r.figures()["relay"];
        assert_eq!(f["median"], 60.0);
        assert_eq!(f["samples"], json!([50.0, 80.0, 60.0]));
        // Ratios are per round (0.5, 0.8, 0.3), not median over median.
        assert_eq!(f["ratio"]["median"], 0.5);
        assert_eq!(f["ratio"]["min"], 0.3);
        assert_eq!(r.figures()["bench"], "relay");
    }

    #[test]
    fn costs_keep_their_decimals_and_ratio_to_the_baseline() {
        let mut r = Report::new("relay", true);
        r.costs("cpu", "cpu", &[12.5, 10.0, 11.25], Some(&[5.0, 5.0, 5.0]));
        let f = &r.figures()["cpu"];
        assert_eq!(f["median"], 11.25);
        assert_eq!(f["ratio"]["samples"], json!([2.5, 2.0, 2.25]));
    }

    #[test]
    fn ratio_is_per_round_under_its_own_key() {
        let mut r = Report::new("http", true);
        let s = r.ratio("api_over_service", "api / service", &[1.0, 3.0, 2.0], &[4.0, 4.0, 1.0]);
        assert_eq!(s, Spread { median: 0.75, min: 0.25, max: 2.0 });
        assert_eq!(r.figures()["api_over_service"]["samples"], json!([0.25, 0.75, 2.0]));
    }
}
