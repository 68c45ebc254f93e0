//! The Prometheus text exposition format (0.0.4), as servers write it:
//! `name{label="value",…} value [timestamp]`, `#` comments.

use std::fmt;

/// Label pairs, in the order written.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name, with its `_sum`, `_count` or `_bucket` suffix if any.
    pub name: String,
    /// Labels in the order written.
    pub labels: Labels,
    /// The value. `NaN` and `±Inf` are kept.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Sample {
    /// `name{a="x",b="y"}`, the series' identity.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (k, v)) in self.labels.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(
                    f,
                    "{k}=\"{}\"",
                    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
                )?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// A page: the samples read, and the lines that could not be.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// Every sample, in page order.
    pub samples: Vec<Sample>,
    /// Unreadable lines: (1-based line number, why).
    pub skipped: Vec<(usize, String)>,
}

/// Reads a page. A line that cannot be read is skipped and listed, never
/// fatal: one odd exporter line must not hide the rest.
pub fn parse(text: &str) -> Page {
    let mut page = Page::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match sample(line) {
            Ok(s) => page.samples.push(s),
            Err(why) => page.skipped.push((i + 1, why)),
        }
    }
    page
}

/// The sample of series `key` (as [`Sample`]'s `Display` writes it:
/// `name{a="x"}`) with `value`.
pub fn series(key: &str, value: f64) -> Result<Sample, String> {
    let mut s = sample(&format!("{key} 0"))?;
    s.value = value;
    Ok(s)
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn sample(line: &str) -> Result<Sample, String> {
    let end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map_or(line.len(), |(i, _)| i);
    if end == 0 {
        return Err(format!("no metric name in {line:?}"));
    }
    let name = line[..end].to_owned();
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| format!("{name}: no value"))?;
    let value = number(value).ok_or_else(|| format!("{name}: {value:?} is not a number"))?;
    Ok(Sample { name, labels, value })
}

/// Reads `a="x",b="y"}` and returns the labels and what follows the `}`.
fn label_set(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("a label without '='")?;
        let key = s[..eq].trim().to_owned();
        if key.is_empty()
            || !key
                .chars()
                .enumerate()
                .all(|(i, c)| is_name_char(c, i == 0) && c != ':')
        {
            return Err(format!("bad label name {key:?}"));
        }
        s = s[eq + 1..].trim_start();
        s = s.strip_prefix('"').ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err("an unterminated label value".to_owned()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value".to_owned()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key, value));
        s = s[close + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_values_and_skips_comments() {
        let page = parse(
            "# HELP vllm:num_requests_running Number of requests.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
             x_bucket{le=\"+Inf\"} 7 1700000000000\n\
             esc{a=\"q\\\"uote\\\\ and\\nline\", b=\"\"} -Inf\n\
             plain 1e-3\n",
        );
        assert!(page.skipped.is_empty(), "{:?}", page.skipped);
        let s = &page.samples;
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "vllm:num_requests_running");
        assert_eq!(s[0].label("model_name"), Some("m"));
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("le"), Some("+Inf"));
        assert_eq!(s[1].value, 7.0);
        assert_eq!(s[2].label("a"), Some("q\"uote\\ and\nline"));
        assert_eq!(s[2].value, f64::NEG_INFINITY);
        assert_eq!(s[3].value, 0.001);
        assert_eq!(
            s[0].to_string(),
            "vllm:num_requests_running{engine=\"0\",model_name=\"m\"}"
        );
    }

    #[test]
    fn bad_lines_are_listed_and_the_rest_kept() {
        let page = parse("good 1\n{x=\"1\"} 2\nnovalue\nbad{a=1} 3\nopen{a=\"x} 4\nword abc\nalso_good 2\n");
        assert_eq!(page.samples.len(), 2);
        let lines: Vec<usize> = page.skipped.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }
    }
}
