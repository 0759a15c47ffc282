//! The attribution loop: tokenise, generate or force the target, explain each
//! generated token with the chosen method, collect step scores.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::AttributedSpan;
use burn::tensor::{Device, Tensor};
use inseq_core::{Array, AttributionOutput, Error, Result, SequenceAttribution, TokenWithId};
use inseq_methods::{
    AttributedFn, AttributionMethod, ContrastInput, MethodArgs, MethodContext, MethodRegistry,
    PaddedIds, SequenceInput, StepInput, contrast_logits, plain_forward,
};
use inseq_models::{
    ForwardOptions, GenerationOptions, LanguageModel, ModelKind, Pretrained, RecordedAttentions,
    TextTokenizer, generate_greedy, generate_greedy_recording, load_pretrained,
};
use inseq_steps::{StepArgs, StepContext, StepRegistry};

/// What to attribute and how; the defaults match `inseq.AttributionModel.attribute`.
#[derive(Debug, Clone)]
pub struct AttributeOptions {
    /// Forced targets, one per input (`None`: generate greedily). For
    /// decoder-only models each target must start with its input.
    pub targets: Option<Vec<String>>,
    /// Greedy generation settings when no target is given.
    pub generation: GenerationOptions,
    /// First target position to attribute (default: the first generated token; negative: counted
    /// from the end). Inseq's rules, see [`AttributedSpan`]: for decoder-only models a start
    /// inside the prompt is raised to the prompt length unless [`Self::attribute_prompt`].
    pub attr_pos_start: Option<isize>,
    /// One past the last target position to attribute (default: the end; negative: counted from
    /// the end).
    pub attr_pos_end: Option<isize>,
    /// Decoder-only models: attribute the positions of the prompt from `attr_pos_start` on, as
    /// if the model had generated them (Inseq always starts after the prompt). Off by default.
    pub attribute_prompt: bool,
    /// Step functions to record at every step.
    pub step_scores: Vec<String>,
    /// Arguments of the step scores.
    pub step_scores_args: StepArgs,
    /// The function attributed (default `probability`).
    pub attributed_fn: String,
    /// Its arguments.
    pub attributed_fn_args: StepArgs,
    /// Encoder-decoder models: also attribute the target prefix (decoder-only models always do).
    pub attribute_target: bool,
    /// Contrastive targets, one per input (Inseq's `contrast_targets`): for decoder-only
    /// models the full contrastive text, prompt included.
    pub contrast_targets: Option<Vec<String>>,
    /// Contrastive sources, one per input (encoder-decoder models; Inseq's `contrast_sources`).
    pub contrast_sources: Option<Vec<String>>,
    /// How target positions map to contrastive target positions, one list per input.
    pub contrast_alignments: Option<Vec<ContrastAlignment>>,
    /// Replace end-of-sequence tokens by the baseline token too in the baselines of path and
    /// perturbation methods (Inseq's `include_eos_baseline`; off: they keep their own embedding).
    pub include_eos_baseline: bool,
    /// Token strings in the output as the text each token decodes to alone (`Ġcaf` → ` caf`),
    /// as Inseq's `clean_special_chars`; off: the vocabulary's strings.
    pub clean_special_chars: bool,
    /// Remove the tokenizer's special tokens from the texts and add none when tokenising
    /// (Inseq's `skip_special_tokens`).
    pub skip_special_tokens: bool,
    /// Told of the attribution's progress (steps done, steps in all) after each batch of
    /// steps; the CLI draws its progress bar from it. `None`: nothing is reported.
    pub progress: Option<Progress>,
    /// Reproduce Python Inseq 0.7.1's numerics where they are wrong (Marian's
    /// doubly scaled target embeddings, see `docs/inseq-compatibility.md`). Off by default.
    pub inseq_compat: bool,
    /// Keep non-finite (NaN/inf) attributions and step scores instead of failing with
    /// [`Error::Numerical`] (for debugging a model; see `docs/reliability.md`). Off by default.
    pub allow_non_finite: bool,
}

/// A progress callback: called with (steps done, steps in all).
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
/// let seen = Arc::new(AtomicUsize::new(0));
/// let s = seen.clone();
/// let progress = inseq::Progress::new(move |done, _total| s.store(done, Ordering::Relaxed));
/// progress.report(3, 4);
/// assert_eq!(seen.load(Ordering::Relaxed), 3);
/// ```
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn(usize, usize) + Send + Sync>);

impl Progress {
    /// Wraps a callback.
    pub fn new(f: impl Fn(usize, usize) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Reports `done` of `total` steps.
    pub fn report(&self, done: usize, total: usize) {
        (self.0)(done, total)
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

impl Default for AttributeOptions {
    fn default() -> Self {
        Self {
            targets: None,
            generation: GenerationOptions::default(),
            attr_pos_start: None,
            attr_pos_end: None,
            attribute_prompt: false,
            step_scores: vec![],
            step_scores_args: StepArgs::default(),
            attributed_fn: "probability".into(),
            attributed_fn_args: StepArgs::default(),
            attribute_target: false,
            contrast_targets: None,
            contrast_sources: None,
            contrast_alignments: None,
            include_eos_baseline: false,
            clean_special_chars: false,
            skip_special_tokens: false,
            progress: None,
            inseq_compat: false,
            allow_non_finite: false,
        }
    }
}

/// A model ready to attribute with one method: Inseq's `AttributionModel`.
pub struct AttributionModel {
    pub(crate) pretrained: Pretrained,
    method: Box<dyn AttributionMethod>,
    method_id: String,
    method_args: MethodArgs,
    steps: StepRegistry,
}

/// Loads a model (directory, GGUF, alias or hub id) with an attribution method, like `inseq.load_model`.
///
/// ```no_run
/// let device = inseq::default_device().unwrap();
/// let model = inseq::load_model("tests/fixtures/models/tiny-gpt2", "saliency", Default::default(), &device).unwrap();
/// let out = model.attribute(&["Hello ladies and"], &Default::default()).unwrap();
/// println!("{}", out.sequence_attributions[0].target.len());
/// ```
pub fn load_model(
    model: &str,
    method: &str,
    method_args: MethodArgs,
    device: &Device,
) -> Result<AttributionModel> {
    let methods = MethodRegistry::with_defaults();
    let method_impl = methods.create(method, method_args.clone())?;
    let pretrained = load_pretrained(model, device)?;
    Ok(AttributionModel::new(
        pretrained,
        method_impl,
        method,
        method_args,
        StepRegistry::with_defaults(),
    ))
}

/// How target positions are matched with contrastive target positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContrastAlignment {
    /// Inseq's default: 1:1 from the end of both sequences.
    RightAligned,
    /// Explicit `(target position, contrast position)` pairs (as Inseq's
    /// `contrast_targets_alignments`); unaligned positions fall back to right alignment.
    Pairs(Vec<(usize, usize)>),
    /// Match equal tokens by longest common subsequence (edit distance); other
    /// positions follow the previous match.
    Auto,
}

impl std::str::FromStr for ContrastAlignment {
    type Err = Error;
    /// `auto`, `right`, or pairs `0-0,1-1,2-3`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "" | "right" => Ok(Self::RightAligned),
            pairs => pairs
                .split(',')
                .map(|p| {
                    let (a, b) = p.trim().split_once('-').ok_or_else(|| {
                        Error::invalid_arg("contrast alignments", format!("`{p}` is not `i-j`"))
                    })?;
                    let parse = |x: &str| {
                        x.trim().parse::<usize>().map_err(|_| {
                            Error::invalid_arg(
                                "contrast alignments",
                                format!("`{x}` is not a position"),
                            )
                        })
                    };
                    Ok((parse(a)?, parse(b)?))
                })
                .collect::<Result<Vec<_>>>()
                .map(Self::Pairs),
        }
    }
}

