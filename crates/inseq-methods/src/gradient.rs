//! Shared machinery of gradient methods: embedding a step, running the
//! attributed function and back-propagating to the input embeddings.

use std::sync::Arc;

use burn::tensor::Tensor;
use inseq_core::{Error, Result};
use inseq_models::{ForwardOptions, LanguageModel, ModelInput, ModelKind, ids_tensor};
use inseq_steps::{ContrastOutput, StepArgs, StepContext, StepFunction};

use crate::{MethodContext, StepInput};

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
fn baseline_ids(ctx: &MethodContext, rows: &[Vec<usize>], mask: Option<&[Vec<bool>]>, keep_first: bool) -> Vec<Vec<usize>> {
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
        baseline_ids(ctx, &step.prefix_ids, Some(&step.prefix_mask), encoder_decoder)
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
pub fn embed_target(model: &dyn LanguageModel, ids: &[Vec<usize>], inseq_compat: bool) -> Tensor<3> {
    let embeds = model.embed(ids_tensor(ids, model.device()));
    let quirk = model.inseq_target_embed_quirk();
    if inseq_compat && quirk != 1.0 { embeds * quirk } else { embeds }
}

/// Repeats a contrastive output `times` times along the batch (for batched path methods).
fn repeat_contrast(c: &Option<ContrastOutput>, times: usize) -> Option<ContrastOutput> {
    c.as_ref().map(|c| ContrastOutput {
        logits: if times == 1 { c.logits.clone() } else { c.logits.clone().repeat_dim(0, times) },
        target_ids: c.target_ids.repeat(times),
    })
}

/// Runs the model on `embedded` (a batch that is `times` copies of the step's
/// batch, e.g. one per interpolation point) and returns the attributed function, `[times * batch]`.
pub fn forward_scores(ctx: &MethodContext, step: &StepInput, embedded: &Embedded, times: usize) -> Result<Tensor<1>> {
    let rep = |m: &Vec<Vec<bool>>| m.iter().cycle().take(m.len() * times).cloned().collect::<Vec<_>>();
    let input = ModelInput {
        target_embeds: embedded.target.clone(),
        target_mask: rep(&step.prefix_mask),
        source_embeds: embedded.source.clone(),
        source_mask: step.source_mask.as_ref().map(rep),
    };
    let out = ctx.model.forward(
        input,
        ForwardOptions {
            last_position_only: true,
            ..Default::default()
        },
    );
    let sctx = StepContext {
        logits: out.last_logits(),
        target_ids: step.target_ids.repeat(times),
        contrast: repeat_contrast(&step.contrast, times),
    };
    ctx.attributed_fn.function.compute(&sctx, &ctx.attributed_fn.args)
}

/// Gradients of the summed attributed function with respect to the embeddings
/// that are attributed (the source, and the target prefix for decoder-only
/// models or with `attribute_target`). Returns `(source_grad, target_grad, scores)`.
pub fn gradients(
    ctx: &MethodContext,
    step: &StepInput,
    embedded: Embedded,
    times: usize,
) -> Result<(Option<Tensor<3>>, Option<Tensor<3>>, Tensor<1>)> {
    let attribute_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
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
    let scores = forward_scores(ctx, step, &tracked, times)?;
    let grads = scores.clone().sum().backward();
    let source_grad = source.map(|s| s.grad(&grads)).map(|g| {
        g.ok_or_else(|| Error::Numerical("no gradient reached the source embeddings".into()))
    });
    let source_grad = source_grad.transpose()?;
    let target_grad = if attribute_target {
        Some(
            target
                .grad(&grads)
                .ok_or_else(|| Error::Numerical("no gradient reached the target embeddings".into()))?,
        )
    } else {
        None
    };
    Ok((source_grad, target_grad, scores.detach().without_autodiff()))
}
