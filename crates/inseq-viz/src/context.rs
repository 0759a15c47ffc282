//! Reports of context attribution (PECoRe, [`ContextOutput`]): plain text, terminal colours and HTML.

use inseq_core::{CciOutput, ContextOutput, Cue};

use crate::display_token;

const BOLD_GREEN: &str = "\x1b[1;32m";
const BOLD_BLUE: &str = "\x1b[1;34m";
const RESET: &str = "\x1b[0m";

/// A token as it reads in running text (`Ġ`/`▁` as spaces, line breaks and tabs escaped).
fn surface(token: &str) -> String {
    token
        .chars()
        .map(|c| match c {
            'Ġ' | '▁' => " ".to_string(),
            'Ċ' | '\n' => "\\n".to_string(),
            'ĉ' | '\t' => "\\t".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A plain-text report (see [`render_context_terminal`]).
///
/// ```
/// let out = inseq_core::ContextOutput {
///     input_context: Some("Hi.".into()),
///     input_context_tokens: Some(vec!["Hi".into(), ".".into()]),
///     output_context: None,
///     output_context_tokens: None,
///     output_current: "Yes".into(),
///     output_current_tokens: vec!["Yes".into()],
///     cti_scores: vec![0.5],
///     cci_scores: vec![],
///     cti_threshold: 0.5,
///     cues: vec![],
///     info: None,
/// };
/// assert!(inseq_viz::render_context_text(&out).contains("Output current:  Yes"));
/// ```
pub fn render_context_text(out: &ContextOutput) -> String {
    render_context_terminal(out, false)
}

/// The report Inseq prints: settings, the current output tokens with CTI scores (`*` marks
/// context-sensitive ones), then for each context-sensitive token its contexts with the cues
/// marked `[token](score)` (bold green with `color`).
pub fn render_context_terminal(out: &ContextOutput, color: bool) -> String {
    let mut s = header_text(out);
    s.push_str(&format!(
        "\nContext-sensitive tokens (CTI threshold {:.4}):\n",
        out.cti_threshold
    ));
    for (i, (t, score)) in out
        .output_current_tokens
        .iter()
        .zip(&out.cti_scores)
        .enumerate()
    {
        let mark = if out.cci_scores.iter().any(|c| c.cti_idx == i) {
            "*"
        } else {
            " "
        };
        s.push_str(&format!(
            "  {mark} {:<16} {score:>10.4}\n",
            display_token(t)
        ));
    }
    for (n, c) in out.cci_scores.iter().enumerate() {
        s.push_str(&cci_text(out, n, c, color));
    }
    s
}

/// The settings and the texts.
fn header_text(out: &ContextOutput) -> String {
    let mut s = String::new();
    if let Some(info) = &out.info {
        s.push_str(&format!(
            "Context attribution (PECoRe): CTI = {} (mean + {:.2}·std), CCI = {} w/ {} (mean + {:.2}·std)\n\n",
            info.context_sensitivity_metric,
            info.context_sensitivity_std_threshold.unwrap_or(0.0),
            info.attribution_method.as_deref().unwrap_or("?"),
            info.attributed_fn.as_deref().unwrap_or("probability"),
            info.attribution_std_threshold.unwrap_or(0.0),
        ));
    }
    if let Some(c) = &out.input_context {
        s.push_str(&format!("Input context:   {c}\n"));
    }
    if let Some(info) = &out.info {
        s.push_str(&format!("Input current:   {}\n", info.input_current_text));
    }
    if let Some(c) = &out.output_context {
        s.push_str(&format!("Output context:  {c}\n"));
    }
    s.push_str(&format!("Output current:  {}\n", out.output_current));
    s
}

/// The section of the `n`-th context-sensitive token: its contexts with the cues marked.
fn cci_text(out: &ContextOutput, n: usize, c: &CciOutput, color: bool) -> String {
    let (hl_cti, reset) = if color { (BOLD_BLUE, RESET) } else { ("", "") };
    let contrast = c
        .contrast_token
        .as_deref()
        .map(|t| format!(", without context: `{}`", display_token(t)))
        .unwrap_or_default();
    let mut s = format!(
        "\n#{}. {hl_cti}`{}`{reset} (CTI {:.3}{contrast})\n",
        n + 1,
        display_token(&c.cti_token),
        c.cti_score
    );
    let cue = out.cues.get(n);
    let threshold = cue.map_or(String::new(), |q| format!(" (CCI > {:.3})", q.threshold));
    if let (Some(tokens), Some(_)) = (&out.input_context_tokens, &c.input_context_scores) {
        let list = cue.map_or(&[][..], |q| &q.input_context[..]);
        s.push_str(&format!(
            "  Input context{threshold}:  {}\n",
            context_line(tokens, list, color)
        ));
    }
    if let (Some(tokens), Some(_)) = (&out.output_context_tokens, &c.output_context_scores) {
        let list = cue.map_or(&[][..], |q| &q.output_context[..]);
        s.push_str(&format!(
            "  Output context{threshold}: {}\n",
            context_line(tokens, list, color)
        ));
    }
    if cue.map_or(0, |q| q.input_context.len() + q.output_context.len()) == 0 {
        s.push_str("  (no cue above the threshold)\n");
    }
    s
}

/// A context as running text with its cues marked `[token](score)`.
fn context_line(tokens: &[String], cues: &[Cue], color: bool) -> String {
    let (hl_cue, reset) = if color { (BOLD_GREEN, RESET) } else { ("", "") };
    let mut line = String::new();
    for (j, t) in tokens.iter().enumerate() {
        let text = surface(t);
        match cues.iter().find(|c| c.index == j) {
            Some(c) => {
                let lead = &text[..text.len() - text.trim_start().len()];
                line.push_str(&format!(
                    "{lead}{hl_cue}[{}]({:.3}){reset}",
                    text.trim_start(),
                    c.score
                ));
            }
            None => line.push_str(&text),
        }
    }
    line.trim().to_string()
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The largest `|score|`, at least 1e-12 (a colour scale's denominator).
fn abs_max<'a>(scores: impl IntoIterator<Item = &'a f32>) -> f32 {
    scores
        .into_iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-12)
}

/// Tokens as coloured spans: `rgb` at opacity `|score| / max`, with `mark` styling the marked ones.
fn heat_spans(
    tokens: &[String],
    scores: &[f32],
    (rgb, max): (&str, f32),
    (marked, mark): (&dyn Fn(usize) -> bool, &str),
    title: &str,
) -> String {
    let mut h = String::new();
    for (j, t) in tokens.iter().enumerate() {
        let v = scores.get(j).copied().unwrap_or(0.0);
        let style = if marked(j) { mark } else { "" };
        h.push_str(&format!(
            "<span style=\"background:rgba({rgb},{:.3});{style}\" title=\"{title}{v:.4}\">{}</span>",
            (v.abs() / max).min(1.0),
            escape(&surface(t)).replace(' ', "&nbsp;")
        ));
    }
    h
}

/// A self-contained HTML page with the same report: CTI scores over the current output and,
/// for each context-sensitive token, heatmaps of its input and output context scores.
pub fn render_context_html(out: &ContextOutput) -> String {
    let mut body = String::from("<h1>Context attribution (PECoRe)</h1>");
    body.push_str(&header_html(out));
    body.push_str(&format!(
        "<p><b>Output current</b> (CTI threshold {:.4}): ",
        out.cti_threshold
    ));
    let sensitive = |i: usize| out.cci_scores.iter().any(|c| c.cti_idx == i);
    body.push_str(&heat_spans(
        &out.output_current_tokens,
        &out.cti_scores,
        ("230,60,60", abs_max(&out.cti_scores)),
        (&sensitive, "border:1px solid #c22;"),
        "CTI ",
    ));
    body.push_str("</p>");
    for (n, c) in out.cci_scores.iter().enumerate() {
        body.push_str(&cci_html(out, n, c));
    }
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>inseq context attribution</title></head><body style=\"font-family:sans-serif\">{body}</body></html>"
    )
}

fn header_html(out: &ContextOutput) -> String {
    let mut s = String::new();
    if let Some(info) = &out.info {
        s.push_str(&format!(
            "<p>CTI = <code>{}</code>, CCI = <code>{}</code> w/ <code>{}</code></p>",
            escape(&info.context_sensitivity_metric),
            escape(info.attribution_method.as_deref().unwrap_or("?")),
            escape(info.attributed_fn.as_deref().unwrap_or("probability"))
        ));
    }
    if let Some(c) = &out.input_context {
        s.push_str(&format!("<p><b>Input context:</b> {}</p>", escape(c)));
    }
    if let Some(info) = &out.info {
        s.push_str(&format!(
            "<p><b>Input current:</b> {}</p>",
            escape(&info.input_current_text)
        ));
    }
    if let Some(c) = &out.output_context {
        s.push_str(&format!("<p><b>Output context:</b> {}</p>", escape(c)));
    }
    s
}

/// The heading and context heatmaps of the `n`-th context-sensitive token.
fn cci_html(out: &ContextOutput, n: usize, c: &CciOutput) -> String {
    let cue = out.cues.get(n);
    let max = abs_max(
        c.input_context_scores
            .iter()
            .chain(c.output_context_scores.iter())
            .flatten(),
    );
    let contrast = c
        .contrast_token
        .as_deref()
        .map(|t| format!(" (without context: {})", escape(&display_token(t))))
        .unwrap_or_default();
    let mut s = format!(
        "<h2>{} <small>CTI {:.4}{contrast}</small></h2>",
        escape(&display_token(&c.cti_token)),
        c.cti_score
    );
    let sections = [
        (
            "Input",
            &out.input_context_tokens,
            &c.input_context_scores,
            cue.map_or(&[][..], |q| &q.input_context[..]),
        ),
        (
            "Output",
            &out.output_context_tokens,
            &c.output_context_scores,
            cue.map_or(&[][..], |q| &q.output_context[..]),
        ),
    ];
    for (name, tokens, scores, cues) in sections {
        if let (Some(tokens), Some(scores)) = (tokens, scores) {
            let is_cue = |j: usize| cues.iter().any(|q| q.index == j);
            let spans = heat_spans(
                tokens,
                scores,
                ("40,110,220", max),
                (&is_cue, "border-bottom:2px solid #2a7;"),
                "",
            );
            s.push_str(&format!("<p><b>{name} context cues:</b> {spans}</p>"));
        }
    }
    s
}
