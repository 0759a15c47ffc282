//! Runs the metrics on the steps of attributed sequences: the perturbed inputs of every metric
//! of a step go to the model as one batch (chunked by the batch size), and the unperturbed and
//! all-baseline values of every step of a causal model come from one teacher-forced pass each.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use inseq::{AttributionModel, AttributionOutput, Result};
use serde::{Deserialize, Serialize};

use crate::config::EvalConfig;
use crate::metrics::{Metric, MetricValue, Perturbation, StepScores};
use crate::rng::Rng;
use crate::scorer::Scorer;
use crate::step::{EvalStep, steps_of_sequence};

/// The metrics of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// The function on the unperturbed input.
    pub original: f32,
    /// The function with every attributed token replaced by the baseline.
    pub empty: f32,
    /// Each metric's value, by id.
    pub metrics: BTreeMap<String, MetricValue>,
}

/// Metrics with the model that scores them.
pub struct Evaluator<'a> {
    /// Runs the model on perturbed inputs.
    pub scorer: Scorer<'a>,
    /// The metrics computed.
    pub metrics: Vec<Arc<dyn Metric>>,
    /// Settings.
    pub config: EvalConfig,
}

impl<'a> Evaluator<'a> {
    /// An evaluator of `model`'s attributed function `attributed_fn` (with `fn_args`).
    pub fn new(
        model: &'a AttributionModel,
        attributed_fn: &str,
        fn_args: inseq::StepArgs,
        metrics: Vec<Arc<dyn Metric>>,
        config: EvalConfig,
    ) -> Result<Self> {
        config.validate()?;
        let baseline = match config.baseline {
            Some(id) => id,
            None => model.baseline_token_id(),
        };
        let vocab = model.model().info().vocab_size;
        if baseline >= vocab {
            return Err(inseq::Error::invalid_arg(
                "baseline",
                format!("token id {baseline} is outside the vocabulary of {vocab}"),
            ));
        }
        let scorer = Scorer {
            model: model.model(),
            function: model.step_registry().get(attributed_fn)?,
            args: fn_args,
            baseline,
            batch_size: config.batch_size,
        };
        Ok(Self {
            scorer,
            metrics,
            config,
        })
    }

    /// Every step of every sequence of `out` (aggregated to one score per token, e.g. by
    /// [`inseq::aggregate`]); `example` seeds the randomness of this output.
    pub fn evaluate_output(
        &self,
        out: &AttributionOutput,
        example: u64,
    ) -> Result<Vec<Vec<StepResult>>> {
        out.sequence_attributions
            .iter()
            .enumerate()
            .map(|(i, seq)| {
                let seed = Rng::derived(self.config.seed, &[example, i as u64]).next_u64();
                self.evaluate_steps(&steps_of_sequence(seq, seed)?)
            })
            .collect()
    }

    /// The metrics of `steps` (the steps of one sequence).
    pub fn evaluate_steps(&self, steps: &[EvalStep]) -> Result<Vec<StepResult>> {
        let originals: Vec<Vec<usize>> = steps.iter().map(EvalStep::flat_ids).collect();
        let empties: Vec<Vec<usize>> = steps
            .iter()
            .map(|s| s.perturbed_ids(&vec![false; s.attributed.len()], self.scorer.baseline))
            .collect();
        let original = self.scorer.score_sequence(steps, &originals)?;
        let empty = self.scorer.score_sequence(steps, &empties)?;
        steps
            .iter()
            .zip(original.into_iter().zip(empty))
            .map(|(step, (original, empty))| self.evaluate_step(step, original, empty))
            .collect()
    }

    /// The metrics of one step given its unperturbed and all-baseline values.
    pub fn evaluate_step(&self, step: &EvalStep, original: f32, empty: f32) -> Result<StepResult> {
        let scores = StepScores {
            step,
            original,
            empty,
            config: &self.config,
        };
        let requests: Vec<Vec<Perturbation>> = self
            .metrics
            .iter()
            .map(|m| m.perturbations(&scores))
            .collect();
        let values = self.run_all(step, &requests)?;
        let mut metrics = BTreeMap::new();
        for ((metric, _), v) in self.metrics.iter().zip(&requests).zip(values) {
            let value = if step.attributed.is_empty() {
                MetricValue {
                    value: f64::NAN,
                    curve: None,
                }
            } else {
                metric.finish(&scores, &v)
            };
            metrics.insert(metric.id().to_string(), value);
        }
        Ok(StepResult {
            original,
            empty,
            metrics,
        })
    }

    /// Runs every requested perturbation of a step in one batch of hard erasures (identical
    /// inputs run once) and one of soft masks; returns the values per metric.
    fn run_all(&self, step: &EvalStep, requests: &[Vec<Perturbation>]) -> Result<Vec<Vec<f32>>> {
        let mut ids: Vec<Vec<usize>> = Vec::new();
        let mut seen: HashMap<Vec<usize>, usize> = HashMap::new();
        let mut masks: Vec<Vec<f32>> = Vec::new();
        let mut slots: Vec<Vec<(bool, usize)>> = Vec::new();
        for (m, reqs) in requests.iter().enumerate() {
            let mut metric_slots = Vec::with_capacity(reqs.len());
            for (r, p) in reqs.iter().enumerate() {
                match p {
                    Perturbation::Keep(keep) => {
                        let input = step.perturbed_ids(keep, self.scorer.baseline);
                        let next = ids.len();
                        let slot = *seen.entry(input.clone()).or_insert(next);
                        if slot == next {
                            ids.push(input);
                        }
                        metric_slots.push((false, slot));
                    }
                    Perturbation::Soft(probs) => {
                        let metric = Rng::key(self.metrics[m].id());
                        let rng = Rng::derived(step.seed, &[0x50f7, metric, r as u64]);
                        masks.push(self.soft_mask(step, probs, rng));
                        metric_slots.push((true, masks.len() - 1));
                    }
                }
            }
            slots.push(metric_slots);
        }
        let hard = self.scorer.score_ids(step, &ids)?;
        let soft = if masks.is_empty() {
            vec![]
        } else {
            self.scorer.score_masked(step, &masks)?
        };
        Ok(slots
            .iter()
            .map(|s| {
                s.iter()
                    .map(|&(is_soft, i)| if is_soft { soft[i] } else { hard[i] })
                    .collect()
            })
            .collect())
    }

    /// A `flat_len * hidden` Bernoulli mask: each element of attributed token `i` is 1 with
    /// probability `probs[i]`; other tokens keep every element.
    fn soft_mask(&self, step: &EvalStep, probs: &[f32], mut rng: Rng) -> Vec<f32> {
        let hidden = self.scorer.model.info().hidden_size;
        let flat_len = step.source_len() + step.prefix.len();
        let mut mask = vec![1.0f32; flat_len * hidden];
        for (&pos, &p) in step.attributed.iter().zip(probs) {
            for v in &mut mask[pos * hidden..(pos + 1) * hidden] {
                *v = if rng.next_f64() < f64::from(p) {
                    1.0
                } else {
                    0.0
                };
            }
        }
        mask
    }
}
