//! `report.html`: one self-contained page, inline SVG charts and a few
//! lines of inline JavaScript (no CDN, no external file): CDFs of join time
//! and rebuffer ratio per policy, load per PoP over time per policy with
//! the scenario's events marked, and the summary table.

use crate::Comparison;
use crate::metrics::Series;
use std::fmt::Write as _;

const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const W: f64 = 640.0;
const H: f64 = 300.0;
const PAD_L: f64 = 56.0;
const PAD_B: f64 = 36.0;
const PAD_T: f64 = 14.0;
const PAD_R: f64 = 14.0;
/// Left end of logarithmic axes, ms.
const LOG_MIN: f64 = 100.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Axes {
    x_max: f64,
    y_max: f64,
    log_x: bool,
}

impl Axes {
    fn x(&self, v: f64) -> f64 {
        let f = if self.log_x {
            // Log axis from LOG_MIN (join times are never below ~100 ms).
            let lo = LOG_MIN.log10();
            (v.max(LOG_MIN).log10() - lo) / (self.x_max.max(LOG_MIN * 10.0).log10() - lo)
        } else {
            v / self.x_max.max(1e-9)
        };
        PAD_L + f.clamp(0.0, 1.0) * (W - PAD_L - PAD_R)
    }
    fn y(&self, v: f64) -> f64 {
        H - PAD_B - (v / self.y_max.max(1e-9)).clamp(0.0, 1.0) * (H - PAD_B - PAD_T)
    }
}

fn frame(out: &mut String, id: &str, title: &str, xlabel: &str, ylabel: &str, a: &Axes) {
    let _ = write!(
        out,
        r#"<figure><figcaption>{}</figcaption><svg class="chart" id="{id}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">"#,
        esc(title)
    );
    let _ = write!(
        out,
        r##"<rect x="{PAD_L}" y="{PAD_T}" width="{}" height="{}" fill="#fafafa" stroke="#999"/>"##,
        W - PAD_L - PAD_R,
        H - PAD_B - PAD_T
    );
    for i in 0..=4 {
        let fy = a.y_max * f64::from(i) / 4.0;
        let y = a.y(fy);
        let _ = write!(
            out,
            r##"<line x1="{PAD_L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            W - PAD_R,
            PAD_L - 4.0,
            y + 3.0,
            trim(fy)
        );
        let fx = if a.log_x {
            let lo = LOG_MIN.log10();
            10f64.powf(lo + (a.x_max.max(LOG_MIN * 10.0).log10() - lo) * f64::from(i) / 4.0)
        } else {
            a.x_max * f64::from(i) / 4.0
        };
        let x = a.x(fx);
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            H - PAD_B + 14.0,
            trim(fx)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="12" y="{}" font-size="11" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>"#,
        (W + PAD_L) / 2.0,
        H - 4.0,
        esc(xlabel),
        H / 2.0,
        H / 2.0,
        esc(ylabel)
    );
}