/// The contrastive side of one sequence.
struct RowContrast {
    source_ids: Option<Vec<usize>>,
    target_ids: Vec<usize>,
    /// For each attributed target position (from `start`), the aligned contrast position.
    aligned: Vec<usize>,
}

/// One sequence being attributed.
struct Row {
    source_ids: Option<Vec<usize>>,
    target_ids: Vec<usize>,
    start: usize,
    end: usize,
    generated_text: String,
    contrast: Option<RowContrast>,
    /// Self-attention weights recorded while generating this row's target, if asked for.
    recorded_attentions: Option<RecordedAttentions>,
}

/// Contrast positions for target positions `start..end` (see [`ContrastAlignment`]).
fn align_contrast(
    alignment: &ContrastAlignment,
    target: &[usize],
    contrast: &[usize],
    start: usize,
    end: usize,
) -> Vec<usize> {
    let right = |t: usize| contrast.len().saturating_sub(end - t);
    match alignment {
        ContrastAlignment::RightAligned => (start..end).map(right).collect(),
        ContrastAlignment::Pairs(pairs) => {
            let mut used = Vec::new();
            (start..end)
                .map(|t| {
                    let mut cands: Vec<usize> = pairs
                        .iter()
                        .filter(|(a, b)| *a == t && *b < contrast.len())
                        .map(|p| p.1)
                        .collect();
                    cands.sort();
                    let pick = cands
                        .iter()
                        .find(|c| !used.contains(*c))
                        .or(cands.first())
                        .copied();
                    let c = pick.unwrap_or_else(|| right(t));
                    used.push(c);
                    c
                })
                .collect()
        }
        ContrastAlignment::Auto => {
            // Longest common subsequence of the two id sequences.
            let (n, m) = (target.len(), contrast.len());
            let mut dp = vec![vec![0usize; m + 1]; n + 1];
            for i in (0..n).rev() {
                for j in (0..m).rev() {
                    dp[i][j] = if target[i] == contrast[j] {
                        dp[i + 1][j + 1] + 1
                    } else {
                        dp[i + 1][j].max(dp[i][j + 1])
                    };
                }
            }
            let mut matched = vec![None; n];
            let (mut i, mut j) = (0, 0);
            while i < n && j < m {
                if target[i] == contrast[j] {
                    matched[i] = Some(j);
                    i += 1;
                    j += 1;
                } else if dp[i + 1][j] >= dp[i][j + 1] {
                    i += 1;
                } else {
                    j += 1;
                }
            }
            let mut last: Option<usize> = None;
            let mut out = Vec::with_capacity(end - start);
            for (t, m) in matched.iter().enumerate().take(end) {
                let c = match m {
                    Some(c) => *c,
                    None => last
                        .map_or(0, |l| l + 1)
                        .min(contrast.len().saturating_sub(1)),
                };
                last = Some(c);
                if t >= start {
                    out.push(c);
                }
            }
            out
        }
    }
}

impl AttributionModel {
    /// Wraps an already loaded model and method.
    pub fn new(
        pretrained: Pretrained,
        method: Box<dyn AttributionMethod>,
        method_id: &str,
        method_args: MethodArgs,
        steps: StepRegistry,
    ) -> Self {
        Self {
            pretrained,
            method,
            method_id: method_id.to_string(),
            method_args,
            steps,
        }
    }

    /// Switches to another built-in attribution method, keeping the loaded model (as Inseq's
    /// `model.attribute(method=...)` overrides the method it was loaded with).
    ///
    /// ```
    /// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/tiny-gpt2");
    /// let device = inseq::default_device().unwrap();
    /// let mut model = inseq::load_model(dir, "saliency", Default::default(), &device).unwrap();
    /// model.set_method("occlusion", Default::default()).unwrap();
    /// assert_eq!(model.method_id(), "occlusion");
    /// assert!(model.set_method("no_such_method", Default::default()).is_err());
    /// ```
    pub fn set_method(&mut self, method_id: &str, method_args: MethodArgs) -> Result<()> {
        self.method = MethodRegistry::with_defaults().create(method_id, method_args.clone())?;
        self.method_id = method_id.to_string();
        self.method_args = method_args;
        Ok(())
    }

    /// The underlying model.
    pub fn model(&self) -> &dyn LanguageModel {
        self.pretrained.model.as_ref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.pretrained.tokenizer
    }

    /// The id of the attribution method this model was loaded with.
    pub fn method_id(&self) -> &str {
        &self.method_id
    }

