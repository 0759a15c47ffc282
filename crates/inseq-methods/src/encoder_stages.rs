//! Gradients through an encoder-decoder model's encoder one stage at a time
//! ([`inseq_models::LanguageModel::encoder_stage`]): a forward pass without autodiff keeps each
//! stage's input (one hidden-size vector per source token and stage), the decoder runs under
//! autodiff from the encoder's output, and the gradient goes back through the encoder stage by
//! stage, each stage rerun under autodiff from its saved input and its vector-Jacobian product
//! taken from the gradient of its output. Autodiff then holds one encoder layer's attention
//! weights (`heads × source²` per row) instead of every layer's; the values are those of the
//! whole-graph backward pass (the same operations, chained by hand).

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::Tensor;
use inseq_core::{Error, Result};
use inseq_models::{ForwardOptions, LanguageModel, ModelKind};

use crate::gradient::{Embedded, forward_scores_with};
use crate::{MethodContext, StepInput};

/// Bytes of encoder attention weights (every layer's, as whole-graph autodiff keeps them) from
/// which [`crate::gradients`] goes through the encoder stage by stage: below it the extra
/// encoder forward pass costs more than the memory it saves.
static STAGED_FROM_BYTES: AtomicU64 = AtomicU64::new(64 << 20);

/// Sets the bytes from which encoder gradients are taken stage by stage (0: always; tests);
/// returns the previous value.
#[doc(hidden)]
pub fn set_staged_encoder_from_bytes(bytes: u64) -> u64 {
    STAGED_FROM_BYTES.swap(bytes, Ordering::Relaxed)
}

/// Whether `rows` rows over `source_len` source tokens take the gradients stage by stage.
pub(crate) fn applies(model: &dyn LanguageModel, rows: usize, source_len: usize) -> bool {
    if model.kind() != ModelKind::EncoderDecoder || model.encoder_stages() == 0 {
        return false;
    }
    let (heads, layers) = (model.info().num_heads, model.num_encoder_layers());
    let weights = (rows * heads * layers) as u64 * (source_len as u64).pow(2) * 4;
    weights >= STAGED_FROM_BYTES.load(Ordering::Relaxed)
}

/// [`crate::gradients`] (on AttnLRP's graph with `lrp`) with the encoder taken stage by stage;
/// `embedded.source` is present.
pub(crate) fn staged_gradients(
    ctx: &MethodContext,
    step: &StepInput,
    embedded: Embedded,
    (times, attribute_target, lrp): (usize, bool, bool),
) -> Result<(Option<Tensor<3>>, Option<Tensor<3>>, Tensor<1>)> {
    let model = ctx.model;
    let source = embedded.source.clone().expect("a source").detach();
    let [rows, len, _] = source.dims();
    let mask: Vec<Vec<bool>> = match &step.source_mask {
        Some(mask) => mask.iter().cycle().take(rows).cloned().collect(),
        None => vec![vec![true; len]; rows],
    };
    let options = ForwardOptions {
        attn_lrp: lrp,
        ..Default::default()
    };
    let inputs = stage_inputs(model, source.clone(), &mask, &options);
    let memory = track(inputs[inputs.len() - 1].clone());
    let target = if attribute_target {
        track(embedded.target)
    } else {
        embedded.target.detach()
    };
    let untracked = Embedded {
        source: Some(source),
        target: target.clone(),
    };
    let scores = forward_scores_with(ctx, step, &untracked, times, (Some(memory.clone()), lrp))?;
    let grads = scores.clone().sum().backward();
    let target_grad = if attribute_target {
        Some(target.grad(&grads).ok_or_else(|| no_gradient("target"))?)
    } else {
        None
    };
    let memory_grad = memory.grad(&grads).ok_or_else(|| no_gradient("source"))?;
    let source_grad = back_through_stages(model, &inputs, (&mask, &options), memory_grad)?;
    Ok((
        Some(source_grad),
        target_grad,
        scores.detach().without_autodiff(),
    ))
}

fn track(t: Tensor<3>) -> Tensor<3> {
    t.detach().autodiff().require_grad()
}

fn no_gradient(what: &str) -> Error {
    Error::Numerical(format!("no gradient reached the {what} embeddings"))
}

/// The input of every encoder stage, then the encoder's output (no autodiff).
fn stage_inputs(
    model: &dyn LanguageModel,
    source: Tensor<3>,
    mask: &[Vec<bool>],
    options: &ForwardOptions,
) -> Vec<Tensor<3>> {
    let mut inputs = vec![source];
    for k in 0..model.encoder_stages() {
        let x = inputs[k].clone();
        inputs.push(model.encoder_stage(k, x, mask, options));
    }
    inputs
}

/// The gradient with respect to the source embeddings from the gradient of the encoder's
/// output: each stage, last first, rerun under autodiff from its input.
fn back_through_stages(
    model: &dyn LanguageModel,
    inputs: &[Tensor<3>],
    (mask, options): (&[Vec<bool>], &ForwardOptions),
    mut grad: Tensor<3>,
) -> Result<Tensor<3>> {
    for k in (0..inputs.len() - 1).rev() {
        let x = track(inputs[k].clone());
        let y = model.encoder_stage(k, x.clone(), mask, options);
        let grads = (y * grad).sum().backward();
        grad = x.grad(&grads).ok_or_else(|| no_gradient("source"))?;
    }
    Ok(grad)
}
