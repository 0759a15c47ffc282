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

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

use inseq_core::{AttributionOutput, Error, Result};
use inseq_models::{GenerationOptions, ModelKind, generate_greedy};

use crate::{AttributeOptions, AttributionModel, ContrastAlignment, aggregate};

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

/// The result of [`attribute_context`], serialised as Inseq's `AttributeContextOutput.to_dict()`
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

/// A filled template with the byte spans of its `{current}` and `{context}` values (first
/// occurrence of each).
struct Filled {
    text: String,
    current: Range<usize>,
    context: Option<Range<usize>>,
}

fn fill_template(template: &str, current: &str, context: Option<&str>) -> Filled {
    let mut text = String::with_capacity(template.len() + current.len());
    let (mut cur_span, mut ctx_span) = (None, None);
    let mut rest = template;
    loop {
        let cur = rest.find("{current}");
        let ctx = context.and_then(|_| rest.find("{context}"));
        let (pos, is_current) = match (cur, ctx) {
            (None, None) => break,
            (Some(a), Some(b)) => (a.min(b), a < b),
            (Some(a), None) => (a, true),
            (None, Some(b)) => (b, false),
        };
        text.push_str(&rest[..pos]);
        let start = text.len();
        if is_current {
            text.push_str(current);
            cur_span.get_or_insert(start..text.len());
        } else {
            text.push_str(context.unwrap_or_default());
            ctx_span.get_or_insert(start..text.len());
        }
        // `{current}` and `{context}` have the same length.
        rest = &rest[pos + "{current}".len()..];
    }
    text.push_str(rest);
    Filled {
        text,
        current: cur_span.unwrap_or(0..0),
        context: ctx_span,
    }
}

/// Inseq's `concat_with_sep`: `s1 + sep + s2` unless `s1` ends or `s2` starts with `sep`; also the
/// offset of `s2` in the result.
fn concat_with_sep(s1: &str, s2: &str, sep: &str) -> (String, usize) {
    if s1.ends_with(sep) || s2.starts_with(sep) {
        (format!("{s1}{s2}"), s1.len())
    } else {
        (format!("{s1}{sep}{s2}"), s1.len() + sep.len())
    }
}

fn shift(r: &Range<usize>, by: usize) -> Range<usize> {
    r.start + by..r.end + by
}

/// Arguments after Inseq's `__post_init__` checks and defaults.
struct Resolved {
    input_context: Option<String>,
    input_template: String,
    output_template: String,
    contextless_input: String,
    contextless_output: String,
    has_input_context: bool,
    has_output_context: bool,
}

fn resolve(args: &ContextArgs) -> Result<Resolved> {
    if args.input_current_text.trim().is_empty() {
        return Err(Error::InvalidInput("input current text is empty".into()));
    }
    let input_template = args.input_template.clone().unwrap_or_else(|| {
        if args.input_context_text.is_some() {
            "{context} {current}".into()
        } else {
            "{current}".into()
        }
    });
    let output_template = args.output_template.clone().unwrap_or_else(|| {
        if args.output_context_text.is_some() {
            "{context} {current}".into()
        } else {
            "{current}".into()
        }
    });
    let has_input_context = input_template.contains("{context}");
    let has_output_context = output_template.contains("{context}");
    for (name, t) in [
        ("input_template", &input_template),
        ("output_template", &output_template),
    ] {
        if !t.contains("{current}") {
            return Err(Error::invalid_arg(
                name,
                format!("`{t}` has no {{current}} placeholder"),
            ));
        }
    }
    if args.input_context_text.is_some() && !has_input_context {
        return Err(Error::invalid_arg(
            "input_template",
            format!("an input context is given but `{input_template}` has no {{context}} slot"),
        ));
    }
    if args.output_context_text.is_some() && !has_output_context {
        return Err(Error::invalid_arg(
            "output_template",
            format!("an output context is given but `{output_template}` has no {{context}} slot"),
        ));
    }
    if has_input_context
        && args
            .input_context_text
            .as_deref()
            .is_none_or(|c| c.trim().is_empty())
    {
        return Err(Error::InvalidInput(format!(
            "input context text is empty, but the input template `{input_template}` has a {{context}} slot"
        )));
    }
    if has_output_context && output_template.find("{context}") > output_template.find("{current}") {
        return Err(Error::invalid_arg(
            "output_template",
            format!("{{context}} must come before {{current}} in `{output_template}`"),
        ));
    }
    if args.handle_output_context_strategy == OutputContextStrategy::Pre
        && has_output_context
        && args.output_context_text.is_none()
    {
        return Err(Error::invalid_arg(
            "handle_output_context_strategy",
            "`pre` with {context} in the output template needs the output context (--output-context-text)",
        ));
    }
    if !has_input_context && !has_output_context {
        return Err(Error::InvalidInput(
            "no context to attribute: give an input context (--input-context-text) and/or an output \
             context (--output-context-text, or an output template with a {context} slot)"
                .into(),
        ));
    }
    let contextless_input = args
        .contextless_input_current_text
        .clone()
        .unwrap_or_else(|| "{current}".into());
    let contextless_output = args
        .contextless_output_current_text
        .clone()
        .unwrap_or_else(|| "{current}".into());
    for (name, t) in [
        ("contextless_input_current_text", &contextless_input),
        ("contextless_output_current_text", &contextless_output),
    ] {
        if !t.contains("{current}") {
            return Err(Error::invalid_arg(
                name,
                format!("`{t}` has no {{current}} placeholder"),
            ));
        }
    }
    Ok(Resolved {
        input_context: args
            .input_context_text
            .clone()
            .filter(|_| has_input_context),
        input_template,
        output_template,
        contextless_input,
        contextless_output,
        has_input_context,
        has_output_context,
    })
}

