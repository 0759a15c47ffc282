//! Sequential Integrated Gradients (Enguehard, 2023, <https://aclanthology.org/2023.findings-acl.477/>).

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::ModelKind;

use crate::{
    AttributionMethod, Embedded, MethodArgs, MethodContext, Quadrature, StepAttribution, StepInput,
    embed_step, gradients,
};

/// Integrated Gradients run once per token position: for position `i` only
/// token `i` moves from its baseline (the `unk` embedding) to its input
/// embedding while every other token keeps its input value; the
/// attribution of token `i` is the integrated gradient at position `i`
/// (times `x_i - baseline_i` with `multiply_by_inputs`), as Inseq's
/// `SequentialIntegratedGradients`. Defaults: `n_steps=50`, `method=gausslegendre`.
///
/// When several inputs are attributed (encoder-decoder with
/// `attribute_target`), Inseq moves position `i` of every input at once and
/// requires them to have the same length; so does this implementation.
#[derive(Debug, Clone)]
pub struct SequentialIntegratedGradients {
    /// Integration points per position.
    pub n_steps: usize,
    /// Integration rule.
    pub method: Quadrature,
    /// Multiply by `x - baseline` (default `true`).
    pub multiply_by_inputs: bool,
}

impl Default for SequentialIntegratedGradients {
    fn default() -> Self {
        Self {
            n_steps: 50,
            method: Quadrature::GaussLegendre,
            multiply_by_inputs: true,
        }
    }
}

impl SequentialIntegratedGradients {
    /// Builds from arguments (`n_steps`, `method`, `multiply_by_inputs`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let d = Self::default();
        let m = Self {
            n_steps: args.take("n_steps", d.n_steps)?,
            method: args.take("method", d.method)?,
            multiply_by_inputs: args.take("multiply_by_inputs", d.multiply_by_inputs)?,
        };
        args.finish("sequential_integrated_gradients")?;
        if m.n_steps == 0 {
            return Err(Error::invalid_arg("n_steps", "must be at least 1"));
        }
        Ok(m)
    }
}

/// `[rows, len, 1]` one-hot mask of position `idx`.
fn one_hot(len: usize, idx: usize, device: &burn::tensor::Device) -> Tensor<3> {
    let mut v = vec![0f32; len];
    v[idx] = 1.0;
    Tensor::from_data(TensorData::new(v, [1, len, 1]), device)
}

/// `k` copies of `x` (times-major) where position `idx` is `b + alpha_j (x - b)` in copy `j`.
fn interpolate_at(x: &Tensor<3>, b: &Tensor<3>, alphas: &[f64], m: &Tensor<3>) -> Tensor<3> {
    let diff = x.clone() - b.clone();
    let keep = m.clone().neg() + 1.0;
    Tensor::cat(
        alphas
            .iter()
            .map(|&a| x.clone() * keep.clone() + (b.clone() + diff.clone() * a) * m.clone())
            .collect(),
        0,
    )
}

impl AttributionMethod for SequentialIntegratedGradients {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        "sequential_integrated_gradients"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let x = embed_step(ctx, step, false);
        let base = embed_step(ctx, step, true);
        let batch = step.prefix_ids.len();
        let attribute_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
        let target_len = x.target.dims()[1];
        let len = match &x.source {
            Some(s) => {
                let sl = s.dims()[1];
                if attribute_target && sl != target_len {
                    return Err(Error::Unsupported(format!(
                        "sequential_integrated_gradients with attribute_target needs source and target prefix of \
                         the same length (as in Inseq); got {sl} and {target_len}"
                    )));
                }
                sl
            }
            None => target_len,
        };
        let (alphas, weights) = self.method.points(self.n_steps)?;
        let k = alphas.len();
        let device = x.target.device();
        let mut acc_s: Option<Tensor<3>> = None;
        let mut acc_t: Option<Tensor<3>> = None;
        let add = |acc: &mut Option<Tensor<3>>, t: Tensor<3>| {
            *acc = Some(match acc.take() {
                Some(a) => a + t,
                None => t,
            });
        };
        for idx in 0..len {
            let m = one_hot(len, idx, &device);
            let embedded = Embedded {
                source: x
                    .source
                    .as_ref()
                    .zip(base.source.as_ref())
                    .map(|(xs, bs)| interpolate_at(xs, bs, &alphas, &m)),
                target: if attribute_target {
                    interpolate_at(&x.target, &base.target, &alphas, &m)
                } else {
                    x.target.clone().repeat_dim(0, k)
                },
            };
            let (gs, gt, _) = gradients(ctx, step, embedded, k)?;
            if let Some(g) = gs {
                add(
                    &mut acc_s,
                    crate::integrated_gradients::weighted_sum(g, &weights, batch) * m.clone(),
                );
            }
            if let Some(g) = gt {
                add(
                    &mut acc_t,
                    crate::integrated_gradients::weighted_sum(g, &weights, batch) * m.clone(),
                );
            }
        }
        let scale = |acc: Option<Tensor<3>>, i: Option<&Tensor<3>>, b: Option<&Tensor<3>>| {
            acc.map(|g| match (self.multiply_by_inputs, i, b) {
                (true, Some(i), Some(b)) => g * (i.clone() - b.clone()),
                _ => g,
            })
        };
        Ok(StepAttribution {
            source: scale(acc_s, x.source.as_ref(), base.source.as_ref()),
            target: scale(acc_t, Some(&x.target), Some(&base.target)),
            deltas: None,
            score_dims: None,
        })
    }
}
