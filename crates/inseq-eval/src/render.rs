//! The report drawn: one SVG line chart per curve metric (each method's mean curve), and an HTML
//! page with the table and the charts inline.

use crate::report::EvalReport;

const COLOURS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The ids of the metrics that have curves, in report order.
pub fn curve_metrics(report: &EvalReport) -> Vec<String> {
    report
        .metric_info
        .keys()
        .filter(|id| report.methods.iter().any(|m| m.curves.contains_key(*id)))
        .cloned()
        .collect()
}

/// An SVG chart of every method's mean curve of `metric`.
pub fn curve_svg(report: &EvalReport, metric: &str) -> String {
    let (w, h, pad) = (420.0, 260.0, 40.0);
    let series: Vec<(&str, &Vec<(f64, f64)>)> = report
        .methods
        .iter()
        .filter_map(|m| m.curves.get(metric).map(|c| (m.method.as_str(), c)))
        .collect();
    let finite = |v: f64| v.is_finite().then_some(v);
    let points = series.iter().flat_map(|(_, c)| c.iter());
    let (x0, x1) = bounds(points.clone().filter_map(|p| finite(p.0)));
    let (y0, y1) = bounds(points.filter_map(|p| finite(p.1)));
    let sx = |x: f64| pad + (x - x0) / (x1 - x0).max(1e-12) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0).max(1e-12) * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\
         <text x=\"{pad}\" y=\"16\" font-weight=\"bold\">{}</text>\
         <rect x=\"{pad}\" y=\"{pad}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\
         <text x=\"{pad}\" y=\"{}\">{x0:.2}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{x1:.2}</text>\
         <text x=\"2\" y=\"{}\">{y1:.3}</text><text x=\"2\" y=\"{}\">{y0:.3}</text>",
        escape(metric),
        w - 2.0 * pad,
        h - 2.0 * pad,
        h - pad + 14.0,
        w - pad,
        h - pad + 14.0,
        pad + 4.0,
        h - pad,
    );
    for (i, (name, curve)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = curve
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            path.join(" "),
            w - pad + 4.0 - 110.0,
            pad + 14.0 + 13.0 * i as f64,
            escape(name)
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}

/// Every curve chart side by side in one SVG (stacked vertically).
pub fn report_svg(report: &EvalReport) -> String {
    let charts = curve_metrics(report);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"420\" height=\"{}\">",
        260 * charts.len().max(1)
    );
    for (i, id) in charts.iter().enumerate() {
        out.push_str(&format!(
            "<g transform=\"translate(0,{})\">{}</g>",
            260 * i,
            curve_svg(report, id)
        ));
    }
    out.push_str("</svg>");
    out
}

/// An HTML page: the table (mean [95 % interval] (rank) per metric), the ranking and the
/// curves as inline SVG.
pub fn report_html(report: &EvalReport) -> String {
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>inseq evaluate: {}</title>\
         <style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}</style></head><body>\
         <h1>Faithfulness of attributions: {}</h1><p>attributed function: {}; {} s</p><table><tr><th>method</th>",
        escape(&report.model),
        escape(&report.model),
        escape(&report.attributed_fn),
        report.seconds.round()
    );
    for (id, info) in &report.metric_info {
        let arrow = if info.higher_is_better { "↑" } else { "↓" };
        html.push_str(&format!(
            "<th title=\"{}\">{} {arrow}</th>",
            escape(&info.description),
            escape(id)
        ));
    }
    html.push_str("<th>mean rank</th></tr>");
    for entry in &report.ranking {
        let Some(m) = report.methods.iter().find(|m| m.method == entry.method) else {
            continue;
        };
        html.push_str(&format!("<tr><td>{}</td>", escape(&m.method)));
        for id in report.metric_info.keys() {
            let cell = m.metrics.get(id).map_or("n/a".into(), |s| {
                crate::report::summary_cell(s, entry.ranks[id])
            });
            html.push_str(&format!("<td>{cell}</td>"));
        }
        html.push_str(&format!("<td>{:.2}</td></tr>", entry.mean_rank));
    }
    html.push_str("</table><h2>Curves</h2>");
    for id in curve_metrics(report) {
        html.push_str(&curve_svg(report, &id));
    }
    html.push_str("</body></html>");
    html
}
