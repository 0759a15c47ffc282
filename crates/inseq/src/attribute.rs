//! The attribution loop: tokenise, generate or force the target, explain each
//! generated token with the chosen method, collect step scores.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use inseq_core::{Array, AttributionOutput, Error, Result, SequenceAttribution, TokenWithId};
use inseq_methods::{
    AttributedFn, AttributionMethod, MethodArgs, MethodContext, MethodRegistry, StepInput, embed_target,
};
use inseq_models::{
    ForwardOptions, GenerationOptions, LanguageModel, ModelInput, ModelKind, Pretrained, TextTokenizer, generate_greedy,
    ids_tensor, load_pretrained,
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
    /// First target position to attribute (default: the first generated token).
    pub attr_pos_start: Option<usize>,
    /// One past the last target position to attribute (default: the end).
    pub attr_pos_end: Option<usize>,
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
    /// Show a progress bar on stderr.
    pub show_progress: bool,
    /// Reproduce Python Inseq 0.7.1's numerics where they are wrong (Marian's
    /// doubly scaled target embeddings, see `docs/inseq-compatibility.md`). Off by default.
    pub inseq_compat: bool,
}

impl Default for AttributeOptions {
    fn default() -> Self {
        Self {
            targets: None,
            generation: GenerationOptions::default(),
            attr_pos_start: None,
            attr_pos_end: None,
            step_scores: vec![],
            step_scores_args: StepArgs::default(),
            attributed_fn: "probability".into(),
            attributed_fn_args: StepArgs::default(),
            attribute_target: false,
            show_progress: false,
            inseq_compat: false,
        }
    }
}

/// A model ready to attribute with one method: Inseq's `AttributionModel`.
pub struct AttributionModel {
    pretrained: Pretrained,
    method: Box<dyn AttributionMethod>,
    method_id: String,
    method_args: MethodArgs,
    steps: StepRegistry,
}

/// Loads a model (directory, GGUF, alias or hub id) with an attribution method, like `inseq.load_model`.
///
/// ```no_run
/// let device = inseq::default_device().unwrap();
/// let model = inseq::load_model("../shared/fixtures/models/tiny-gpt2", "saliency", Default::default(), &device).unwrap();
/// let out = model.attribute(&["Hello ladies and"], &Default::default()).unwrap();
/// println!("{}", out.sequence_attributions[0].target.len());
/// ```
pub fn load_model(model: &str, method: &str, method_args: MethodArgs, device: &Device) -> Result<AttributionModel> {
    let methods = MethodRegistry::with_defaults();
    let method_impl = methods.create(method, method_args.clone())?;
    let pretrained = load_pretrained(model, device)?;
    Ok(AttributionModel::new(pretrained, method_impl, method, method_args, StepRegistry::with_defaults()))
}

/// One sequence being attributed.
struct Row {
    source_ids: Option<Vec<usize>>,
    target_ids: Vec<usize>,
    start: usize,
    end: usize,
    generated_text: String,
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

    /// The underlying model.
    pub fn model(&self) -> &dyn LanguageModel {
        self.pretrained.model.as_ref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.pretrained.tokenizer
    }

    /// The step-function registry (add custom step functions here).
    pub fn step_registry_mut(&mut self) -> &mut StepRegistry {
        &mut self.steps
    }

    fn encode(&self, text: &str, what: &str) -> Result<Vec<usize>> {
        if text.trim().is_empty() {
            return Err(Error::InvalidInput(format!("{what} text is empty")));
        }
        let ids = self.pretrained.tokenizer.encode(text, true)?;
        if ids.is_empty() {
            return Err(Error::InvalidInput(format!("{what} text produced no tokens")));
        }
        let max = self.model().info().max_positions;
        if ids.len() > max {
            return Err(Error::ContextLength { len: ids.len(), max });
        }
        Ok(ids)
    }

    fn unk_id(&self) -> usize {
        let t = &self.pretrained.tokenizer;
        let info = self.model().info();
        t.token_to_id("<unk>")
            .or_else(|| t.token_to_id("[UNK]"))
            .or(info.pad_token_id)
            .or(info.eos_token_id)
            .unwrap_or(0)
    }

