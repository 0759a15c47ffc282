//! A registry of attribution methods keyed by Inseq's ids.

use std::collections::BTreeMap;
use std::sync::Arc;

use inseq_core::{Error, Result};

use crate::{
    Attention, AttributionMethod, DeepLift, InputXGradient, IntegratedGradients,
    LayerGradientXActivation, LayerIntegratedGradients, MethodArgs, Occlusion, Saliency,
    SequentialIntegratedGradients,
};

/// Builds a method from its arguments.
pub type MethodFactory =
    Arc<dyn Fn(MethodArgs) -> Result<Box<dyn AttributionMethod>> + Send + Sync>;

#[derive(Clone)]
struct Entry {
    description: String,
    factory: MethodFactory,
}

/// Attribution methods by id.
///
/// ```
/// use inseq_methods::{MethodRegistry, MethodArgs, Saliency};
/// let mut reg = MethodRegistry::with_defaults();
/// reg.register("signed_saliency", "Saliency without the absolute value.", |_args| {
///     Ok(Box::new(Saliency { abs: false }))
/// });
/// assert!(reg.create("signed_saliency", MethodArgs::default()).is_ok());
/// assert!(reg.create("nope", MethodArgs::default()).is_err());
/// ```
#[derive(Default, Clone)]
pub struct MethodRegistry {
    entries: BTreeMap<String, Entry>,
}

impl MethodRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in methods.
    pub fn with_defaults() -> Self {
        let mut r = Self::new();
        r.register(
            "saliency",
            "Absolute gradient of the attributed function w.r.t. each input embedding (Simonyan et al., 2013).",
            |a| Ok(Box::new(Saliency::from_args(a)?)),
        );
        r.register(
            "input_x_gradient",
            "Gradient times input embedding (Shrikumar et al., 2016).",
            |a| Ok(Box::new(InputXGradient::from_args(a)?)),
        );
        r.register(
            "integrated_gradients",
            "Path-integrated gradients from an unk-token baseline (Sundararajan et al., 2017).",
            |a| Ok(Box::new(IntegratedGradients::from_args(a)?)),
        );
        r.register(
            "occlusion",
            "Change of the attributed function when each token is replaced by the baseline (Zeiler & Fergus, 2014).",
            |a| Ok(Box::new(Occlusion::from_args(a)?)),
        );
        r.register(
            "attention",
            "Attention weights of the predicting position, per layer and head (Bahdanau et al., 2015).",
            |a| Ok(Box::new(Attention::from_args(a)?)),
        );
        r.register(
            "sequential_integrated_gradients",
            "Integrated gradients moving one token at a time from the baseline (Enguehard, 2023).",
            |a| Ok(Box::new(SequentialIntegratedGradients::from_args(a)?)),
        );
        r.register(
            "deeplift",
            "DeepLIFT rescale rule from an unk-token baseline, as Captum applies it (Shrikumar et al., 2017).",
            |a| Ok(Box::new(DeepLift::from_args(a)?)),
        );
        r.register(
            "layer_deeplift",
            "DeepLIFT on a layer's output: token embeddings (default) or layer=<block>|encoder.<block> (Shrikumar et al., 2017).",
            |a| Ok(Box::new(DeepLift::layer_from_args(a)?)),
        );
        r.register(
            "layer_integrated_gradients",
            "Integrated gradients on a layer's output: token embeddings (default) or layer=<block>|encoder.<block> (Sundararajan et al., 2017).",
            |a| Ok(Box::new(LayerIntegratedGradients::from_args(a)?)),
        );
        r.register(
            "layer_gradient_x_activation",
            "Gradient times activation of a layer: token embeddings (default) or layer=<block>|encoder.<block>.",
            |a| Ok(Box::new(LayerGradientXActivation::from_args(a)?)),
        );
        r.register(
            "gradient_shap",
            "Expected gradients between an unk-token baseline and noisy inputs (Lundberg & Lee, 2017).",
            |a| Ok(Box::new(crate::GradientShap::from_args(a)?)),
        );
        r.register(
            "lime",
            "Ridge surrogate fitted on random token maskings (Ribeiro et al., 2016).",
            |a| Ok(Box::new(crate::Lime::from_args(a)?)),
        );
        r.register(
            "value_zeroing",
            "Change of each layer's output when a token's attention value vector is zeroed (Mohebbi et al., 2023).",
            |a| Ok(Box::new(crate::ValueZeroing::from_args(a)?)),
        );
        r.register(
            "attention_rollout",
            "Head-averaged attention with residuals, multiplied through the layers (Abnar & Zuidema, 2020).",
            |a| Ok(Box::new(crate::AttentionRollout::from_args(a)?)),
        );
        r.register(
            "attnlrp",
            "Attention-aware LRP as Gradient x Input on a rule-modified graph (Achtibat et al., 2024).",
            |a| Ok(Box::new(crate::AttnLrp::from_args(a)?)),
        );
        r.register(
            "discretized_integrated_gradients",
            "Integrated gradients along monotonic paths through neighbouring word embeddings (Sanyal & Ren, 2021).",
            |a| Ok(Box::new(crate::DiscretizedIntegratedGradients::from_args(a)?)),
        );
        r.register(
            "reagent",
            "Target-probability changes under random token replacements, refined until the top tokens alone keep the target in the top k (Zhao & Shan, 2024).",
            |a| Ok(Box::new(crate::Reagent::from_args(a)?)),
        );
        r.register(
            "dummy",
            "No attribution: only step scores are computed (as Inseq's `dummy`).",
            |a| {
                a.finish("dummy")?;
                Ok(Box::new(crate::Dummy))
            },
        );
        r
    }

    /// Registers (or replaces) a method factory under `id`.
    pub fn register(
        &mut self,
        id: &str,
        description: &str,
        factory: impl Fn(MethodArgs) -> Result<Box<dyn AttributionMethod>> + Send + Sync + 'static,
    ) {
        self.entries.insert(
            id.to_string(),
            Entry {
                description: description.to_string(),
                factory: Arc::new(factory),
            },
        );
    }

    /// Instantiates the method `id` with `args`.
    pub fn create(&self, id: &str, args: MethodArgs) -> Result<Box<dyn AttributionMethod>> {
        let entry = self.entries.get(id).ok_or_else(|| Error::UnknownId {
            kind: "attribution method",
            id: id.to_string(),
            available: self.ids(),
        })?;
        (entry.factory)(args)
    }

    /// Registered ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// `(id, description)` pairs, sorted by id.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.description.clone()))
            .collect()
    }
}
