//! Charts over the run's time axis: one shared x axis (seconds since the
//! start), one point per interval, warm-ups shaded and step boundaries
//! drawn in every chart, so that charts stacked on the page line up.

use std::fmt::Write as _;

use super::esc;
use super::svg::{self, Frame, Scale, p, sig};
use crate::report::summary::Summary;

/// Chart width in viewBox units: about the page's content width, so text
/// is drawn near its nominal size on a laptop screen.
const WIDTH: f64 = 1320.0;
/// Chart height.
const HEIGHT: f64 = 170.0;

/// What an interval's value describes, and so where it is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum At {
    /// The whole interval (a rate, a percentile): a line through the
    /// intervals' middles.
    Middle,
    /// The moment the interval was cut (a gauge such as users running):
    /// steps, each value held from its interval's end until the next.
    End,
    /// A level planned for the whole interval: steps spanning each
    /// interval.
    Span,
}

/// One line or stack layer of a chart.
#[derive(Clone, Debug)]
pub(super) struct Series {
    /// Its name, as the legend and `data-series` show it.
    pub(super) name: String,
    /// CSS colour.
    pub(super) color: &'static str,
    /// One value per interval, in the order of `summary.intervals`;
    /// `None` where the interval has none (no successful request).
    pub(super) values: Vec<Option<f64>>,
    /// Where each value is drawn (lines only).
    pub(super) at: At,
    /// Dashed, so that a line lying on another still shows.
    pub(super) dashed: bool,
}

impl Series {
    /// A series named `name`.
    pub(super) fn new(name: impl Into<String>, color: &'static str, values: Vec<Option<f64>>) -> Series {
        Series {
            name: name.into(),
            color,
            values,
            at: At::Middle,
            dashed: false,
        }
    }

    /// Drawn as `at` says.
    pub(super) fn at(mut self, at: At) -> Series {
        self.at = at;
        self
    }

    /// Drawn dashed.
    pub(super) fn dashed(mut self) -> Series {
        self.dashed = true;
        self
    }
}

/// How a chart draws its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Style {
    /// Lines, each on its own.
    Lines,
    /// Bars stacked in series order.
    Stacked,
}

/// One time-series chart.
#[derive(Clone, Debug)]
pub(super) struct Chart {
    /// Element id and `data-chart`.
    pub(super) id: &'static str,
    /// Heading.
    pub(super) title: String,
    /// Unit of the y axis, as a reader says it.
    pub(super) unit: &'static str,
    /// What the chart shows and where its numbers come from.
    pub(super) caption: String,
    /// Its series.
    pub(super) series: Vec<Series>,
    /// Lines or stacked bars.
    pub(super) style: Style,
    /// Shares (0 to 1) drawn as percentages on a fixed 0–100% axis.
    pub(super) share: bool,
    /// Intervals to shade (requests present), when given.
    pub(super) shade: Option<Vec<bool>>,
    /// Label each step at the top of the chart.
    pub(super) step_labels: bool,
}

impl Chart {
    /// A line chart.
    pub(super) fn lines(id: &'static str, title: impl Into<String>, unit: &'static str, series: Vec<Series>) -> Chart {
        Chart {
            id,
            title: title.into(),
            unit,
            caption: String::new(),
            series,
            style: Style::Lines,
            share: false,
            shade: None,
            step_labels: false,
        }
    }

    /// With a caption.
    pub(super) fn caption(mut self, caption: impl Into<String>) -> Chart {
        self.caption = caption.into();
        self
    }
}

/// A step of the load, as the time axis marks it.
#[derive(Clone, Debug)]
struct StepMark {
    start_s: f64,
    label: String,
    knee: bool,
}

/// The run's time axis, shared by every time-series chart.
#[derive(Clone, Debug)]
pub(super) struct Timeline {
    frame: Frame,
    x: Scale,
    x_ticks: Vec<(f64, String)>,
    /// Interval length, seconds.
    dt: f64,
    /// Interval index of each point.
    index: Vec<u64>,
    /// Runs of warm-up intervals, as time spans.
    warmups: Vec<(f64, f64)>,
    /// Where the drain begins, seconds.
    drain_s: Option<f64>,
    steps: Vec<StepMark>,
}