    /// Word ids of a sequence's source and target tokens from the tokenizer's own
    /// pre-tokenisation (`Encoding::get_word_ids`), `None` for special tokens. Returns `None`
    /// when the tokens do not re-encode to the same ids (e.g. contrastive `a → b` tokens).
    #[allow(clippy::type_complexity)]
    pub fn word_ids(
        &self,
        seq: &SequenceAttribution,
    ) -> Option<(Option<Vec<Option<usize>>>, Vec<Option<usize>>)> {
        let tok = self.pretrained.tokenizer.inner();
        let ids_of = |t: &[TokenWithId]| -> Option<Vec<u32>> {
            t.iter().map(|t| u32::try_from(t.id).ok()).collect()
        };
        let words = |ids: &[u32], skip_first: bool| -> Option<Vec<Option<usize>>> {
            let body = if skip_first {
                &ids[1.min(ids.len())..]
            } else {
                ids
            };
            let text = tok.decode(body, false).ok()?;
            let enc = tok.encode(text.as_str(), true).ok()?;
            if enc.get_ids() != body {
                return None;
            }
            let mut w: Vec<Option<usize>> = enc
                .get_word_ids()
                .iter()
                .map(|w| w.map(|w| w as usize))
                .collect();
            if skip_first {
                w.insert(0, None);
            }
            Some(w)
        };
        let encoder_decoder = self.model().kind() == ModelKind::EncoderDecoder;
        let target = words(&ids_of(&seq.target)?, encoder_decoder)?;
        let source = match &seq.source {
            Some(src) => Some(words(&ids_of(src)?, false)?),
            None => None,
        };
        Some((source, target))
    }

    /// Applies an aggregation `pipeline` to `out`, giving its steps the tokenizer's word
    /// boundaries (see [`AttributionModel::word_ids`]) in their `AggregationContext`, which
    /// `subwords` uses instead of the `Ġ`/`▁`/`##` markers.
    pub fn aggregate_with(
        &self,
        out: &AttributionOutput,
        pipeline: &inseq_aggregate::Pipeline,
    ) -> Result<AttributionOutput> {
        let mut sequences = Vec::with_capacity(out.sequence_attributions.len());
        for seq in &out.sequence_attributions {
            let ctx = match self.word_ids(seq) {
                Some((source, target)) => inseq_aggregate::AggregationContext {
                    source_word_ids: source,
                    target_word_ids: Some(target),
                },
                None => Default::default(),
            };
            sequences.push(pipeline.apply_with(seq, &ctx)?);
        }
        Ok(AttributionOutput {
            sequence_attributions: sequences,
            info: out.info.clone(),
        })
    }

    /// The step-function registry (add custom step functions here).
    pub fn step_registry_mut(&mut self) -> &mut StepRegistry {
        &mut self.steps
    }

