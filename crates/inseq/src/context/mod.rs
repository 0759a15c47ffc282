//! Context attribution with PECoRe (Sarti et al., 2024, "Quantifying the Plausibility of Context
//! Reliance in Neural Machine Translation", <https://arxiv.org/abs/2310.01188>), as Inseq 0.7.1's
//! `attribute-context` does it, for an *input context* (a text before the current input), an
//! *output context* (a part of the output before the current output, e.g. a previous sentence or a
//! chain of thought), or both:
//!
//! 1. **Outputs.** The current output (and the output context, when the output template has a
//!    `{context}` slot) is given or generated. When the model generates output context and current
//!    output together they are split as `--handle-output-context-strategy` says (see
//!    [`OutputContextStrategy`]).
//! 2. **CTI** (context-sensitive token identification): each token of the *current* output is scored
//!    with a contrastive metric (default `kl_divergence`) between the model's prediction without the
//!    contexts (the contextless input and output templates) and with them; tokens scoring above
//!    `mean + k·std` are context-sensitive.
//! 3. **CCI** (contextual cue imputation): the prediction of each context-sensitive token, with all
//!    contexts present, is attributed with the chosen method (optionally contrasting it with the token
//!    the model predicts without context). Each input-context and output-context token gets a score;
//!    those above `mean + k·std` of all context scores are the token's cues.
//!
//! Positions of the contexts and of the current output inside the tokenised sequences are found from
//! the tokenizer's character offsets, so the scores are those of the tokens actually fed to the model.
//! [`ContextOutput`] serialises to the JSON layout of Inseq's `AttributeContextOutput.to_dict()`.

use serde::{Deserialize, Serialize};

use inseq_core::{AttributionOutput, Error, Result};
use inseq_models::GenerationOptions;

pub use inseq_core::{CciCues, CciOutput, ContextInfo, ContextOutput, Cue};
pub use pecore::{attribute_context, attribute_context_with};

mod outputs;
mod pecore;
mod templates;
mod tokens;

/// How an output context that the model generates together with the current output is split off
/// (Inseq's `--handle_output_context_strategy`). Only used when the output template has a
/// `{context}` slot and no output context text is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputContextStrategy {
    /// Ask the user (through [`ContextCallbacks::output_context`]) to confirm the split found
    /// automatically or to type the output context. Non-interactive runs fail with a clear error.
    #[default]
    Manual,
    /// Split the generation at the output template's separator (e.g. the ` ` of `{context} {current}`)
    /// when it occurs exactly once, else at punctuation when that gives exactly two parts; ask only
    /// when neither works.
    Auto,
    /// The output context must be given (`output_context_text`); never ask.
    Pre,
}

impl std::str::FromStr for OutputContextStrategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "manual" => Ok(Self::Manual),
            "auto" => Ok(Self::Auto),
            "pre" => Ok(Self::Pre),
            other => Err(Error::invalid_arg(
                "handle_output_context_strategy",
                format!("`{other}`: expected manual, auto or pre"),
            )),
        }
    }
}

impl std::fmt::Display for OutputContextStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Manual => "manual",
            Self::Auto => "auto",
            Self::Pre => "pre",
        })
    }
}

/// Inputs and settings of [`attribute_context`]; names and defaults follow Inseq's
/// `AttributeContextArgs`.
#[derive(Debug, Clone)]
pub struct ContextArgs {
    /// The context preceding the current input (`{context}` of the input template); `None`: no
    /// input context.
    pub input_context_text: Option<String>,
    /// The current input (`{current}` of the input template).
    pub input_current_text: String,
    /// The output context (`{context}` of the output template). When the output template has a
    /// `{context}` slot and this is `None`, the model generates it together with the current output
    /// and [`ContextArgs::handle_output_context_strategy`] splits it off.
    pub output_context_text: Option<String>,
    /// The current output to explain (generated greedily when `None`).
    pub output_current_text: Option<String>,
    /// Template of the model input; default `{context} {current}` with an input context, else
    /// `{current}`.
    pub input_template: Option<String>,
    /// Template of the model output; default `{context} {current}` with an output context text,
    /// else `{current}` (give `{context} {current}` or similar to have the output context generated).
    pub output_template: Option<String>,
    /// Template of the contextless input used by CTI and contrastive CCI (default `{current}`).
    pub contextless_input_current_text: Option<String>,
    /// Template of the contextless output used by CTI (default `{current}`).
    pub contextless_output_current_text: Option<String>,
    /// How a generated output context is split off (default [`OutputContextStrategy::Manual`]).
    pub handle_output_context_strategy: OutputContextStrategy,
    /// Special tokens kept in generated texts and token lists (e.g. a `<brk>` separator).
    pub special_tokens_to_keep: Vec<String>,
    /// Decoder-only models: what joins the input and the output (default `" "`).
    pub decoder_input_output_separator: String,
    /// Metric for CTI (a contrastive step function id; default `kl_divergence`).
    pub context_sensitivity_metric: String,
    /// `k` in the CTI threshold `mean + k·std`.
    pub context_sensitivity_std_threshold: f64,
    /// Keep at most this many context-sensitive tokens.
    pub context_sensitivity_topk: Option<usize>,
    /// The function attributed in CCI (`probability` by default, as Inseq 0.7.1;
    /// `contrast_prob_diff` contrasts with the token predicted without context, as in the paper).
    pub attributed_fn: String,
    /// `k` in the CCI threshold `mean + k·std`.
    pub attribution_std_threshold: f64,
    /// Keep at most this many cues per context and token.
    pub attribution_topk: Option<usize>,
    /// Greedy generation settings for the outputs.
    pub generation: GenerationOptions,
}

