//! GradientSHAP (Lundberg & Lee, 2017, <https://arxiv.org/abs/1705.07874>), as
//! Captum's `GradientShap`: expected gradients from random points between a
//! baseline and a noisy copy of the input.

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::ModelKind;

use crate::{
    AttributionMethod, Embedded, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step,
    gradients,
};

/// A small deterministic random number generator (SplitMix64), so seeded
/// methods give the same output on every platform and backend.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// The most draws `gradient_shap` takes, the same bound on the work of one call as
/// integrated gradients' `n_steps`. Its memory grows with `n_samples × input length × hidden size
/// × layers` (no estimate is checked before work starts yet).
pub const MAX_SAMPLES: usize = 10_000;

/// GradientSHAP on the input embeddings, with Captum's and Inseq's defaults
/// (`n_samples=5`, `stdevs=0.0`). For each of `n_samples` draws per batch row,
/// the input embeddings get gaussian noise of standard deviation `stdevs`, a
/// baseline is drawn from the baseline set (here the single `unk`-token
/// baseline Inseq uses, end-of-sequence tokens keeping their own embedding),
/// `alpha ~ U(0, 1)` picks the point `baseline + alpha (noisy - baseline)`, and
/// the attribution is the mean over draws of `gradient × (noisy - baseline)`.
///
/// With `stdevs = 0` its expectation is Integrated Gradients with the same
/// baseline (a Monte-Carlo estimate of the path integral). Draws come from a
/// SplitMix64 generator seeded with `seed` (default 42), so runs are
/// reproducible; Python Inseq uses torch's global generator instead.
#[derive(Debug, Clone)]
pub struct GradientShap {
    /// Draws per batch row (default 5).
    pub n_samples: usize,
    /// Standard deviation of the gaussian noise added to the inputs (default 0).
    pub stdevs: f64,
    /// Seed of the random draws (default 42).
    pub seed: u64,
    /// Multiply the gradients by `noisy - baseline` (default `true`).
    pub multiply_by_inputs: bool,
}

impl Default for GradientShap {
    fn default() -> Self {
        Self {
            n_samples: 5,
            stdevs: 0.0,
            seed: 42,
            multiply_by_inputs: true,
        }
    }
}

impl GradientShap {
    /// Builds from arguments (`n_samples`, `stdevs`, `seed`, `multiply_by_inputs`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let d = Self::default();
        let g = Self {
            n_samples: args.take_size("n_samples", d.n_samples, MAX_SAMPLES)?,
            stdevs: args.take("stdevs", d.stdevs)?,
            seed: args.take("seed", d.seed)?,
            multiply_by_inputs: args.take("multiply_by_inputs", d.multiply_by_inputs)?,
        };
        args.finish("gradient_shap")?;
        if !g.stdevs.is_finite() || g.stdevs < 0.0 {
            return Err(Error::invalid_arg("stdevs", "must be finite and >= 0"));
        }
        Ok(g)
    }
}

/// `n` stacked noisy copies of `x` (`[n * batch, len, hidden]`).
fn noisy(x: &Tensor<3>, n: usize, stdevs: f64, rng: &mut SplitMix64) -> Tensor<3> {
    let rep = x.clone().repeat_dim(0, n);
    if stdevs == 0.0 {
        return rep;
    }
    let dims = rep.dims();
    let noise: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| (rng.normal() * stdevs) as f32)
        .collect();
    rep + Tensor::<3>::from_data(TensorData::new(noise, dims), &x.device())
}

/// `baseline + alpha (noisy - baseline)` with one alpha per row.
fn scaled(noisy: &Tensor<3>, baseline: &Tensor<3>, alphas: &Tensor<3>) -> Tensor<3> {
    baseline.clone() + (noisy.clone() - baseline.clone()) * alphas.clone()
}

/// Mean over the `n` stacked draws of `[n * batch, len, hidden]`.
fn mean_draws(t: Tensor<3>, n: usize) -> Tensor<3> {
    let [nb, len, h] = t.dims();
    let b = nb / n;
    t.reshape([n, b, len, h]).mean_dim(0).reshape([b, len, h])
}

impl AttributionMethod for GradientShap {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        "gradient_shap"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let x = embed_step(ctx, step, false);
        let base = embed_step(ctx, step, true);
        let batch = step.prefix_ids.len();
        let n = self.n_samples;
        let attribute_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
        let mut rng = SplitMix64::new(self.seed);
        let alphas: Vec<f32> = (0..n * batch).map(|_| rng.uniform() as f32).collect();
        let alphas = Tensor::<3>::from_data(
            TensorData::new(alphas, [n * batch, 1, 1]),
            &x.target.device(),
        );
        let source_noisy = x
            .source
            .as_ref()
            .map(|s| noisy(s, n, self.stdevs, &mut rng));
        let base_source = base.source.as_ref().map(|b| b.clone().repeat_dim(0, n));
        let target_noisy = attribute_target.then(|| noisy(&x.target, n, self.stdevs, &mut rng));
        let base_target = base.target.clone().repeat_dim(0, n);
        let embedded = Embedded {
            source: source_noisy
                .as_ref()
                .zip(base_source.as_ref())
                .map(|(s, b)| scaled(s, b, &alphas)),
            target: match &target_noisy {
                Some(t) => scaled(t, &base_target, &alphas),
                None => x.target.clone().repeat_dim(0, n),
            },
        };
        let (gs, gt, _) = gradients(ctx, step, embedded, n)?;
        let finish = |g: Tensor<3>, input: Option<&Tensor<3>>, baseline: Option<&Tensor<3>>| {
            let g = match (self.multiply_by_inputs, input, baseline) {
                (true, Some(i), Some(b)) => g * (i.clone() - b.clone()),
                _ => g,
            };
            mean_draws(g, n)
        };
        Ok(StepAttribution::granular(
            gs.map(|g| finish(g, source_noisy.as_ref(), base_source.as_ref())),
            gt.map(|g| finish(g, target_noisy.as_ref(), Some(&base_target))),
        ))
    }
}