    /// Token ids of `text`; with `skip_special_tokens` (Inseq's option) the special tokens'
    /// strings are removed from it first and none is added.
    fn encode(&self, text: &str, what: &str, skip_special_tokens: bool) -> Result<Vec<usize>> {
        if text.trim().is_empty() {
            return Err(Error::InvalidInput(format!("{what} text is empty")));
        }
        let tokenizer = &self.pretrained.tokenizer;
        let mut ids = match skip_special_tokens {
            false => tokenizer.encode(text, true)?,
            true => {
                let text = tokenizer
                    .special_token_strings()
                    .iter()
                    .fold(text.to_string(), |t, special| {
                        t.replace(special.as_str(), "")
                    });
                tokenizer.encode(&text, false)?
            }
        };
        // As Inseq: a text that starts with the BOS token its tokenizer also adds (a chat
        // template, Llama 2's `<s>[INST]`) keeps one of the two.
        let bos = self.pretrained.special_tokens.bos;
        if ids.len() >= 2 && bos.is_some_and(|b| ids[0] == b && ids[1] == b) {
            ids.remove(0);
        }
        if ids.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{what} text produced no tokens"
            )));
        }
        let vocab = self.model().info().vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id >= vocab) {
            return Err(Error::InvalidInput(format!(
                "{what} text has token id {id} (`{}`) from the tokenizer (tokenizer.json), \
                 outside the model's vocabulary of {vocab} (config.json `vocab_size`)",
                self.pretrained.tokenizer.id_to_token(id)
            )));
        }
        let max = self.model().info().max_positions;
        if ids.len() > max {
            return Err(Error::ContextLength {
                len: ids.len(),
                max,
            });
        }
        Ok(ids)
    }

    /// The baseline token: Inseq's rule over the special tokens the tokenizer and config declare
    /// ([`inseq_models::SpecialTokens::baseline`]: unk, else pad, else config pad, else the
    /// first config eos); id 0 for a model that declares none of them.
    fn unk_id(&self) -> usize {
        self.pretrained.special_tokens.baseline().unwrap_or(0)
    }

    /// The model's decoding defaults: its `generation_config.json` (else the decoding keys of
    /// its `config.json`) over [`GenerationOptions::default`], as Hugging Face `generate` (and so
    /// Inseq) starts from them; an error names a key this crate does not implement. The CLI uses
    /// them; [`AttributeOptions::default`] does not (start from these to match Inseq).
    pub fn generation_defaults(&self) -> Result<GenerationOptions> {
        self.pretrained.generation_config.options()
    }

    /// The tokens that end generation, as `transformers` takes them: `generation_config.json`'s
    /// `eos_token_id` (one id or a list), else `config.json`'s (GGUF: the metadata's eos id).
    pub fn end_token_ids(&self) -> Vec<usize> {
        let special = &self.pretrained.special_tokens;
        match (&special.generation_eos, &special.config_eos) {
            (generation, _) if !generation.is_empty() => generation.clone(),
            (_, config) if !config.is_empty() => config.clone(),
            _ => self.model().info().eos_token_id.into_iter().collect(),
        }
    }

    /// Builds the sequence to attribute for one input; `record_attentions`: keep the
    /// self-attention weights of generation (see [`generate_greedy_recording`]); `n_inputs`:
    /// how many inputs the call attributes.
    fn prepare_row(
        &self,
        index: usize,
        input: &str,
        target: Option<&str>,
        opts: &AttributeOptions,
        record_attentions: bool,
        n_inputs: usize,
    ) -> Result<Row> {
        let info = self.model().info().clone();
        let tok = &self.pretrained.tokenizer;
        let input_ids = self.encode(input, "input", opts.skip_special_tokens)?;
        let (source_ids, prefix) = match self.model().kind() {
            ModelKind::DecoderOnly => (None, input_ids.clone()),
            ModelKind::EncoderDecoder => {
                let start = info
                    .decoder_start_token_id
                    .or(info.bos_token_id)
                    .ok_or_else(|| {
                        Error::Unsupported("model has no decoder_start_token_id".into())
                    })?;
                (Some(input_ids.clone()), vec![start])
            }
        };
        let mut recorded_attentions = None;
        // The generated ids, attributed as they are unless `inseq_compat` (then, as Inseq, the
        // decoded text is re-tokenised, which can turn a partial byte token into U+FFFD tokens).
        let mut generated_ids = None;
        let target_text = match target {
            Some(t) => {
                if self.model().kind() == ModelKind::DecoderOnly && !t.starts_with(input) {
                    return Err(Error::InvalidInput(format!(
                        "for decoder-only models the target must start with the input: `{t}` does not start with `{input}`"
                    )));
                }
                t.to_string()
            }
            None => {
                if opts.generation.max_new_tokens == 0 {
                    return Err(Error::invalid_arg(
                        "max_new_tokens",
                        "must be at least 1 when no target is given",
                    ));
                }
                let mut generation = opts.generation.clone();
                // One sampler per row, so that a row's tokens do not depend on its batch.
                generation.seed = row_seed(generation.seed, &input_ids);
                if generation.eos_token_ids.is_empty() {
                    generation.eos_token_ids = self.end_token_ids();
                }
                if generation.forced_eos_token_id.is_none() {
                    generation.forced_eos_token_id = self
                        .pretrained
                        .config
                        .get("forced_eos_token_id")
                        .and_then(|v| v.as_u64())
                        .map(|v| v as usize);
                }
                let new = if record_attentions {
                    let (new, recorded) = generate_greedy_recording(
                        self.model(),
                        source_ids.as_deref(),
                        &prefix,
                        generation,
                    )?;
                    recorded_attentions = recorded;
                    new
                } else {
                    generate_greedy(self.model(), source_ids.as_deref(), &prefix, generation)?
                };
                let all: Vec<usize> = match self.model().kind() {
                    ModelKind::DecoderOnly => input_ids.iter().chain(&new).copied().collect(),
                    ModelKind::EncoderDecoder => new,
                };
                // Inseq decodes a lone decoder-only generation with its special tokens
                // (`HuggingfaceModel.generate`), any other without.
                let keep_special = opts.inseq_compat
                    && n_inputs == 1
                    && self.model().kind() == ModelKind::DecoderOnly;
                let text = tok.decode(&all, !keep_special)?;
                if !opts.inseq_compat {
                    generated_ids = Some(match self.model().kind() {
                        ModelKind::DecoderOnly => all,
                        ModelKind::EncoderDecoder => [prefix.clone(), all].concat(),
                    });
                }
                text
            }
        };
        let target_ids = match (generated_ids, self.model().kind()) {
            (Some(ids), _) => ids,
            (None, ModelKind::DecoderOnly) => {
                self.encode(&target_text, "target", opts.skip_special_tokens)?
            }
            (None, ModelKind::EncoderDecoder) => {
                let mut ids = prefix.clone();
                if !target_text.is_empty() {
                    ids.extend(self.encode(&target_text, "target", opts.skip_special_tokens)?);
                }
                ids
            }
        };
        if target_ids.len() > info.max_positions {
            return Err(Error::ContextLength {
                len: target_ids.len(),
                max: info.max_positions,
            });
        }
        let (start, end) = AttributedSpan {
            len: target_ids.len(),
            prefix_len: prefix.len(),
            decoder_only: self.model().kind() == ModelKind::DecoderOnly,
            start: opts.attr_pos_start,
            end: opts.attr_pos_end,
            prompt_positions: opts.attribute_prompt,
        }
        .resolve()?;
        let contrast = self.prepare_contrast(index, &target_ids, start, end, opts)?;
        Ok(Row {
            source_ids,
            target_ids,
            start,
            end,
            generated_text: target_text,
            contrast,
            recorded_attentions,
        })
    }

    /// Tokenises and aligns the contrastive inputs of row `index`, if any.
    fn prepare_contrast(
        &self,
        index: usize,
        target_ids: &[usize],
        start: usize,
        end: usize,
        opts: &AttributeOptions,
    ) -> Result<Option<RowContrast>> {
        let kind = self.model().kind();
        let c_source = match (&opts.contrast_sources, kind) {
            (None, _) => None,
            (Some(_), ModelKind::DecoderOnly) => {
                return Err(Error::invalid_arg(
                    "contrast_sources",
                    "decoder-only models have no source: give the contrastive prompt in contrast_targets",
                ));
            }
            (Some(c), ModelKind::EncoderDecoder) => {
                Some(self.encode(&c[index], "contrastive source", opts.skip_special_tokens)?)
            }
        };
        let c_target = match &opts.contrast_targets {
            None => None,
            Some(c) => Some(match kind {
                ModelKind::DecoderOnly => {
                    self.encode(&c[index], "contrastive target", opts.skip_special_tokens)?
                }
                ModelKind::EncoderDecoder => {
                    let mut ids = vec![target_ids[0]];
                    ids.extend(self.pretrained.tokenizer.encode(&c[index], true)?);
                    ids
                }
            }),
        };
        if c_source.is_none() && c_target.is_none() {
            if opts.contrast_alignments.is_some() {
                return Err(Error::invalid_arg(
                    "contrast_alignments",
                    "given without contrast_targets",
                ));
            }
            return Ok(None);
        }
        let c_target = c_target.unwrap_or_else(|| target_ids.to_vec());
        let alignment = opts
            .contrast_alignments
            .as_ref()
            .map(|a| a[index].clone())
            .unwrap_or(ContrastAlignment::RightAligned);
        let aligned = align_contrast(&alignment, target_ids, &c_target, start, end);
        if let Some((t, _)) = aligned
            .iter()
            .enumerate()
            .find(|(_, c)| **c == 0 || **c >= c_target.len())
        {
            return Err(Error::InvalidInput(format!(
                "target position {} is aligned to contrastive position {} which has no prefix to condition on",
                start + t,
                aligned[t]
            )));
        }
        Ok(Some(RowContrast {
            source_ids: c_source,
            target_ids: c_target,
            aligned,
        }))
    }

    /// Like [`AttributionModel::attribute`] with another registered method (e.g. `dummy` for step scores only).
    pub fn attribute_with(
        &self,
        method: &str,
        inputs: &[&str],
        opts: &AttributeOptions,
    ) -> Result<AttributionOutput> {
        let m = MethodRegistry::with_defaults().create(method, MethodArgs::default())?;
        self.attribute_using(m.as_ref(), method, &MethodArgs::default(), inputs, opts)
    }

    /// Attributes each input's generation (or forced target) and returns raw
    /// (not aggregated) attributions; call [`crate::aggregate`] for Inseq's default view.
    pub fn attribute(&self, inputs: &[&str], opts: &AttributeOptions) -> Result<AttributionOutput> {
        self.attribute_using(
            self.method.as_ref(),
            &self.method_id,
            &self.method_args,
            inputs,
            opts,
        )
    }

    fn attribute_using(
        &self,
        method: &dyn AttributionMethod,
        method_id: &str,
        method_args: &MethodArgs,
        inputs: &[&str],
        opts: &AttributeOptions,
    ) -> Result<AttributionOutput> {
        let t0 = Instant::now();
        if inputs.is_empty() {
            return Err(Error::InvalidInput("no input texts".into()));
        }
        let counts = [
            ("targets", opts.targets.as_ref().map(Vec::len)),
            (
                "contrast_targets",
                opts.contrast_targets.as_ref().map(Vec::len),
            ),
            (
                "contrast_sources",
                opts.contrast_sources.as_ref().map(Vec::len),
            ),
            (
                "contrast_alignments",
                opts.contrast_alignments.as_ref().map(Vec::len),
            ),
        ];
        for (what, n) in counts {
            if let Some(n) = n
                && n != inputs.len()
            {
                return Err(Error::ShapeMismatch {
                    what: format!("{what} (one per input)"),
                    expected: vec![inputs.len()],
                    found: vec![n],
                });
            }
        }
        if opts.targets.is_none() && opts.generation.num_return_sequences > 1 {
            return Err(Error::Unsupported(
                "num_return_sequences > 1: attribute one generated sequence per input (use \
                 inseq_models::beam_search for the others)"
                    .into(),
            ));
        }
        let attributed = AttributedFn {
            function: self.steps.get(&opts.attributed_fn)?,
            args: opts.attributed_fn_args.clone(),
        };
        let step_fns = opts
            .step_scores
            .iter()
            .map(|id| self.steps.get(id))
            .collect::<Result<Vec<_>>>()?;
        // Recorded attention weights only serve a single unpadded sequence.
        let record_attentions = method.uses_recorded_attentions() && inputs.len() == 1;
        let rows = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let target = opts.targets.as_ref().map(|t| t[i].as_str());
                self.prepare_row(i, input, target, opts, record_attentions, inputs.len())
            })
            .collect::<Result<Vec<_>>>()?;
        let kind = self.model().kind();
        let attribute_target = opts.attribute_target || kind == ModelKind::DecoderOnly;
        let ctx = MethodContext {
            model: self.model(),
            attributed_fn: &attributed,
            attribute_target,
            baseline_token_id: self.unk_id(),
            // Inseq keeps end-of-sequence tokens in the baseline unless `include_eos_baseline`.
            eos_token_id: match opts.include_eos_baseline {
                true => None,
                false => self.model().info().eos_token_id,
            },
            inseq_compat: opts.inseq_compat,
            recorded_attentions: match rows.as_slice() {
                [row] => row.recorded_attentions.as_ref(),
                _ => None,
            },
        };
        let mut source_attr: Vec<Option<Vec<Option<Array>>>> = rows.iter().map(|_| None).collect();
        let mut target_attr: Vec<Option<Vec<Option<Array>>>> = rows.iter().map(|_| None).collect();
        let mut scores: Vec<BTreeMap<String, Vec<f32>>> =
            rows.iter().map(|_| BTreeMap::new()).collect();
        let max_steps = rows.iter().map(|r| r.end - r.start).max().unwrap_or(0);
        let mut score_dims: Option<Vec<usize>> = None;
        let total_steps: usize = rows.iter().map(|r| r.end - r.start).sum();
        let mut steps_done = 0;
        let pad = self.model().info().pad_token_id.unwrap_or(0);
        // Causal models: one forward pass over the whole sequences can serve every step.
        let seq = sequence_input(&rows, kind, pad);
        let mut seq_attr = match &seq {
            Some(seq) => method
                .attribute_sequence(&ctx, seq)
                .transpose()?
                .map(Vec::into_iter),
            None => None,
        };
        let seq_logits = match &seq {
            Some(seq) if !step_fns.is_empty() => {
                let all = self.sequence_logits(seq, opts.inseq_compat);
                let [b, t, v] = all.dims();
                Some((all.reshape([b * t, v]), t))
            }
            _ => None,
        };
        let uses_dropout = step_fns
            .iter()
            .any(|f| f.dropout_samples(&opts.step_scores_args) > 0);
        // Different steps share a batch only where left padding leaves results unchanged
        // (decoder-only models; encoder-decoder decoders change with padded prefixes).
        let rows_per_step = match seq_attr {
            None if !uses_dropout && kind == ModelKind::DecoderOnly => method.step_batch_rows(),
            _ => None,
        };
        for (unit_index, unit) in step_units(&rows, max_steps, rows_per_step)
            .into_iter()
            .enumerate()
        {
            let step = build_step(&rows, &unit, pad);
            let out = match seq_attr.as_mut() {
                Some(results) => results.next().ok_or_else(|| {
                    Error::Numerical(format!(
                        "{method_id}: no sequence attribution for step {unit_index}"
                    ))
                })?,
                None => method.attribute_step(&ctx, &step)?,
            };
            if out.score_dims.is_some() {
                score_dims.clone_from(&out.score_dims);
            }
            let src = out.source.map(|t| split_rows(t, unit.len())).transpose()?;
            let tgt = out.target.map(|t| split_rows(t, unit.len())).transpose()?;
            for (bi, &(ri, s)) in unit.iter().enumerate() {
                let n_steps = rows[ri].end - rows[ri].start;
                let finite = FiniteCheck {
                    skip: opts.allow_non_finite,
                    method_id,
                    method_args,
                    input: ri,
                    position: rows[ri].start + s,
                };
                if let Some(src) = &src {
                    let slot = source_attr[ri].get_or_insert_with(|| vec![None; n_steps]);
                    let len = rows[ri].source_ids.as_ref().map_or(0, Vec::len);
                    let col = take_rows(&src[bi], 0, len);
                    finite.check("source attributions", col.data())?;
                    slot[s] = Some(col);
                }
                if let Some(tgt) = &tgt {
                    let slot = target_attr[ri].get_or_insert_with(|| vec![None; n_steps]);
                    let prefix_len = rows[ri].start + s;
                    let padded = step.prefix_ids[bi].len();
                    let col = take_rows(&tgt[bi], padded - prefix_len, padded);
                    finite.check("target attributions", col.data())?;
                    slot[s] = Some(col);
                }
                if let Some(d) = &out.deltas {
                    scores[ri].entry("deltas".into()).or_default().push(d[bi]);
                }
            }
            if !step_fns.is_empty() {
                let logits = match &seq_logits {
                    Some((all, steps)) => {
                        let picks: Vec<usize> =
                            unit.iter().map(|&(ri, s)| ri * steps + s).collect();
                        let picks = burn::tensor::Tensor::<1, burn::tensor::Int>::from_data(
                            burn::tensor::TensorData::new(
                                picks.iter().map(|&p| p as i64).collect::<Vec<_>>(),
                                [picks.len()],
                            ),
                            self.model().device(),
                        );
                        all.clone().select(0, picks)
                    }
                    None => self.step_logits(&step, opts.inseq_compat, None)?,
                };
                let contrast = contrast_logits(self.model(), &step, &logits, 1, opts.inseq_compat);
                let dropout_logits = self.dropout_logits(&step, &step_fns, opts, unit[0].1)?;
                let sctx = StepContext {
                    logits,
                    target_ids: step.target_ids.clone(),
                    contrast,
                    dropout_logits,
                };
                for f in &step_fns {
                    let v = f
                        .compute(&sctx, &opts.step_scores_args)?
                        .try_to_vec_as::<f32>()
                        .map_err(|e| Error::Numerical(format!("{e:?}")))?;
                    for (bi, &(ri, _)) in unit.iter().enumerate() {
                        scores[ri]
                            .entry(f.id().to_string())
                            .or_default()
                            .push(v[bi]);
                    }
                }
            }
            steps_done += unit.len();
            if let Some(p) = &opts.progress {
                p.report(steps_done, total_steps);
            }
        }
        let tok = &self.pretrained.tokenizer;
        // A token's string: the vocabulary's, or with `clean_special_chars` the text it decodes
        // to alone (`Ġcaf` → ` caf`), as Inseq's `clean_tokens` (kept where that is empty).
        let show = |id: usize| -> String {
            let raw = tok.id_to_token(id);
            match opts.clean_special_chars {
                true => tok
                    .decode(&[id], false)
                    .ok()
                    .filter(|t| !t.is_empty())
                    .unwrap_or(raw),
                false => raw,
            }
        };
        let tokens = |ids: &[usize]| -> Vec<TokenWithId> {
            ids.iter()
                .map(|&i| TokenWithId::new(show(i), i as i64))
                .collect()
        };
        let mut sequences = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let mut target_tokens = tokens(&row.target_ids);
            if let Some(c) = &row.contrast {
                for (k, &ci) in c.aligned.iter().enumerate() {
                    let t = row.start + k;
                    if c.target_ids[ci] != row.target_ids[t] {
                        let shown =
                            format!("{} → {}", show(c.target_ids[ci]), target_tokens[t].token);
                        target_tokens[t] = TokenWithId::new(shown, -1);
                    }
                }
            }
            for (id, values) in &scores[i] {
                if !opts.allow_non_finite && values.iter().any(|v| !v.is_finite()) {
                    return Err(Error::Numerical(format!(
                        "step score `{id}` of input {i} is not finite: {values:?}"
                    )));
                }
            }
            sequences.push(SequenceAttribution {
                source: row.source_ids.as_deref().map(tokens),
                target: target_tokens,
                source_attributions: source_attr[i]
                    .take()
                    .map(|cols| {
                        stack_steps(
                            cols,
                            row.source_ids.as_ref().map_or(0, Vec::len),
                            score_dims.as_deref(),
                        )
                    })
                    .transpose()?,
                target_attributions: target_attr[i]
                    .take()
                    .map(|cols| stack_steps(cols, row.target_ids.len(), score_dims.as_deref()))
                    .transpose()?,
                step_scores: std::mem::take(&mut scores[i]),
                sequence_scores: BTreeMap::new(),
                attr_pos_start: row.start,
                attr_pos_end: row.end,
                aggregations: vec![],
            });
        }
        let info_json = serde_json::json!({
            "model_name": self.pretrained.name,
            "model_class": self.model().info().hf_class,
            "attribution_method": method_id,
            "attribution_args": method_args.to_json(),
            "attributed_fn": opts.attributed_fn,
            "attributed_fn_args": opts.attributed_fn_args.0,
            "step_scores": opts.step_scores,
            "step_scores_args": opts.step_scores_args.0,
            "attribute_target": attribute_target,
            "input_texts": inputs,
            "generated_texts": rows.iter().map(|r| r.generated_text.clone()).collect::<Vec<_>>(),
            "constrained_decoding": opts.targets.is_some(),
            "max_new_tokens": opts.generation.max_new_tokens,
            "exec_time": t0.elapsed().as_secs_f64(),
        });
        let info: BTreeMap<String, serde_json::Value> = match info_json {
            serde_json::Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Ok(AttributionOutput {
            sequence_attributions: sequences,
            info,
        })
    }

    /// Logits of the forward passes with Monte Carlo dropout that the step functions ask for.
    fn dropout_logits(
        &self,
        step: &StepInput,
        step_fns: &[Arc<dyn inseq_steps::StepFunction>],
        opts: &AttributeOptions,
        step_index: usize,
    ) -> Result<Vec<Tensor<2>>> {
        let args = &opts.step_scores_args;
        let n = step_fns
            .iter()
            .map(|f| f.dropout_samples(args))
            .max()
            .unwrap_or(0);
        if n == 0 {
            return Ok(vec![]);
        }
        if !self.model().supports_internal_hooks() {
            return Err(Error::Unsupported(format!(
                "Monte Carlo dropout needs dropout inside the model, which the {} implementation does not support",
                self.model().info().architecture
            )));
        }
        let model_p = self.model().dropout_probability();
        let p = args.f64_or("dropout", if model_p > 0.0 { model_p } else { 0.1 });
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid_arg(
                "dropout",
                format!("must be in [0, 1), got {p}"),
            ));
        }
        let seed = args.f64_or("seed", 42.0) as u64;
        (0..n)
            .map(|k| {
                let dropout = inseq_models::McDropout {
                    p,
                    seed: seed.wrapping_add((step_index * 1_000_003 + k) as u64),
                };
                self.step_logits(step, opts.inseq_compat, Some(dropout))
            })
            .collect()
    }

    /// `[batch, steps, vocab]` logits of every step of `seq` from one forward pass.
    fn sequence_logits(&self, seq: &SequenceInput, inseq_compat: bool) -> Tensor<3> {
        let full = seq.full();
        let options = ForwardOptions {
            logits_from: Some(seq.prefix_width(0) - 1),
            ..Default::default()
        };
        plain_forward(
            self.model(),
            padded_target(&full),
            padded_source(&full),
            inseq_compat,
            options,
        )
        .logits
    }

    /// `[batch, vocab]` logits of a plain (not attributed) forward pass on a step.
    fn step_logits(
        &self,
        step: &StepInput,
        inseq_compat: bool,
        dropout: Option<inseq_models::McDropout>,
    ) -> Result<Tensor<2>> {
        let options = ForwardOptions {
            last_position_only: true,
            dropout,
            ..Default::default()
        };
        let out = plain_forward(
            self.model(),
            padded_target(step),
            padded_source(step),
            inseq_compat,
            options,
        );
        Ok(out.last_logits())
    }
}

