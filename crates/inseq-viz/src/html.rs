//! Self-contained HTML heatmaps.

use std::fmt::Write as _;

use inseq_core::SequenceAttribution;

use crate::{colour, escape, fmt_value, heatmap, row_scale};

const CSS: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; }
h2 { font-size: 1.1em; margin-top: 1.6em; }
.meta { color: #666; font-size: 0.85em; margin: 0.2em 0 0.6em; }
.scroll { overflow-x: auto; max-width: 100%; }
table.heatmap { border-collapse: collapse; font-size: 0.8em; }
table.heatmap th, table.heatmap td { border: 1px solid #e4e4e4; padding: 2px 5px; white-space: pre; }
table.heatmap thead th { position: sticky; top: 0; background: #fafafa; font-weight: 600; writing-mode: vertical-rl; transform: rotate(180deg); vertical-align: bottom; max-height: 12em; }
table.heatmap thead th.corner { writing-mode: horizontal-tb; transform: none; }
table.heatmap th.tok { text-align: right; font-weight: 500; background: #fafafa; }
table.heatmap tr.section th { text-align: left; background: #f0f0f0; font-style: italic; }
table.heatmap td { text-align: right; font-variant-numeric: tabular-nums; min-width: 3.2em; cursor: default; }
table.heatmap td.nan { background: #fff; }
table.heatmap td:hover { outline: 2px solid #222; }
.legend { display: flex; align-items: center; gap: 0.5em; font-size: 0.8em; color: #555; margin: 0.5em 0; }
.legend .bar { width: 12em; height: 0.9em; background: linear-gradient(to right, rgb(38,38,191), #fff, rgb(191,38,38)); border: 1px solid #ccc; }
#inseq-tooltip { position: fixed; display: none; pointer-events: none; background: #222; color: #fff; padding: 4px 8px; border-radius: 4px; font-size: 0.8em; white-space: pre; z-index: 10; }
"#;

const JS: &str = r#"
(function () {
  var tip = document.getElementById("inseq-tooltip");
  document.addEventListener("mouseover", function (e) {
    var td = e.target.closest ? e.target.closest("td[data-value]") : null;
    if (!td) { tip.style.display = "none"; return; }
    tip.textContent = td.getAttribute("data-row") + " \u2192 " + td.getAttribute("data-col") + "\n" + td.getAttribute("data-value");
    tip.style.display = "block";
  });
  document.addEventListener("mousemove", function (e) {
    tip.style.left = (e.clientX + 12) + "px";
    tip.style.top = (e.clientY + 12) + "px";
  });
  document.body.setAttribute("data-inseq-ready", String(document.querySelectorAll("table.heatmap").length));
})();
"#;

/// Renders one HTML page (inline CSS and JavaScript, nothing loaded from the
/// network) with one heatmap per sequence: rows are source and target tokens
/// and step scores, columns the generated tokens; hovering a cell shows its
/// row, column and exact value.
///
/// ```
/// let html = inseq_viz::render_html(&[]);
/// assert!(html.starts_with("<!DOCTYPE html>") && !html.contains("http"));
/// ```
pub fn render_html(seqs: &[SequenceAttribution]) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<title>inseq-rs attributions</title>\n<style>");
    h.push_str(CSS);
    h.push_str("</style>\n</head>\n<body>\n<h1>Attributions</h1>\n");
    if seqs.is_empty() {
        h.push_str("<p class=\"meta\">No sequences.</p>\n");
    }
    for (i, seq) in seqs.iter().enumerate() {
        render_sequence(&mut h, i, seq);
    }
    h.push_str("<div id=\"inseq-tooltip\" role=\"tooltip\"></div>\n<script>");
    h.push_str(JS);
    h.push_str("</script>\n</body>\n</html>\n");
    h
}

fn render_sequence(h: &mut String, index: usize, seq: &SequenceAttribution) {
    let hm = heatmap(seq);
    let _ = writeln!(h, "<section class=\"sequence\" id=\"sequence-{index}\">");
    let _ = writeln!(h, "<h2>Sequence {}</h2>", index + 1);
    let shown = crate::display_tokens(&seq.target);
    let text = shown
        .get(seq.attr_pos_start..seq.attr_pos_end)
        .unwrap_or_default()
        .join(" ");
    let _ = writeln!(
        h,
        "<p class=\"meta\">Generated: <span class=\"generated\">{}</span></p>",
        escape(&text)
    );
    if !seq.aggregations.is_empty() || !hm.notes.is_empty() {
        let mut notes = hm.notes.clone();
        if !seq.aggregations.is_empty() {
            notes.insert(0, format!("aggregations: {}", seq.aggregations.join(" → ")));
        }
        let _ = writeln!(h, "<p class=\"meta\">{}</p>", escape(&notes.join("; ")));
    }
    let _ = writeln!(
        h,
        "<div class=\"legend\"><span>-{0:.3}</span><span class=\"bar\"></span><span>+{0:.3}</span></div>",
        hm.scale
    );
    h.push_str(
        "<div class=\"scroll\"><table class=\"heatmap\">\n<thead><tr><th class=\"corner\"></th>",
    );
    for col in &hm.columns {
        let _ = write!(h, "<th class=\"gen\" title=\"{0}\">{0}</th>", escape(col));
    }
    h.push_str("</tr></thead>\n");
    for section in &hm.sections {
        let _ = writeln!(
            h,
            "<tbody class=\"{}\"><tr class=\"section\"><th colspan=\"{}\">{}</th></tr>",
            escape(&section.title.to_lowercase().replace(' ', "-")),
            hm.columns.len() + 1,
            escape(&section.title)
        );
        for (label, vals) in &section.rows {
            let scale = if section.per_row_scale {
                row_scale(vals)
            } else {
                hm.scale
            };
            let _ = write!(h, "<tr><th class=\"tok\">{}</th>", escape(label));
            for (c, v) in vals.iter().enumerate() {
                if v.is_nan() {
                    h.push_str("<td class=\"nan\"></td>");
                    continue;
                }
                let ((r, g, b), (fr, fg, fb)) = colour(*v, scale);
                let _ = write!(
                    h,
                    "<td data-row=\"{}\" data-col=\"{}\" data-value=\"{}\" title=\"{}\" style=\"background:rgb({r},{g},{b});color:rgb({fr},{fg},{fb})\">{}</td>",
                    escape(label),
                    escape(&hm.columns[c]),
                    v,
                    fmt_value(*v, 6),
                    fmt_value(*v, 2)
                );
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</tbody>\n");
    }
    h.push_str("</table></div>\n</section>\n");
}
