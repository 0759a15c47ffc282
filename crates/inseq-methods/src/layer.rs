//! Layer attribution methods: `layer_integrated_gradients` and
//! `layer_gradient_x_activation` (and the layer of `layer_deeplift`).
//!
//! The `layer` argument picks the layer whose output (activation) is attributed:
//!
//! * `embeddings` (default; also `embedding`, `embed_tokens`, `wte`, `shared`): the
//!   token-embedding layer, as Inseq's default (`get_embedding_layer()`);
//! * `<index>` or `decoder.<index>`: the output of decoder block `index` (0-based; the
//!   model's blocks for decoder-only models), `[positions, hidden]` per target position;
//! * `encoder.<index>`: the output of encoder block `index` of an encoder-decoder model,
//!   per source position.
//!
//! Inseq accepts any module as `target_layer`; blocks are the layers this
//! implementation can reach (via [`inseq_models::ForwardOptions::layer_override`]).
//!
//! **Token-embedding layer.** Inseq attributes from baseline *ids* (the `unk` token).
//! The embedding layer's output at the baseline ids is the baseline embedding,
//! so these equal the input-embedding methods ([`IntegratedGradients`],
//! [`InputXGradient`]). Models that scale their embeddings after the layer
//! (Marian, BART with `scale_embedding`) give the same products
//! `grad ⊙ activation` and `grad ⊙ (x - baseline)`, since the scale cancels.
//!
//! **Blocks.** As Captum's layer methods: the activation is the block's output on
//! the step's inputs; the baseline activation is the block's output on the
//! baseline inputs (the `unk`-token embeddings where integrated gradients would
//! put them: the source, and the target prefix for decoder-only models or with
//! `attribute_target`). `layer_integrated_gradients` integrates the gradient
//! along the straight line from the baseline activation to the activation, with
//! the block output *replaced* by the interpolated one (the blocks before it,
//! and for a decoder block the encoder, run on the real inputs), and multiplies
//! by `activation - baseline activation`; its attributions sum to `f(x) -
//! f(x with the block output replaced by the baseline activation)` (for a
//! decoder-only model, `f(x) - f(baseline)`). `layer_gradient_x_activation` is
//! `∂f/∂activation ⊙ activation`; `layer_deeplift` `∂f/∂activation ⊙
//! (activation - baseline activation)` (Captum's rescale rule reduces to the
//! gradient on these models, see [`crate::DeepLift`]). Decoder blocks give
//! target-side scores (also for encoder-decoder models, whatever
//! `attribute_target`), encoder blocks source-side scores; Inseq 0.7.1 would
//! store any single-layer result of an encoder-decoder model as source scores.
//!
//! **Inseq 0.7.1 quirk.** For layer methods Inseq passes token ids to Captum,
//! but its forward wrapper ignores the ids Captum feeds it
//! (`use_embeddings=False` makes it run on the batch's real `input_ids`), so
//! the layer output at the "baseline" equals the layer output at the input and
//! `layer_integrated_gradients` and `layer_deeplift` return all zeros. With
//! [`MethodContext::inseq_compat`] set, these two methods reproduce that
//! (zeros, on any layer); otherwise they compute the method as documented.

use burn::tensor::Tensor;
use inseq_core::{Error, Result};
use inseq_models::{ForwardOptions, LayerOverride, LayerRef, ModelInput, ModelKind, OverrideMode};
use inseq_steps::StepContext;

use crate::integrated_gradients::weighted_sum;
use crate::{
    AttributionMethod, Embedded, InputXGradient, IntegratedGradients, MethodArgs, MethodContext,
    StepAttribution, StepInput, contrast_logits, embed_step,
};

/// The layer a layer method attributes to (the `layer` argument, see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerSelection {
    /// The token-embedding layer (default).
    #[default]
    Embeddings,
    /// The output of a decoder or encoder block.
    Block(LayerRef),
}