/// Special token ids, and those the user keeps.
struct Specials {
    ids: HashSet<usize>,
    keep: HashSet<usize>,
}

impl Specials {
    fn new(model: &AttributionModel, keep: &[String]) -> Result<Self> {
        let tok = model.tokenizer();
        let info = model.model().info();
        let mut ids: HashSet<usize> = tok
            .inner()
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id as usize)
            .collect();
        ids.extend(
            [info.bos_token_id, info.eos_token_id, info.pad_token_id]
                .into_iter()
                .flatten(),
        );
        let keep = keep
            .iter()
            .map(|t| {
                tok.token_to_id(t).ok_or_else(|| {
                    Error::invalid_arg(
                        "special_tokens_to_keep",
                        format!("`{t}` is not a token of this tokenizer"),
                    )
                })
            })
            .collect::<Result<HashSet<_>>>()?;
        Ok(Self { ids, keep })
    }

    /// Whether `id` is a special token filtered out of texts and token lists.
    fn dropped(&self, id: usize) -> bool {
        self.ids.contains(&id) && !self.keep.contains(&id)
    }
}

/// A tokenised text: ids, byte offsets, and which tokens the post-processor added.
struct Encoded {
    ids: Vec<usize>,
    offsets: Vec<(usize, usize)>,
    added: Vec<bool>,
}

fn encode_offsets(model: &AttributionModel, text: &str) -> Result<Encoded> {
    let enc = model
        .tokenizer()
        .inner()
        .encode(text, true)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(Encoded {
        ids: enc.get_ids().iter().map(|&i| i as usize).collect(),
        offsets: enc.get_offsets().to_vec(),
        added: enc
            .get_special_tokens_mask()
            .iter()
            .map(|&m| m != 0)
            .collect(),
    })
}

impl Encoded {
    /// Positions (plus `offset`) of the tokens covering the byte `span`, special tokens excluded.
    fn positions(&self, span: &Range<usize>, offset: usize, specials: &Specials) -> Vec<usize> {
        (0..self.ids.len())
            .filter(|&i| {
                let (s, e) = self.offsets[i];
                let inside = if s < e {
                    s < span.end && e > span.start
                } else {
                    s >= span.start && s < span.end
                };
                inside && !self.added[i] && !specials.dropped(self.ids[i])
            })
            .map(|i| i + offset)
            .collect()
    }
}

/// Greedy generation decoded without the special tokens not kept.
fn generate_text(
    model: &AttributionModel,
    source: Option<&[usize]>,
    prefix: &[usize],
    mut generation: GenerationOptions,
    specials: &Specials,
) -> Result<String> {
    if generation.eos_token_ids.is_empty() {
        generation.eos_token_ids = model.end_token_ids();
    }
    let new = generate_greedy(model.model(), source, prefix, generation)?;
    let kept: Vec<usize> = new.into_iter().filter(|&t| !specials.dropped(t)).collect();
    model.tokenizer().decode(&kept, false)
}

fn decoder_start(model: &AttributionModel) -> Result<usize> {
    let info = model.model().info();
    info.decoder_start_token_id
        .or(info.bos_token_id)
        .ok_or_else(|| Error::Unsupported("model has no decoder_start_token_id".into()))
}

