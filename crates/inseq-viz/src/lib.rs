//! Visualisation of attribution results: terminal heatmaps ([`render_terminal`]),
//! a self-contained HTML page ([`render_html`]) and SVG images ([`render_svg`]).
//!
//! Every view is a heatmap with the attributed tokens (source, then target
//! prefix) as rows and the generated tokens as columns, followed by one row per
//! step score. Positive scores are red, negative ones blue, with the intensity
//! relative to the largest absolute score. Sequences whose attributions are
//! not yet 2-D are first aggregated as Python Inseq does by default
//! ([`inseq_aggregate::aggregate_inseq_default`]).
//!
//! ```
//! use inseq_core::{Array, SequenceAttribution, TokenWithId};
//! use inseq_viz::{render_html, render_svg, render_terminal, TerminalOptions};
//! let seq = SequenceAttribution {
//!     source: None,
//!     target: vec![TokenWithId::new("Hello", 1), TokenWithId::new("Ġworld", 2)],
//!     source_attributions: None,
//!     target_attributions: Some(Array::new(vec![2, 1], vec![1.0, f32::NAN]).unwrap()),
//!     step_scores: [("probability".to_string(), vec![0.5])].into_iter().collect(),
//!     sequence_scores: Default::default(),
//!     attr_pos_start: 1,
//!     attr_pos_end: 2,
//!     aggregations: vec![],
//! };
//! let text = render_terminal(&seq, &TerminalOptions { color: false, width: 80, ..Default::default() });
//! assert!(text.contains("Hello") && text.contains("1.00") && text.contains("probability"));
//! assert!(render_html(std::slice::from_ref(&seq)).contains("<table"));
//! assert!(render_svg(&seq).starts_with("<svg"));
//! ```
#![warn(missing_docs)]

use std::fmt::Write as _;
use std::path::Path;

use inseq_core::{Array, Result, SequenceAttribution, write_atomic};

pub use byte_level::display_tokens;

mod byte_level;
mod context;
mod html;
mod svg;

pub use context::{render_context_html, render_context_terminal, render_context_text};
pub use html::render_html;
pub use svg::render_svg;

/// Options for [`render_terminal`].
#[derive(Debug, Clone)]
pub struct TerminalOptions {
    /// Emit ANSI colours (24-bit background colours); `false` gives plain text for pipes.
    pub color: bool,
    /// Maximum line width in characters; wider heatmaps are split into blocks of columns.
    pub width: usize,
    /// Decimals shown per score (default 2).
    pub decimals: usize,
    /// Maximum width of token labels (longer ones are cut with `…`; default 20).
    pub max_label: usize,
}

impl Default for TerminalOptions {
    fn default() -> Self {
        Self {
            color: true,
            width: 120,
            decimals: 2,
            max_label: 20,
        }
    }
}

/// A token as shown to people: byte-level BPE / SentencePiece space markers
/// (`Ġ`, `▁`) become spaces and are trimmed, newlines and tabs (`Ċ`, `ĉ`,
/// `\n`, `\t`) become `\n`/`\t`, other control characters are escaped; a token
/// that is only spaces is shown as `␣`.
///
/// ```
/// assert_eq!(inseq_viz::display_token("Ġworld"), "world");
/// assert_eq!(inseq_viz::display_token("▁"), "␣");
/// assert_eq!(inseq_viz::display_token("Ċ"), "\\n");
/// ```
pub fn display_token(token: &str) -> String {
    let mut s = String::with_capacity(token.len());
    for c in token.chars() {
        match c {
            'Ġ' | '▁' => s.push(' '),
            'Ċ' | '\n' => s.push_str("\\n"),
            'ĉ' | '\t' => s.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{{{:x}}}", c as u32);
            }
            c => s.push(c),
        }
    }
    let trimmed = s.trim();
    if trimmed.is_empty() {
        if token.is_empty() {
            String::new()
        } else {
            "␣".into()
        }
    } else {
        trimmed.to_string()
    }
}

/// One block of heatmap rows (source tokens, target tokens or step scores).
pub(crate) struct Section {
    pub title: String,
    pub rows: Vec<(String, Vec<f32>)>,
    /// Colour scale: largest absolute value (per section; per row for step scores).
    pub per_row_scale: bool,
}

