//! Printing answers: a table for people, or the api's JSON unchanged for programs.

use chrono::{DateTime, Utc};
use comfy_table::{presets::NOTHING, ContentArrangement, Table};
use serde_json::Value;

use crate::cli::Output;

/// Prints `value` as JSON, or as the table `rows` builds from it.
pub fn print(output: Output, value: &Value, header: &[&str], rows: Vec<Vec<String>>) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => println!("{}", table(header, rows)),
    }
}

/// Columns aligned, no rules, headers in capitals: as `kubectl get` prints. No header: no header row.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !header.is_empty() {
        table.set_header(header.iter().copied());
    }
    for row in rows {
        table.add_row(row);
    }
    table
}

/// The array under `key` (empty if absent).
pub fn items<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A field as text: strings bare, null as `-`, whole numbers without a fraction, the rest as JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) if text.is_empty() => "-".into(),
        Value::String(text) => text.clone(),
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15) =>
        {
            format!("{}", n.as_f64().unwrap_or_default() as i64)
        }
        other => other.to_string(),
    }
}

pub fn instant(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str()?.parse().ok()
}

/// An instant to the second, in UTC.
pub fn when(value: &Value) -> String {
    instant(value)
        .map(|at| at.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| text(value))
}

/// How long from `from` to `to` (or to now), as `1h02m03s` (tenths under ten seconds: `0.8s`).
pub fn span(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    let Some(from) = from else { return "-".into() };
    let millis = (to.unwrap_or_else(Utc::now) - from)
        .num_milliseconds()
        .max(0);
    if millis < 10_000 {
        return format!("{:.1}s", millis as f64 / 1000.0);
    }
    let seconds = millis / 1000;
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_hours_minutes_seconds() {
        let start: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let end = |secs| Some(start + chrono::Duration::seconds(secs));
        assert_eq!(span(Some(start), end(7)), "7.0s");
        assert_eq!(span(Some(start), end(42)), "42s");
        assert_eq!(span(Some(start), end(125)), "2m05s");
        assert_eq!(span(Some(start), end(3723)), "1h02m03s");
        assert_eq!(span(None, end(1)), "-");
    }

    #[test]
    fn fields_print_bare() {
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(text(&Value::from("")), "-");
        assert_eq!(text(&Value::from("x")), "x");
        assert_eq!(text(&Value::from(3)), "3");
        assert_eq!(text(&Value::from(3.0)), "3");
        assert_eq!(text(&Value::from(0.5)), "0.5");
    }
}