/// Inseq's `prepare_outputs`: the final (output context, current output).
fn prepare_outputs(
    model: &AttributionModel,
    args: &ContextArgs,
    r: &Resolved,
    input_full: &str,
    specials: &Specials,
    callbacks: &mut dyn ContextCallbacks,
) -> Result<(Option<String>, String)> {
    let use_out_ctx = r.has_output_context;
    let given_context = args.output_context_text.as_deref().map(str::trim);
    let given_current = args.output_current_text.as_deref().map(str::trim);
    if given_context.is_some() == use_out_ctx
        && let Some(current) = given_current
    {
        return Ok((given_context.map(String::from), current.to_string()));
    }
    let tok = model.tokenizer();
    let kind = model.model().kind();
    let sep = args.decoder_input_output_separator.as_str();
    let template = r.output_template.as_str();
    let (before_current, suffix) = template.split_once("{current}").unwrap_or((template, ""));
    let (prefix, separator) = if use_out_ctx {
        let (p, s) = before_current
            .split_once("{context}")
            .unwrap_or((before_current, ""));
        (p, s)
    } else {
        (before_current, "")
    };
    let source_ids = match kind {
        ModelKind::EncoderDecoder => Some(tok.encode(input_full, true)?),
        ModelKind::DecoderOnly => None,
    };
    let generated = match (given_context, kind) {
        // Settings 3 (and 6 is not reached here): the output context is forced before generating.
        (Some(ctx), ModelKind::DecoderOnly) => {
            let ctx_prefix = before_current.trim().replace("{context}", ctx);
            let (prompt, _) = concat_with_sep(input_full, &ctx_prefix, sep);
            let ids = tok.encode(prompt.trim_end_matches(' '), true)?;
            generate_text(model, None, &ids, args.generation.clone(), specials)?
        }
        (Some(ctx), ModelKind::EncoderDecoder) => {
            let ctx_prefix = before_current.trim().replace("{context}", ctx);
            let mut dec = vec![decoder_start(model)?];
            dec.extend(tok.encode(&ctx_prefix, false)?);
            generate_text(
                model,
                source_ids.as_deref(),
                &dec,
                args.generation.clone(),
                specials,
            )?
        }
        (None, ModelKind::DecoderOnly) => {
            let (prompt, _) = concat_with_sep(input_full, "", sep);
            let ids = tok.encode(prompt.trim_end_matches(' '), true)?;
            generate_text(model, None, &ids, args.generation.clone(), specials)?
        }
        (None, ModelKind::EncoderDecoder) => generate_text(
            model,
            source_ids.as_deref(),
            &[],
            args.generation.clone(),
            specials,
        )?,
    };
    let mut generated = generated.trim_start().to_string();
    let prefix = prefix.trim_start();
    if given_context.is_none() && !prefix.is_empty() {
        generated = generated
            .strip_prefix(prefix)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "output template `{template}` has prefix `{prefix}` but the output `{generated}` does \
                     not start with it: check the template, or force the output context/current output"
                ))
            })?
            .to_string();
    }
    let suffix = suffix.trim_end();
    if !suffix.is_empty() {
        let trimmed = generated.trim_end();
        generated = trimmed
            .strip_suffix(suffix)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "output template `{template}` has suffix `{suffix}` but the output `{generated}` does \
                     not end with it: check the template, or force the current output"
                ))
            })?
            .to_string();
    }
    // Settings 3, 4: the generation is the current output.
    if given_context.is_some() == use_out_ctx {
        let current = generated.trim().to_string();
        if current.is_empty() {
            return Err(Error::InvalidInput(
                "the model generated an empty output".into(),
            ));
        }
        return Ok((given_context.map(String::from), current));
    }
    // Settings 5, 6: split the generation into output context and current output.
    let generated = generated.trim();
    if generated.is_empty() {
        return Err(Error::InvalidInput(
            "the model generated no text to split into output context and current output: pass the \
             output context with --output-context-text"
                .into(),
        ));
    }
    let candidate = split_output_context(generated, separator);
    let context = match (candidate, args.handle_output_context_strategy) {
        (Some(c), OutputContextStrategy::Auto) => c,
        (candidate, _) => callbacks.output_context(generated, candidate.as_deref())?,
    };
    let context = context.trim().to_string();
    if !generated.starts_with(&context) {
        return Err(Error::InvalidInput(format!(
            "the output context `{context}` is not the start of the generated output `{generated}`"
        )));
    }
    // As Inseq: the current output starts after the context and the template's separator.
    let taken = if context.is_empty() {
        separator.trim().len()
    } else {
        context.len() + separator.len()
    };
    let mut cut = taken.min(generated.len());
    while !generated.is_char_boundary(cut) {
        cut += 1;
    }
    let current = generated[cut..].trim().to_string();
    match given_current {
        Some(c) => Ok((Some(context), c.to_string())),
        None if current.is_empty() => Err(Error::InvalidInput(format!(
            "the model produced an empty current output given the output context `{context}`; if the \
             model does not generate a context naturally, force one with --output-context-text"
        ))),
        None => Ok((Some(context), current)),
    }
}