/// Spans of consecutive intervals for which `on` holds.
fn runs(index: &[u64], dt: f64, on: impl Fn(usize) -> bool) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut open: Option<(f64, u64)> = None;
    for (i, &k) in index.iter().enumerate() {
        let contiguous = open.is_some_and(|(_, last)| k == last + 1);
        match (on(i), open) {
            (true, Some((start, _))) if contiguous => open = Some((start, k)),
            (true, _) => {
                if let Some((start, last)) = open {
                    out.push((start, (last + 1) as f64 * dt));
                }
                open = Some((k as f64 * dt, k));
            }
            (false, Some((start, last))) => {
                out.push((start, (last + 1) as f64 * dt));
                open = None;
            }
            (false, None) => {}
        }
    }
    if let Some((start, last)) = open {
        out.push((start, (last + 1) as f64 * dt));
    }
    out
}

impl Timeline {
    /// The time axis of `s`.
    pub(super) fn new(s: &Summary) -> Timeline {
        let dt = if s.load.interval_s > 0.0 {
            s.load.interval_s
        } else {
            1.0
        };
        let index: Vec<u64> = s.intervals.iter().map(|i| i.interval).collect();
        let end = s
            .intervals
            .last()
            .map_or(s.load.planned_duration_s, |i| i.end_s)
            .max(dt);
        let frame = Frame {
            width: WIDTH,
            height: HEIGHT,
            left: 64.0,
            right: 16.0,
            top: 14.0,
            bottom: 24.0,
        };
        let x = Scale::linear(0.0, end, frame.x0(), frame.x1());
        let (ticks, _) = svg::ticks(end, 12);
        let x_ticks = ticks
            .into_iter()
            .filter(|t| *t <= end + 1e-9)
            .map(|t| (t, format!("{}s", sig(t))))
            .collect();
        let warmups = runs(&index, dt, |i| s.intervals[i].warmup);
        let drain_s = s
            .intervals
            .iter()
            .find(|i| i.step.is_none())
            .map(|i| i.interval as f64 * dt);
        let knee = s.knee.as_ref().and_then(|k| k.step);
        let steps = if s.steps.len() > 1 {
            s.steps
                .iter()
                .map(|st| StepMark {
                    start_s: st.start_s,
                    label: st.label.clone(),
                    knee: knee == Some(st.index),
                })
                .collect()
        } else {
            Vec::new()
        };
        Timeline {
            frame,
            x,
            x_ticks,
            dt,
            index,
            warmups,
            drain_s,
            steps,
        }
    }

