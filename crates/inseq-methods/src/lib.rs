//! Feature attribution methods for sequence generation models.
//!
//! An [`AttributionMethod`] explains one generation step: given the source
//! (encoder-decoder models), the target prefix and the token produced next,
//! it returns a score per input token and hidden dimension for the
//! *attributed function* (a step function such as `probability`). Methods
//! are looked up by Inseq's ids in a [`MethodRegistry`]; researchers add new
//! ones by implementing the trait and registering a factory under a new id.
//!
//! ```no_run
//! use inseq_methods::{MethodArgs, MethodRegistry};
//! let registry = MethodRegistry::with_defaults();
//! let ig = registry.create("integrated_gradients", MethodArgs::parse("n_steps=16").unwrap()).unwrap();
//! assert_eq!(ig.id(), "integrated_gradients");
//! ```
#![warn(missing_docs)]

mod args;
mod attention;
mod attn_lrp;
mod deeplift;
mod discretized_integrated_gradients;
mod encoder_stages;
mod gradient;
mod gradient_shap;
mod input_x_gradient;
mod integrated_gradients;
mod layer;
mod lime;
mod occlusion;
mod quadrature;
mod reagent;
mod registry;
mod rollout;
mod saliency;
mod sequence;
mod sequential_integrated_gradients;
mod value_zeroing;

pub use args::MethodArgs;
pub use attention::Attention;
pub use attn_lrp::AttnLrp;
pub use deeplift::DeepLift;
pub use discretized_integrated_gradients::{DiscretizedIntegratedGradients, PathStrategy};
#[doc(hidden)]
pub use encoder_stages::set_staged_encoder_from_bytes;
pub use gradient::{
    AttributedFn, Embedded, PaddedIds, SHARED_FORWARD_FLOATS, contrast_logits, embed_step,
    embed_target, forward_scores, gradients, plain_forward, sequence_gradients,
    shared_forward_copies,
};
pub use gradient_shap::GradientShap;
pub use input_x_gradient::InputXGradient;
pub use integrated_gradients::IntegratedGradients;
pub use layer::{LayerGradientXActivation, LayerIntegratedGradients, LayerSelection};
pub use lime::Lime;
pub use occlusion::Occlusion;
pub use quadrature::{Quadrature, gauss_legendre};
pub use reagent::{Reagent, TokenGroups, TokenSampler};
pub use registry::{MethodFactory, MethodRegistry};
pub use rollout::AttentionRollout;
pub use saliency::Saliency;
pub use sequence::{SequenceInput, forward_scores_all_steps};
pub use sequential_integrated_gradients::SequentialIntegratedGradients;
pub use value_zeroing::{SimilarityMetric, ValueZeroing};

use burn::tensor::Tensor;
use inseq_core::Result;
use inseq_models::{LanguageModel, RecordedAttentions};

/// The inputs of one attribution step for a batch of sequences.
#[derive(Debug, Clone)]
pub struct StepInput {
    /// `[batch][source_len]` source ids (encoder-decoder models), right-padded.
    pub source_ids: Option<Vec<Vec<usize>>>,
    /// Which source positions are real tokens.
    pub source_mask: Option<Vec<Vec<bool>>>,
    /// `[batch][prefix_len]` target prefix ids, left-padded.
    pub prefix_ids: Vec<Vec<usize>>,
    /// Which prefix positions are real tokens.
    pub prefix_mask: Vec<Vec<bool>>,
    /// `[batch]` the token produced at this step (the one being explained).
    pub target_ids: Vec<usize>,
    /// The same step under contrastive inputs (contrastive target prefix and/or
    /// source), for contrastive attributed functions.
    pub contrast: Option<ContrastInput>,
}

/// Contrastive inputs of one step (Inseq's `contrast_targets` / `contrast_sources`).
#[derive(Debug, Clone)]
pub struct ContrastInput {
    /// `[batch][source_len]` contrastive sources (encoder-decoder), right-padded; `None`: the original sources.
    pub source_ids: Option<Vec<Vec<usize>>>,
    /// Which contrastive source positions are real tokens.
    pub source_mask: Option<Vec<Vec<bool>>>,
    /// `[batch][prefix_len]` contrastive target prefixes, left-padded.
    pub prefix_ids: Vec<Vec<usize>>,
    /// Which contrastive prefix positions are real tokens.
    pub prefix_mask: Vec<Vec<bool>>,
    /// `[batch]` the contrastive token at this step.
    pub target_ids: Vec<usize>,
    /// Per row, whether the contrastive inputs equal the original ones; then, as
    /// in Inseq, the contrastive score is computed from the same (attributed)
    /// forward pass, so gradients flow through both terms.
    pub same_as_original: Vec<bool>,
}

