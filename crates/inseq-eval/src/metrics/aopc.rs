//! AOPC comprehensiveness and sufficiency (DeYoung et al., 2020, "ERASER: A Benchmark to
//! Evaluate Rationalized NLP Models", ACL, section 4.2): for the top `k` % tokens `r_k` of the
//! attribution, comprehensiveness is `p(y|x) - p(y|x \ r_k)` (removing them should hurt) and
//! sufficiency `p(y|x) - p(y|r_k)` (keeping only them should be enough), each averaged over the
//! bins `k` (by default 1, 5, 10, 20 and 50 %: the "area over the perturbation curve"). Removed
//! tokens are replaced by the baseline token; `k` % of `n` tokens is `ceil(k n / 100)` tokens.

use super::{Metric, MetricValue, Perturbation, StepScores, tokens_at, top_k_keep};

/// AOPC comprehensiveness: higher is better.
pub struct Comprehensiveness;

/// AOPC sufficiency: lower is better.
pub struct Sufficiency;

fn perturbations(s: &StepScores, keep_top: bool) -> Vec<Perturbation> {
    let n = s.step.scores.len();
    s.config
        .aopc_bins
        .iter()
        .map(|&b| Perturbation::Keep(top_k_keep(s.step, tokens_at(b, n), keep_top)))
        .collect()
}

fn aopc(s: &StepScores, values: &[f32]) -> MetricValue {
    let drops: Vec<(f64, f64)> = s
        .config
        .aopc_bins
        .iter()
        .zip(values)
        .map(|(&b, &v)| (b, f64::from(s.original) - f64::from(v)))
        .collect();
    let value = drops.iter().map(|d| d.1).sum::<f64>() / drops.len().max(1) as f64;
    MetricValue {
        value,
        curve: Some(drops),
    }
}

impl Metric for Comprehensiveness {
    fn id(&self) -> &str {
        "comprehensiveness"
    }
    fn description(&self) -> &str {
        "AOPC comprehensiveness (ERASER): mean drop when the top k% tokens are removed; higher is better."
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn perturbations(&self, s: &StepScores) -> Vec<Perturbation> {
        perturbations(s, false)
    }
    fn finish(&self, s: &StepScores, values: &[f32]) -> MetricValue {
        aopc(s, values)
    }
}

impl Metric for Sufficiency {
    fn id(&self) -> &str {
        "sufficiency"
    }
    fn description(&self) -> &str {
        "AOPC sufficiency (ERASER): mean drop when only the top k% tokens are kept; lower is better."
    }
    fn higher_is_better(&self) -> bool {
        false
    }
    fn perturbations(&self, s: &StepScores) -> Vec<Perturbation> {
        perturbations(s, true)
    }
    fn finish(&self, s: &StepScores, values: &[f32]) -> MetricValue {
        aopc(s, values)
    }
}
