//! SVG building blocks: scales, ticks, number formatting, axes and paths.
//! Charts are drawn in a fixed coordinate system (`viewBox`) and scaled by
//! the browser, so every size here is in viewBox units.

use std::fmt::Write as _;

/// A value with four significant digits at most, trailing zeros trimmed:
/// enough for a reader, and short enough that an hour of intervals stays
/// small.
pub(super) fn sig(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_owned();
    }
    if v == 0.0 {
        return "0".to_owned();
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 8) as usize;
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        let trimmed = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(trimmed);
    }
    if s == "-0" { "0".to_owned() } else { s }
}

/// A tick label: compact, with k and M for large values.
pub(super) fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", sig(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", sig(v / 1e3))
    } else {
        sig(v)
    }
}

/// A viewBox coordinate, to a tenth of a unit.
pub(super) fn px(out: &mut String, v: f64) {
    let tenths = (v * 10.0).round() as i64;
    let (whole, frac) = (tenths / 10, (tenths % 10).abs());
    if tenths < 0 && whole == 0 {
        out.push('-');
    }
    let _ = write!(out, "{whole}");
    if frac != 0 {
        let _ = write!(out, ".{frac}");
    }
}

/// A coordinate as a string.
pub(super) fn p(v: f64) -> String {
    let mut s = String::new();
    px(&mut s, v);
    s
}

/// Maps data values to viewBox coordinates.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scale {
    lo: f64,
    hi: f64,
    r0: f64,
    r1: f64,
    log: bool,
}

impl Scale {
    /// A linear scale from `[lo, hi]` onto `[r0, r1]`.
    pub(super) fn linear(lo: f64, hi: f64, r0: f64, r1: f64) -> Scale {
        let hi = if hi > lo { hi } else { lo + 1.0 };
        Scale {
            lo,
            hi,
            r0,
            r1,
            log: false,
        }
    }

    /// A base-10 logarithmic scale; `lo` must be positive.
    pub(super) fn log(lo: f64, hi: f64, r0: f64, r1: f64) -> Scale {
        let lo = lo.max(f64::MIN_POSITIVE);
        let hi = if hi > lo { hi } else { lo * 10.0 };
        Scale {
            lo: lo.log10(),
            hi: hi.log10(),
            r0,
            r1,
            log: true,
        }
    }

    /// Where `v` falls, clamped to the range.
    pub(super) fn at(&self, v: f64) -> f64 {
        let v = if self.log { v.max(f64::MIN_POSITIVE).log10() } else { v };
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        self.r0 + t * (self.r1 - self.r0)
    }
}

/// The smallest "nice" number (1, 2, 2.5 or 5 times a power of ten) at
/// or above `v`.
pub(super) fn nice_ceil(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || v.is_infinite() {
        return 1.0;
    }
    let base = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * base >= v * (1.0 - 1e-9) {
            return m * base;
        }
    }
    10.0 * base
}

/// Ticks from 0 up to at least `max`, about `n` of them, at a nice step.
/// Returns the ticks and the axis top (the last tick).
pub(super) fn ticks(max: f64, n: usize) -> (Vec<f64>, f64) {
    let max = if max > 0.0 && max.is_finite() { max } else { 1.0 };
    let step = nice_ceil(max / n.max(1) as f64);
    let count = (max / step - 1e-9).ceil().max(1.0) as usize;
    let ticks: Vec<f64> = (0..=count).map(|i| i as f64 * step).collect();
    let top = ticks.last().copied().unwrap_or(max);
    (ticks, top)
}

/// The plot area within a chart's viewBox.
#[derive(Clone, Copy, Debug)]
pub(super) struct Frame {
    /// viewBox width.
    pub(super) width: f64,
    /// viewBox height.
    pub(super) height: f64,
    /// Room for the y tick labels.
    pub(super) left: f64,
    /// Room on the right.
    pub(super) right: f64,
    /// Room above.
    pub(super) top: f64,
    /// Room for the x tick labels.
    pub(super) bottom: f64,
}

impl Frame {
    /// Left edge of the plot area.
    pub(super) fn x0(&self) -> f64 {
        self.left
    }
    /// Right edge.
    pub(super) fn x1(&self) -> f64 {
        self.width - self.right
    }
    /// Bottom edge (the zero line).
    pub(super) fn y0(&self) -> f64 {
        self.height - self.bottom
    }
    /// Top edge.
    pub(super) fn y1(&self) -> f64 {
        self.top
    }