/// A step's target prefix ids and mask.
fn padded_target(step: &StepInput) -> PaddedIds<'_> {
    (&step.prefix_ids, &step.prefix_mask)
}

/// A step's source ids and mask (encoder-decoder models).
fn padded_source(step: &StepInput) -> Option<PaddedIds<'_>> {
    step.source_ids.as_deref().zip(step.source_mask.as_deref())
}

/// One attribution call: `(row, step)` pairs attributed in one batch.
type StepUnit = Vec<(usize, usize)>;

/// Most tokens × forward rows per row a batch of different steps may hold (see
/// [`AttributionMethod::step_batch_rows`]).
const STEP_BATCH_TOKENS: usize = 2048;

/// How the steps of `rows` are grouped into batches, in step order: one batch per step by
/// default (Inseq's loop); with `rows_per_step` (the method's rows per input row), consecutive
/// steps share a batch while it holds at most [`STEP_BATCH_TOKENS`] token rows.
fn step_units(rows: &[Row], max_steps: usize, rows_per_step: Option<usize>) -> Vec<StepUnit> {
    let per_step = (0..max_steps).map(|s| {
        (0..rows.len())
            .filter(|&i| s < rows[i].end - rows[i].start)
            .map(|i| (i, s))
            .collect::<StepUnit>()
    });
    let Some(k) = rows_per_step else {
        return per_step.collect();
    };
    let cost = |&(ri, s): &(usize, usize)| {
        let r = &rows[ri];
        (r.start + s + r.source_ids.as_ref().map_or(0, Vec::len)) * k.max(1)
    };
    let mut units: Vec<StepUnit> = vec![];
    let mut used = 0;
    for pair in per_step.flatten() {
        let c = cost(&pair);
        match units.last_mut() {
            Some(unit) if used + c <= STEP_BATCH_TOKENS => unit.push(pair),
            _ => {
                units.push(vec![pair]);
                used = 0;
            }
        }
        used += c;
    }
    units
}

