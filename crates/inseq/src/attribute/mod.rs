//! [`AttributionModel`]: a model, its tokenizer and an attribution method, with the registries
//! of methods and step functions it can use by id. The attribution itself runs in phases: rows
//! ([`rows`]: tokenise, generate or force the target), batches ([`batching`]), the loop
//! ([`run`]) and the per-row results ([`collect`]).

use std::sync::Arc;

use burn::tensor::Device;
use inseq_core::{AttributionOutput, Error, Result, SequenceAttribution, TokenWithId};
use inseq_methods::{AttributionMethod, MethodArgs, MethodRegistry};
use inseq_models::{
    GenerationOptions, LanguageModel, LoadOptions, ModelKind, Pretrained, TextTokenizer,
    load_pretrained_with,
};
use inseq_steps::{StepArgs, StepRegistry};

mod batching;
mod collect;
mod memory;
mod rows;
mod run;

pub use memory::{activation_bytes, encoder_decoder_activation_bytes, parse_memory_size};
use run::Job;

use crate::Registries;

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
    /// Bytes the attribution may use: it fails before starting ([`Error::OutOfMemory`]) when
    /// its activations need more by [`activation_bytes`]. `None`: the free memory
    /// (`MemAvailable`; no check where it is unknown).
    pub memory_budget: Option<u64>,
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
            memory_budget: None,
        }
    }
}

/// A model ready to attribute with one method: Inseq's `AttributionModel`.
pub struct AttributionModel {
    pub(crate) pretrained: Pretrained,
    method: Box<dyn AttributionMethod>,
    method_id: String,
    method_args: MethodArgs,
    registries: Registries,
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
    load_model_with(model, method, method_args, device, Registries::default())
}

/// [`load_model`] with `registries` for every id (a researcher's own methods, step functions
/// and aggregators next to the built-ins); the method is looked up before the model loads.
pub fn load_model_with(
    model: &str,
    method: &str,
    method_args: MethodArgs,
    device: &Device,
    registries: Registries,
) -> Result<AttributionModel> {
    let options = LoadOptions::from_env()?;
    load_model_with_options(model, method, method_args, device, registries, &options)
}