    /// Builds the sequence to attribute for one input.
    fn prepare_row(&self, input: &str, target: Option<&str>, opts: &AttributeOptions) -> Result<Row> {
        let info = self.model().info().clone();
        let tok = &self.pretrained.tokenizer;
        let input_ids = self.encode(input, "input")?;
        let (source_ids, prefix) = match self.model().kind() {
            ModelKind::DecoderOnly => (None, input_ids.clone()),
            ModelKind::EncoderDecoder => {
                let start = info
                    .decoder_start_token_id
                    .or(info.bos_token_id)
                    .ok_or_else(|| Error::Unsupported("model has no decoder_start_token_id".into()))?;
                (Some(input_ids.clone()), vec![start])
            }
        };
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
                    return Err(Error::invalid_arg("max_new_tokens", "must be at least 1 when no target is given"));
                }
                let mut generation = opts.generation;
                if generation.forced_eos_token_id.is_none() {
                    generation.forced_eos_token_id = self
                        .pretrained
                        .config
                        .get("forced_eos_token_id")
                        .and_then(|v| v.as_u64())
                        .map(|v| v as usize);
                }
                let new = generate_greedy(self.model(), source_ids.as_deref(), &prefix, generation)?;
                let all: Vec<usize> = match self.model().kind() {
                    ModelKind::DecoderOnly => input_ids.iter().chain(&new).copied().collect(),
                    ModelKind::EncoderDecoder => new,
                };
                // As Inseq: the generated text is decoded, then re-tokenised as the target.
                tok.decode(&all, true)?
            }
        };
        let target_ids = match self.model().kind() {
            ModelKind::DecoderOnly => self.encode(&target_text, "target")?,
            ModelKind::EncoderDecoder => {
                let mut ids = prefix.clone();
                if !target_text.is_empty() {
                    ids.extend(tok.encode(&target_text, true)?);
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
        let default_start = prefix.len();
        let start = opts.attr_pos_start.unwrap_or(default_start).max(1);
        let end = opts.attr_pos_end.unwrap_or(target_ids.len()).min(target_ids.len());
        if start >= end {
            return Err(Error::InvalidInput(format!(
                "nothing to attribute: attr_pos_start {start} >= attr_pos_end {end} (target has {} tokens)",
                target_ids.len()
            )));
        }
        Ok(Row {
            source_ids,
            target_ids,
            start,
            end,
            generated_text: target_text,
        })
    }

    /// Attributes each input's generation (or forced target) and returns raw
    /// (not aggregated) attributions; call [`crate::aggregate`] for Inseq's default view.
    pub fn attribute(&self, inputs: &[&str], opts: &AttributeOptions) -> Result<AttributionOutput> {
        let t0 = Instant::now();
        if inputs.is_empty() {
            return Err(Error::InvalidInput("no input texts".into()));
        }
        if let Some(t) = &opts.targets
            && t.len() != inputs.len()
        {
            return Err(Error::ShapeMismatch {
                what: "targets (one per input)".into(),
                expected: vec![inputs.len()],
                found: vec![t.len()],
            });
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
        let rows = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let target = opts.targets.as_ref().map(|t| t[i].as_str());
                self.prepare_row(input, target, opts)
            })
            .collect::<Result<Vec<_>>>()?;
        let kind = self.model().kind();
        let attribute_target = opts.attribute_target || kind == ModelKind::DecoderOnly;
        let ctx = MethodContext {
            model: self.model(),
            attributed_fn: &attributed,
            attribute_target,
            baseline_token_id: self.unk_id(),
            eos_token_id: self.model().info().eos_token_id,
            inseq_compat: opts.inseq_compat,
        };
        let mut source_attr: Vec<Option<Vec<Option<Array>>>> = rows.iter().map(|_| None).collect();
        let mut target_attr: Vec<Option<Vec<Option<Array>>>> = rows.iter().map(|_| None).collect();
        let mut scores: Vec<BTreeMap<String, Vec<f32>>> = rows.iter().map(|_| BTreeMap::new()).collect();
        let max_steps = rows.iter().map(|r| r.end - r.start).max().unwrap_or(0);
        let progress = progress_bar(opts.show_progress, rows.iter().map(|r| r.end - r.start).sum());
        for s in 0..max_steps {
            let active: Vec<usize> = (0..rows.len()).filter(|&i| s < rows[i].end - rows[i].start).collect();
            let step = build_step(&rows, &active, s, self.model().info().pad_token_id.unwrap_or(0));
            let out = self.method.attribute_step(&ctx, &step)?;
            let src = out.source.map(|t| split_rows(t, &active)).transpose()?;
            let tgt = out.target.map(|t| split_rows(t, &active)).transpose()?;
            for (bi, &ri) in active.iter().enumerate() {
                let n_steps = rows[ri].end - rows[ri].start;
                if let Some(src) = &src {
                    let slot = source_attr[ri].get_or_insert_with(|| vec![None; n_steps]);
                    let len = rows[ri].source_ids.as_ref().map_or(0, Vec::len);
                    slot[s] = Some(take_rows(&src[bi], 0, len));
                }
                if let Some(tgt) = &tgt {
                    let slot = target_attr[ri].get_or_insert_with(|| vec![None; n_steps]);
                    let prefix_len = rows[ri].start + s;
                    let padded = step.prefix_ids[bi].len();
                    slot[s] = Some(take_rows(&tgt[bi], padded - prefix_len, padded));
                }
                if let Some(d) = &out.deltas {
                    scores[ri].entry("deltas".into()).or_default().push(d[bi]);
                }
            }
            if !step_fns.is_empty() {
                let logits = self.step_logits(&step, opts.inseq_compat)?;
                let sctx = StepContext::new(logits, step.target_ids.clone());
                for f in &step_fns {
                    let v = f
                        .compute(&sctx, &opts.step_scores_args)?
                        .try_to_vec_as::<f32>()
                        .map_err(|e| Error::Numerical(format!("{e:?}")))?;
                    for (bi, &ri) in active.iter().enumerate() {
                        scores[ri].entry(f.id().to_string()).or_default().push(v[bi]);
                    }
                }
            }
            if let Some(p) = &progress {
                p.inc(active.len() as u64);
            }
        }
        if let Some(p) = progress {
            p.finish_and_clear();
        }
        let tok = &self.pretrained.tokenizer;
        let tokens = |ids: &[usize]| -> Vec<TokenWithId> {
            ids.iter().map(|&i| TokenWithId::new(tok.id_to_token(i), i as i64)).collect()
        };
        let mut sequences = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            for (id, values) in &scores[i] {
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(Error::Numerical(format!("step score `{id}` of input {i} is not finite: {values:?}")));
                }
            }
            sequences.push(SequenceAttribution {
                source: row.source_ids.as_deref().map(tokens),
                target: tokens(&row.target_ids),
                source_attributions: source_attr[i]
                    .take()
                    .map(|cols| stack_steps(cols, row.source_ids.as_ref().map_or(0, Vec::len)))
                    .transpose()?,
                target_attributions: target_attr[i]
                    .take()
                    .map(|cols| stack_steps(cols, row.target_ids.len()))
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
            "attribution_method": self.method_id,
            "attribution_args": self.method_args.to_json(),
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

    /// `[batch, vocab]` logits of a plain (non-attributed) forward pass on a step.
    fn step_logits(&self, step: &StepInput, inseq_compat: bool) -> Result<Tensor<2>> {
        let model = self.model();
        let device = model.device();
        let input = ModelInput {
            target_embeds: embed_target(model, &step.prefix_ids, inseq_compat),
            target_mask: step.prefix_mask.clone(),
            source_embeds: step.source_ids.as_ref().map(|s| model.embed_source(ids_tensor(s, device))),
            source_mask: step.source_mask.clone(),
        };
        let out = model.forward(
            input,
            ForwardOptions {
                last_position_only: true,
                ..Default::default()
            },
        );
        Ok(out.last_logits())
    }
}

fn progress_bar(show: bool, total: usize) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} attributing [{bar:30}] {pos}/{len} steps ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Some(bar)
}