/// The batched inputs of `(row, step)` pairs: prefixes left-padded, sources right-padded.
fn build_step(rows: &[Row], unit: &[(usize, usize)], pad: usize) -> StepInput {
    let prefixes: Vec<&[usize]> = unit
        .iter()
        .map(|&(i, s)| &rows[i].target_ids[..rows[i].start + s])
        .collect();
    let (prefix_ids, prefix_mask) = left_pad(&prefixes, pad);
    let sources: Option<Vec<&[usize]>> = unit
        .iter()
        .map(|&(i, _)| rows[i].source_ids.as_deref())
        .collect();
    let (source_ids, source_mask) = match sources {
        Some(srcs) => {
            let (ids, mask) = right_pad(&srcs, pad);
            (Some(ids), Some(mask))
        }
        None => (None, None),
    };
    let contrast = build_contrast(rows, unit, pad);
    StepInput {
        source_ids,
        source_mask,
        prefix_ids,
        prefix_mask,
        target_ids: unit
            .iter()
            .map(|&(i, s)| rows[i].target_ids[rows[i].start + s])
            .collect(),
        contrast,
    }
}

/// Every step of `rows` as one [`SequenceInput`], when step-by-step attribution would see the
/// same inputs: no contrastive inputs, every row attributes the same number of steps and, for
/// encoder-decoder models (whose decoders are not trained on padded prefixes), every target
/// prefix has the same length.
fn sequence_input(rows: &[Row], kind: ModelKind, pad: usize) -> Option<SequenceInput> {
    let first = rows.first()?;
    let steps = first.end - first.start;
    let uniform = rows.iter().all(|r| {
        r.contrast.is_none()
            && r.end - r.start == steps
            && (kind == ModelKind::DecoderOnly || r.start == first.start)
    });
    if !uniform || steps == 0 {
        return None;
    }
    let targets: Vec<&[usize]> = rows.iter().map(|r| &r.target_ids[..r.end]).collect();
    let (ids, mask) = left_pad(&targets, pad);
    let sources: Option<Vec<&[usize]>> = rows.iter().map(|r| r.source_ids.as_deref()).collect();
    let (source_ids, source_mask) = match sources {
        Some(srcs) => {
            let (ids, mask) = right_pad(&srcs, pad);
            (Some(ids), Some(mask))
        }
        None => (None, None),
    };
    let seq = SequenceInput {
        source_ids,
        source_mask,
        ids,
        mask,
        steps,
    };
    seq.check().ok().map(|()| seq)
}