impl Default for ContextArgs {
    fn default() -> Self {
        Self {
            input_context_text: None,
            input_current_text: String::new(),
            output_context_text: None,
            output_current_text: None,
            input_template: None,
            output_template: None,
            contextless_input_current_text: None,
            contextless_output_current_text: None,
            handle_output_context_strategy: OutputContextStrategy::Manual,
            special_tokens_to_keep: vec![],
            decoder_input_output_separator: " ".into(),
            context_sensitivity_metric: "kl_divergence".into(),
            context_sensitivity_std_threshold: 1.0,
            context_sensitivity_topk: None,
            attributed_fn: "probability".into(),
            attribution_std_threshold: 1.0,
            attribution_topk: None,
            generation: GenerationOptions::default(),
        }
    }
}

/// Hooks of [`attribute_context_with`]: asking the user for an output context and seeing
/// intermediate attributions.
pub trait ContextCallbacks {
    /// Returns the output context of `generated` (a prefix of it), given an automatically found
    /// `candidate` if any. Called with [`OutputContextStrategy::Manual`], or with
    /// [`OutputContextStrategy::Auto`] when no split was found.
    fn output_context(&mut self, generated: &str, candidate: Option<&str>) -> Result<String>;

    /// Receives the CTI run (`stage` = `"CTI"`) and each aggregated CCI attribution
    /// (`stage` = `"CCI <token>"`), as Inseq's `--show_intermediate_outputs` shows them.
    fn intermediate(&mut self, stage: &str, out: &AttributionOutput) {
        let _ = (stage, out);
    }
}

/// The callbacks of [`attribute_context`]: never asks (an output context that must be asked for
/// is an error, see [`manual_output_context_error`]) and ignores intermediate outputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct NonInteractive;

impl ContextCallbacks for NonInteractive {
    fn output_context(&mut self, generated: &str, candidate: Option<&str>) -> Result<String> {
        Err(manual_output_context_error(generated, candidate))
    }
}

/// The error of a run that needs the user to split off the output context but cannot ask.
pub fn manual_output_context_error(generated: &str, candidate: Option<&str>) -> Error {
    let found = match candidate {
        Some(c) => format!(" (automatic split: context `{c}`)"),
        None => " (no automatic split found)".into(),
    };
    Error::InvalidInput(format!(
        "the output context must be split off the generated output `{generated}`{found}, but this run \
         cannot ask for it (--handle-output-context-strategy manual needs an interactive terminal): \
         pass the output context with --output-context-text, or use --handle-output-context-strategy \
         auto (split at the output template's separator) or pre (with --output-context-text)"
    ))
}

/// `mean + k·std` (sample standard deviation), as Inseq; the mean alone for `k = 0` or one score.
pub fn scores_threshold(scores: &[f32], k: f64) -> f32 {
    if scores.is_empty() {
        return 0.0;
    }
    let n = scores.len() as f64;
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n;
    if k == 0.0 || scores.len() == 1 {
        return mean as f32;
    }
    let var = scores
        .iter()
        .map(|&s| (s as f64 - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    (mean + k * var.sqrt()) as f32
}

/// Indices of `scores` with `|score| >= threshold`, by decreasing `|score|`, at most `topk`.
pub fn rank_above(scores: &[f32], threshold: f32, topk: Option<usize>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i].abs() >= threshold)
        .collect();
    idx.sort_by(|&a, &b| scores[b].abs().total_cmp(&scores[a].abs()));
    if let Some(k) = topk {
        idx.truncate(k);
    }
    idx
}

/// The output context candidate of a generated text, as Inseq's `prepare_outputs` finds it: the part
/// before `separator` when the text splits into exactly two parts at it, else the first of exactly
/// two parts separated by whitespace and punctuation (`.?!,;:)]}`), else `None`.
pub fn split_output_context(generated: &str, separator: &str) -> Option<String> {
    if !separator.is_empty() {
        let parts: Vec<&str> = generated.split(separator).collect();
        if parts.len() == 2 && !parts[0].is_empty() {
            return Some(parts[0].to_string());
        }
    }
    let is_break = |c: char| c.is_whitespace() || ".?!,;:)]}".contains(c);
    let parts: Vec<&str> = generated
        .split(is_break)
        .filter(|s| !s.is_empty())
        .collect();
    (parts.len() == 2).then(|| parts[0].to_string())
}
