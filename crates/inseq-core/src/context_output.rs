//! The result of context attribution with PECoRe (`inseq::context::attribute_context`), laid out as
//! Python Inseq 0.7.1's `AttributeContextOutput.to_dict()`; rendered by `inseq-viz`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, write_atomic};

/// What the CCI step found for one context-sensitive token: Inseq's `CCIOutput`, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CciOutput {
    /// Index of the token among [`ContextOutput::output_current_tokens`].
    pub cti_idx: usize,
    /// The token.
    pub cti_token: String,
    /// Its CTI score.
    pub cti_score: f32,
    /// The contextual text up to and including the token (input included for decoder-only models).
    pub contextual_output: String,
    /// The token the model predicts at that position without context (contrastive `attributed_fn` only).
    pub contrast_token: Option<String>,
    /// The contextless text ending with [`CciOutput::contrast_token`] (contrastive `attributed_fn` only).
    pub contextless_output: Option<String>,
    /// CCI score of every input context token (`None` without input context).
    pub input_context_scores: Option<Vec<f32>>,
    /// CCI score of every output context token (`None` without output context).
    pub output_context_scores: Option<Vec<f32>>,
}

/// One contextual cue: a context token whose CCI score passes the threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cue {
    /// Index in the context's token list.
    pub index: usize,
    /// The token.
    pub token: String,
    /// Its CCI score.
    pub score: f32,
}

/// The cues of one context-sensitive token, in both contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CciCues {
    /// Index of the token among [`ContextOutput::output_current_tokens`].
    pub cti_idx: usize,
    /// The CCI threshold `mean + k·std` over the scores of all context tokens (input and output).
    pub threshold: f32,
    /// Input context cues, highest `|score|` first.
    pub input_context: Vec<Cue>,
    /// Output context cues, highest `|score|` first.
    pub output_context: Vec<Cue>,
}

/// The arguments a result was produced with: Inseq's `info` (its `AttributeContextArgs`), with the
/// final output texts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContextInfo {
    /// Model name or path (filled in by the CLI).
    pub model_name_or_path: Option<String>,
    /// Attribution method id.
    pub attribution_method: Option<String>,
    /// Attributed function of CCI.
    pub attributed_fn: Option<String>,
    /// CTI metric.
    pub context_sensitivity_metric: String,
    /// Output context strategy (`manual`, `auto`, `pre`).
    pub handle_output_context_strategy: String,
    /// Special tokens kept.
    pub special_tokens_to_keep: Vec<String>,
    /// Separator of input and output (decoder-only models).
    pub decoder_input_output_separator: String,
    /// CTI `k`.
    pub context_sensitivity_std_threshold: Option<f64>,
    /// CTI top-k.
    pub context_sensitivity_topk: Option<usize>,
    /// CCI `k`.
    pub attribution_std_threshold: Option<f64>,
    /// CCI top-k.
    pub attribution_topk: Option<usize>,
    /// Current input.
    pub input_current_text: String,
    /// Input context.
    pub input_context_text: Option<String>,
    /// Input template.
    pub input_template: String,
    /// Output context (final: given, generated or split off).
    pub output_context_text: Option<String>,
    /// Current output (final).
    pub output_current_text: Option<String>,
    /// Output template.
    pub output_template: String,
    /// Contextless input template.
    pub contextless_input_current_text: String,
    /// Contextless output template.
    pub contextless_output_current_text: String,
    /// Generation settings (`max_new_tokens`, ...).
    pub generation_kwargs: BTreeMap<String, serde_json::Value>,
    /// Whether the input template has a `{context}` slot.
    pub has_input_context: bool,
    /// Whether the output template has a `{context}` slot.
    pub has_output_context: bool,
}

/// The result of `inseq::context::attribute_context`, serialised as Inseq's `AttributeContextOutput.to_dict()`
/// (plus `cti_threshold` and `cues`, extra top-level keys that Inseq's `from_dict` tolerates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextOutput {
    /// Input context text.
    pub input_context: Option<String>,
    /// Its tokens, as fed to the model.
    pub input_context_tokens: Option<Vec<String>>,
    /// Output context text.
    pub output_context: Option<String>,
    /// Its tokens, as fed to the model.
    pub output_context_tokens: Option<Vec<String>>,
    /// The current output explained.
    pub output_current: String,
    /// Its tokens.
    pub output_current_tokens: Vec<String>,
    /// CTI score of each current output token.
    pub cti_scores: Vec<f32>,
    /// CCI results for each context-sensitive token, most sensitive first.
    pub cci_scores: Vec<CciOutput>,
    /// The CTI threshold used.
    #[serde(default)]
    pub cti_threshold: f32,
    /// The cues of each entry of [`ContextOutput::cci_scores`], in the same order.
    #[serde(default)]
    pub cues: Vec<CciCues>,
    /// The arguments used.
    #[serde(default)]
    pub info: Option<ContextInfo>,
}

impl ContextOutput {
    /// Saves the result as JSON (Inseq's `AttributeContextOutput.to_dict()` layout).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Numerical(format!("cannot serialise the result: {e}")))?;
        write_atomic(path, json.as_bytes())
    }

    /// Loads a result saved by [`ContextOutput::save`] (or by Inseq, for the keys both have).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|_| Error::MissingFile {
            path: path.to_path_buf(),
            hint: "an attribute-context result (JSON)".into(),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::CorruptFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}