impl LayerSelection {
    /// Parses `embeddings` (and its aliases), `<index>`, `decoder.<index>` or `encoder.<index>`.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        let index = |s: &str| s.parse::<usize>().ok();
        let parsed = match t {
            "embeddings" | "embedding" | "embed_tokens" | "wte" | "shared" => {
                Some(Self::Embeddings)
            }
            _ => {
                if let Some(k) = index(t) {
                    Some(Self::Block(LayerRef::Decoder(k)))
                } else if let Some(k) = t.strip_prefix("decoder.").and_then(index) {
                    Some(Self::Block(LayerRef::Decoder(k)))
                } else {
                    t.strip_prefix("encoder.")
                        .and_then(index)
                        .map(|k| Self::Block(LayerRef::Encoder(k)))
                }
            }
        };
        parsed.ok_or_else(|| {
            Error::invalid_arg(
                "layer",
                format!(
                    "`{text}` is not `embeddings`, a decoder block index (`0`, `1`, ...), `decoder.<index>` or `encoder.<index>`"
                ),
            )
        })
    }

    /// Checks that the model has this layer and can expose it; the error names the valid range.
    pub fn check(self, ctx: &MethodContext) -> Result<()> {
        let Self::Block(layer) = self else {
            return Ok(());
        };
        let model = ctx.model;
        let (k, n, stack) = match layer {
            LayerRef::Decoder(k) => (k, model.info().num_layers, "decoder"),
            LayerRef::Encoder(k) => {
                if model.kind() != ModelKind::EncoderDecoder {
                    return Err(Error::invalid_arg(
                        "layer",
                        format!(
                            "`encoder.{k}`: the `{}` model is decoder-only; valid layers are `embeddings` and decoder blocks 0..={}",
                            model.info().architecture,
                            model.info().num_layers.saturating_sub(1)
                        ),
                    ));
                }
                (k, model.num_encoder_layers(), "encoder")
            }
        };
        if k >= n {
            return Err(Error::invalid_arg(
                "layer",
                format!(
                    "{stack} block {k} does not exist: the `{}` model has {n} {stack} blocks (valid indices 0..={})",
                    model.info().architecture,
                    n.saturating_sub(1)
                ),
            ));
        }
        if !model.supports_internal_hooks() {
            return Err(Error::Unsupported(format!(
                "layer {stack} block {k}: the `{}` model does not implement the layer hook",
                model.info().architecture
            )));
        }
        Ok(())
    }
}

/// All-zero attributions shaped like the attributed embeddings (Inseq 0.7.1's
/// result for layer methods with baselines, see the module docs).
pub(crate) fn inseq_zero_attributions(ctx: &MethodContext, step: &StepInput) -> StepAttribution {
    let x = embed_step(ctx, step, false);
    let attribute_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
    let zeros = |t: Tensor<3>| t.zeros_like();
    StepAttribution::granular(
        x.source.map(zeros),
        attribute_target.then(|| zeros(x.target)),
    )
}

/// Removes the `layer` argument and parses it.
pub(crate) fn take_layer(args: &mut MethodArgs) -> Result<LayerSelection> {
    let layer: String = args.take("layer", "embeddings".to_string())?;
    LayerSelection::parse(&layer)
}

/// The inputs whose embeddings are moved to the baseline: the source, and the
/// target prefix for decoder-only models or with `attribute_target`.
pub(crate) fn baseline_inputs(ctx: &MethodContext, x: &Embedded, base: Embedded) -> Embedded {
    let baseline_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
    Embedded {
        source: base.source,
        target: if baseline_target {
            base.target
        } else {
            x.target.clone()
        },
    }
}

fn repeat(m: &[Vec<bool>], times: usize) -> Vec<Vec<bool>> {
    m.iter().cycle().take(m.len() * times).cloned().collect()
}

/// The step's inputs stacked `times` times.
fn model_input(step: &StepInput, x: &Embedded, times: usize) -> ModelInput {
    let rep = |t: &Tensor<3>| {
        if times == 1 {
            t.clone()
        } else {
            t.clone().repeat_dim(0, times)
        }
    };
    ModelInput {
        target_embeds: rep(&x.target),
        target_mask: repeat(&step.prefix_mask, times),
        source_embeds: x.source.as_ref().map(rep),
        source_mask: step.source_mask.as_deref().map(|m| repeat(m, times)),
    }
}

/// The output of `layer` (`[batch, positions, hidden]`, detached) for the inputs `x`.
pub(crate) fn layer_activation(
    ctx: &MethodContext,
    step: &StepInput,
    x: &Embedded,
    layer: LayerRef,
) -> Result<Tensor<3>> {
    let out = ctx.model.forward(
        model_input(step, x, 1),
        ForwardOptions {
            hidden_states: true,
            last_position_only: true,
            ..Default::default()
        },
    );
    let states = match layer {
        LayerRef::Decoder(_) => &out.hidden_states,
        LayerRef::Encoder(_) => &out.encoder_hidden_states,
    };
    states
        .get(layer.hidden_state_index())
        .map(|t| t.clone().detach())
        .ok_or_else(|| Error::Unsupported(format!("the model returned no output for {layer:?}")))
}