fn trim(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn polyline(out: &mut String, pts: &[(f64, f64)], colour: &str, label: &str, dash: bool) {
    let mut d = String::new();
    for (x, y) in pts {
        let _ = write!(d, "{x:.1},{y:.1} ");
    }
    let _ = write!(
        out,
        r#"<polyline class="series" data-label="{}" points="{}" fill="none" stroke="{colour}" stroke-width="1.6"{}/>"#,
        esc(label),
        d.trim_end(),
        if dash {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        }
    );
}

fn legend(out: &mut String, names: &[String]) {
    out.push_str(r#"<div class="legend">"#);
    for (i, n) in names.iter().enumerate() {
        let _ = write!(
            out,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            COLOURS[i % COLOURS.len()],
            esc(n)
        );
    }
    out.push_str("</div>");
}

fn cdf_chart(
    out: &mut String,
    id: &str,
    title: &str,
    xlabel: &str,
    data: &[(String, Vec<f64>)],
    log_x: bool,
) {
    let x_max = data
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(if log_x { LOG_MIN * 10.0 } else { 1e-3 });
    let a = Axes {
        x_max,
        y_max: 1.0,
        log_x,
    };
    frame(out, id, title, xlabel, "share of sessions ≤ x", &a);
    for (i, (name, v)) in data.iter().enumerate() {
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .filter(|(_, x)| x.is_finite())
            .map(|(q, x)| (a.x(*x), a.y(q as f64 / 100.0)))
            .collect();
        polyline(
            out,
            &pts,
            COLOURS[i % COLOURS.len()],
            name,
            name == "oracle",
        );
    }
    out.push_str("</svg>");
    legend(
        out,
        &data.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
    );
    out.push_str("</figure>");
}

fn load_chart(out: &mut String, id: &str, policy: &str, s: &Series, c: &Comparison) {
    let y_max = s
        .util
        .iter()
        .flat_map(|v| v.iter().copied())
        .fold(1.0f64, f64::max)
        .min(3.0);
    let a = Axes {
        x_max: c.duration_s,
        y_max,
        log_x: false,
    };
    frame(
        out,
        id,
        &format!(
            "{policy}: utilisation per node over time (peak per {} s)",
            s.step_s
        ),
        "time (s)",
        "utilisation",
        &a,
    );
    // The hard limit.
    let y = a.y(0.95);
    let _ = write!(
        out,
        r##"<line x1="{PAD_L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#d62728" stroke-dasharray="2 2"/>"##,
        W - PAD_R
    );
    for (i, name) in s.nodes.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s
            .t_s
            .iter()
            .zip(&s.util[i])
            .map(|(t, u)| (a.x(*t), a.y(*u)))
            .collect();
        let colour = COLOURS[i % COLOURS.len()];
        polyline(out, &pts, colour, name, i >= COLOURS.len());
    }
    for e in &c.events {
        let x = a.x(e.at_s);
        let _ = write!(
            out,
            r##"<line class="event" x1="{x:.1}" x2="{x:.1}" y1="{PAD_T}" y2="{}" stroke="#000" stroke-dasharray="5 3"><title>{}</title></line><text x="{:.1}" y="{}" font-size="9">{}</text>"##,
            H - PAD_B,
            esc(&format!("{} s: {} — {}", e.at_s, e.kind, e.detail)),
            x + 2.0,
            PAD_T + 10.0,
            esc(&e.kind)
        );
    }
    out.push_str("</svg>");
    legend(out, &s.nodes);
    out.push_str("</figure>");
}

/// The whole page.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vantage-sim: {name}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
th:first-child,td:first-child{{text-align:left}}
figure{{display:inline-block;margin:8px;vertical-align:top}}figcaption{{font-weight:600;font-size:13px}}
.legend span{{margin-right:10px;font-size:12px}}.legend i{{display:inline-block;width:12px;height:3px;margin-right:4px;vertical-align:middle}}
#render-check{{color:#888;font-size:11px}}
</style></head><body>
<h1>vantage-sim: {name}</h1><p>{desc}</p><p>{dur} s simulated, {pops} PoPs, seeds {seeds:?}; qoe weights latency {wl}, loss {wo}, buffer {wb}, load {wd}, distance {wk}.</p>
"#,
        name = esc(&c.scenario),
        desc = esc(&c.description),
        dur = c.duration_s,
        pops = c.pops,
        seeds = c.seeds,
        wl = c.weights.latency,
        wo = c.weights.loss,
        wb = c.weights.buffer,
        wd = c.weights.load,
        wk = c.weights.distance,
    );
    out.push_str("<h2>Summary</h2><table><tr><th>policy</th><th>sessions</th><th>joined share</th><th>abandoned</th><th>join p50 ms</th><th>join p95 ms</th><th>joins &lt; 1 s</th><th>rebuffer ratio (started / attempted)</th><th>0-stall share (started / attempted)</th><th>mean Mbps</th><th>stalls 0/1/2/3–5/6+</th><th>latency p50 ms</th><th>latency p95 ms</th><th>overloaded node·s</th><th>reroutes</th><th>origin egress GB</th></tr>");
    for p in &c.policies {
        let h = p.stall_histogram;
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.3}</td><td>{:.5} / {:.5}</td><td>{:.4} / {:.4}</td><td>{:.2}</td><td>{}/{}/{}/{}/{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.1}</td><td>{}</td><td>{:.2}</td></tr>",
            esc(&p.policy),
            p.sessions,
            p.join_share,
            p.abandoned,
            p.join_p50_ms,
            p.join_p95_ms,
            p.join_under_1s,
            p.rebuffer_ratio,
            p.rebuffer_ratio_attempted,
            p.zero_stall_share,
            p.zero_stall_share_attempted,
            p.mean_bitrate_mbps,
            h[0],
            h[1],
            h[2],
            h[3],
            h[4],
            p.latency_p50_ms,
            p.latency_p95_ms,
            p.overloaded_node_s,
            p.reroutes,
            p.origin_egress_gb
        );
    }
    out.push_str("</table>");
    if !c.events.is_empty() {
        out.push_str("<h2>Events</h2><ul>");
        for e in &c.events {
            let _ = write!(
                out,
                "<li>{} s — {}: {}</li>",
                e.at_s,
                esc(&e.kind),
                esc(&e.detail)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("<h2>Distributions</h2>");
    let joins: Vec<(String, Vec<f64>)> = c
        .policies
        .iter()
        .filter_map(|p| {
            c.join_cdf_ms
                .get(&p.policy)
                .map(|v| (p.policy.clone(), v.clone()))
        })
        .collect();
    cdf_chart(
        &mut out,
        "join-cdf",
        "CDF of join time",
        "join time (ms, log)",
        &joins,
        true,
    );
    let rebuf: Vec<(String, Vec<f64>)> = c
        .policies
        .iter()
        .filter_map(|p| {
            c.rebuffer_cdf
                .get(&p.policy)
                .map(|v| (p.policy.clone(), v.clone()))
        })
        .collect();
    cdf_chart(
        &mut out,
        "rebuffer-cdf",
        "CDF of per-session rebuffer ratio",
        "rebuffer ratio",
        &rebuf,
        false,
    );
    out.push_str("<h2>Load per node over time</h2>");
    for (i, p) in c.policies.iter().enumerate() {
        if let Some(s) = c.load.get(&p.policy) {
            load_chart(&mut out, &format!("load-{i}"), &p.policy, s, c);
        }
    }
    // Render check: counts the charts and their drawn series once laid out
    // (tests read it through the DOM of a headless browser).
    out.push_str(r#"<p id="render-check">rendering…</p><script>
(function(){var charts=document.querySelectorAll('svg.chart');var drawn=0,series=0;
charts.forEach(function(c){var b=c.getBoundingClientRect();if(b.width>0&&b.height>0)drawn++;series+=c.querySelectorAll('polyline.series').length;});
var el=document.getElementById('render-check');el.textContent='charts: '+charts.length+', drawn: '+drawn+', series: '+series;
el.setAttribute('data-charts',charts.length);el.setAttribute('data-drawn',drawn);el.setAttribute('data-series',series);})();
</script></body></html>
"#);
    out
}