/// Per-step attribution scores, `[batch, len, hidden]` (or `[batch, len, 1]` for
/// methods that give one score per token).
#[derive(Debug, Clone)]
pub struct StepAttribution {
    /// Scores for the source tokens (encoder-decoder models).
    pub source: Option<Tensor<3>>,
    /// Scores for the target prefix (decoder-only models, or `attribute_target`).
    pub target: Option<Tensor<3>>,
    /// Convergence delta per batch row, for methods that define one.
    pub deltas: Option<Vec<f32>>,
    /// Shape of each token's scores, when the trailing dimension of `source` /
    /// `target` is not a hidden dimension to keep as is:
    ///
    /// * `None`: the trailing dimension is the hidden size (gradient methods);
    /// * `Some(vec![])`: one score per token, stored by Inseq without a trailing
    ///   dimension (`[len, steps]`, e.g. `occlusion`); the tensor's last dimension is 1;
    /// * `Some(vec![layers, heads])`: the last dimension flattens `layers × heads`
    ///   (layer-major, e.g. `attention`), stored by Inseq as `[len, steps, layers, heads]`.
    pub score_dims: Option<Vec<usize>>,
}

impl StepAttribution {
    /// Per-hidden-dimension scores (`score_dims: None`).
    pub fn granular(source: Option<Tensor<3>>, target: Option<Tensor<3>>) -> Self {
        Self {
            source,
            target,
            deltas: None,
            score_dims: None,
        }
    }
}

/// Settings shared by every method during one attribution run.
pub struct MethodContext<'a> {
    /// The model.
    pub model: &'a dyn LanguageModel,
    /// The function whose output is explained (e.g. `probability`).
    pub attributed_fn: &'a AttributedFn,
    /// For encoder-decoder models, also attribute to the target prefix.
    pub attribute_target: bool,
    /// Token whose embedding is the baseline (Inseq: the tokenizer's `unk` token).
    pub baseline_token_id: usize,
    /// End-of-sequence id (kept as its own baseline, as Inseq does).
    pub eos_token_id: Option<usize>,
    /// Reproduce Python Inseq 0.7.1's numerics where they deviate from the
    /// model (see [`inseq_models::LanguageModel::inseq_target_embed_quirk`]).
    pub inseq_compat: bool,
    /// Self-attention weights recorded while generating the (single) attributed sequence, when
    /// the method asked for them ([`AttributionMethod::uses_recorded_attentions`]); a method uses
    /// them only where their `ids` are exactly the tokens it would run the model on.
    pub recorded_attentions: Option<&'a RecordedAttentions>,
}

/// Computes no attribution, so that only step scores are recorded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dummy;

impl AttributionMethod for Dummy {
    fn id(&self) -> &str {
        "dummy"
    }

    fn attribute_step(&self, _ctx: &MethodContext, _step: &StepInput) -> Result<StepAttribution> {
        Ok(StepAttribution::granular(None, None))
    }
}

/// A feature attribution method.
pub trait AttributionMethod: Send + Sync {
    /// The id it is registered under.
    fn id(&self) -> &str;
    /// Attributes one generation step.
    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution>;
    /// Whether the method can use the self-attention weights recorded during generation
    /// ([`MethodContext::recorded_attentions`]) instead of running the model again. Default: no.
    fn uses_recorded_attentions(&self) -> bool {
        false
    }
    /// Forward-pass rows the method runs at once per input row (e.g. interpolation points per
    /// pass), when each row's result does not depend on the other rows of the batch; then
    /// callers may attribute several generation steps in one batch (bigger, faster matrix
    /// products). `None` (the default): one step per call.
    fn step_batch_rows(&self) -> Option<usize> {
        None
    }
    /// Whether the method back-propagates through the model, which then keeps every layer's
    /// activations (attention weights included) until the backward pass; the facade's memory
    /// check before work counts them. `false` (the default): forward passes only.
    fn needs_gradients(&self) -> bool {
        false
    }
    /// Attributes every step of `seq` at once, for methods that can share work between the
    /// steps of a causal model (one forward pass serves every step, see [`SequenceInput`]).
    /// Element `s` of the result equals [`AttributionMethod::attribute_step`] on
    /// `seq.step(s)` up to rounding. `None` (the default): attribute step by step.
    fn attribute_sequence(
        &self,
        _ctx: &MethodContext,
        _seq: &SequenceInput,
    ) -> Option<Result<Vec<StepAttribution>>> {
        None
    }
}