/// Runs the model on the step's inputs `x` (`times` stacked copies) with `layer`'s
/// output replaced by (or, with [`OverrideMode::Add`], shifted by) `value`
/// (`[times * batch, positions, hidden]`), and returns the gradient of the summed
/// attributed function with respect to `value`, the `[times * batch]` scores, and,
/// with `Add`, the layer's activation.
pub(crate) fn layer_gradients(
    ctx: &MethodContext,
    step: &StepInput,
    x: &Embedded,
    layer: LayerRef,
    value: Tensor<3>,
    mode: OverrideMode,
    times: usize,
) -> Result<(Tensor<3>, Tensor<1>, Option<Tensor<3>>)> {
    let tracked = value.detach().autodiff().require_grad();
    let inputs = Embedded {
        source: x.source.clone().map(|t| t.detach()),
        target: x.target.clone().detach(),
    };
    let out = ctx.model.forward(
        model_input(step, &inputs, times),
        ForwardOptions {
            last_position_only: true,
            hidden_states: mode == OverrideMode::Add,
            layer_override: Some(LayerOverride {
                layer,
                value: tracked.clone(),
                mode,
            }),
            ..Default::default()
        },
    );
    let activation = if mode == OverrideMode::Add {
        let states = match layer {
            LayerRef::Decoder(_) => &out.hidden_states,
            LayerRef::Encoder(_) => &out.encoder_hidden_states,
        };
        states
            .get(layer.hidden_state_index())
            .map(|t| t.clone().detach().without_autodiff())
    } else {
        None
    };
    let logits = out.last_logits();
    let sctx = StepContext {
        contrast: contrast_logits(ctx.model, step, &logits, times, ctx.inseq_compat),
        dropout_logits: vec![],
        logits,
        target_ids: step.target_ids.repeat(times),
    };
    let scores = ctx
        .attributed_fn
        .function
        .compute(&sctx, &ctx.attributed_fn.args)?;
    let grads = scores.clone().sum().backward();
    let grad = tracked
        .grad(&grads)
        .ok_or_else(|| Error::Numerical(format!("no gradient reached the output of {layer:?}")))?;
    Ok((grad, scores.detach().without_autodiff(), activation))
}

/// Places block scores on the side they belong to: encoder blocks on the source,
/// decoder blocks on the target.
pub(crate) fn block_attribution(layer: LayerRef, scores: Tensor<3>) -> StepAttribution {
    match layer {
        LayerRef::Encoder(_) => StepAttribution::granular(Some(scores), None),
        LayerRef::Decoder(_) => StepAttribution::granular(None, Some(scores)),
    }
}

/// The gradient of the attributed function with respect to `layer`'s output on the
/// step's inputs, and that output.
pub(crate) fn gradient_and_activation(
    ctx: &MethodContext,
    step: &StepInput,
    layer: LayerRef,
) -> Result<(Tensor<3>, Tensor<3>)> {
    let x = embed_step(ctx, step, false);
    let [batch, target_len, _] = x.target.dims();
    let positions = match (layer, &x.source) {
        (LayerRef::Encoder(_), Some(src)) => src.dims()[1],
        _ => target_len,
    };
    let hidden = ctx.model.info().hidden_size;
    let zero = Tensor::<3>::zeros([batch, positions, hidden], &x.target.device());
    let (grad, _, act) = layer_gradients(ctx, step, &x, layer, zero, OverrideMode::Add, 1)?;
    let act = act.ok_or_else(|| Error::Unsupported(format!("no activation for {layer:?}")))?;
    Ok((grad, act))
}

/// Zeros shaped like `layer`'s output (Inseq 0.7.1's layer results, see the module docs).
fn inseq_zero_block(
    ctx: &MethodContext,
    step: &StepInput,
    layer: LayerRef,
) -> Result<StepAttribution> {
    let x = embed_step(ctx, step, false);
    let act = layer_activation(ctx, step, &x, layer)?;
    Ok(block_attribution(layer, act.zeros_like()))
}

/// Layer Integrated Gradients (Captum `LayerIntegratedGradients`) on the token-embedding
/// layer or a block's output (see the module docs).
#[derive(Debug, Clone)]
pub struct LayerIntegratedGradients {
    /// The integrated-gradients settings (`n_steps`, `method`, ...).
    pub inner: IntegratedGradients,
    /// The attributed layer.
    pub layer: LayerSelection,
}

