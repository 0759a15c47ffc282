//! Shared machinery of gradient methods: embedding a step, running the
//! attributed function and back-propagating to the input embeddings.

use std::sync::Arc;

use burn::tensor::Tensor;
use inseq_core::{Error, Result};
use inseq_models::{ForwardOptions, LanguageModel, ModelInput, ModelKind, ModelOutput, ids_tensor};
use inseq_steps::{ContrastOutput, StepArgs, StepContext, StepFunction};

use crate::{MethodContext, SequenceInput, StepAttribution, StepInput, encoder_stages};

/// The function being explained: a step function with its arguments.
#[derive(Clone)]
pub struct AttributedFn {
    /// The step function (e.g. `probability`).
    pub function: Arc<dyn StepFunction>,
    /// Its arguments.
    pub args: StepArgs,
}

/// Embeddings of one step's inputs.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// `[batch, source_len, hidden]`.
    pub source: Option<Tensor<3>>,
    /// `[batch, prefix_len, hidden]`.
    pub target: Tensor<3>,
}

/// Baseline ids for `rows`: the baseline token everywhere except end-of-sequence
/// tokens and, when `keep_first` (encoder-decoder targets), the first real token
/// of each row (the decoder start token), as Inseq builds them.
pub(crate) fn baseline_ids(
    ctx: &MethodContext,
    rows: &[Vec<usize>],
    mask: Option<&[Vec<bool>]>,
    keep_first: bool,
) -> Vec<Vec<usize>> {
    rows.iter()
        .enumerate()
        .map(|(r, row)| {
            let first = mask
                .and_then(|m| m.get(r))
                .and_then(|m| m.iter().position(|&keep| keep))
                .unwrap_or(0);
            row.iter()
                .enumerate()
                .map(|(j, &id)| {
                    if Some(id) == ctx.eos_token_id || (keep_first && j == first) {
                        id
                    } else {
                        ctx.baseline_token_id
                    }
                })
                .collect()
        })
        .collect()
}

/// Embeds the step's source and target prefix ids (or baseline ids when `baseline`).
pub fn embed_step(ctx: &MethodContext, step: &StepInput, baseline: bool) -> Embedded {
    let model = ctx.model;
    let device = model.device();
    let encoder_decoder = model.kind() == ModelKind::EncoderDecoder;
    let source = match (encoder_decoder, &step.source_ids) {
        (true, Some(src)) => {
            let ids = if baseline {
                baseline_ids(ctx, src, step.source_mask.as_deref(), false)
            } else {
                src.clone()
            };
            Some(model.embed_source(ids_tensor(&ids, device)))
        }
        _ => None,
    };
    let target_ids = if baseline {
        baseline_ids(
            ctx,
            &step.prefix_ids,
            Some(&step.prefix_mask),
            encoder_decoder,
        )
    } else {
        step.prefix_ids.clone()
    };
    Embedded {
        source,
        target: embed_target(model, &target_ids, ctx.inseq_compat),
    }
}

/// Target token embeddings as attributed: the model's own, or with Python
/// Inseq's extra scaling when `inseq_compat` is set.
pub fn embed_target(
    model: &dyn LanguageModel,
    ids: &[Vec<usize>],
    inseq_compat: bool,
) -> Tensor<3> {
    let embeds = model.embed(ids_tensor(ids, model.device()));
    let quirk = model.inseq_target_embed_quirk();
    if inseq_compat && quirk != 1.0 {
        embeds * quirk
    } else {
        embeds
    }
}

/// Padded ids and their mask.
pub type PaddedIds<'a> = (&'a [Vec<usize>], &'a [Vec<bool>]);

