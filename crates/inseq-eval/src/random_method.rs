//! The random-attribution reference: every input token gets a score drawn uniformly from
//! `[0, 1)`, independent of the model. A method that does not beat it on a metric carries no
//! information the metric can see.

use burn::tensor::{Tensor, TensorData};
use inseq::methods::{AttributionMethod, MethodContext, StepAttribution, StepInput};
use inseq::models::ModelKind;
use inseq::{MethodArgs, MethodRegistry, Result};

use crate::rng::{Rng, hash_ids};

/// Uniform random scores, one per token; the same input and step give the same scores (seeded
/// by `seed` and the step's tokens, whatever the batch).
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomAttribution {
    /// Seed of the scores.
    pub seed: u64,
}

/// Registers [`RandomAttribution`] as `random` (argument `seed`, default 0).
///
/// ```
/// let mut methods = inseq::MethodRegistry::with_defaults();
/// inseq_eval::register_random_method(&mut methods);
/// assert_eq!(methods.create("random", Default::default()).unwrap().id(), "random");
/// ```
pub fn register_random_method(methods: &mut MethodRegistry) {
    methods.register(
        "random",
        "Uniform random scores per token (the reference of inseq-eval), seeded by `seed`.",
        |mut args: MethodArgs| {
            let seed = args.take("seed", 0u64)?;
            args.finish("random")?;
            Ok(Box::new(RandomAttribution { seed }))
        },
    );
}

impl RandomAttribution {
    /// `[batch, len, 1]` scores: row `r` seeded from `seeds[r]`, drawn for its real positions
    /// (`masks[r]`) only, so that padding does not change them; padding scores 0.
    fn scores(&self, ctx: &MethodContext, seeds: &[u64], masks: &[Vec<bool>]) -> Tensor<3> {
        let len = masks.first().map_or(0, Vec::len);
        let values: Vec<f32> = seeds
            .iter()
            .zip(masks)
            .flat_map(|(&s, mask)| {
                let mut rng = Rng::derived(self.seed, &[s]);
                mask.iter()
                    .map(move |&real| if real { rng.next_f64() as f32 } else { 0.0 })
            })
            .collect();
        Tensor::from_data(
            TensorData::new(values, [seeds.len(), len, 1]),
            ctx.model.device(),
        )
    }
}

impl AttributionMethod for RandomAttribution {
    fn id(&self) -> &str {
        "random"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let rows: Vec<u64> = (0..step.target_ids.len())
            .map(|r| {
                let real = step.prefix_ids[r]
                    .iter()
                    .zip(&step.prefix_mask[r])
                    .filter(|(_, m)| **m)
                    .map(|(id, _)| *id);
                let source = step
                    .source_ids
                    .iter()
                    .zip(&step.source_mask)
                    .flat_map(|(s, m)| s[r].iter().zip(&m[r]).filter(|(_, m)| **m))
                    .map(|(id, _)| *id);
                hash_ids(
                    real.chain([usize::MAX, step.target_ids[r], usize::MAX])
                        .chain(source),
                )
            })
            .collect();
        let decoder_only = ctx.model.kind() == ModelKind::DecoderOnly;
        let target = (decoder_only || ctx.attribute_target)
            .then(|| self.scores(ctx, &rows, &step.prefix_mask));
        let source = step
            .source_mask
            .as_ref()
            .filter(|_| !decoder_only)
            .map(|mask| {
                let source_rows: Vec<u64> = rows.iter().map(|r| r ^ 0x5eed).collect();
                self.scores(ctx, &source_rows, mask)
            });
        Ok(StepAttribution {
            source,
            target,
            deltas: None,
            score_dims: Some(vec![]),
        })
    }
}
