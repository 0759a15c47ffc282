//! The attribution loop: validate the request, prepare the rows, attribute batches of steps
//! (one sequence-level call where the method can), record step scores, assemble the output.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use inseq_core::{AttributionOutput, Error, Result, SequenceAttribution, TokenWithId};
use inseq_methods::{
    AttributedFn, AttributionMethod, MethodArgs, MethodContext, SequenceInput, StepAttribution,
    StepInput, contrast_logits, plain_forward,
};
use inseq_models::{ForwardOptions, ModelKind};
use inseq_steps::{StepContext, StepFunction};

use super::batching::{
    StepUnit, build_step, padded_source, padded_target, sequence_input, step_units,
};
use super::collect::{Collected, FiniteCheck};
use super::memory::row_groups;
use super::rows::Row;
use super::{AttributeOptions, AttributionModel};
use crate::Progress;

/// One attribution call's method and what it records.
pub(super) struct Job<'a> {
    pub(super) method: &'a dyn AttributionMethod,
    pub(super) method_id: &'a str,
    pub(super) method_args: &'a MethodArgs,
    pub(super) opts: &'a AttributeOptions,
}

/// Logits of every step from one forward pass (causal models), to pick step scores' logits from.
struct SequenceLogits {
    /// `[rows * steps, vocab]`.
    all: Tensor<2>,
    steps: usize,
}

/// Steps attributed so far, reported to the caller's [`Progress`].
struct StepProgress<'a> {
    done: usize,
    total: usize,
    report: Option<&'a Progress>,
}

impl<'a> StepProgress<'a> {
    fn new(total: usize, report: Option<&'a Progress>) -> Self {
        Self {
            done: 0,
            total,
            report,
        }
    }

    fn advance(&mut self, steps: usize) {
        self.done += steps;
        if let Some(p) = self.report {
            p.report(self.done, self.total);
        }
    }
}

/// Checks that every per-input list has one entry per input.
fn check_request(inputs: &[&str], opts: &AttributeOptions) -> Result<()> {
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
    Ok(())
}

impl AttributionModel {
    /// Attributes `inputs` with `job`'s method: the driver over the named phases.
    pub(super) fn attribute_using(&self, job: &Job, inputs: &[&str]) -> Result<AttributionOutput> {
        let t0 = Instant::now();
        let opts = job.opts;
        check_request(inputs, opts)?;
        let attributed = AttributedFn {
            function: self.registries.steps.get(&opts.attributed_fn)?,
            args: opts.attributed_fn_args.clone(),
        };
        let step_fns = (opts.step_scores.iter())
            .map(|id| self.registries.steps.get(id))
            .collect::<Result<Vec<_>>>()?;
        // Recorded attention weights only serve a single unpadded sequence.
        let record_attentions = job.method.uses_recorded_attentions() && inputs.len() == 1;
        let rows = self.prepare_rows(inputs, opts, record_attentions)?;
        let model = self.model();
        let encoder_layers =
            (model.kind() == ModelKind::EncoderDecoder).then(|| model.num_encoder_layers());
        let shape = (model.info(), encoder_layers);
        let groups = row_groups(shape, job.method, &rows, opts.memory_budget)?;
        let total_steps = rows.iter().map(|r| r.end - r.start).sum();
        let mut progress = StepProgress::new(total_steps, opts.progress.as_ref());
        let mut sequences = Vec::with_capacity(rows.len());
        for range in groups {
            let (first_input, group) = (range.start, &rows[range]);
            let ctx = self.method_context(&attributed, group, opts);
            let mut collected = Collected::new(group, first_input);
            self.attribute_steps(job, &ctx, group, &step_fns, &mut collected, &mut progress)?;
            sequences.extend(self.assemble(group, collected, opts)?);
        }
        let attribute_target =
            opts.attribute_target || self.model().kind() == ModelKind::DecoderOnly;
        let info = self.info_record(job, &rows, inputs, attribute_target, t0);
        Ok(AttributionOutput {
            sequence_attributions: sequences,
            info,
        })
    }