/// A plain (not attributed) forward pass on target prefix ids (and source ids), with the
/// target embeddings as attribution sees them (Inseq's quirk with `inseq_compat`).
///
/// ```
/// # use inseq_methods::plain_forward;
/// # use inseq_models::{ForwardOptions, load_pretrained};
/// let m = load_pretrained(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/tiny-gpt2"), &burn::tensor::Device::flex()).unwrap();
/// let ids = vec![vec![10, 11, 12]];
/// let mask = vec![vec![true; 3]];
/// let options = ForwardOptions { last_position_only: true, ..Default::default() };
/// let out = plain_forward(m.model.as_ref(), (&ids, &mask), None, false, options);
/// assert_eq!(out.logits.dims()[1], 1);
/// ```
pub fn plain_forward(
    model: &dyn LanguageModel,
    target: PaddedIds,
    source: Option<PaddedIds>,
    inseq_compat: bool,
    options: ForwardOptions,
) -> ModelOutput {
    let device = model.device();
    let input = ModelInput {
        target_embeds: embed_target(model, target.0, inseq_compat),
        target_mask: target.1.to_vec(),
        source_embeds: source.map(|(ids, _)| model.embed_source(ids_tensor(ids, device))),
        source_mask: source.map(|(_, m)| m.to_vec()),
    };
    model.forward(input, options)
}

/// The contrastive output of a step for `times` stacked copies of the batch.
/// Rows whose contrastive inputs equal the original ones reuse `original_logits`
/// (so gradients flow through them, as in Inseq); the others get the logits of
/// a separate, untracked forward pass on the contrastive inputs.
pub fn contrast_logits(
    model: &dyn LanguageModel,
    step: &StepInput,
    original_logits: &Tensor<2>,
    times: usize,
    inseq_compat: bool,
) -> Option<ContrastOutput> {
    let c = step.contrast.as_ref()?;
    let target_ids = c.target_ids.repeat(times);
    if c.same_as_original.iter().all(|&s| s) {
        return Some(ContrastOutput {
            logits: original_logits.clone(),
            target_ids,
        });
    }
    let source = match (
        &c.source_ids,
        &c.source_mask,
        &step.source_ids,
        &step.source_mask,
    ) {
        (Some(ids), Some(mask), _, _) | (None, _, Some(ids), Some(mask)) => {
            Some((ids.as_slice(), mask.as_slice()))
        }
        _ => None,
    };
    let options = ForwardOptions {
        last_position_only: true,
        ..Default::default()
    };
    let separate = plain_forward(
        model,
        (&c.prefix_ids, &c.prefix_mask),
        source,
        inseq_compat,
        options,
    )
    .last_logits()
    .detach();
    let separate = if times == 1 {
        separate
    } else {
        separate.repeat_dim(0, times)
    };
    let logits = if c.same_as_original.iter().any(|&s| s) {
        let [b, v] = original_logits.dims();
        let same: Vec<bool> = c
            .same_as_original
            .iter()
            .cycle()
            .take(b)
            .flat_map(|&s| std::iter::repeat_n(s, v))
            .collect();
        let mask = Tensor::<2, burn::tensor::Bool>::from_data(
            burn::tensor::TensorData::new(same, [b, v]),
            &original_logits.device(),
        );
        separate.mask_where(mask, original_logits.clone())
    } else {
        separate
    };
    Some(ContrastOutput { logits, target_ids })
}

/// The model input of `embedded`, a batch of `times` stacked copies of the step's batch
/// (masks repeated to match).
pub(crate) fn repeated_input(step: &StepInput, embedded: &Embedded, times: usize) -> ModelInput {
    let rep = |m: &Vec<Vec<bool>>| {
        m.iter()
            .cycle()
            .take(m.len() * times)
            .cloned()
            .collect::<Vec<_>>()
    };
    ModelInput {
        target_embeds: embedded.target.clone(),
        target_mask: rep(&step.prefix_mask),
        source_embeds: embedded.source.clone(),
        source_mask: step.source_mask.as_ref().map(rep),
    }
}

/// Runs the model on `embedded` (a batch that is `times` copies of the step's
/// batch, e.g. one per interpolation point) and returns the attributed function, `[times * batch]`.
pub fn forward_scores(
    ctx: &MethodContext,
    step: &StepInput,
    embedded: &Embedded,
    times: usize,
) -> Result<Tensor<1>> {
    forward_scores_with(ctx, step, embedded, times, (None, false))
}

