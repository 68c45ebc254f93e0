//! What a run produces: the interval log, the live progress line, the
//! JSON summary, the CSV files, the HTML report and the terminal table.

pub mod csv;
pub mod html;
pub mod intervals;
pub mod live;
pub mod progress;
pub mod schema;
pub mod summary;
pub mod terminal;

/// A duration in microseconds, in the unit a reader wants at that size.
pub fn human_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 100_000.0 {
        format!("{:.1}ms", us / 1_000.0)
    } else if us < 10_000_000.0 {
        format!("{:.0}ms", us / 1_000.0)
    } else {
        format!("{:.1}s", us / 1_000_000.0)
    }
}

/// An integer with thousands separators: `12,345`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_us(850.0), "850µs");
        assert_eq!(human_us(20_400.0), "20.4ms");
        assert_eq!(human_us(340_000.0), "340ms");
        assert_eq!(human_us(12_500_000.0), "12.5s");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(999), "999");
    }
}