/// The batched inputs of step `s` for the `active` rows: prefixes left-padded, sources right-padded.
fn build_step(rows: &[Row], active: &[usize], s: usize, pad: usize) -> StepInput {
    let prefixes: Vec<&[usize]> = active.iter().map(|&i| &rows[i].target_ids[..rows[i].start + s]).collect();
    let width = prefixes.iter().map(|p| p.len()).max().unwrap_or(0);
    let prefix_ids = prefixes
        .iter()
        .map(|p| std::iter::repeat_n(pad, width - p.len()).chain(p.iter().copied()).collect())
        .collect();
    let prefix_mask = prefixes
        .iter()
        .map(|p| (0..width).map(|j| j >= width - p.len()).collect())
        .collect();
    let sources: Option<Vec<&Vec<usize>>> = active.iter().map(|&i| rows[i].source_ids.as_ref()).collect();
    let (source_ids, source_mask) = match sources {
        Some(srcs) => {
            let w = srcs.iter().map(|s| s.len()).max().unwrap_or(0);
            (
                Some(
                    srcs.iter()
                        .map(|s| s.iter().copied().chain(std::iter::repeat_n(pad, w - s.len())).collect())
                        .collect(),
                ),
                Some(srcs.iter().map(|s| (0..w).map(|j| j < s.len()).collect()).collect()),
            )
        }
        None => (None, None),
    };
    StepInput {
        source_ids,
        source_mask,
        prefix_ids,
        prefix_mask,
        target_ids: active.iter().map(|&i| rows[i].target_ids[rows[i].start + s]).collect(),
        contrast: None,
    }
}

/// Moves a `[batch, len, hidden]` tensor to the host, one `[len, hidden]` array per row.
fn split_rows(t: Tensor<3>, active: &[usize]) -> Result<Vec<Array>> {
    let [b, len, h] = t.dims();
    debug_assert_eq!(b, active.len());
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

/// Stacks per-step `[len_s, hidden]` arrays into `[rows, steps, hidden]`, NaN where a step has no score.
fn stack_steps(cols: Vec<Option<Array>>, rows: usize) -> Result<Array> {
    let steps = cols.len();
    let h = cols.iter().flatten().map(|a| a.shape()[1]).next().unwrap_or(1);
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
    Ok(out)
}

/// Shared handle for custom methods registered at run time.
pub type SharedMethod = Arc<dyn AttributionMethod>;