    /// Points on the axis: one per interval.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    fn x_of(&self, i: usize) -> f64 {
        self.x.at((self.index[i] as f64 + 0.5) * self.dt)
    }

    /// The viewBox points of a line: one per interval in the middle, or
    /// two per interval for steps.
    fn line_points(&self, at: At, values: &[Option<f64>], y: &Scale) -> Vec<(f64, Option<f64>)> {
        let edge = |i: usize, end: bool| self.x.at((self.index[i] + u64::from(end)) as f64 * self.dt);
        let mut out = Vec::with_capacity(values.len() * 2);
        for (i, v) in values.iter().enumerate() {
            let v = v.map(|v| y.at(v));
            match at {
                At::Middle => out.push((self.x_of(i), v)),
                At::Span => {
                    out.push((edge(i, false), v));
                    out.push((edge(i, true), v));
                }
                At::End => {
                    // Held from this interval's end to the next one's.
                    out.push((edge(i, true), v));
                    let next = if i + 1 < values.len() {
                        edge(i + 1, true)
                    } else {
                        edge(i, true)
                    };
                    out.push((next, v));
                }
            }
        }
        out
    }

    fn span(&self, out: &mut String, class: &str, (a, b): (f64, f64)) {
        let (xa, xb) = (self.x.at(a), self.x.at(b));
        let _ = write!(
            out,
            r#"<rect class="{class}" x="{}" y="{}" width="{}" height="{}"/>"#,
            p(xa),
            p(self.frame.y1()),
            p((xb - xa).max(0.5)),
            p(self.frame.y0() - self.frame.y1())
        );
    }

    /// Warm-ups, drain and (when asked) shaded intervals, under the data.
    fn backdrop(&self, out: &mut String, shade: Option<&[bool]>) {
        if let Some(shade) = shade {
            for run in runs(&self.index, self.dt, |i| shade.get(i).copied().unwrap_or(false)) {
                self.span(out, "busy", run);
            }
        }
        for &w in &self.warmups {
            self.span(out, "warm", w);
        }
        if let (Some(d), Some(last)) = (self.drain_s, self.index.last()) {
            self.span(out, "drain", (d, (last + 1) as f64 * self.dt));
        }
    }

    /// Step boundaries, over the data; labels at the top when asked.
    fn step_marks(&self, out: &mut String, labels: bool) {
        let f = &self.frame;
        for (k, st) in self.steps.iter().enumerate() {
            let x = self.x.at(st.start_s);
            if k > 0 {
                let _ = write!(
                    out,
                    r#"<line class="step" x1="{x}" x2="{x}" y1="{}" y2="{}"/>"#,
                    p(f.y1()),
                    p(f.y0()),
                    x = p(x)
                );
            }
            if labels {
                let knee = if st.knee { r#" data-knee-step="1""# } else { "" };
                let text = if st.knee {
                    format!("{} · knee", st.label)
                } else {
                    st.label.clone()
                };
                let _ = write!(
                    out,
                    r#"<text class="steplabel{}" x="{}" y="{}"{knee}>{}</text>"#,
                    if st.knee { " kneestep" } else { "" },
                    p(x + 4.0),
                    p(f.y1() + 10.0),
                    esc(&text)
                );
            }
        }
        if let Some(d) = self.drain_s {
            let x = p(self.x.at(d));
            let _ = write!(
                out,
                r#"<line class="step" x1="{x}" x2="{x}" y1="{}" y2="{}"/>"#,
                p(f.y1()),
                p(f.y0())
            );
            if labels {
                let _ = write!(
                    out,
                    r#"<text class="steplabel" x="{}" y="{}">drain</text>"#,
                    p(self.x.at(d) + 4.0),
                    p(f.y1() + 10.0)
                );
            }
        }
    }

    /// Writes `chart` as a `<figure>`.
    pub(super) fn chart(&self, out: &mut String, chart: &Chart) {
        let n = self.len();
        let f = self.frame;
        // The y axis: fixed for shares, else from the largest value shown
        // (the stack's top for stacked bars).
        let max = if chart.share {
            1.0
        } else {
            match chart.style {
                Style::Lines => chart
                    .series
                    .iter()
                    .flat_map(|s| s.values.iter().flatten())
                    .fold(0.0, |a: f64, b| a.max(*b)),
                Style::Stacked => (0..n)
                    .map(|i| {
                        chart
                            .series
                            .iter()
                            .filter_map(|s| s.values.get(i).copied().flatten())
                            .sum()
                    })
                    .fold(0.0, f64::max),
            }
        };
        let (ticks, top) = if chart.share {
            (vec![0.0, 0.25, 0.5, 0.75, 1.0], 1.0)
        } else {
            svg::ticks(max, 4)
        };
        let y = Scale::linear(0.0, top, f.y0(), f.y1());

        let _ = write!(
            out,
            r#"<figure class="chart ts" id="chart-{id}"><figcaption><h3>{title}</h3><span class="unit">{unit}</span><span class="at"></span><ul class="legend">"#,
            id = chart.id,
            title = esc(&chart.title),
            unit = esc(chart.unit),
        );
        for s in &chart.series {
            let swatch = match chart.style {
                Style::Lines => "line",
                Style::Stacked => "block",
            };
            let swatch = if s.dashed { "dash" } else { swatch };
            let _ = write!(
                out,
                r#"<li><i class="{swatch}" style="color:{c};background:{c}"></i>{}<b></b></li>"#,
                esc(&s.name),
                c = s.color,
            );
        }
        out.push_str("</ul></figcaption>");
        let attrs = format!(
            r#"class="timeseries" data-kind="time" data-chart="{}" data-n="{n}" data-first="{}" data-dt="{}" data-x0="{}" data-x1="{}" data-t1="{}" data-unit="{}""#,
            chart.id,
            self.index.first().copied().unwrap_or(0),
            sig(self.dt),
            p(f.x0()),
            p(f.x1()),
            sig(self.index.last().map_or(0.0, |l| (l + 1) as f64 * self.dt)),
            if chart.share { "%" } else { "" },
        );
        f.open(out, &chart.title, &attrs);
        self.backdrop(out, chart.shade.as_deref());
        let label = |t: f64| {
            if chart.share {
                format!("{}%", sig(t * 100.0))
            } else {
                svg::tick(t)
            }
        };
        f.y_axis(out, &y, &ticks, label);
        f.x_axis(out, &self.x, &self.x_ticks);

        // Intervals a few units wide or less are drawn as areas, not bars:
        // bars narrower than a pixel leave seams when anti-aliased.
        let slot = if n > 0 { (f.x1() - f.x0()) / n as f64 } else { 1.0 };
        let dense = slot <= 4.0;
        let mut floor = vec![0.0f64; n];
        for s in &chart.series {
            let values = (0..n).map(|i| s.values.get(i).copied().flatten());
            let missing = values.clone().filter(Option::is_none).count();
            let shown = |v: Option<f64>| match v {
                Some(v) if chart.share => sig(v * 100.0),
                Some(v) => sig(v),
                None => "-".to_owned(),
            };
            let text: Vec<String> = values.clone().map(shown).collect();
            let common = format!(
                r#"data-series="{}" data-points="{n}" data-missing="{missing}" data-values="{}""#,
                esc(&s.name),
                text.join(" ")
            );
            match chart.style {
                Style::Lines => {
                    let all: Vec<Option<f64>> = values.collect();
                    let d = svg::line(self.line_points(s.at, &all, &y).into_iter());
                    let _ = write!(
                        out,
                        r#"<path class="series{}" d="{d}" stroke="{}" {common}/>"#,
                        if s.dashed { " dashed" } else { "" },
                        s.color
                    );
                }
                Style::Stacked => {
                    let rects: Vec<(f64, f64, f64)> = values
                        .enumerate()
                        .map(|(i, v)| {
                            let lo = floor[i];
                            let hi = lo + v.unwrap_or(0.0).max(0.0);
                            floor[i] = hi;
                            (self.x_of(i), y.at(lo), y.at(hi))
                        })
                        .collect();
                    let d = if dense {
                        svg::band(&rects)
                    } else {
                        svg::bars(rects.into_iter(), slot * 0.8)
                    };
                    let _ = write!(out, r#"<path class="bars" d="{d}" fill="{}" {common}/>"#, s.color);
                }
            }
        }
        self.step_marks(out, chart.step_labels);
        let _ = write!(
            out,
            r#"<line class="cursor" x1="0" x2="0" y1="{}" y2="{}"/></svg>"#,
            p(f.y1()),
            p(f.y0())
        );
        if !chart.caption.is_empty() {
            let _ = write!(out, r#"<p class="caption">{}</p>"#, esc(&chart.caption));
        }
        out.push_str("</figure>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_consecutive_intervals() {
        let index = [0, 1, 2, 3, 5, 6];
        let on = [true, true, false, true, true, true];
        assert_eq!(runs(&index, 1.0, |i| on[i]), [(0.0, 2.0), (3.0, 4.0), (5.0, 7.0)]);
        assert!(runs(&index, 1.0, |_| false).is_empty());
    }
}
