//! The Prometheus text exposition format (version 0.0.4), parsed into samples (pure).
//!
//! Only what `top` needs: sample lines with their labels and value; `# HELP` / `# TYPE` and
//! other comments are skipped. Anything else is an error naming the line, never a panic: the
//! text comes from whatever answered the URL.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed `/metrics` response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Parses a whole response.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut samples = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start();
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_sample(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?);
    }
    Ok(Exposition { samples })
}

impl Exposition {
    #[cfg(test)]
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The sum over every sample named `name` (all label sets); None when there is none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut values = self.named(name).map(|s| s.value).peekable();
        values.peek()?;
        Some(values.sum())
    }

    /// `name` summed per value of `label` (samples without it are left out).
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.named(name) {
            if let Some(v) = s.label(label) {
                *out.entry(v.to_string()).or_insert(0.0) += s.value;
            }
        }
        out
    }

    /// The cumulative buckets of histogram `name` (`name_bucket{le=…}`), summed over any other
    /// labels, sorted by upper bound; empty when there are none. A bucket whose `le` is not a
    /// number is an error.
    pub fn buckets(&self, name: &str) -> Result<Vec<(f64, f64)>, String> {
        let bucket = format!("{name}_bucket");
        let mut by_le: Vec<(f64, f64)> = Vec::new();
        for s in self.named(&bucket) {
            let le = s
                .label("le")
                .ok_or_else(|| format!("{bucket} without an `le` label"))?;
            let le: f64 = parse_float(le).ok_or_else(|| format!("{bucket}: le={le:?}"))?;
            match by_le.iter_mut().find(|(b, _)| *b == le) {
                Some((_, count)) => *count += s.value,
                None => by_le.push((le, s.value)),
            }
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(by_le)
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("expected a metric name at {line:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    let Some(value) = fields.next() else {
        return Err(format!("{name} has no value"));
    };
    if !rest.starts_with([' ', '\t']) {
        return Err(format!("expected a space before the value of {name}"));
    }
    let value = parse_float(value).ok_or_else(|| format!("{name}: {value:?} is not a number"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("{name}: timestamp {ts:?} is not an integer"))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("{name}: unexpected {extra:?} after the value"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `name="value",…}` (the `{` already consumed); returns what follows the `}`.
fn parse_labels<'a>(mut rest: &'a str, out: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("expected a label name at {rest:?}"));
        }
        rest = rest[end..].trim_start();
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("expected `=` after label {name}"))?
            .trim_start();
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("expected `\"` to open the value of label {name}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("the value of label {name} is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!(
                            "label {name}: unknown escape {:?}",
                            other.map(|(_, c)| c)
                        ));
                    }
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        rest = rest[close + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected `,` or `}}` after label {name}"));
        }
    }
}

/// A sample value or `le` bound: Go's float syntax, which Rust's parser accepts, including
/// `+Inf`, `-Inf` and `NaN`.
fn parse_float(s: &str) -> Option<f64> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    #[test]
    fn sample_lines_parse_into_name_labels_and_value() {
        let cases: Vec<(&str, Sample)> = vec![
            ("up 1", sample("up", &[], 1.0)),
            ("a_b:c 2.5e3", sample("a_b:c", &[], 2500.0)),
            ("x 7 1700000000000", sample("x", &[], 7.0)),
            ("x\t-3", sample("x", &[], -3.0)),
            (
                r#"r_total{reason="malformed_payload"} 4"#,
                sample("r_total", &[("reason", "malformed_payload")], 4.0),
            ),
            (
                r#"h_bucket{le="+Inf",a="b",} 9"#,
                sample("h_bucket", &[("le", "+Inf"), ("a", "b")], 9.0),
            ),
            (
                r#"x{ a = "q\"\\\n" } 1"#,
                sample("x", &[("a", "q\"\\\n")], 1.0),
            ),
            (r#"x{a="ü{}, "} 1"#, sample("x", &[("a", "ü{}, ")], 1.0)),
            ("x{} 0", sample("x", &[], 0.0)),
            ("x +Inf", sample("x", &[], f64::INFINITY)),
        ];
        for (line, expected) in cases {
            let parsed = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(parsed.samples(), [expected], "{line}");
        }
        let nan = parse("x NaN").expect("NaN");
        assert!(nan.samples()[0].value.is_nan());
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let text = "# HELP up 1 when up\n# TYPE up gauge\n\n   \nup 1\r\n# a comment\n";
        assert_eq!(parse(text).expect("parses").samples().len(), 1);
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for (text, line, needle) in [
            ("up 1\nup", 2, "no value"),
            ("up one", 1, "not a number"),
            ("up 1 2 3", 1, "unexpected"),
            ("up 1 12.5", 1, "timestamp"),
            ("9up 1", 1, "metric name"),
            ("{a=\"b\"} 1", 1, "metric name"),
            ("up{a=\"b\" 1", 1, "`,` or `}`"),
            ("up{a=\"b} 1", 1, "not closed"),
            ("up{a=b} 1", 1, "open the value"),
            ("up{a} 1", 1, "`=`"),
            ("up{=\"b\"} 1", 1, "label name"),
            ("up{a=\"\\t\"} 1", 1, "escape"),
            ("up{a=\"b\"}1", 1, "space before the value"),
            ("ok", 1, "no value"),
            ("<html>", 1, "metric name"),
        ] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, line, "{text}: {err}");
            assert!(err.message.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn sums_labels_and_buckets_are_read_across_label_sets() {
        let text = r#"
c_total{reason="a"} 1
c_total{reason="b"} 2
c_total{reason="a",instance="x"} 3
g 5
h_bucket{le="0.5"} 1
h_bucket{le="+Inf"} 4
h_bucket{le="0.1"} 0
h_bucket{le="0.5",other="y"} 2
h_sum 1.5
h_count 4
"#;
        let m = parse(text).expect("parses");
        assert_eq!(m.sum("c_total"), Some(6.0));
        assert_eq!(m.sum("g"), Some(5.0));
        assert_eq!(m.sum("missing"), None);
        let by = m.by_label("c_total", "reason");
        assert_eq!(by.get("a"), Some(&4.0));
        assert_eq!(by.get("b"), Some(&2.0));
        assert_eq!(
            m.buckets("h").expect("buckets"),
            vec![(0.1, 0.0), (0.5, 3.0), (f64::INFINITY, 4.0)]
        );
        assert_eq!(m.buckets("missing").expect("none"), vec![]);
        let bad = parse("h_bucket{le=\"x\"} 1").expect("parses");
        assert!(bad.buckets("h").is_err());
    }

    proptest::proptest! {
        /// Whatever answers the URL, the parser returns, it does not panic.
        #[test]
        fn any_text_parses_or_fails_without_panicking(text in "\\PC*") {
            let _ = parse(&text);
        }

        /// Well-formed lines give back their labels and value exactly.
        #[test]
        fn written_samples_read_back(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels in proptest::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,10}", "\\PC{0,12}"), 0..4),
            value in proptest::num::f64::NORMAL | proptest::num::f64::ZERO,
        ) {
            let escaped: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            let line = format!("{name}{{{}}} {value:e}", escaped.join(","));
            let parsed = parse(&line).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{line}: {e}")))?;
            proptest::prop_assert_eq!(parsed.samples(), &[Sample { name, labels, value }]);
        }
    }
}
