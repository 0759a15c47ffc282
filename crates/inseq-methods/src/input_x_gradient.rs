//! Input × Gradient (Shrikumar et al., 2016): the gradient times the input embedding.

use inseq_core::Result;

use crate::gradient::sequence_gradient_attributions;
use crate::{
    AttributionMethod, MethodArgs, MethodContext, SequenceInput, StepAttribution, StepInput,
    embed_step, gradients,
};

/// `x ⊙ ∂f/∂x` per embedding dimension, as Captum's `InputXGradient`.
#[derive(Debug, Clone, Default)]
pub struct InputXGradient;

impl InputXGradient {
    /// Builds from arguments (none).
    pub fn from_args(args: MethodArgs) -> Result<Self> {
        args.finish("input_x_gradient")?;
        Ok(Self)
    }
}

impl AttributionMethod for InputXGradient {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        "input_x_gradient"
    }

    fn step_batch_rows(&self) -> Option<usize> {
        Some(1)
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let embedded = embed_step(ctx, step, false);
        let (s, t, _) = gradients(ctx, step, embedded.clone(), 1)?;
        Ok(StepAttribution {
            source: s.zip(embedded.source).map(|(g, x)| g * x),
            target: t.map(|g| g * embedded.target),
            deltas: None,
            score_dims: None,
        })
    }

    fn attribute_sequence(
        &self,
        ctx: &MethodContext,
        seq: &SequenceInput,
    ) -> Option<Result<Vec<StepAttribution>>> {
        sequence_gradient_attributions(ctx, seq, |g, x| g * x)
    }
}