/// [`load_model_with`] with load `options`: how the weight matrices are held (kept as the file
/// stores them and widened per use, or widened to `f32` at load time; [`load_model_with`] takes
/// it from `INSEQ_WEIGHTS`, `auto` by default: compact above 4 GiB of `f32` weights) and the
/// tokenizer's source and target languages (M2M100's `src_lang` / `tgt_lang`, as Inseq's
/// `tokenizer_kwargs`), overriding `tokenizer_config.json`'s.
pub fn load_model_with_options(
    model: &str,
    method: &str,
    method_args: MethodArgs,
    device: &Device,
    registries: Registries,
    options: &LoadOptions,
) -> Result<AttributionModel> {
    let method_impl = registries.methods.create(method, method_args.clone())?;
    let pretrained = load_pretrained_with(model, device, options)?;
    let steps = registries.steps.clone();
    let model = AttributionModel::new(pretrained, method_impl, method, method_args, steps);
    Ok(model.with_registries(registries))
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
            registries: Registries {
                steps,
                ..Registries::default()
            },
        }
    }

    /// Uses `registries` for every id: [`Self::set_method`], [`Self::attribute_with`], step
    /// scores and attributed functions, and [`Self::aggregate_spec`].
    pub fn with_registries(mut self, registries: Registries) -> Self {
        self.registries = registries;
        self
    }

    /// The registries this model looks ids up in.
    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// The registries (register custom methods, step functions and aggregators here).
    pub fn registries_mut(&mut self) -> &mut Registries {
        &mut self.registries
    }

    /// The attribution methods this model can switch to by id.
    pub fn method_registry(&self) -> &MethodRegistry {
        &self.registries.methods
    }

    /// The method registry (register custom methods here, then [`Self::set_method`]).
    pub fn method_registry_mut(&mut self) -> &mut MethodRegistry {
        &mut self.registries.methods
    }

    /// Switches to another registered attribution method, keeping the loaded model (as Inseq's
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
        self.method = self
            .registries
            .methods
            .create(method_id, method_args.clone())?;
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
            let mut ctx = self.registries.aggregation_context(seq);
            if let Some((source, target)) = self.word_ids(seq) {
                ctx.source_word_ids = source;
                ctx.target_word_ids = Some(target);
            }
            sequences.push(pipeline.apply_with(seq, &ctx)?);
        }
        Ok(AttributionOutput {
            sequence_attributions: sequences,
            info: out.info.clone(),
        })
    }

    /// Parses `spec` against this model's aggregators ([`Registries::pipeline`]) and applies it
    /// as [`Self::aggregate_with`] does.
    pub fn aggregate_spec(&self, out: &AttributionOutput, spec: &str) -> Result<AttributionOutput> {
        self.aggregate_with(out, &self.registries.pipeline(spec)?)
    }

    /// The step functions this model can record and attribute, by id.
    pub fn step_registry(&self) -> &StepRegistry {
        &self.registries.steps
    }

    /// The step-function registry (add custom step functions here).
    pub fn step_registry_mut(&mut self) -> &mut StepRegistry {
        &mut self.registries.steps
    }

    /// Token ids of `text`; with `skip_special_tokens` (Inseq's option) the special tokens'
    /// strings are removed from it first and none is added.
    fn encode(&self, text: &str, what: &str, skip_special_tokens: bool) -> Result<Vec<usize>> {
        if text.trim().is_empty() {
            return Err(Error::InvalidInput(format!("{what} text is empty")));
        }
        let tokenizer = &self.pretrained.tokenizer;
        // Target texts of encoder-decoder models go through the target tokenizer (Marian's
        // `target.spm`), as transformers' `tokenizer(text_target=...)`.
        let target = what.ends_with("target") && self.model().kind() == ModelKind::EncoderDecoder;
        let encode = |text: &str, special: bool| match target {
            true => tokenizer.encode_target(text, special),
            false => tokenizer.encode(text, special),
        };
        let mut ids = match skip_special_tokens {
            false => encode(text, true)?,
            true => {
                let text = tokenizer
                    .special_token_strings()
                    .iter()
                    .fold(text.to_string(), |t, special| {
                        t.replace(special.as_str(), "")
                    });
                encode(&text, false)?
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

    /// The token whose embedding perturbation methods put in place of a removed token (Inseq's
    /// baseline: `unk`, else `pad`, else the config's pad id, else its first eos id; 0 when the
    /// model declares none), for code that perturbs inputs as `occlusion` does (`inseq-eval`).
    pub fn baseline_token_id(&self) -> usize {
        self.unk_id()
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

    /// Like [`AttributionModel::attribute`] with another registered method (e.g. `dummy` for step scores only).
    pub fn attribute_with(
        &self,
        method: &str,
        inputs: &[&str],
        opts: &AttributeOptions,
    ) -> Result<AttributionOutput> {
        let args = MethodArgs::default();
        let m = self.registries.methods.create(method, args.clone())?;
        let job = Job {
            method: m.as_ref(),
            method_id: method,
            method_args: &args,
            opts,
        };
        self.attribute_using(&job, inputs)
    }

    /// Attributes each input's generation (or forced target) and returns raw
    /// (not aggregated) attributions; call [`crate::aggregate`] for Inseq's default view.
    pub fn attribute(&self, inputs: &[&str], opts: &AttributeOptions) -> Result<AttributionOutput> {
        let job = Job {
            method: self.method.as_ref(),
            method_id: &self.method_id,
            method_args: &self.method_args,
            opts,
        };
        self.attribute_using(&job, inputs)
    }
}

/// Shared handle for custom methods registered at run time.
pub type SharedMethod = Arc<dyn AttributionMethod>;
