//! Deletion and insertion curves (Petsiuk, Das and Saenko, 2018, "RISE: Randomized Input
//! Sampling for Explanation of Black-box Models", BMVC; for text e.g. Arras et al., 2017):
//! tokens are removed (replaced by the baseline token) or inserted into an all-baseline input,
//! most relevant first, and the attributed function is followed along the fraction of tokens
//! changed. The value is the area under the curve (trapezoid rule over the fractions).

use super::{Metric, MetricValue, Perturbation, StepScores, tokens_at, top_k_keep};
use crate::stats::trapezoid;

/// Area under the deletion curve: lower is better (the function drops fast when the tokens the
/// attribution ranks first are removed).
pub struct Deletion;

/// Area under the insertion curve: higher is better (the function recovers fast when the
/// tokens the attribution ranks first are put back into an all-baseline input).
pub struct Insertion;

fn perturbations(s: &StepScores, keep_top: bool) -> Vec<Perturbation> {
    let n = s.step.scores.len();
    s.config
        .fractions
        .iter()
        .map(|&f| Perturbation::Keep(top_k_keep(s.step, tokens_at(f, n), keep_top)))
        .collect()
}

fn curve(s: &StepScores, values: &[f32]) -> MetricValue {
    let xs = &s.config.fractions;
    let ys: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    MetricValue {
        value: trapezoid(xs, &ys),
        curve: Some(xs.iter().copied().zip(ys).collect()),
    }
}

impl Metric for Deletion {
    fn id(&self) -> &str {
        "deletion"
    }
    fn description(&self) -> &str {
        "Area under the deletion curve (most relevant tokens removed first); lower is better."
    }
    fn higher_is_better(&self) -> bool {
        false
    }
    fn perturbations(&self, s: &StepScores) -> Vec<Perturbation> {
        perturbations(s, false)
    }
    fn finish(&self, s: &StepScores, values: &[f32]) -> MetricValue {
        curve(s, values)
    }
}

impl Metric for Insertion {
    fn id(&self) -> &str {
        "insertion"
    }
    fn description(&self) -> &str {
        "Area under the insertion curve (most relevant tokens inserted first); higher is better."
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn perturbations(&self, s: &StepScores) -> Vec<Perturbation> {
        perturbations(s, true)
    }
    fn finish(&self, s: &StepScores, values: &[f32]) -> MetricValue {
        curve(s, values)
    }
}
