//! A registry of step functions keyed by id.

use std::collections::BTreeMap;
use std::sync::Arc;

use inseq_core::{Error, Result};

use crate::StepFunction;
use crate::builtin::*;

/// Step functions by id. [`StepRegistry::with_defaults`] holds Inseq's built-ins;
/// [`StepRegistry::register`] adds custom ones.
///
/// ```
/// use inseq_steps::{StepRegistry, StepFunction, StepContext, StepArgs};
/// use burn::tensor::Tensor;
/// struct Double;
/// impl StepFunction for Double {
///     fn id(&self) -> &str { "double_logit" }
///     fn description(&self) -> &str { "Twice the target logit." }
///     fn compute(&self, ctx: &StepContext, _: &StepArgs) -> inseq_core::Result<Tensor<1>> {
///         Ok(inseq_steps::gather_ids(ctx.logits.clone(), &ctx.target_ids)? * 2.0)
///     }
/// }
/// let mut reg = StepRegistry::with_defaults();
/// reg.register(Double);
/// assert!(reg.get("double_logit").is_ok());
/// ```
#[derive(Clone, Default)]
pub struct StepRegistry {
    functions: BTreeMap<String, Arc<dyn StepFunction>>,
}

impl StepRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The step functions of Python Inseq 0.7.1 that need no extra model runs.
    pub fn with_defaults() -> Self {
        let mut r = Self::new();
        r.register(Logit);
        r.register(Probability);
        r.register(Entropy);
        r.register(CrossEntropy);
        r.register(Perplexity);
        r.register(TopPSize);
        r.register(ContrastLogits);
        r.register(ContrastProb);
        r.register(ContrastProbDiff);
        r.register(ContrastLogitsDiff);
        r.register(Pcxmi);
        r.register(KlDivergence);
        r.register(InContextPvi);
        r.register(McDropoutProbAvg);
        r
    }

    /// Adds (or replaces) a step function under its id.
    pub fn register(&mut self, f: impl StepFunction + 'static) {
        self.functions.insert(f.id().to_string(), Arc::new(f));
    }

    /// Looks up a step function.
    pub fn get(&self, id: &str) -> Result<Arc<dyn StepFunction>> {
        self.functions
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownId {
                kind: "step function",
                id: id.to_string(),
                available: self.ids(),
            })
    }

    /// Registered ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.functions.keys().cloned().collect()
    }

    /// `(id, description)` pairs, sorted by id.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.functions
            .iter()
            .map(|(k, f)| (k.clone(), f.description().to_string()))
            .collect()
    }
}