fn is_contrastive(attributed_fn: &str) -> Result<bool> {
    let id = crate::StepRegistry::with_defaults()
        .get(attributed_fn)?
        .id()
        .to_string();
    Ok(id.starts_with("contrast")
        || ["pcxmi", "kl_divergence", "in_context_pvi"].contains(&id.as_str()))
}

fn check_ids(what: &str, out: &AttributionOutput, expected: &[usize]) -> Result<()> {
    let got = &out.sequence_attributions[0].target;
    // Contrastive positions show `contrast → token` with id -1.
    let same = got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|(t, &e)| t.id < 0 || t.id as usize == e);
    if !same {
        return Err(Error::InvalidInput(format!(
            "{what}: the text does not tokenise the same way twice (got {} tokens, expected {}); \
             try other templates or separators",
            got.len(),
            expected.len()
        )));
    }
    Ok(())
}

/// Runs PECoRe on `model` (decoder-only or encoder-decoder) with an input and/or output context,
/// without interaction (see [`attribute_context_with`]).
pub fn attribute_context(model: &AttributionModel, args: &ContextArgs) -> Result<ContextOutput> {
    attribute_context_with(model, args, &mut NonInteractive)
}

/// Runs PECoRe with `callbacks` to ask for an output context and to see intermediate outputs.
pub fn attribute_context_with(
    model: &AttributionModel,
    args: &ContextArgs,
    callbacks: &mut dyn ContextCallbacks,
) -> Result<ContextOutput> {
    let r = resolve(args)?;
    let tok = model.tokenizer();
    let kind = model.model().kind();
    let enc_dec = kind == ModelKind::EncoderDecoder;
    let specials = Specials::new(model, &args.special_tokens_to_keep)?;
    let sep = args.decoder_input_output_separator.as_str();
    let input_full = fill_template(
        &r.input_template,
        &args.input_current_text,
        r.input_context.as_deref(),
    );
    let (output_context, output_current) =
        prepare_outputs(model, args, &r, &input_full.text, &specials, callbacks)?;
    if output_current.is_empty() {
        return Err(Error::InvalidInput("the output to explain is empty".into()));
    }
    let output_full = fill_template(
        &r.output_template,
        &output_current,
        output_context.as_deref(),
    );
    // The contextual target (decoder-only: input and output joined) and where the output starts in it.
    let (ctx_target_text, out_offset) = if enc_dec {
        (output_full.text.clone(), 0)
    } else {
        concat_with_sep(&input_full.text, &output_full.text, sep)
    };
    // The contextless input and target.
    let ctxless_input = r
        .contextless_input
        .replace("{current}", &args.input_current_text);
    let ctxless_output = fill_template(&r.contextless_output, &output_current, None);
    let (cti_input, ctxless_target_text, ctxless_current) = if enc_dec {
        (
            ctxless_input.clone(),
            ctxless_output.text.clone(),
            ctxless_output.current.clone(),
        )
    } else {
        let (with_sep, _) = concat_with_sep(&ctxless_input, "", sep);
        let target = format!("{with_sep}{}", ctxless_output.text);
        let span = shift(&ctxless_output.current, with_sep.len());
        (with_sep.trim_end_matches(' ').to_string(), target, span)
    };
    // Token positions. Encoder-decoder targets start with the decoder start token.
    let dec_shift = usize::from(enc_dec);
    let with_start = |ids: &[usize]| -> Result<Vec<usize>> {
        Ok(if enc_dec {
            std::iter::once(decoder_start(model)?)
                .chain(ids.iter().copied())
                .collect()
        } else {
            ids.to_vec()
        })
    };
    let ctx_enc = encode_offsets(model, &ctx_target_text)?;
    let ctxless_enc = encode_offsets(model, &ctxless_target_text)?;
    let ctx_target_ids = with_start(&ctx_enc.ids)?;
    let ctxless_target_ids = with_start(&ctxless_enc.ids)?;
    let cur_ctx = ctx_enc.positions(
        &shift(&output_full.current, out_offset),
        dec_shift,
        &specials,
    );
    let cur_ctxless = ctxless_enc.positions(&ctxless_current, dec_shift, &specials);
    let (Some(&start), Some(&last), Some(&ctx_first), Some(&ctx_last)) = (
        cur_ctxless.first(),
        cur_ctxless.last(),
        cur_ctx.first(),
        cur_ctx.last(),
    ) else {
        return Err(Error::InvalidInput(format!(
            "the current output `{output_current}` produced no tokens"
        )));
    };
    let end = last + 1;
    // Contextless position -> contextual position: right-aligned on the current output, as Inseq.
    // When the current output has more tokens without context than with it (`to` alone vs ` to`
    // after a context), the extra leading ones map to the first contextual current output token
    // (Inseq would pair them with output context tokens).
    let pairs: Vec<(usize, usize)> = (start..end)
        .map(|t| (t, (ctx_last + 1).saturating_sub(end - t).max(ctx_first)))
        .collect();
    let input_ctx_positions = match &input_full.context {
        None => None,
        Some(span) if enc_dec => {
            Some(encode_offsets(model, &input_full.text)?.positions(span, 0, &specials))
        }
        Some(span) => Some(ctx_enc.positions(span, 0, &specials)),
    };
    if input_ctx_positions.as_ref().is_some_and(Vec::is_empty) {
        return Err(Error::InvalidInput(
            "the input context produced no tokens".into(),
        ));
    }
    let output_ctx_positions = output_full
        .context
        .as_ref()
        .map(|span| ctx_enc.positions(&shift(span, out_offset), dec_shift, &specials));
    let source_ids = if enc_dec {
        Some(tok.encode(&input_full.text, true)?)
    } else {
        None
    };
    let token_at = |ids: &[usize], p: usize| tok.id_to_token(ids[p]);
    let input_context_tokens = input_ctx_positions.as_ref().map(|ps| {
        let ids = source_ids.as_deref().unwrap_or(&ctx_target_ids);
        ps.iter().map(|&p| token_at(ids, p)).collect::<Vec<_>>()
    });
    let output_context_tokens = output_ctx_positions.as_ref().map(|ps| {
        ps.iter()
            .map(|&p| token_at(&ctx_target_ids, p))
            .collect::<Vec<_>>()
    });

    // CTI: the contextless run, contrasted with the contextual one, scoring the current output.
    let cti = model.attribute_with(
        "dummy",
        &[cti_input.as_str()],
        &AttributeOptions {
            targets: Some(vec![ctxless_target_text.clone()]),
            attr_pos_start: Some(start as isize),
            attr_pos_end: Some(end as isize),
            step_scores: vec![args.context_sensitivity_metric.clone()],
            contrast_targets: Some(vec![ctx_target_text.clone()]),
            contrast_sources: enc_dec.then(|| vec![input_full.text.clone()]),
            contrast_alignments: Some(vec![ContrastAlignment::Pairs(pairs.clone())]),
            ..Default::default()
        },
    )?;
    check_ids("CTI", &cti, &ctxless_target_ids)?;
    callbacks.intermediate("CTI", &cti);
    let cti_seq = &cti.sequence_attributions[0];
    let all_cti = cti_seq
        .step_scores
        .get(&args.context_sensitivity_metric)
        .ok_or_else(|| Error::Numerical("CTI produced no scores".into()))?;
    let cti_scores: Vec<f32> = cur_ctxless.iter().map(|&p| all_cti[p - start]).collect();
    let output_current_tokens: Vec<String> = cur_ctxless
        .iter()
        .map(|&p| token_at(&ctxless_target_ids, p))
        .collect();
    let cti_threshold = scores_threshold(&cti_scores, args.context_sensitivity_std_threshold);
    let sensitive = rank_above(&cti_scores, cti_threshold, args.context_sensitivity_topk);

    // CCI: attribute each context-sensitive token with all contexts present.
    let contrastive = is_contrastive(&args.attributed_fn)?;
    let ctxless_source = if enc_dec {
        Some(tok.encode(&ctxless_input, true)?)
    } else {
        None
    };
    let mut cci_scores = Vec::new();
    let mut cues = Vec::new();
    for &i in &sensitive {
        let ctxless_pos = cur_ctxless[i];
        let ctx_pos = pairs[ctxless_pos - start].1;
        let mut text_end = ctx_enc.offsets[ctx_pos - dec_shift]
            .1
            .min(ctx_target_text.len());
        while !ctx_target_text.is_char_boundary(text_end) {
            text_end += 1;
        }
        let contextual_output = ctx_target_text[..text_end].trim_start().to_string();
        let mut opts = AttributeOptions {
            targets: Some(vec![ctx_target_text.clone()]),
            attributed_fn: args.attributed_fn.clone(),
            attr_pos_start: Some(ctx_pos as isize),
            attr_pos_end: Some(ctx_pos as isize + 1),
            attribute_target: enc_dec && r.has_output_context,
            ..Default::default()
        };
        let (mut contrast_token, mut contextless_output) = (None, None);
        if contrastive {
            // The token the model predicts at this position without the contexts.
            let prefix = &ctxless_target_ids[..ctxless_pos];
            let next = generate_greedy(
                model.model(),
                ctxless_source.as_deref(),
                prefix,
                GenerationOptions {
                    max_new_tokens: 1,
                    ..Default::default()
                },
            )?;
            let &c = next.first().ok_or_else(|| {
                Error::InvalidInput("the model predicted no token without context".into())
            })?;
            let body: Vec<usize> = prefix[dec_shift..]
                .iter()
                .copied()
                .filter(|&t| !specials.dropped(t))
                .chain([c])
                .collect();
            let text = tok.decode(&body, false)?;
            let c_enc = encode_offsets(model, &text)?;
            let c_pos = (0..c_enc.ids.len())
                .rev()
                .find(|&p| !c_enc.added[p])
                .ok_or_else(|| {
                    Error::InvalidInput(format!("contextless output `{text}` has no tokens"))
                })?;
            contrast_token = Some(tok.id_to_token(c_enc.ids[c_pos]));
            opts.contrast_targets = Some(vec![text.clone()]);
            opts.contrast_sources = enc_dec.then(|| vec![ctxless_input.clone()]);
            opts.contrast_alignments = Some(vec![ContrastAlignment::Pairs(vec![(
                ctx_pos,
                c_pos + dec_shift,
            )])]);
            contextless_output = Some(text);
        }
        let raw = model.attribute(&[input_full.text.as_str()], &opts)?;
        check_ids("CCI", &raw, &ctx_target_ids)?;
        let agg = aggregate(&raw)?;
        callbacks.intermediate(
            &format!(
                "CCI {}",
                inseq_viz::display_token(&output_current_tokens[i])
            ),
            &agg,
        );
        let seq = &agg.sequence_attributions[0];
        let column = |a: Option<&inseq_core::Array>, ps: &[usize], what: &str| {
            let a = a.ok_or_else(|| {
                Error::Unsupported(format!(
                    "the attribution method returned no scores for the {what}"
                ))
            })?;
            if ps.iter().any(|&p| p >= a.shape()[0]) || a.shape().get(1).is_none_or(|&s| s == 0) {
                return Err(Error::ShapeMismatch {
                    what: format!("{what} attributions"),
                    expected: vec![ps.iter().max().map_or(0, |m| m + 1), 1],
                    found: a.shape().to_vec(),
                });
            }
            let v: Vec<f32> = ps.iter().map(|&p| a.get(&[p, 0])).collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::Numerical(format!("non-finite {what} scores: {v:?}")));
            }
            Ok(v)
        };
        let input_context_scores = match &input_ctx_positions {
            Some(ps) => Some(column(
                if enc_dec {
                    seq.source_attributions.as_ref()
                } else {
                    seq.target_attributions.as_ref()
                },
                ps,
                "input context",
            )?),
            None => None,
        };
        let output_context_scores = match &output_ctx_positions {
            Some(ps) => Some(column(
                seq.target_attributions.as_ref(),
                ps,
                "output context",
            )?),
            None => None,
        };
        let all: Vec<f32> = input_context_scores
            .iter()
            .chain(output_context_scores.iter())
            .flatten()
            .copied()
            .collect();
        let threshold = scores_threshold(&all, args.attribution_std_threshold);
        let pick = |scores: &Option<Vec<f32>>, tokens: &Option<Vec<String>>| -> Vec<Cue> {
            match (scores, tokens) {
                (Some(s), Some(t)) => rank_above(s, threshold, args.attribution_topk)
                    .into_iter()
                    .map(|j| Cue {
                        index: j,
                        token: t[j].clone(),
                        score: s[j],
                    })
                    .collect(),
                _ => vec![],
            }
        };
        cues.push(CciCues {
            cti_idx: i,
            threshold,
            input_context: pick(&input_context_scores, &input_context_tokens),
            output_context: pick(&output_context_scores, &output_context_tokens),
        });
        cci_scores.push(CciOutput {
            cti_idx: i,
            cti_token: output_current_tokens[i].clone(),
            cti_score: cti_scores[i],
            contextual_output,
            contrast_token,
            contextless_output,
            input_context_scores,
            output_context_scores,
        });
    }
    let info = ContextInfo {
        model_name_or_path: None,
        attribution_method: Some(model.method_id().to_string()),
        attributed_fn: Some(args.attributed_fn.clone()),
        context_sensitivity_metric: args.context_sensitivity_metric.clone(),
        handle_output_context_strategy: args.handle_output_context_strategy.to_string(),
        special_tokens_to_keep: args.special_tokens_to_keep.clone(),
        decoder_input_output_separator: args.decoder_input_output_separator.clone(),
        context_sensitivity_std_threshold: Some(args.context_sensitivity_std_threshold),
        context_sensitivity_topk: args.context_sensitivity_topk,
        attribution_std_threshold: Some(args.attribution_std_threshold),
        attribution_topk: args.attribution_topk,
        input_current_text: args.input_current_text.clone(),
        input_context_text: r.input_context.clone(),
        input_template: r.input_template.clone(),
        output_context_text: output_context.clone(),
        output_current_text: Some(output_current.clone()),
        output_template: r.output_template.clone(),
        contextless_input_current_text: r.contextless_input.clone(),
        contextless_output_current_text: r.contextless_output.clone(),
        generation_kwargs: BTreeMap::from([(
            "max_new_tokens".to_string(),
            serde_json::Value::from(args.generation.max_new_tokens),
        )]),
        has_input_context: r.has_input_context,
        has_output_context: r.has_output_context,
    };
    Ok(ContextOutput {
        input_context: r.input_context.clone(),
        input_context_tokens,
        output_context,
        output_context_tokens,
        output_current,
        output_current_tokens,
        cti_scores,
        cci_scores,
        cti_threshold,
        cues,
        info: Some(info),
    })
}