/// Left-pads `seqs` to a common width, returning ids and masks.
fn left_pad(seqs: &[&[usize]], pad: usize) -> (Vec<Vec<usize>>, Vec<Vec<bool>>) {
    let width = seqs.iter().map(|p| p.len()).max().unwrap_or(0);
    let ids = seqs
        .iter()
        .map(|p| {
            std::iter::repeat_n(pad, width - p.len())
                .chain(p.iter().copied())
                .collect()
        })
        .collect();
    let mask = seqs
        .iter()
        .map(|p| (0..width).map(|j| j >= width - p.len()).collect())
        .collect();
    (ids, mask)
}

/// Right-pads `seqs` to a common width, returning ids and masks.
fn right_pad(seqs: &[&[usize]], pad: usize) -> (Vec<Vec<usize>>, Vec<Vec<bool>>) {
    let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let ids = seqs
        .iter()
        .map(|s| {
            s.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, width - s.len()))
                .collect()
        })
        .collect();
    let mask = seqs
        .iter()
        .map(|s| (0..width).map(|j| j < s.len()).collect())
        .collect();
    (ids, mask)
}

/// The contrastive inputs of `(row, step)` pairs (all rows or none have contrasts).
fn build_contrast(rows: &[Row], unit: &[(usize, usize)], pad: usize) -> Option<ContrastInput> {
    let contrasts: Option<Vec<&RowContrast>> = unit
        .iter()
        .map(|&(i, _)| rows[i].contrast.as_ref())
        .collect();
    let contrasts = contrasts?;
    let prefixes: Vec<&[usize]> = contrasts
        .iter()
        .zip(unit)
        .map(|(c, &(_, s))| &c.target_ids[..c.aligned[s]])
        .collect();
    let (prefix_ids, prefix_mask) = left_pad(&prefixes, pad);
    let any_source = contrasts.iter().any(|c| c.source_ids.is_some());
    let (source_ids, source_mask) = if any_source {
        let srcs: Vec<&[usize]> = unit
            .iter()
            .zip(&contrasts)
            .map(|(&(i, _), c)| {
                c.source_ids
                    .as_deref()
                    .or(rows[i].source_ids.as_deref())
                    .unwrap_or(&[])
            })
            .collect();
        let (ids, mask) = right_pad(&srcs, pad);
        (Some(ids), Some(mask))
    } else {
        (None, None)
    };
    let same_as_original = unit
        .iter()
        .zip(&contrasts)
        .zip(&prefixes)
        .map(|((&(i, s), c), p)| {
            let row = &rows[i];
            *p == &row.target_ids[..row.start + s]
                && c.source_ids
                    .as_ref()
                    .is_none_or(|cs| Some(cs) == row.source_ids.as_ref())
        })
        .collect();
    Some(ContrastInput {
        source_ids,
        source_mask,
        prefix_ids,
        prefix_mask,
        target_ids: contrasts
            .iter()
            .zip(unit)
            .map(|(c, &(_, s))| c.target_ids[c.aligned[s]])
            .collect(),
        same_as_original,
    })
}