    /// Opens the `<svg>` element; `attrs` are added as they are.
    pub(super) fn open(&self, out: &mut String, label: &str, attrs: &str) {
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" role="img" aria-label="{}" {attrs}>"#,
            p(self.width),
            p(self.height),
            super::esc(label)
        );
    }

    /// Horizontal grid lines and labels at `ticks` of the y scale.
    pub(super) fn y_axis(&self, out: &mut String, y: &Scale, ticks: &[f64], label: impl Fn(f64) -> String) {
        out.push_str(r#"<g class="grid">"#);
        for &t in ticks {
            let at = p(y.at(t));
            let _ = write!(
                out,
                r#"<line x1="{}" x2="{}" y1="{at}" y2="{at}"/><text class="yl" x="{}" y="{at}">{}</text>"#,
                p(self.x0()),
                p(self.x1()),
                p(self.x0() - 6.0),
                label(t)
            );
        }
        out.push_str("</g>");
    }

    /// Tick marks and labels along the bottom.
    pub(super) fn x_axis(&self, out: &mut String, x: &Scale, ticks: &[(f64, String)]) {
        let _ = write!(
            out,
            r#"<g class="axis"><line x1="{}" x2="{}" y1="{y}" y2="{y}"/>"#,
            p(self.x0()),
            p(self.x1()),
            y = p(self.y0())
        );
        for (t, text) in ticks {
            let at = p(x.at(*t));
            let _ = write!(
                out,
                r#"<line x1="{at}" x2="{at}" y1="{}" y2="{}"/><text class="xl" x="{at}" y="{}">{text}</text>"#,
                p(self.y0()),
                p(self.y0() + 4.0),
                p(self.y0() + 16.0)
            );
        }
        out.push_str("</g>");
    }
}

/// A line through `points`; `None` breaks it. A point alone between two
/// gaps is drawn as a dot (a round cap on a zero-length segment).
pub(super) fn line(points: impl Iterator<Item = (f64, Option<f64>)>) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    let mut run = 0usize;
    for (x, y) in points {
        match y {
            Some(y) => {
                d.push(if pen_down { 'L' } else { 'M' });
                px(&mut d, x);
                d.push(' ');
                px(&mut d, y);
                pen_down = true;
                run += 1;
            }
            None => {
                if run == 1 {
                    d.push_str("h0.1");
                }
                pen_down = false;
                run = 0;
            }
        }
    }
    if run == 1 {
        d.push_str("h0.1");
    }
    d
}

/// Rectangles from `y_lo` up to `y_hi` (viewBox units), `width` wide,
/// centred on each `x`, as one path.
pub(super) fn bars(rects: impl Iterator<Item = (f64, f64, f64)>, width: f64) -> String {
    let mut d = String::new();
    for (x, y_lo, y_hi) in rects {
        let h = y_lo - y_hi;
        if h <= 0.05 {
            continue;
        }
        d.push('M');
        px(&mut d, x - width / 2.0);
        d.push(' ');
        px(&mut d, y_hi);
        d.push('h');
        px(&mut d, width);
        d.push('v');
        px(&mut d, h);
        d.push('h');
        px(&mut d, -width);
        d.push('z');
    }
    d
}

/// The band between two lines through `points` (x, lower y, upper y),
/// as one closed path: a stack layer drawn as an area.
pub(super) fn band(points: &[(f64, f64, f64)]) -> String {
    let mut d = String::with_capacity(points.len() * 24);
    if points.iter().all(|(_, lo, hi)| (lo - hi).abs() < 0.05) {
        return d;
    }
    for (k, (x, _, hi)) in points.iter().enumerate() {
        d.push(if k == 0 { 'M' } else { 'L' });
        px(&mut d, *x);
        d.push(' ');
        px(&mut d, *hi);
    }
    for (x, lo, _) in points.iter().rev() {
        d.push('L');
        px(&mut d, *x);
        d.push(' ');
        px(&mut d, *lo);
    }
    d.push('Z');
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(sig(1234.567), "1235");
        assert_eq!(sig(12.3456), "12.35");
        assert_eq!(sig(0.012345), "0.01235");
        assert_eq!(sig(2.0), "2");
        assert_eq!(sig(0.0), "0");
        assert_eq!(sig(-1.5), "-1.5");
        assert_eq!(sig(123456.0), "123456");
        assert_eq!(tick(25000.0), "25k");
        assert_eq!(tick(1_500_000.0), "1.5M");
        assert_eq!(p(12.34), "12.3");
        assert_eq!(p(-0.04), "0");
        assert_eq!(p(-0.26), "-0.3");
        assert_eq!(p(7.0), "7");
    }

    #[test]
    fn ticks_are_nice_and_cover_the_maximum() {
        assert_eq!(ticks(97.0, 4), (vec![0.0, 25.0, 50.0, 75.0, 100.0], 100.0));
        assert_eq!(ticks(0.0, 4).1, 1.0);
        let (t, top) = ticks(3.2, 4);
        assert_eq!(t, [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(top, 4.0);
        assert_eq!(nice_ceil(0.33), 0.5);
    }

    #[test]
    fn scales_map_and_clamp() {
        let s = Scale::linear(0.0, 10.0, 100.0, 0.0);
        assert_eq!(s.at(5.0), 50.0);
        assert_eq!(s.at(20.0), 0.0);
        let l = Scale::log(1.0, 1000.0, 0.0, 300.0);
        assert!((l.at(10.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn gaps_break_lines_and_lone_points_are_dots() {
        let d = line([(0.0, Some(1.0)), (1.0, Some(2.0)), (2.0, None), (3.0, Some(4.0))].into_iter());
        assert_eq!(d, "M0 1L1 2M3 4h0.1");
        assert_eq!(
            bars([(10.0, 50.0, 40.0), (20.0, 50.0, 50.0)].into_iter(), 4.0),
            "M8 40h4v10h-4z"
        );
        assert_eq!(band(&[(0.0, 10.0, 5.0), (1.0, 10.0, 8.0)]), "M0 5L1 8L1 10L0 10Z");
        assert_eq!(band(&[(0.0, 10.0, 10.0)]), "");
    }
}