/// A token as it reads in running text (`Ġ`/`▁` as spaces).
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

const BOLD_GREEN: &str = "\x1b[1;32m";
const BOLD_BLUE: &str = "\x1b[1;34m";
const RESET: &str = "\x1b[0m";

impl ContextOutput {
    /// Saves the result as JSON (Inseq's `AttributeContextOutput.to_dict()` layout).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Numerical(format!("cannot serialise the result: {e}")))?;
        inseq_core::write_atomic(path, json.as_bytes())
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

    /// A plain-text report (see [`ContextOutput::render_terminal`]).
    pub fn render_text(&self) -> String {
        self.render_terminal(false)
    }

    /// The report Inseq prints: settings, the current output tokens with CTI scores (`*` marks
    /// context-sensitive ones), then for each context-sensitive token its contexts with the cues
    /// marked `[token](score)` (bold green with `color`).
    pub fn render_terminal(&self, color: bool) -> String {
        let show = |t: &str| inseq_viz::display_token(t);
        let (hl_cue, hl_cti, reset) = if color {
            (BOLD_GREEN, BOLD_BLUE, RESET)
        } else {
            ("", "", "")
        };
        let mut s = String::new();
        if let Some(info) = &self.info {
            s.push_str(&format!(
                "Context attribution (PECoRe): CTI = {} (mean + {:.2}·std), CCI = {} w/ {} (mean + {:.2}·std)\n\n",
                info.context_sensitivity_metric,
                info.context_sensitivity_std_threshold.unwrap_or(0.0),
                info.attribution_method.as_deref().unwrap_or("?"),
                info.attributed_fn.as_deref().unwrap_or("probability"),
                info.attribution_std_threshold.unwrap_or(0.0),
            ));
        }
        if let Some(c) = &self.input_context {
            s.push_str(&format!("Input context:   {c}\n"));
        }
        if let Some(info) = &self.info {
            s.push_str(&format!("Input current:   {}\n", info.input_current_text));
        }
        if let Some(c) = &self.output_context {
            s.push_str(&format!("Output context:  {c}\n"));
        }
        s.push_str(&format!("Output current:  {}\n", self.output_current));
        s.push_str(&format!(
            "\nContext-sensitive tokens (CTI threshold {:.4}):\n",
            self.cti_threshold
        ));
        for (i, (t, score)) in self
            .output_current_tokens
            .iter()
            .zip(&self.cti_scores)
            .enumerate()
        {
            let mark = if self.cci_scores.iter().any(|c| c.cti_idx == i) {
                "*"
            } else {
                " "
            };
            s.push_str(&format!("  {mark} {:<16} {score:>10.4}\n", show(t)));
        }
        let context_line = |tokens: &[String], cues: &[Cue]| -> String {
            let mut line = String::new();
            for (j, t) in tokens.iter().enumerate() {
                match cues.iter().find(|c| c.index == j) {
                    Some(c) => {
                        let text = surface(t);
                        let lead = &text[..text.len() - text.trim_start().len()];
                        line.push_str(&format!(
                            "{lead}{hl_cue}[{}]({:.3}){reset}",
                            text.trim_start(),
                            c.score
                        ));
                    }
                    None => line.push_str(&surface(t)),
                }
            }
            line.trim().to_string()
        };
        for (n, c) in self.cci_scores.iter().enumerate() {
            let contrast = c
                .contrast_token
                .as_deref()
                .map(|t| format!(", without context: `{}`", show(t)))
                .unwrap_or_default();
            s.push_str(&format!(
                "\n#{}. {hl_cti}`{}`{reset} (CTI {:.3}{contrast})\n",
                n + 1,
                show(&c.cti_token),
                c.cti_score
            ));
            let cue = self.cues.get(n);
            let threshold = cue.map_or(String::new(), |q| format!(" (CCI > {:.3})", q.threshold));
            if let (Some(tokens), Some(_)) = (&self.input_context_tokens, &c.input_context_scores) {
                let list = cue.map_or(&[][..], |q| &q.input_context[..]);
                s.push_str(&format!(
                    "  Input context{threshold}:  {}\n",
                    context_line(tokens, list)
                ));
            }
            if let (Some(tokens), Some(_)) = (&self.output_context_tokens, &c.output_context_scores)
            {
                let list = cue.map_or(&[][..], |q| &q.output_context[..]);
                s.push_str(&format!(
                    "  Output context{threshold}: {}\n",
                    context_line(tokens, list)
                ));
            }
            let n_cues = cue.map_or(0, |q| q.input_context.len() + q.output_context.len());
            if n_cues == 0 {
                s.push_str("  (no cue above the threshold)\n");
            }
        }
        s
    }

