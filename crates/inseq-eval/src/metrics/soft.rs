//! Soft normalised comprehensiveness and sufficiency (Zhao and Aletras, 2023, "Incorporating
//! Attribution Importance for Improving Faithfulness Metrics", ACL, section 3).
//!
//! Instead of removing whole tokens, each element of a token's embedding is kept with a
//! probability given by the token's importance `q` (the scores min-max normalised to `[0, 1]`
//! over the step's attributed tokens; all `0.5` when they are constant) and zeroed otherwise:
//! `x' = x ⊙ e`, `e ~ Bernoulli(q)` for sufficiency and `e ~ Bernoulli(1 - q)` for
//! comprehensiveness. As normalised sufficiency and comprehensiveness (Carton et al., 2020),
//! both are divided by the effect of erasing every attributed token (`p(y|0)`, all tokens
//! replaced by the baseline):
//!
//! * `Soft-NC = max(0, p(y|x) - p(y|x')) / max(0, p(y|x) - p(y|0))` (higher is better);
//! * `Soft-NS = (S(x') - S(0)) / (1 - S(0))` with `S(z) = 1 - max(0, p(y|x) - p(y|z))`,
//!   i.e. `1 - max(0, p(y|x) - p(y|x')) / max(0, p(y|x) - p(y|0))` (higher is better).
//!
//! Steps where erasing everything does not lower the function (zero normaliser) are undefined
//! (`NaN`) and left out of the means. The masks are seeded ([`crate::EvalConfig::seed`]); the
//! value is the mean over [`crate::EvalConfig::soft_samples`] masks.

use super::{Metric, MetricValue, Perturbation, StepScores};

/// Soft normalised comprehensiveness: higher is better.
pub struct SoftComprehensiveness;

/// Soft normalised sufficiency: higher is better.
pub struct SoftSufficiency;

/// The scores of a step min-max normalised to `[0, 1]` (all 0.5 when constant).
pub fn normalised_importance(scores: &[f32]) -> Vec<f32> {
    let lo = scores.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if hi - lo <= f32::EPSILON * hi.abs().max(1.0) {
        return vec![0.5; scores.len()];
    }
    scores.iter().map(|s| (s - lo) / (hi - lo)).collect()
}

fn perturbations(s: &StepScores, keep_important: bool) -> Vec<Perturbation> {
    let q = normalised_importance(&s.step.scores);
    let keep: Vec<f32> = if keep_important {
        q
    } else {
        q.iter().map(|v| 1.0 - v).collect()
    };
    vec![Perturbation::Soft(keep); s.config.soft_samples.max(1)]
}

/// Mean over the masks of `max(0, p(y|x) - p(y|x')) / max(0, p(y|x) - p(y|0))`.
fn normalised_drop(s: &StepScores, values: &[f32]) -> f64 {
    let denom = (f64::from(s.original) - f64::from(s.empty)).max(0.0);
    if denom <= 1e-12 || values.is_empty() {
        return f64::NAN;
    }
    let drops = values
        .iter()
        .map(|&v| (f64::from(s.original) - f64::from(v)).max(0.0) / denom);
    drops.sum::<f64>() / values.len() as f64
}

impl Metric for SoftComprehensiveness {
    fn id(&self) -> &str {
        "soft_nc"
    }
    fn description(&self) -> &str {
        "Soft normalised comprehensiveness (Zhao & Aletras 2023); higher is better."
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn perturbations(&self, s: &StepScores) -> Vec<Perturbation> {
        perturbations(s, false)
    }
    fn finish(&self, s: &StepScores, values: &[f32]) -> MetricValue {
        MetricValue {
            value: normalised_drop(s, values),
            curve: None,
        }
    }
}

impl Metric for SoftSufficiency {
    fn id(&self) -> &str {
        "soft_ns"
    }
    fn description(&self) -> &str {
        "Soft normalised sufficiency (Zhao & Aletras 2023); higher is better."
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn perturbations(&self, s: &StepScores) -> Vec<Perturbation> {
        perturbations(s, true)
    }
    fn finish(&self, s: &StepScores, values: &[f32]) -> MetricValue {
        MetricValue {
            value: 1.0 - normalised_drop(s, values),
            curve: None,
        }
    }
}
