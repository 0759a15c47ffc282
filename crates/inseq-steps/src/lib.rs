//! Step functions: scores computed at each generation step from the model's
//! output distribution, under the ids Python Inseq 0.7.1 uses.
//!
//! A step function maps a [`StepContext`] (the logits at the attributed
//! position, the target token ids, optional contrastive logits) to one score
//! per batch row. Scores are burn tensors, so any step function can also be
//! the *attributed function* that gradient methods differentiate.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use inseq_steps::{StepArgs, StepContext, StepRegistry};
//! let device = Device::flex();
//! let logits = Tensor::<2>::from_floats([[0.0, 0.0, 0.0, 0.0]], &device);
//! let registry = StepRegistry::with_defaults();
//! let ctx = StepContext::new(logits, vec![2]);
//! let p = registry.get("probability").unwrap().compute(&ctx, &StepArgs::default()).unwrap();
//! // A few roundings (exp, a sum of 4, a division or ln) of 0.25: well within 1e-6.
//! assert!((p.into_scalar::<f32>() - 0.25).abs() < 1e-6);
//! ```
#![warn(missing_docs)]

mod builtin;
mod registry;

pub use builtin::{
    ContrastLogits, ContrastLogitsDiff, ContrastProb, ContrastProbDiff, CrossEntropy, Entropy,
    InContextPvi, KlDivergence, Logit, Pcxmi, Perplexity, Probability, TopPSize,
};
pub use registry::StepRegistry;

use std::collections::BTreeMap;

use burn::tensor::{Int, Tensor, TensorData};
use inseq_core::{Error, Result};

/// Numeric arguments of a step function (`logprob`, `top_p`, `top_k`...), by name.
/// Booleans are `0.0`/`1.0`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepArgs(pub BTreeMap<String, f64>);

impl StepArgs {
    /// Parses `name=value,name=value` (`true`/`false` accepted).
    pub fn parse(text: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                Error::invalid_arg(
                    "step function arguments",
                    format!("`{part}` is not name=value"),
                )
            })?;
            let value = match v.trim() {
                "true" | "True" => 1.0,
                "false" | "False" => 0.0,
                other => other.parse::<f64>().map_err(|_| {
                    Error::invalid_arg(k.trim(), format!("`{other}` is not a number or boolean"))
                })?,
            };
            map.insert(k.trim().to_string(), value);
        }
        Ok(Self(map))
    }

    /// A numeric argument, or `default`.
    pub fn f64_or(&self, name: &str, default: f64) -> f64 {
        self.0.get(name).copied().unwrap_or(default)
    }

    /// A boolean argument, or `default`.
    pub fn bool_or(&self, name: &str, default: bool) -> bool {
        self.0.get(name).map_or(default, |v| *v != 0.0)
    }
}

/// The model output at the attributed position for a contrastive input
/// (a different target token and/or context).
#[derive(Debug, Clone)]
pub struct ContrastOutput {
    /// `[batch, vocab]` logits under the contrastive input.
    pub logits: Tensor<2>,
    /// `[batch]` contrastive target token ids.
    pub target_ids: Vec<usize>,
}

/// Everything a step function may read at one generation step.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// `[batch, vocab]` logits predicting the attributed token.
    pub logits: Tensor<2>,
    /// `[batch]` ids of the attributed (generated or forced) tokens.
    pub target_ids: Vec<usize>,
    /// The same step under contrastive inputs, for contrastive step functions.
    pub contrast: Option<ContrastOutput>,
    /// `[batch, vocab]` logits of forward passes with Monte Carlo dropout, filled by the
    /// attribution driver for step functions whose [`StepFunction::dropout_samples`] is non-zero.
    pub dropout_logits: Vec<Tensor<2>>,
}

impl StepContext {
    /// A context without contrastive inputs.
    pub fn new(logits: Tensor<2>, target_ids: Vec<usize>) -> Self {
        Self {
            logits,
            target_ids,
            contrast: None,
            dropout_logits: vec![],
        }
    }

    /// The contrastive output, or an error naming the step function that needs it.
    pub fn contrast(&self, id: &str) -> Result<&ContrastOutput> {
        self.contrast.as_ref().ok_or_else(|| {
            Error::invalid_arg(
                id,
                "this step function needs contrastive inputs (contrast_targets or contrast_sources)",
            )
        })
    }
}

/// A score computed at each generation step.
///
/// Implement it and [`StepRegistry::register`] it under a new id to add a
/// step function without touching this crate.
pub trait StepFunction: Send + Sync {
    /// The id it is registered under (e.g. `probability`).
    fn id(&self) -> &str;
    /// One-line description.
    fn description(&self) -> &str;
    /// `[batch]` scores; must stay differentiable with respect to `ctx.logits`.
    fn compute(&self, ctx: &StepContext, args: &StepArgs) -> Result<Tensor<1>>;
    /// How many forward passes with Monte Carlo dropout the function needs in
    /// [`StepContext::dropout_logits`] (0 for all but `mc_dropout_prob_avg`).
    fn dropout_samples(&self, args: &StepArgs) -> usize {
        let _ = args;
        0
    }
    /// Whether it needs contrastive inputs ([`StepContext::contrast`]); PECoRe's CTI phase
    /// compares the outputs with and without context through such a function.
    fn is_contrastive(&self) -> bool {
        false
    }
    /// The id of the aggregation function that merges its scores over a span of generated
    /// tokens (Inseq's `DEFAULT_ATTRIBUTION_AGGREGATE_DICT`: `prod` for probabilities, `sum`
    /// for entropies and divergences, `absmax` by default).
    fn span_aggregation(&self) -> &str {
        "absmax"
    }
}

/// Gathers `logits[i, ids[i]]` as a `[batch]` tensor.
pub fn gather_ids(values: Tensor<2>, ids: &[usize]) -> Result<Tensor<1>> {
    let [b, v] = values.dims();
    if ids.len() != b {
        return Err(Error::ShapeMismatch {
            what: "target ids".into(),
            expected: vec![b],
            found: vec![ids.len()],
        });
    }
    if let Some(&bad) = ids.iter().find(|&&i| i >= v) {
        return Err(Error::invalid_arg(
            "target id",
            format!("{bad} is outside the vocabulary of {v}"),
        ));
    }
    let idx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [b, 1]), &values.device());
    Ok(values.gather(1, idx).reshape([b]))
}