/// Where one step's attributions came from, to report NaN/inf in them (the one place every
/// method's output passes through).
struct FiniteCheck<'a> {
    /// `allow_non_finite`: keep them.
    skip: bool,
    method_id: &'a str,
    method_args: &'a MethodArgs,
    input: usize,
    /// The target position attributed.
    position: usize,
}

impl FiniteCheck<'_> {
    /// [`Error::Numerical`] naming the input, the step and the likely causes if `values` has a
    /// NaN or infinity.
    fn check(&self, what: &str, values: &[f32]) -> Result<()> {
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if self.skip || bad == 0 {
            return Ok(());
        }
        Err(Error::Numerical(format!(
            "{what} of input {} at target position {} are not finite ({bad} of {} entries \
             NaN/inf); likely causes: the model's weights or config (NaN weights, a \
             non-positive norm epsilon, rope_theta) or the arguments of `{}` ({:?}); \
             allow_non_finite (--allow-non-finite) keeps them",
            self.input,
            self.position,
            values.len(),
            self.method_id,
            self.method_args.to_json(),
        )))
    }
}

/// Moves a `[batch, len, hidden]` tensor to the host, one `[len, hidden]` array per row.
fn split_rows(t: Tensor<3>, batch: usize) -> Result<Vec<Array>> {
    let [b, len, h] = t.dims();
    if b != batch {
        return Err(Error::ShapeMismatch {
            what: "attribution batch".into(),
            expected: vec![batch, len, h],
            found: vec![b, len, h],
        });
    }
    let data = t
        .try_to_vec_as::<f32>()
        .map_err(|e| Error::Numerical(format!("{e:?}")))?;
    data.chunks(len * h)
        .map(|c| Array::new(vec![len, h], c.to_vec()))
        .collect()
}

/// Rows `from..to` of a `[len, hidden]` array.
fn take_rows(a: &Array, from: usize, to: usize) -> Array {
    let h = a.shape()[1];
    Array::new(vec![to - from, h], a.data()[from * h..to * h].to_vec()).expect("consistent slice")
}

/// Stacks per-step `[len_s, hidden]` arrays into `[rows, steps, hidden]`, NaN where a step has no
/// score, then gives the trailing dimension the method's `score_dims` shape (none for per-token scores,
/// `[layers, heads]` for attention).
fn stack_steps(
    cols: Vec<Option<Array>>,
    rows: usize,
    score_dims: Option<&[usize]>,
) -> Result<Array> {
    let steps = cols.len();
    let h = cols
        .iter()
        .flatten()
        .map(|a| a.shape()[1])
        .next()
        .unwrap_or(1);
    let mut out = Array::full(vec![rows, steps, h], f32::NAN);
    for (s, col) in cols.iter().enumerate() {
        if let Some(col) = col {
            for r in 0..col.shape()[0].min(rows) {
                for k in 0..h {
                    out.set(&[r, s, k], col.get(&[r, k]));
                }
            }
        }
    }
    match score_dims {
        Some(dims) => inseq_aggregate::reshape_scores(&out, dims),
        None => Ok(out),
    }
}

/// Shared handle for custom methods registered at run time.
pub type SharedMethod = Arc<dyn AttributionMethod>;

/// The sampler seed of a row whose input is `input_ids`: SplitMix64's mixing of `seed` and
/// each id, so that a row draws the same tokens alone, at any position of any batch, and in
/// `attribute-dataset` with any `--batch-size` (identical inputs draw identical tokens: give them
/// different seeds for different samples).
fn row_seed(seed: u64, input_ids: &[usize]) -> u64 {
    let mix = |z: u64| {
        let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    input_ids
        .iter()
        .fold(mix(seed), |h, &id| mix(h ^ id as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_alignment_matches_from_the_end() {
        // target positions 5..8 of an 8-token target, contrast of 9 tokens
        let a = align_contrast(&ContrastAlignment::RightAligned, &[0; 8], &[0; 9], 5, 8);
        assert_eq!(a, vec![6, 7, 8]);
    }

    #[test]
    fn explicit_pairs_fall_back_to_right_alignment() {
        let pairs = ContrastAlignment::Pairs(vec![(5, 5), (6, 7)]);
        assert_eq!(
            align_contrast(&pairs, &[0; 8], &[0; 9], 5, 8),
            vec![5, 7, 8]
        );
        assert_eq!("5-5, 6-7".parse::<ContrastAlignment>().unwrap(), pairs);
        assert!("5:5".parse::<ContrastAlignment>().is_err());
    }

    #[test]
    fn auto_alignment_follows_equal_tokens() {
        // target:   a b c X d e      contrast: a b c Y Z d e
        let t = [1, 2, 3, 9, 4, 5];
        let c = [1, 2, 3, 7, 8, 4, 5];
        assert_eq!(
            align_contrast(&ContrastAlignment::Auto, &t, &c, 3, 6),
            vec![3, 5, 6]
        );
    }
}
