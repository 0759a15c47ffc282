//! Layer attribution methods on the token-embedding layer:
//! `layer_integrated_gradients` and `layer_gradient_x_activation`.
//!
//! Inseq attributes these (and `layer_deeplift`) to the output of the model's
//! token-embedding layer by default (`get_embedding_layer()`), from baseline
//! *ids* (the `unk` token). The embedding layer's output at the baseline ids
//! is the baseline embedding, so these equal the input-embedding methods
//! ([`IntegratedGradients`], [`InputXGradient`]). Models that scale their
//! embeddings after the layer (Marian, BART with `scale_embedding`) give the
//! same products `grad ⊙ activation` and `grad ⊙ (x - baseline)`, since the
//! scale cancels.
//!
//! **Inseq 0.7.1 quirk.** For layer methods Inseq passes token ids to Captum,
//! but its forward wrapper ignores the ids Captum feeds it
//! (`use_embeddings=False` makes it run on the batch's real `input_ids`), so
//! the layer output at the "baseline" equals the layer output at the input and
//! `layer_integrated_gradients` and `layer_deeplift` return all zeros. With
//! [`MethodContext::inseq_compat`] set, these two methods reproduce that
//! (zeros); otherwise they compute the method as documented.

use burn::tensor::Tensor;
use inseq_core::{Error, Result};
use inseq_models::ModelKind;

use crate::{
    AttributionMethod, InputXGradient, IntegratedGradients, MethodArgs, MethodContext,
    StepAttribution, StepInput, embed_step,
};

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

/// Removes the `layer` argument, accepting only the token-embedding layer.
pub(crate) fn take_embedding_layer(args: &mut MethodArgs) -> Result<()> {
    let layer: String = args.take("layer", "embeddings".to_string())?;
    match layer.as_str() {
        "embeddings" | "embedding" | "embed_tokens" | "wte" | "shared" => Ok(()),
        other => Err(Error::Unsupported(format!(
            "layer `{other}`: layer methods can only attribute to the token-embedding layer (`embeddings`) for now"
        ))),
    }
}

/// Layer Integrated Gradients on the token-embedding layer (Captum `LayerIntegratedGradients`).
#[derive(Debug, Clone)]
pub struct LayerIntegratedGradients {
    /// The integrated-gradients settings (`n_steps`, `method`, ...).
    pub inner: IntegratedGradients,
}

impl LayerIntegratedGradients {
    /// Builds from arguments (those of `integrated_gradients`, plus `layer`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        take_embedding_layer(&mut args)?;
        Ok(Self {
            inner: IntegratedGradients::from_args(args)
                .map_err(|e| rename(e, "layer_integrated_gradients"))?,
        })
    }
}

impl AttributionMethod for LayerIntegratedGradients {
    fn id(&self) -> &str {
        "layer_integrated_gradients"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        if ctx.inseq_compat {
            return Ok(inseq_zero_attributions(ctx, step));
        }
        self.inner.attribute_step(ctx, step)
    }
}

/// Layer Gradient × Activation on the token-embedding layer (Captum `LayerGradientXActivation`).
#[derive(Debug, Clone)]
pub struct LayerGradientXActivation {
    /// Multiply the gradient by the activation (default `true`; `false` gives the plain gradient).
    pub multiply_by_inputs: bool,
}

impl LayerGradientXActivation {
    /// Builds from arguments (`multiply_by_inputs`, `layer`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        take_embedding_layer(&mut args)?;
        let multiply_by_inputs = args.take("multiply_by_inputs", true)?;
        args.finish("layer_gradient_x_activation")?;
        Ok(Self { multiply_by_inputs })
    }
}

impl AttributionMethod for LayerGradientXActivation {
    fn id(&self) -> &str {
        "layer_gradient_x_activation"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        if self.multiply_by_inputs {
            InputXGradient.attribute_step(ctx, step)
        } else {
            crate::Saliency { abs: false }.attribute_step(ctx, step)
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
