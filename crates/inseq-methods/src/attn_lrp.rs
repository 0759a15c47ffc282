//! AttnLRP (Achtibat et al., 2024, "AttnLRP: Attention-Aware Layer-Wise
//! Relevance Propagation for Transformers", ICML 2024,
//! <https://arxiv.org/abs/2402.05602>), in its Gradient × Input formulation.

use inseq_core::{Error, Result};

use crate::gradient::gradients_on;
use crate::{AttributionMethod, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step};

/// AttnLRP relevance of the input embeddings, a method beyond Python Inseq.
///
/// What is implemented, exactly: one forward pass with
/// [`inseq_models::ForwardOptions::attn_lrp`] set, which builds the graph the
/// way the authors' efficient implementation (the LXT library) does, so that
/// plain Gradient × Input on it yields LRP relevance:
///
/// * LayerNorm / RMSNorm: the normalising denominator is detached (the
///   identity rule on normalisation, also Ali et al., 2022's LN rule);
/// * element-wise activations (GELU, SiLU): identity rule, gradient replaced
///   by `act(x) / x`;
/// * the two attention products (`Q Kᵀ` and `A V`) and the gated MLP product:
///   uniform rule, half of the gradient to each factor;
/// * softmax: its ordinary gradient (AttnLRP's softmax rule is Gradient × Input
///   at the softmax input); linear layers: ordinary gradient (ε-rule with ε→0;
///   biases absorb relevance).
///
/// The relevance is `embedding × gradient` of the attributed function (by
/// default `probability`; AttnLRP papers usually explain the `logit`), per
/// hidden dimension (`score_dims: None`). Rules not applied: no ε
/// stabiliser on linear layers, no special treatment of positional
/// embeddings (GPT-2's learned positions keep their share of relevance).
///
/// Encoder-decoder models (BART, Marian, T5) get the same rules in the encoder
/// self-attention, the decoder self-attention and the cross-attention
/// (whose `Q Kᵀ` and `A V` products, between decoder queries and encoder
/// keys/values, follow the uniform rule too). The source relevance is always
/// returned, the target relevance with `attribute_target` (as gradient
/// methods do). Needs the model hook
/// ([`inseq_models::LanguageModel::supports_internal_hooks`]: GPT-2, the
/// Llama family, BART, Marian and T5).
#[derive(Debug, Clone, Default)]
pub struct AttnLrp;

impl AttnLrp {
    /// Builds from arguments (none).
    pub fn from_args(args: MethodArgs) -> Result<Self> {
        args.finish("attnlrp")?;
        Ok(Self)
    }
}

impl AttributionMethod for AttnLrp {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        "attnlrp"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let model = ctx.model;
        if !model.supports_internal_hooks() {
            return Err(Error::Unsupported(format!(
                "attnlrp: the `{}` model does not implement the LRP forward mode",
                model.info().architecture
            )));
        }
        let x = embed_step(ctx, step, false);
        let (source, target, _) = gradients_on(ctx, step, x.clone(), 1, true)?;
        let source = source.zip(x.source).map(|(g, embeds)| g * embeds);
        let target = target.map(|g| g * x.target);
        Ok(StepAttribution::granular(source, target))
    }
}