    /// What every method call of this request shares.
    fn method_context<'a>(
        &'a self,
        attributed: &'a AttributedFn,
        rows: &'a [Row],
        opts: &AttributeOptions,
    ) -> MethodContext<'a> {
        let kind = self.model().kind();
        MethodContext {
            model: self.model(),
            attributed_fn: attributed,
            attribute_target: opts.attribute_target || kind == ModelKind::DecoderOnly,
            baseline_token_id: self.unk_id(),
            // Inseq keeps end-of-sequence tokens in the baseline unless `include_eos_baseline`.
            eos_token_id: match opts.include_eos_baseline {
                true => None,
                false => self.model().info().eos_token_id,
            },
            inseq_compat: opts.inseq_compat,
            recorded_attentions: match rows {
                [row] => row.recorded_attentions.as_ref(),
                _ => None,
            },
        }
    }

    /// Attributes every step of `rows`, batch by batch, into `collected`, with step scores.
    fn attribute_steps(
        &self,
        job: &Job,
        ctx: &MethodContext,
        rows: &[Row],
        step_fns: &[Arc<dyn StepFunction>],
        collected: &mut Collected,
        progress: &mut StepProgress,
    ) -> Result<()> {
        let (opts, kind) = (job.opts, self.model().kind());
        let pad = self.model().info().pad_token_id.unwrap_or(0);
        // Causal models: one forward pass over the whole sequences can serve every step.
        let seq = sequence_input(rows, kind, pad);
        let mut seq_attr = match &seq {
            Some(seq) => (job.method.attribute_sequence(ctx, seq).transpose()?).map(Vec::into_iter),
            None => None,
        };
        let seq_logits = match &seq {
            Some(seq) if !step_fns.is_empty() => Some(self.sequence_logits(seq, opts.inseq_compat)),
            _ => None,
        };
        let uses_dropout = (step_fns.iter()).any(|f| f.dropout_samples(&opts.step_scores_args) > 0);
        // Different steps share a batch only where left padding leaves results unchanged
        // (decoder-only models; encoder-decoder decoders change with padded prefixes).
        let rows_per_step = match seq_attr {
            None if !uses_dropout && kind == ModelKind::DecoderOnly => job.method.step_batch_rows(),
            _ => None,
        };
        let max_steps = rows.iter().map(|r| r.end - r.start).max().unwrap_or(0);
        for (unit_index, unit) in step_units(rows, max_steps, rows_per_step)
            .into_iter()
            .enumerate()
        {
            let step = build_step(rows, &unit, pad);
            let out = match seq_attr.as_mut() {
                Some(results) => results.next().ok_or_else(|| {
                    let id = job.method_id;
                    Error::Numerical(format!(
                        "{id}: no sequence attribution for step {unit_index}"
                    ))
                })?,
                None => job.method.attribute_step(ctx, &step)?,
            };
            self.record_attributions(job, rows, &unit, &step, out, collected)?;
            if !step_fns.is_empty() {
                let logits = self.unit_logits(&step, &unit, seq_logits.as_ref(), opts)?;
                self.record_step_scores(&step, &unit, logits, step_fns, opts, collected)?;
            }
            progress.advance(unit.len());
        }
        Ok(())
    }

    /// Moves one call's attributions to the host, checks them and stores each row's columns.
    fn record_attributions(
        &self,
        job: &Job,
        rows: &[Row],
        unit: &StepUnit,
        step: &StepInput,
        out: StepAttribution,
        collected: &mut Collected,
    ) -> Result<()> {
        let first_input = collected.input_index(0);
        let finite = |ri: usize, s: usize| FiniteCheck {
            skip: job.opts.allow_non_finite,
            method_id: job.method_id,
            method_args: job.method_args,
            input: first_input + ri,
            position: rows[ri].start + s,
        };
        collected.record(rows, unit, step, out, finite)
    }

    /// `[unit, vocab]` logits of a batch's steps: picked from the sequence's forward pass, or
    /// from a forward pass of their own.
    fn unit_logits(
        &self,
        step: &StepInput,
        unit: &StepUnit,
        seq_logits: Option<&SequenceLogits>,
        opts: &AttributeOptions,
    ) -> Result<Tensor<2>> {
        let Some(seq) = seq_logits else {
            return self.step_logits(step, opts.inseq_compat, None);
        };
        let picks: Vec<i64> = (unit.iter())
            .map(|&(ri, s)| (ri * seq.steps + s) as i64)
            .collect();
        let n = picks.len();
        let picks = Tensor::<1, Int>::from_data(TensorData::new(picks, [n]), self.model().device());
        Ok(seq.all.clone().select(0, picks))
    }

    /// Computes the step functions on a batch's logits and stores each row's values.
    fn record_step_scores(
        &self,
        step: &StepInput,
        unit: &StepUnit,
        logits: Tensor<2>,
        step_fns: &[Arc<dyn StepFunction>],
        opts: &AttributeOptions,
        collected: &mut Collected,
    ) -> Result<()> {
        let contrast = contrast_logits(self.model(), step, &logits, 1, opts.inseq_compat);
        let dropout_logits = self.dropout_logits(step, step_fns, opts, unit[0].1)?;
        let sctx = StepContext {
            logits,
            target_ids: step.target_ids.clone(),
            contrast,
            dropout_logits,
        };
        for f in step_fns {
            let values = (f.compute(&sctx, &opts.step_scores_args)?)
                .try_to_vec_as::<f32>()
                .map_err(|e| Error::Numerical(format!("{e:?}")))?;
            collected.record_scores(unit, f.id(), &values);
        }
        Ok(())
    }

    /// A token's string: the vocabulary's, or with `clean_special_chars` the text it decodes to
    /// alone (`Ġcaf` → ` caf`), as Inseq's `clean_tokens` (kept where that is empty).
    fn token_string(&self, id: usize, clean_special_chars: bool) -> String {
        let tok = &self.pretrained.tokenizer;
        let raw = tok.id_to_token(id);
        match clean_special_chars {
            true => (tok.decode(&[id], false).ok())
                .filter(|t| !t.is_empty())
                .unwrap_or(raw),
            false => raw,
        }
    }

    /// The target tokens of `row`; contrasted positions read `contrast → token` with id -1.
    fn target_tokens(&self, row: &Row, clean: bool) -> Vec<TokenWithId> {
        let show = |id: usize| self.token_string(id, clean);
        let mut tokens: Vec<TokenWithId> = (row.target_ids.iter())
            .map(|&i| TokenWithId::new(show(i), i as i64))
            .collect();
        if let Some(c) = &row.contrast {
            for (k, &ci) in c.aligned.iter().enumerate() {
                let t = row.start + k;
                if c.target_ids[ci] != row.target_ids[t] {
                    let shown = format!("{} → {}", show(c.target_ids[ci]), tokens[t].token);
                    tokens[t] = TokenWithId::new(shown, -1);
                }
            }
        }
        tokens
    }

    /// One [`SequenceAttribution`] per row from what was collected.
    fn assemble(
        &self,
        rows: &[Row],
        mut collected: Collected,
        opts: &AttributeOptions,
    ) -> Result<Vec<SequenceAttribution>> {
        let clean = opts.clean_special_chars;
        let source_tokens = |ids: &[usize]| -> Vec<TokenWithId> {
            (ids.iter())
                .map(|&i| TokenWithId::new(self.token_string(i, clean), i as i64))
                .collect()
        };
        let mut sequences = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let (source_attributions, target_attributions, step_scores) =
                collected.take_row(i, row, opts.allow_non_finite)?;
            sequences.push(SequenceAttribution {
                source: row.source_ids.as_deref().map(source_tokens),
                target: self.target_tokens(row, clean),
                source_attributions,
                target_attributions,
                step_scores,
                sequence_scores: BTreeMap::new(),
                attr_pos_start: row.start,
                attr_pos_end: row.end,
                aggregations: vec![],
            });
        }
        Ok(sequences)
    }

    /// The output's `info`, as Inseq records it.
    fn info_record(
        &self,
        job: &Job,
        rows: &[Row],
        inputs: &[&str],
        attribute_target: bool,
        t0: Instant,
    ) -> BTreeMap<String, serde_json::Value> {
        let opts = job.opts;
        let info_json = serde_json::json!({
            "model_name": self.pretrained.name,
            "model_class": self.model().info().hf_class,
            "attribution_method": job.method_id,
            "attribution_args": job.method_args.to_json(),
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
        match info_json {
            serde_json::Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        }
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

    /// The logits of every step of `seq` from one forward pass.
    fn sequence_logits(&self, seq: &SequenceInput, inseq_compat: bool) -> SequenceLogits {
        let full = seq.full();
        let options = ForwardOptions {
            logits_from: Some(seq.prefix_width(0) - 1),
            ..Default::default()
        };
        let all = plain_forward(
            self.model(),
            padded_target(&full),
            padded_source(&full),
            inseq_compat,
            options,
        )
        .logits;
        let [b, t, v] = all.dims();
        SequenceLogits {
            all: all.reshape([b * t, v]),
            steps: t,
        }
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