impl LayerIntegratedGradients {
    /// Builds from arguments (those of `integrated_gradients`, plus `layer`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let layer = take_layer(&mut args)?;
        Ok(Self {
            inner: IntegratedGradients::from_args(args)
                .map_err(|e| rename(e, "layer_integrated_gradients"))?,
            layer,
        })
    }

    fn attribute_block(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        layer: LayerRef,
    ) -> Result<StepAttribution> {
        let x = embed_step(ctx, step, false);
        let base = baseline_inputs(ctx, &x, embed_step(ctx, step, true));
        let act = layer_activation(ctx, step, &x, layer)?;
        let act_base = layer_activation(ctx, step, &base, layer)?;
        let batch = step.prefix_ids.len();
        let ig = &self.inner;
        let (alphas, weights) = ig.method.points(ig.n_steps)?;
        let per_chunk = ig
            .internal_batch_size
            .map_or(alphas.len(), |ibs| (ibs / batch.max(1)).max(1));
        let diff = act.clone() - act_base.clone();
        let mut acc: Option<Tensor<3>> = None;
        for (a, w) in alphas.chunks(per_chunk).zip(weights.chunks(per_chunk)) {
            let value = Tensor::cat(
                a.iter()
                    .map(|&alpha| act_base.clone() + diff.clone() * alpha)
                    .collect(),
                0,
            );
            let (g, _, _) =
                layer_gradients(ctx, step, &x, layer, value, OverrideMode::Replace, a.len())?;
            let g = weighted_sum(g, w, batch);
            acc = Some(match acc.take() {
                Some(prev) => prev + g,
                None => g,
            });
        }
        let integrated = acc.ok_or_else(|| Error::Numerical("no integration points".into()))?;
        let attr = if ig.multiply_by_inputs {
            integrated * diff
        } else {
            integrated
        };
        let deltas = if ig.return_convergence_delta {
            let f = |value: Tensor<3>| {
                layer_gradients(ctx, step, &x, layer, value, OverrideMode::Replace, 1)
                    .map(|(_, scores, _)| scores)
            };
            let fx = f(act)?;
            let fb = f(act_base)?;
            let total = attr.clone().sum_dim(2).sum_dim(1).reshape([batch]);
            Some(
                (total - (fx - fb))
                    .try_to_vec_as::<f32>()
                    .map_err(|e| Error::Numerical(format!("{e:?}")))?,
            )
        } else {
            None
        };
        let mut out = block_attribution(layer, attr);
        out.deltas = deltas;
        Ok(out)
    }
}

impl AttributionMethod for LayerIntegratedGradients {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        "layer_integrated_gradients"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        self.layer.check(ctx)?;
        match self.layer {
            LayerSelection::Embeddings if ctx.inseq_compat => {
                Ok(inseq_zero_attributions(ctx, step))
            }
            LayerSelection::Embeddings => self.inner.attribute_step(ctx, step),
            LayerSelection::Block(layer) if ctx.inseq_compat => inseq_zero_block(ctx, step, layer),
            LayerSelection::Block(layer) => self.attribute_block(ctx, step, layer),
        }
    }
}

/// Layer Gradient × Activation (Captum `LayerGradientXActivation`) on the token-embedding
/// layer or a block's output (see the module docs).
#[derive(Debug, Clone)]
pub struct LayerGradientXActivation {
    /// Multiply the gradient by the activation (default `true`; `false` gives the plain gradient).
    pub multiply_by_inputs: bool,
    /// The attributed layer.
    pub layer: LayerSelection,
}

impl LayerGradientXActivation {
    /// Builds from arguments (`multiply_by_inputs`, `layer`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let layer = take_layer(&mut args)?;
        let multiply_by_inputs = args.take("multiply_by_inputs", true)?;
        args.finish("layer_gradient_x_activation")?;
        Ok(Self {
            multiply_by_inputs,
            layer,
        })
    }
}

impl AttributionMethod for LayerGradientXActivation {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        "layer_gradient_x_activation"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        self.layer.check(ctx)?;
        match self.layer {
            LayerSelection::Embeddings if self.multiply_by_inputs => {
                InputXGradient.attribute_step(ctx, step)
            }
            LayerSelection::Embeddings => crate::Saliency { abs: false }.attribute_step(ctx, step),
            LayerSelection::Block(layer) => {
                let (grad, act) = gradient_and_activation(ctx, step, layer)?;
                let scores = if self.multiply_by_inputs {
                    grad * act
                } else {
                    grad
                };
                Ok(block_attribution(layer, scores))
            }
        }
    }
}

fn rename(e: Error, method: &str) -> Error {
    match e {
        Error::InvalidArgument { name, reason } => Error::InvalidArgument {
            name,
            reason: reason.replace("`integrated_gradients`", &format!("`{method}`")),
        },
        other => other,
    }
}
