//! Saliency (Simonyan et al., 2013): the absolute gradient of the attributed
//! function with respect to each input embedding.

use burn::tensor::Tensor;
use inseq_core::Result;

use crate::gradient::sequence_gradient_attributions;
use crate::{
    AttributionMethod, MethodArgs, MethodContext, SequenceInput, StepAttribution, StepInput,
    embed_step, gradients,
};

/// `|∂f/∂x|` per embedding dimension (`abs=false` keeps the sign), as Captum's `Saliency`.
#[derive(Debug, Clone)]
pub struct Saliency {
    /// Take the absolute value of the gradient (default `true`, as Inseq).
    pub abs: bool,
}

impl Saliency {
    /// Builds from arguments (`abs`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let abs = args.take("abs", true)?;
        args.finish("saliency")?;
        Ok(Self { abs })
    }
}

impl Saliency {
    fn finish(&self, grad: Tensor<3>) -> Tensor<3> {
        if self.abs { grad.abs() } else { grad }
    }
}

impl AttributionMethod for Saliency {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        "saliency"
    }

    fn step_batch_rows(&self) -> Option<usize> {
        Some(1)
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let (s, t, _) = gradients(ctx, step, embed_step(ctx, step, false), 1)?;
        Ok(StepAttribution::granular(
            s.map(|g| self.finish(g)),
            t.map(|g| self.finish(g)),
        ))
    }

    fn attribute_sequence(
        &self,
        ctx: &MethodContext,
        seq: &SequenceInput,
    ) -> Option<Result<Vec<StepAttribution>>> {
        sequence_gradient_attributions(ctx, seq, |g, _| self.finish(g))
    }
}
