//! SVG heatmaps.

use std::fmt::Write as _;

use inseq_core::SequenceAttribution;

use crate::{Heatmap, colour, escape, fmt_value, heatmap, row_scale};

const CELL_W: f32 = 44.0;
const CELL_H: f32 = 20.0;
const CHAR_W: f32 = 7.0;

/// Renders one sequence's heatmap as a standalone SVG image: token rows
/// (source, target, step scores) × generated-token columns, each cell coloured
/// on the red/blue scale with its value printed and in a `<title>` (shown on
/// hover by viewers).
///
/// ```
/// use inseq_core::{Array, SequenceAttribution, TokenWithId};
/// let seq = SequenceAttribution {
///     source: None,
///     target: vec![TokenWithId::new("a<b", 1), TokenWithId::new("c", 2)],
///     source_attributions: None,
///     target_attributions: Some(Array::new(vec![2, 1], vec![-0.5, f32::NAN]).unwrap()),
///     step_scores: Default::default(), sequence_scores: Default::default(),
///     attr_pos_start: 1, attr_pos_end: 2, aggregations: vec![],
/// };
/// let svg = inseq_viz::render_svg(&seq);
/// assert!(svg.contains("a&lt;b") && svg.contains("-0.50") && svg.ends_with("</svg>\n"));
/// ```
pub fn render_svg(seq: &SequenceAttribution) -> String {
    let hm = heatmap(seq);
    let layout = Layout::of(&hm);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"11\">",
        w = layout.width,
        h = layout.height
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>");
    write_column_labels(&mut s, &hm, &layout);
    let mut y = layout.top;
    for section in &hm.sections {
        let _ = writeln!(
            s,
            "<text class=\"section\" x=\"4\" y=\"{:.1}\" font-style=\"italic\" fill=\"#555\">{}</text>",
            y + CELL_H * 0.7,
            escape(&section.title)
        );
        y += CELL_H;
        for (label, vals) in &section.rows {
            let scale = if section.per_row_scale {
                row_scale(vals)
            } else {
                hm.scale
            };
            write_row(
                &mut s,
                &hm.columns,
                (label.as_str(), vals.as_slice()),
                scale,
                layout.left,
                y,
            );
            y += CELL_H;
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Where the grid sits in the image: the label margins and the total size.
struct Layout {
    /// Width of the row-label margin (the grid's left edge).
    left: f32,
    /// Height of the column-label margin (the grid's top edge).
    top: f32,
    width: f32,
    height: f32,
}

impl Layout {
    /// Sizes the margins to the longest labels (cut at 24 characters).
    fn of(hm: &Heatmap) -> Self {
        let label_chars = hm
            .sections
            .iter()
            .flat_map(|s| s.rows.iter().map(|(l, _)| l.chars().count().min(24)))
            .max()
            .unwrap_or(4)
            .max(6);
        let col_chars = hm
            .columns
            .iter()
            .map(|c| c.chars().count().min(24))
            .max()
            .unwrap_or(1);
        let left = label_chars as f32 * CHAR_W + 16.0;
        let top = col_chars as f32 * CHAR_W * 0.75 + 24.0;
        let n_rows: usize = hm.sections.iter().map(|s| s.rows.len() + 1).sum();
        Self {
            left,
            top,
            width: left + hm.columns.len() as f32 * CELL_W + 20.0,
            height: top + n_rows as f32 * CELL_H + 20.0,
        }
    }
}

/// The generated-token labels above the grid, rotated by 45°.
fn write_column_labels(s: &mut String, hm: &Heatmap, layout: &Layout) {
    for (c, col) in hm.columns.iter().enumerate() {
        let x = layout.left + c as f32 * CELL_W + CELL_W / 2.0;
        let y = layout.top - 6.0;
        let _ = writeln!(
            s,
            "<text class=\"col\" x=\"{x:.1}\" y=\"{y:.1}\" transform=\"rotate(-45 {x:.1} {y:.1})\">{}</text>",
            escape(&trim(col))
        );
    }
}

/// One token row at height `y`: its label, then one cell per column (blank
/// for NaN, else coloured on `scale` with the value printed and in a `<title>`).
fn write_row(
    s: &mut String,
    columns: &[String],
    (label, vals): (&str, &[f32]),
    scale: f32,
    left: f32,
    y: f32,
) {
    let _ = writeln!(
        s,
        "<text class=\"row\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        left - 6.0,
        y + CELL_H * 0.7,
        escape(&trim(label))
    );
    for (c, v) in vals.iter().enumerate() {
        let x = left + c as f32 * CELL_W;
        if v.is_nan() {
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{CELL_W}\" height=\"{CELL_H}\" fill=\"#ffffff\" stroke=\"#eeeeee\"/>"
            );
            continue;
        }
        let ((r, g, b), (fr, fg, fb)) = colour(*v, scale);
        let _ = writeln!(
            s,
            "<g><title>{} → {}: {}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{CELL_W}\" height=\"{CELL_H}\" fill=\"rgb({r},{g},{b})\" stroke=\"#eeeeee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"rgb({fr},{fg},{fb})\">{}</text></g>",
            escape(label),
            escape(&columns[c]),
            fmt_value(*v, 6),
            x + CELL_W / 2.0,
            y + CELL_H * 0.7,
            fmt_value(*v, 2)
        );
    }
}

fn trim(s: &str) -> String {
    if s.chars().count() > 24 {
        s.chars().take(23).collect::<String>() + "…"
    } else {
        s.to_string()
    }
}
