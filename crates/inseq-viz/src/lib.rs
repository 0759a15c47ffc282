//! Visualisation of attribution results.
#![warn(missing_docs)]

use inseq_core::SequenceAttribution;

/// Options for [`render_terminal`].
#[derive(Debug, Clone)]
pub struct TerminalOptions {
    /// Emit ANSI colours.
    pub color: bool,
    /// Maximum line width in characters.
    pub width: usize,
}

impl Default for TerminalOptions {
    fn default() -> Self {
        Self { color: true, width: 120 }
    }
}

/// Renders a heatmap table of an aggregated (2-D) sequence attribution.
pub fn render_terminal(seq: &SequenceAttribution, opts: &TerminalOptions) -> String {
    let _ = opts;
    let mut s = String::new();
    for (i, t) in seq.target.iter().enumerate() {
        s.push_str(&format!("{i} {}\n", t.token));
    }
    s
}
