//! DeepLIFT (Shrikumar et al., 2017) as Captum's `DeepLift` / `LayerDeepLift`
//! behave on the supported Transformer models.

use inseq_core::Result;
use inseq_models::ModelKind;

use crate::layer::{
    LayerSelection, baseline_inputs, block_attribution, gradient_and_activation, layer_activation,
    take_layer,
};
use crate::{
    AttributionMethod, Embedded, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step,
    gradients,
};

/// DeepLIFT with the rescale rule from the `unk`-token baseline, as Inseq's
/// `deeplift` (Captum `DeepLift`) and `layer_deeplift` (Captum
/// `LayerDeepLift` on the token-embedding layer) compute it.
///
/// Captum applies the rescale rule only to the non-linearities that are
/// `torch.nn` *modules* of its supported list (`ReLU`, `ELU`, `Sigmoid`,
/// `Tanh`, `Softmax`, pooling...). In the models this project supports the
/// activations are `NewGELUActivation` / `GELUActivation` / `SiLU` and the
/// softmaxes are functional calls, none of which Captum overrides, so
/// Captum's DeepLIFT multiplier is exactly the gradient at the input and the
/// attribution is `∂f/∂x (x) ⊙ (x - baseline)` (`multiply_by_inputs=true`) or
/// the gradient alone (`false`). This implementation computes exactly that,
/// and therefore matches Inseq on these models; a model with `nn.ReLU` /
/// `nn.Tanh` activations would differ (Captum's rescale rule there is not reproduced).
///
/// `layer_deeplift` with a block `layer` (see [`crate::LayerIntegratedGradients`] for the
/// `layer` argument) computes the same on that block's output, as Captum's
/// `LayerDeepLift`: `∂f/∂a (a) ⊙ (a - a_baseline)`, where `a` is the block output on the
/// step's inputs and `a_baseline` on the baseline inputs.
///
/// With [`MethodContext::inseq_compat`], `layer_deeplift` returns Inseq 0.7.1's
/// all-zero result (its baseline is the input itself; see [`crate::LayerIntegratedGradients`]).
#[derive(Debug, Clone)]
pub struct DeepLift {
    /// The id (`deeplift` or `layer_deeplift`).
    pub id: &'static str,
    /// Multiply the multipliers by `x - baseline` (default `true`).
    pub multiply_by_inputs: bool,
    /// The attributed layer of `layer_deeplift` (`Embeddings` for `deeplift`).
    pub layer: LayerSelection,
}

impl DeepLift {
    /// Builds `deeplift` from arguments (`multiply_by_inputs`).
    pub fn from_args(args: MethodArgs) -> Result<Self> {
        Self::with_id("deeplift", args, LayerSelection::Embeddings)
    }

    /// Builds `layer_deeplift` from arguments (`multiply_by_inputs`, `layer`:
    /// `embeddings` (default), `<index>` / `decoder.<index>` or `encoder.<index>`).
    pub fn layer_from_args(mut args: MethodArgs) -> Result<Self> {
        let layer = take_layer(&mut args)?;
        Self::with_id("layer_deeplift", args, layer)
    }

    fn with_id(id: &'static str, mut args: MethodArgs, layer: LayerSelection) -> Result<Self> {
        let multiply_by_inputs = args.take("multiply_by_inputs", true)?;
        args.finish(id)?;
        Ok(Self {
            id,
            multiply_by_inputs,
            layer,
        })
    }
}

impl AttributionMethod for DeepLift {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        self.id
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        self.layer.check(ctx)?;
        if let LayerSelection::Block(layer) = self.layer {
            let (grad, act) = gradient_and_activation(ctx, step, layer)?;
            if !self.multiply_by_inputs {
                return Ok(block_attribution(layer, grad));
            }
            if ctx.inseq_compat {
                // Inseq 0.7.1's baseline activation is the activation itself (see `crate::layer`).
                return Ok(block_attribution(layer, grad.zeros_like()));
            }
            let x = embed_step(ctx, step, false);
            let base = baseline_inputs(ctx, &x, embed_step(ctx, step, true));
            let act_base = layer_activation(ctx, step, &base, layer)?;
            return Ok(block_attribution(layer, grad * (act - act_base)));
        }
        if ctx.inseq_compat && self.id == "layer_deeplift" && self.multiply_by_inputs {
            // Inseq 0.7.1 runs layer methods on the real ids for the baseline too (see `crate::layer`).
            return Ok(crate::layer::inseq_zero_attributions(ctx, step));
        }
        let x = embed_step(ctx, step, false);
        let base = embed_step(ctx, step, true);
        let (gs, gt, _) = gradients(ctx, step, x.clone(), 1)?;
        if !self.multiply_by_inputs {
            return Ok(StepAttribution::granular(gs, gt));
        }
        let Embedded { source, target } = x;
        let attribute_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
        let source = gs
            .zip(source.zip(base.source))
            .map(|(g, (i, b))| g * (i - b));
        let target = gt
            .filter(|_| attribute_target)
            .map(|g| g * (target - base.target));
        Ok(StepAttribution::granular(source, target))
    }
}