/// [`forward_scores`], with the encoder's output computed beforehand (see
/// [`ForwardOptions::encoder_output`]) and on AttnLRP's graph with `lrp`.
pub(crate) fn forward_scores_with(
    ctx: &MethodContext,
    step: &StepInput,
    embedded: &Embedded,
    times: usize,
    (encoder_output, attn_lrp): (Option<Tensor<3>>, bool),
) -> Result<Tensor<1>> {
    let input = repeated_input(step, embedded, times);
    let out = ctx.model.forward(
        input,
        ForwardOptions {
            last_position_only: true,
            encoder_output,
            attn_lrp,
            ..Default::default()
        },
    );
    let logits = out.last_logits();
    let sctx = StepContext {
        contrast: contrast_logits(ctx.model, step, &logits, times, ctx.inseq_compat),
        dropout_logits: vec![],
        logits,
        target_ids: step.target_ids.repeat(times),
    };
    ctx.attributed_fn
        .function
        .compute(&sctx, &ctx.attributed_fn.args)
}

/// Gradients of the summed attributed function with respect to the embeddings
/// that are attributed (the source, and the target prefix for decoder-only
/// models or with `attribute_target`). Returns `(source_grad, target_grad, scores)`.
/// A long source goes back through the encoder stage by stage ([`crate::encoder_stages`]).
pub fn gradients(
    ctx: &MethodContext,
    step: &StepInput,
    embedded: Embedded,
    times: usize,
) -> Result<(Option<Tensor<3>>, Option<Tensor<3>>, Tensor<1>)> {
    gradients_on(ctx, step, embedded, times, false)
}

/// [`gradients`] on AttnLRP's graph with `lrp` (see [`ForwardOptions::attn_lrp`]).
pub(crate) fn gradients_on(
    ctx: &MethodContext,
    step: &StepInput,
    embedded: Embedded,
    times: usize,
    lrp: bool,
) -> Result<(Option<Tensor<3>>, Option<Tensor<3>>, Tensor<1>)> {
    let attribute_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
    let staged = (embedded.source.as_ref())
        .is_some_and(|s| encoder_stages::applies(ctx.model, s.dims()[0], s.dims()[1]));
    if staged {
        let how = (times, attribute_target, lrp);
        return encoder_stages::staged_gradients(ctx, step, embedded, how);
    }
    let track = |t: Tensor<3>| t.detach().autodiff().require_grad();
    let source = embedded.source.map(track);
    let target = if attribute_target {
        track(embedded.target)
    } else {
        embedded.target.detach()
    };
    let tracked = Embedded {
        source: source.clone(),
        target: target.clone(),
    };
    let scores = forward_scores_with(ctx, step, &tracked, times, (None, lrp))?;
    let grads = scores.clone().sum().backward();
    let source_grad = source.map(|s| s.grad(&grads)).map(|g| {
        g.ok_or_else(|| Error::Numerical("no gradient reached the source embeddings".into()))
    });
    let source_grad = source_grad.transpose()?;
    let target_grad =
        if attribute_target {
            Some(target.grad(&grads).ok_or_else(|| {
                Error::Numerical("no gradient reached the target embeddings".into())
            })?)
        } else {
            None
        };
    Ok((source_grad, target_grad, scores.detach().without_autodiff()))
}

/// Most activations (floats) one shared forward pass ([`sequence_gradients`]) may keep: 1.5 GiB.
pub const SHARED_FORWARD_FLOATS: usize = 384 << 20;

/// How many copies (e.g. interpolation points) of a `[batch, width]` decoder-only batch one
/// shared forward pass may hold within [`SHARED_FORWARD_FLOATS`]; 0 when not even one fits
/// (then gradient methods attribute step by step, with `internal_batch_size` bounding memory).
/// Counts what the pass keeps at least, linear in the width: each block's input per position
/// (the checkpoints of `inseq_models::checkpoint`; whole block tapes are kept only while they
/// fit `inseq_models::checkpoint::KEEP_TAPES_BYTES`) and one recomputed block tape of about
/// twelve hidden-size vectors per position; attention weights are never kept beyond one chunk.
pub fn shared_forward_copies(model: &dyn LanguageModel, batch: usize, width: usize) -> usize {
    let info = model.info();
    let per_position = (info.num_layers + 12) * info.hidden_size;
    SHARED_FORWARD_FLOATS / (batch * width * per_position).max(1)
}

