//! Runs the model on perturbed inputs of a step and returns its attributed function (by
//! default the probability of the explained token), in batches.

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use inseq::models::{ForwardOptions, LanguageModel, ModelInput, ModelKind, ids_tensor};
use inseq::steps::{StepContext, StepFunction};
use inseq::{Error, Result, StepArgs};

use crate::step::EvalStep;

/// The model, the function scored and how inputs are perturbed.
pub struct Scorer<'a> {
    /// The model.
    pub model: &'a dyn LanguageModel,
    /// The attributed function (e.g. `probability`).
    pub function: Arc<dyn StepFunction>,
    /// Its arguments.
    pub args: StepArgs,
    /// The id that replaces removed tokens.
    pub baseline: usize,
    /// Most perturbed inputs per forward pass.
    pub batch_size: usize,
}

impl Scorer<'_> {
    /// The function on each of `inputs` (flat ids of `step`, see [`EvalStep::flat_ids`]), run in
    /// batches of [`Self::batch_size`].
    pub fn score_ids(&self, step: &EvalStep, inputs: &[Vec<usize>]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(self.batch_size.max(1)) {
            let embeds = self.embed(step, chunk);
            out.extend(self.run(embeds, step.target, chunk.len())?);
        }
        Ok(out)
    }

    /// The function on the step's own input with each token embedding multiplied element-wise
    /// by a mask: `masks[i]` holds `flat_len * hidden` factors.
    pub fn score_masked(&self, step: &EvalStep, masks: &[Vec<f32>]) -> Result<Vec<f32>> {
        let hidden = self.model.info().hidden_size;
        let flat_len = step.source_len() + step.prefix.len();
        let mut out = Vec::with_capacity(masks.len());
        for chunk in masks.chunks(self.batch_size.max(1)) {
            let n = chunk.len();
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            if flat.len() != n * flat_len * hidden {
                return Err(Error::ShapeMismatch {
                    what: "soft erasure masks".into(),
                    expected: vec![n, flat_len, hidden],
                    found: vec![flat.len()],
                });
            }
            let device = self.model.device();
            let mask = Tensor::<3>::from_data(TensorData::new(flat, [n, flat_len, hidden]), device);
            let ids = vec![step.flat_ids(); n];
            let (source, target) = self.embed(step, &ids);
            let s = step.source_len();
            let source = source.map(|e| e * mask.clone().slice([0..n, 0..s, 0..hidden]));
            let target = target * mask.slice([0..n, s..flat_len, 0..hidden]);
            out.extend(self.run((source, target), step.target, n)?);
        }
        Ok(out)
    }

    /// The function on one input per step (`inputs[i]`: flat ids of `steps[i]`). Decoder-only
    /// models whose inputs are all prefixes of the longest (the steps of one teacher-forced
    /// sequence) get every step's value from one forward pass; others run one pass per step.
    pub fn score_sequence(&self, steps: &[EvalStep], inputs: &[Vec<usize>]) -> Result<Vec<f32>> {
        let Some(longest) = inputs.iter().max_by_key(|i| i.len()) else {
            return Ok(vec![]);
        };
        let shared = self.model.kind() == ModelKind::DecoderOnly
            && inputs
                .iter()
                .all(|i| !i.is_empty() && longest.starts_with(i));
        if !shared {
            let mut out = Vec::with_capacity(steps.len());
            for (step, input) in steps.iter().zip(inputs) {
                out.extend(self.score_ids(step, std::slice::from_ref(input))?);
            }
            return Ok(out);
        }
        let from = inputs.iter().map(Vec::len).min().unwrap_or(1) - 1;
        let embeds = self.model.embed(ids_tensor(
            std::slice::from_ref(longest),
            self.model.device(),
        ));
        let options = ForwardOptions {
            logits_from: Some(from),
            ..Default::default()
        };
        let logits = self
            .model
            .forward(model_input(None, embeds, 1), options)
            .logits;
        let [_, _, vocab] = logits.dims();
        let rows: Vec<Tensor<2>> = inputs
            .iter()
            .map(|i| {
                let p = i.len() - 1 - from;
                logits
                    .clone()
                    .slice([0..1, p..p + 1, 0..vocab])
                    .reshape([1, vocab])
            })
            .collect();
        let targets = steps.iter().map(|s| s.target).collect();
        self.compute(Tensor::cat(rows, 0), targets)
    }

    /// Embeddings of a batch of flat ids of `step`: (source, target prefix).
    fn embed(&self, step: &EvalStep, batch: &[Vec<usize>]) -> (Option<Tensor<3>>, Tensor<3>) {
        let device = self.model.device();
        let (sources, prefixes): (Vec<_>, Vec<_>) = batch.iter().map(|f| step.split(f)).unzip();
        let source = step.source.as_ref().map(|_| {
            let ids: Vec<Vec<usize>> = sources.into_iter().flatten().collect();
            self.model.embed_source(ids_tensor(&ids, device))
        });
        (source, self.model.embed(ids_tensor(&prefixes, device)))
    }

    fn run(
        &self,
        (source, target): (Option<Tensor<3>>, Tensor<3>),
        token: usize,
        n: usize,
    ) -> Result<Vec<f32>> {
        let options = ForwardOptions {
            last_position_only: true,
            ..Default::default()
        };
        let out = self.model.forward(model_input(source, target, n), options);
        self.compute(out.last_logits(), vec![token; n])
    }

    fn compute(&self, logits: Tensor<2>, targets: Vec<usize>) -> Result<Vec<f32>> {
        let scores = self
            .function
            .compute(&StepContext::new(logits, targets), &self.args)?;
        let values = scores
            .try_to_vec_as::<f32>()
            .map_err(|e| Error::Numerical(format!("{e:?}")))?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::Numerical(format!(
                "the attributed function `{}` gave {bad} on a perturbed input",
                self.function.id()
            )));
        }
        Ok(values)
    }
}

/// A model input of `n` unpadded rows.
fn model_input(source: Option<Tensor<3>>, target: Tensor<3>, n: usize) -> ModelInput {
    let mask = |len: usize| vec![vec![true; len]; n];
    ModelInput {
        target_mask: mask(target.dims()[1]),
        source_mask: source.as_ref().map(|s| mask(s.dims()[1])),
        target_embeds: target,
        source_embeds: source,
    }
}
