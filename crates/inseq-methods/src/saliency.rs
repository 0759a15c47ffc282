//! Saliency (Simonyan et al., 2013): the absolute gradient of the attributed
//! function with respect to each input embedding.

use inseq_core::Result;

use crate::{
    AttributionMethod, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step, gradients,
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

impl AttributionMethod for Saliency {
    fn id(&self) -> &str {
        "saliency"
    }

    fn step_batch_rows(&self) -> Option<usize> {
        Some(1)
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let (s, t, _) = gradients(ctx, step, embed_step(ctx, step, false), 1)?;
        let f = |g: burn::tensor::Tensor<3>| if self.abs { g.abs() } else { g };
        Ok(StepAttribution {
            source: s.map(f),
            target: t.map(f),
            deltas: None,
            score_dims: None,
        })
    }
}