/// The 2-D view shared by every renderer.
pub(crate) struct Heatmap {
    pub columns: Vec<String>,
    pub sections: Vec<Section>,
    pub scale: f32,
    pub notes: Vec<String>,
}

fn to_2d(a: &Array) -> Option<(usize, usize, &[f32])> {
    (a.ndim() == 2).then(|| (a.shape()[0], a.shape()[1], a.data()))
}

pub(crate) fn heatmap(seq: &SequenceAttribution) -> Heatmap {
    let mut notes = Vec::new();
    let needs_agg = [&seq.source_attributions, &seq.target_attributions]
        .iter()
        .any(|a| a.as_ref().is_some_and(|a| a.ndim() > 2));
    let agg;
    let seq = if needs_agg {
        agg = inseq_aggregate::aggregate_inseq_default(seq)
            .unwrap_or_else(|_| inseq_aggregate::default_aggregate(seq));
        notes.push(format!("aggregated with {}", agg.aggregations.join(" → ")));
        &agg
    } else {
        seq
    };
    let n_steps = seq.attr_pos_end.saturating_sub(seq.attr_pos_start);
    let shown_target = display_tokens(&seq.target);
    let shown_source = (seq.source.as_deref())
        .map(display_tokens)
        .unwrap_or_default();
    let columns: Vec<String> = (0..n_steps)
        .map(|i| {
            (shown_target.get(seq.attr_pos_start + i)).map_or_else(|| format!("#{i}"), Clone::clone)
        })
        .collect();
    let mut sections = Vec::new();
    let mut scale = 0f32;
    let arrays = [
        ("Source", &seq.source_attributions, &shown_source),
        ("Target", &seq.target_attributions, &shown_target),
    ];
    for (title, a, labels) in arrays {
        let Some(a) = a else { continue };
        match array_section(title, a, labels, n_steps) {
            Some(section) => {
                scale = scale.max(a.max_abs());
                sections.push(section);
            }
            None => notes.push(format!(
                "{title}: cannot show an array of shape {:?}",
                a.shape()
            )),
        }
    }
    if !seq.step_scores.is_empty() {
        sections.push(step_score_section(seq, n_steps));
    }
    Heatmap {
        columns,
        sections,
        scale,
        notes,
    }
}

/// The rows of a 2-D (or squeezable) attribution array, one per token, `n_steps` columns.
fn array_section(title: &str, a: &Array, labels: &[String], n_steps: usize) -> Option<Section> {
    let (rows, cols, data) = to_2d(a)?;
    let rows = (0..rows)
        .map(|r| {
            let label = labels.get(r).map_or_else(|| format!("#{r}"), Clone::clone);
            let mut vals = data[r * cols..(r + 1) * cols].to_vec();
            vals.resize(n_steps, f32::NAN);
            (label, vals)
        })
        .collect();
    Some(Section {
        title: title.to_string(),
        rows,
        per_row_scale: false,
    })
}

/// One row per step score, each on its own colour scale.
fn step_score_section(seq: &SequenceAttribution, n_steps: usize) -> Section {
    let rows = (seq.step_scores.iter())
        .map(|(k, v)| {
            let mut v = v.clone();
            v.resize(n_steps, f32::NAN);
            (k.clone(), v)
        })
        .collect();
    Section {
        title: "Step scores".into(),
        rows,
        per_row_scale: true,
    }
}

pub(crate) fn row_scale(vals: &[f32]) -> f32 {
    vals.iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()))
}

/// Background colour of a score on the red (positive) / blue (negative)
/// diverging scale, and a readable text colour for it.
pub(crate) fn colour(v: f32, scale: f32) -> ((u8, u8, u8), (u8, u8, u8)) {
    if !v.is_finite() || scale <= 0.0 {
        return ((255, 255, 255), (0, 0, 0));
    }
    let t = (v.abs() / scale).clamp(0.0, 1.0);
    let fade = (255.0 * (1.0 - 0.85 * t)).round() as u8;
    let deep = (255.0 * (1.0 - 0.25 * t)).round() as u8;
    let bg = if v >= 0.0 {
        (deep, fade, fade)
    } else {
        (fade, fade, deep)
    };
    let fg = if t > 0.55 { (255, 255, 255) } else { (0, 0, 0) };
    (bg, fg)
}

fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        s.to_string()
    } else if width == 0 {
        String::new()
    } else {
        s.chars().take(width - 1).collect::<String>() + "…"
    }
}

fn pad_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    " ".repeat(width.saturating_sub(n)) + s
}

fn pad_right(s: &str, width: usize) -> String {
    let n = s.chars().count();
    s.to_string() + &" ".repeat(width.saturating_sub(n))
}

/// Renders a heatmap table of a sequence attribution for a terminal: one row
/// per source/target token and step score, one column per generated token,
/// split into blocks of columns so no line is wider than `opts.width`. With
/// `opts.color` cells get ANSI 24-bit background colours (red positive, blue
/// negative); without, the output is plain text.
pub fn render_terminal(seq: &SequenceAttribution, opts: &TerminalOptions) -> String {
    let hm = heatmap(seq);
    let cell = opts.decimals + 5;
    let label_w = hm
        .sections
        .iter()
        .flat_map(|s| s.rows.iter().map(|(l, _)| l.chars().count()))
        .chain(hm.sections.iter().map(|s| s.title.chars().count() + 1))
        .max()
        .unwrap_or(0)
        .clamp(4, opts.max_label.max(4));
    let per_block = (opts.width.saturating_sub(label_w + 1) / cell).max(1);
    let mut out = String::new();
    for note in &hm.notes {
        let _ = writeln!(out, "({note})");
    }
    if hm.columns.is_empty() {
        let _ = writeln!(out, "(no generated tokens to show)");
        return out;
    }
    let n_blocks = hm.columns.len().div_ceil(per_block);
    for b in 0..n_blocks {
        let cols = b * per_block..((b + 1) * per_block).min(hm.columns.len());
        if b > 0 {
            out.push('\n');
        }
        if n_blocks > 1 {
            let _ = writeln!(
                out,
                "[generated tokens {}-{} of {}]",
                cols.start + 1,
                cols.end,
                hm.columns.len()
            );
        }
        let mut header = " ".repeat(label_w + 1);
        for c in cols.clone() {
            header.push_str(&pad_left(&fit(&hm.columns[c], cell - 1), cell));
        }
        let _ = writeln!(out, "{}", header.trim_end());
        for section in &hm.sections {
            let _ = writeln!(
                out,
                "{}",
                fit(&format!("{}:", section.title), opts.width.max(1))
            );
            for (label, vals) in &section.rows {
                let scale = if section.per_row_scale {
                    row_scale(vals)
                } else {
                    hm.scale
                };
                let mut line = pad_right(&fit(label, label_w), label_w + 1);
                for c in cols.clone() {
                    let v = vals[c];
                    let text = if v.is_nan() {
                        String::new()
                    } else {
                        format!("{v:.prec$}", prec = opts.decimals)
                    };
                    let text = pad_left(&fit(&text, cell - 1), cell);
                    if opts.color && !v.is_nan() {
                        let ((r, g, bl), (fr, fg, fb)) = colour(v, scale);
                        let _ = write!(
                            line,
                            "\x1b[48;2;{r};{g};{bl}m\x1b[38;2;{fr};{fg};{fb}m{text}\x1b[0m"
                        );
                    } else {
                        line.push_str(&text);
                    }
                }
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
    }
    out
}

/// Writes [`render_html`] of `seqs` to `path` (atomically).
///
/// ```
/// let path = std::env::temp_dir().join("inseq-viz-doc.html");
/// inseq_viz::save_html(&path, &[]).unwrap();
/// assert!(std::fs::read_to_string(&path).unwrap().starts_with("<!DOCTYPE html>"));
/// ```
pub fn save_html(path: impl AsRef<Path>, seqs: &[SequenceAttribution]) -> Result<()> {
    write_atomic(path.as_ref(), render_html(seqs).as_bytes())
}

/// Writes [`render_svg`] of `seq` to `path` (atomically).
pub fn save_svg(path: impl AsRef<Path>, seq: &SequenceAttribution) -> Result<()> {
    write_atomic(path.as_ref(), render_svg(seq).as_bytes())
}

/// Escapes text for HTML/XML content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Formats a score for display (`NaN` as empty).
pub(crate) fn fmt_value(v: f32, decimals: usize) -> String {
    if v.is_nan() {
        String::new()
    } else {
        format!("{v:.decimals$}")
    }
}

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
