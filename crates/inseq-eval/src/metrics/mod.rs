//! Faithfulness metrics: a [`Metric`] asks for perturbed inputs of a step and turns the model's
//! function on them into a value; a [`MetricRegistry`] maps ids to metrics, as the method and
//! step-function registries do.

mod aopc;
mod curves;
mod soft;

use std::collections::BTreeMap;
use std::sync::Arc;

use inseq::{Error, Result};
use serde::{Deserialize, Serialize};

pub use aopc::{Comprehensiveness, Sufficiency};
pub use curves::{Deletion, Insertion};
pub use soft::{SoftComprehensiveness, SoftSufficiency};

use crate::config::EvalConfig;
use crate::step::EvalStep;

/// A perturbed input a metric needs the model's function on.
#[derive(Debug, Clone, PartialEq)]
pub enum Perturbation {
    /// Per attributed token (in [`EvalStep::attributed`] order), whether it keeps its id; the
    /// others are replaced by the baseline token.
    Keep(Vec<bool>),
    /// Per attributed token, the probability that each element of its embedding is kept (the
    /// others are zeroed); the mask is drawn by the evaluator, seeded.
    Soft(Vec<f32>),
}

/// What a metric sees of a step besides the step itself.
#[derive(Debug, Clone, Copy)]
pub struct StepScores<'a> {
    /// The step.
    pub step: &'a EvalStep,
    /// The function on the unperturbed input, `p(y | x)`.
    pub original: f32,
    /// The function with every attributed token replaced by the baseline, `p(y | 0)`.
    pub empty: f32,
    /// The evaluation settings.
    pub config: &'a EvalConfig,
}

/// A metric's value for one step, with the curve it integrates where it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricValue {
    /// The value (`NaN` where undefined for this step, e.g. a zero normaliser).
    pub value: f64,
    /// `(x, y)` points of the metric's curve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<Vec<(f64, f64)>>,
}

/// A faithfulness metric of one attributed step.
pub trait Metric: Send + Sync {
    /// The id it is registered under.
    fn id(&self) -> &str;
    /// One-line description.
    fn description(&self) -> &str;
    /// Whether a faithful attribution scores higher (`true`) or lower.
    fn higher_is_better(&self) -> bool;
    /// The perturbed inputs it needs; the evaluator runs those of every metric of a step as one
    /// batch.
    fn perturbations(&self, s: &StepScores) -> Vec<Perturbation>;
    /// The value from the function on each of [`Self::perturbations`], in order.
    fn finish(&self, s: &StepScores, values: &[f32]) -> MetricValue;
}

type Entry = (String, Arc<dyn Metric>);

/// Metrics by id.
#[derive(Clone, Default)]
pub struct MetricRegistry {
    entries: BTreeMap<String, Entry>,
}

impl MetricRegistry {
    /// The built-in metrics: `deletion`, `insertion`, `comprehensiveness`, `sufficiency`,
    /// `soft_nc`, `soft_ns`.
    pub fn with_defaults() -> Self {
        let mut r = Self::default();
        let builtins: [Arc<dyn Metric>; 6] = [
            Arc::new(Deletion),
            Arc::new(Insertion),
            Arc::new(Comprehensiveness),
            Arc::new(Sufficiency),
            Arc::new(SoftComprehensiveness),
            Arc::new(SoftSufficiency),
        ];
        for m in builtins {
            r.register(m);
        }
        r
    }

    /// Adds (or replaces) a metric under its id.
    pub fn register(&mut self, metric: Arc<dyn Metric>) {
        let id = metric.id().to_string();
        self.entries
            .insert(id, (metric.description().to_string(), metric));
    }

    /// The metric `id`, or an error listing the registered ones.
    pub fn get(&self, id: &str) -> Result<Arc<dyn Metric>> {
        self.entries
            .get(id)
            .map(|(_, m)| m.clone())
            .ok_or_else(|| Error::UnknownId {
                kind: "metric",
                id: id.to_string(),
                available: self.ids(),
            })
    }

    /// Registered ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// `(id, description)` pairs, sorted by id.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|(id, (d, _))| (id.clone(), d.clone()))
            .collect()
    }
}

/// How many of `n` tokens a fraction `f` covers: `ceil(f * n)`, at most `n`.
pub fn tokens_at(fraction: f64, n: usize) -> usize {
    ((fraction * n as f64 - 1e-9).ceil().max(0.0) as usize).min(n)
}

/// Keep flags that keep (`keep_top`) or remove the `k` most relevant tokens of `step`.
pub fn top_k_keep(step: &EvalStep, k: usize, keep_top: bool) -> Vec<bool> {
    let mut keep = vec![!keep_top; step.scores.len()];
    for &i in step.ranking().iter().take(k) {
        keep[i] = keep_top;
    }
    keep
}