    /// A self-contained HTML page with the same report: CTI scores over the current output and,
    /// for each context-sensitive token, heatmaps of its input and output context scores.
    pub fn render_html(&self) -> String {
        let esc = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let heat = |tokens: &[String], scores: &[f32], cues: &[Cue], max: f32| -> String {
            let mut h = String::new();
            for (j, t) in tokens.iter().enumerate() {
                let v = scores.get(j).copied().unwrap_or(0.0);
                let cue = cues.iter().any(|c| c.index == j);
                let border = if cue {
                    "border-bottom:2px solid #2a7;"
                } else {
                    ""
                };
                h.push_str(&format!(
                    "<span style=\"background:rgba(40,110,220,{:.3});{border}\" title=\"{v:.4}\">{}</span>",
                    (v.abs() / max).min(1.0),
                    esc(&surface(t)).replace(' ', "&nbsp;")
                ));
            }
            h
        };
        let mut body = String::from("<h1>Context attribution (PECoRe)</h1>");
        if let Some(info) = &self.info {
            body.push_str(&format!(
                "<p>CTI = <code>{}</code>, CCI = <code>{}</code> w/ <code>{}</code></p>",
                esc(&info.context_sensitivity_metric),
                esc(info.attribution_method.as_deref().unwrap_or("?")),
                esc(info.attributed_fn.as_deref().unwrap_or("probability"))
            ));
        }
        if let Some(c) = &self.input_context {
            body.push_str(&format!("<p><b>Input context:</b> {}</p>", esc(c)));
        }
        if let Some(info) = &self.info {
            body.push_str(&format!(
                "<p><b>Input current:</b> {}</p>",
                esc(&info.input_current_text)
            ));
        }
        if let Some(c) = &self.output_context {
            body.push_str(&format!("<p><b>Output context:</b> {}</p>", esc(c)));
        }
        body.push_str(&format!(
            "<p><b>Output current</b> (CTI threshold {:.4}): ",
            self.cti_threshold
        ));
        let max_cti = self
            .cti_scores
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-12);
        for (i, t) in self.output_current_tokens.iter().enumerate() {
            let v = self.cti_scores.get(i).copied().unwrap_or(0.0);
            let sensitive = self.cci_scores.iter().any(|c| c.cti_idx == i);
            let border = if sensitive {
                "border:1px solid #c22;"
            } else {
                ""
            };
            body.push_str(&format!(
                "<span style=\"background:rgba(230,60,60,{:.3});{border}\" title=\"CTI {v:.4}\">{}</span>",
                (v.abs() / max_cti).min(1.0),
                esc(&surface(t)).replace(' ', "&nbsp;")
            ));
        }
        body.push_str("</p>");
        for (n, c) in self.cci_scores.iter().enumerate() {
            let cue = self.cues.get(n);
            let max = c
                .input_context_scores
                .iter()
                .chain(c.output_context_scores.iter())
                .flatten()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(1e-12);
            let contrast = c
                .contrast_token
                .as_deref()
                .map(|t| format!(" (without context: {})", esc(&inseq_viz::display_token(t))))
                .unwrap_or_default();
            body.push_str(&format!(
                "<h2>{} <small>CTI {:.4}{contrast}</small></h2>",
                esc(&inseq_viz::display_token(&c.cti_token)),
                c.cti_score
            ));
            if let (Some(tokens), Some(scores)) =
                (&self.input_context_tokens, &c.input_context_scores)
            {
                body.push_str(&format!(
                    "<p><b>Input context cues:</b> {}</p>",
                    heat(
                        tokens,
                        scores,
                        cue.map_or(&[][..], |q| &q.input_context),
                        max
                    )
                ));
            }
            if let (Some(tokens), Some(scores)) =
                (&self.output_context_tokens, &c.output_context_scores)
            {
                body.push_str(&format!(
                    "<p><b>Output context cues:</b> {}</p>",
                    heat(
                        tokens,
                        scores,
                        cue.map_or(&[][..], |q| &q.output_context),
                        max
                    )
                ));
            }
        }
        format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>inseq context attribution</title></head><body style=\"font-family:sans-serif\">{body}</body></html>"
        )
    }
}