/// Whether [`sequence_gradients`] can apply to `seq` at all (a decoder-only model, no source),
/// checked before any embedding work.
pub(crate) fn shared_forward_applies(ctx: &MethodContext, seq: &SequenceInput) -> bool {
    ctx.model.kind() == ModelKind::DecoderOnly && seq.source_ids.is_none()
}

/// Attributions of every step of `seq` from [`sequence_gradients`] on the sequence's own
/// embeddings (one copy): `finish(gradient, embeddings)` turns a step's gradient
/// `[batch, prefix, hidden]` into its attribution, given the embeddings of the same prefix.
/// `None` where [`sequence_gradients`] does not apply.
pub(crate) fn sequence_gradient_attributions(
    ctx: &MethodContext,
    seq: &SequenceInput,
    finish: impl Fn(Tensor<3>, Tensor<3>) -> Tensor<3>,
) -> Option<Result<Vec<StepAttribution>>> {
    if !shared_forward_applies(ctx, seq) {
        return None;
    }
    let x = embed_step(ctx, &seq.full(), false).target;
    let grads = sequence_gradients(ctx, seq, x.clone(), 1)?;
    Some(grads.map(|steps| {
        steps
            .into_iter()
            .map(|g| {
                let prefix = x.clone().narrow(1, 0, g.dims()[1]);
                StepAttribution::granular(None, Some(finish(g, prefix)))
            })
            .collect()
    }))
}

/// For every step `s` of `seq`, the gradient of the attributed function at that step with
/// respect to the target embeddings of its prefix, `[times * batch, seq.prefix_width(s), hidden]`,
/// where `embeds` (`[times * batch, width, hidden]`, `width` the full prefix width) holds `times`
/// copies of the batch (e.g. one per interpolation point).
///
/// Causal attention makes one forward pass over the whole sequence serve every step; the
/// model's hand-written backward pass ([`LanguageModel::forward_shared`]) then runs one
/// backward pass per step over that step's prefix, from the gradient of the attributed function
/// at the LM head (taken with autodiff, step by step). The passes through the blocks run side by
/// side on CPU backends ([`inseq_models::SharedForward::backward_each`]). Equal to [`gradients`]
/// on `seq.step(s)` up to rounding. `None` where this does not apply (encoder-decoder models,
/// models without a hand-written backward pass, dynamic NTK RoPE past its original context,
/// more than [`shared_forward_copies`] copies); callers then attribute step by step.
pub fn sequence_gradients(
    ctx: &MethodContext,
    seq: &SequenceInput,
    embeds: Tensor<3>,
    times: usize,
) -> Option<Result<Vec<Tensor<3>>>> {
    let width = embeds.dims()[1];
    if !shared_forward_applies(ctx, seq)
        || times > shared_forward_copies(ctx.model, seq.batch(), width)
    {
        return None;
    }
    let step = seq.full();
    let embedded = Embedded {
        source: None,
        target: embeds,
    };
    let pass = ctx
        .model
        .forward_shared(&repeated_input(&step, &embedded, times))?;
    let head_gradient = |s: usize| -> Result<(usize, Tensor<2>)> {
        let position = seq.prefix_width(s) - 1;
        let hidden = pass.final_hidden(position).autodiff().require_grad();
        let sctx = StepContext {
            logits: pass.logits(hidden.clone()),
            target_ids: seq.step(s).target_ids.repeat(times),
            contrast: None,
            dropout_logits: vec![],
        };
        let scores = ctx
            .attributed_fn
            .function
            .compute(&sctx, &ctx.attributed_fn.args)?;
        let grad = hidden
            .grad(&scores.sum().backward())
            .ok_or_else(|| Error::Numerical("no gradient reached the final hidden state".into()))?;
        Ok((position, grad))
    };
    Some(
        (0..seq.steps)
            .map(head_gradient)
            .collect::<Result<Vec<_>>>()
            .map(|requests| pass.backward_each(requests)),
    )
}
