//! Integrated Gradients (Sundararajan et al., 2017, <https://arxiv.org/abs/1703.01365>):
//! the path integral of gradients from a baseline to the input embeddings.

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::ModelKind;

use crate::gradient::shared_forward_applies;
use crate::{
    AttributionMethod, Embedded, MethodArgs, MethodContext, Quadrature, SequenceInput,
    StepAttribution, StepInput, embed_step, forward_scores, forward_scores_all_steps, gradients,
    sequence_gradients, shared_forward_copies,
};

/// Integrated Gradients on the input embeddings, with Captum's defaults:
/// `n_steps=50`, `method=gausslegendre`, attributions multiplied by `x - baseline`.
/// The baseline is the embedding of the `unk` token (end-of-sequence tokens keep
/// their own embedding), as in Inseq.
///
/// By the completeness axiom the attributions of a row sum to
/// `f(x) - f(baseline)` up to the integration error, reported per step as the
/// `deltas` step score when `return_convergence_delta=true`.
#[derive(Debug, Clone)]
pub struct IntegratedGradients {
    /// Number of integration points.
    pub n_steps: usize,
    /// Integration rule.
    pub method: Quadrature,
    /// Rows per forward pass (interpolation points × batch); all at once when `None`.
    pub internal_batch_size: Option<usize>,
    /// Multiply the integrated gradients by `x - baseline` (default `true`).
    pub multiply_by_inputs: bool,
    /// Compute the convergence delta (two extra forward passes).
    pub return_convergence_delta: bool,
}

impl Default for IntegratedGradients {
    fn default() -> Self {
        Self {
            n_steps: 50,
            method: Quadrature::GaussLegendre,
            internal_batch_size: None,
            multiply_by_inputs: true,
            return_convergence_delta: false,
        }
    }
}

impl IntegratedGradients {
    /// Builds from arguments (`n_steps`, `method`, `internal_batch_size`,
    /// `multiply_by_inputs`, `return_convergence_delta`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let d = Self::default();
        let ig = Self {
            n_steps: args.take_size("n_steps", d.n_steps, crate::quadrature::MAX_STEPS)?,
            method: args.take("method", d.method)?,
            internal_batch_size: args.take_opt("internal_batch_size")?,
            multiply_by_inputs: args.take("multiply_by_inputs", d.multiply_by_inputs)?,
            return_convergence_delta: args
                .take("return_convergence_delta", d.return_convergence_delta)?,
        };
        args.finish("integrated_gradients")?;
        if ig.internal_batch_size == Some(0) {
            return Err(Error::invalid_arg(
                "internal_batch_size",
                "must be at least 1",
            ));
        }
        Ok(ig)
    }
}

/// `baseline + alpha * (input - baseline)` for each alpha, stacked along the batch.
fn interpolate(input: &Tensor<3>, baseline: &Tensor<3>, alphas: &[f64]) -> Tensor<3> {
    let diff = input.clone() - baseline.clone();
    Tensor::cat(
        alphas
            .iter()
            .map(|&a| baseline.clone() + diff.clone() * a)
            .collect(),
        0,
    )
}

/// `sum_k w_k * grad_k` where `grads` is `[k * batch, len, hidden]`.
pub(crate) fn weighted_sum(grads: Tensor<3>, weights: &[f64], batch: usize) -> Tensor<3> {
    let [kb, len, h] = grads.dims();
    let k = kb / batch;
    let w: Vec<f32> = weights
        .iter()
        .flat_map(|&w| std::iter::repeat_n(w as f32, batch))
        .collect();
    let w = Tensor::<3>::from_data(TensorData::new(w, [kb, 1, 1]), &grads.device());
    (grads * w)
        .reshape([k, batch, len, h])
        .sum_dim(0)
        .reshape([batch, len, h])
}

/// Adds `t` to a running sum (empty: `None`).
fn accumulate(sum: &mut Option<Tensor<3>>, t: Tensor<3>) {
    *sum = Some(match sum.take() {
        Some(s) => s + t,
        None => t,
    });
}

impl IntegratedGradients {
    /// Every step of a causal model at once: per chunk of interpolation points, one forward
    /// pass over the whole sequence and a hand-written backward pass per step
    /// ([`sequence_gradients`]), where step by step runs a forward and a backward pass per
    /// step. `None` where the model has no hand-written backward pass.
    fn attribute_shared(
        &self,
        ctx: &MethodContext,
        seq: &SequenceInput,
    ) -> Option<Result<Vec<StepAttribution>>> {
        if !shared_forward_applies(ctx, seq) {
            return None;
        }
        let full = seq.full();
        let x = embed_step(ctx, &full, false).target;
        let base = embed_step(ctx, &full, true).target;
        let [batch, width, _] = x.dims();
        let (alphas, weights) = match self.method.points(self.n_steps) {
            Ok(points) => points,
            Err(e) => return Some(Err(e)),
        };
        let per_chunk = shared_forward_copies(ctx.model, batch, width)
            .min(
                self.internal_batch_size
                    .map_or(usize::MAX, |ibs| ibs / batch),
            )
            .max(1);
        let mut acc: Vec<Option<Tensor<3>>> = vec![None; seq.steps];
        for (a, w) in alphas.chunks(per_chunk).zip(weights.chunks(per_chunk)) {
            let points = interpolate(&x, &base, a);
            let grads = match sequence_gradients(ctx, seq, points, a.len())? {
                Ok(grads) => grads,
                Err(e) => return Some(Err(e)),
            };
            for (sum, g) in acc.iter_mut().zip(grads) {
                accumulate(sum, weighted_sum(g, w, batch));
            }
        }
        let attributions: Vec<Tensor<3>> = acc
            .into_iter()
            .flatten()
            .map(|g| {
                let len = g.dims()[1];
                if self.multiply_by_inputs {
                    g * (x.clone() - base.clone()).narrow(1, 0, len)
                } else {
                    g
                }
            })
            .collect();
        let deltas = if self.return_convergence_delta {
            let scores = |t: &Tensor<3>| {
                let embedded = Embedded {
                    source: None,
                    target: t.clone(),
                };
                forward_scores_all_steps(ctx, seq, &embedded, 1)
            };
            match scores(&x).and_then(|fx| Ok((fx, scores(&base)?))) {
                Ok((fx, fb)) => Some((fx, fb)),
                Err(e) => return Some(Err(e)),
            }
        } else {
            None
        };
        let steps = attributions.into_iter().enumerate().map(|(s, attr)| {
            let deltas = match &deltas {
                Some((fx, fb)) => {
                    let sums = attr
                        .clone()
                        .sum_dim(2)
                        .sum_dim(1)
                        .reshape([batch])
                        .try_to_vec_as::<f32>()
                        .map_err(|e| Error::Numerical(format!("{e:?}")))?;
                    Some(
                        (0..batch)
                            .map(|b| sums[b] - (fx[s][b] - fb[s][b]))
                            .collect(),
                    )
                }
                None => None,
            };
            Ok(StepAttribution {
                source: None,
                target: Some(attr),
                deltas,
                score_dims: None,
            })
        });
        Some(steps.collect())
    }
}

impl AttributionMethod for IntegratedGradients {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        "integrated_gradients"
    }

    fn step_batch_rows(&self) -> Option<usize> {
        Some(
            self.internal_batch_size
                .map_or(self.n_steps, |rows| rows.min(self.n_steps)),
        )
    }

    fn attribute_sequence(
        &self,
        ctx: &MethodContext,
        seq: &SequenceInput,
    ) -> Option<Result<Vec<StepAttribution>>> {
        self.attribute_shared(ctx, seq)
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let x = embed_step(ctx, step, false);
        let base = embed_step(ctx, step, true);
        let batch = step.prefix_ids.len();
        let interpolate_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
        let (alphas, weights) = self.method.points(self.n_steps)?;
        let per_chunk = self
            .internal_batch_size
            .map_or(alphas.len(), |ibs| (ibs / batch.max(1)).max(1));
        let mut acc_source: Option<Tensor<3>> = None;
        let mut acc_target: Option<Tensor<3>> = None;
        for (a, w) in alphas.chunks(per_chunk).zip(weights.chunks(per_chunk)) {
            let k = a.len();
            let embedded = Embedded {
                source: x
                    .source
                    .as_ref()
                    .zip(base.source.as_ref())
                    .map(|(xs, bs)| interpolate(xs, bs, a)),
                target: if interpolate_target {
                    interpolate(&x.target, &base.target, a)
                } else {
                    x.target.clone().repeat_dim(0, k)
                },
            };
            let (gs, gt, _) = gradients(ctx, step, embedded, k)?;
            if let Some(g) = gs {
                accumulate(&mut acc_source, weighted_sum(g, w, batch));
            }
            if let Some(g) = gt {
                accumulate(&mut acc_target, weighted_sum(g, w, batch));
            }
        }
        let scale =
            |acc: Option<Tensor<3>>, input: Option<&Tensor<3>>, baseline: Option<&Tensor<3>>| {
                acc.map(|g| match (self.multiply_by_inputs, input, baseline) {
                    (true, Some(i), Some(b)) => g * (i.clone() - b.clone()),
                    _ => g,
                })
            };
        let source = scale(acc_source, x.source.as_ref(), base.source.as_ref());
        let target = scale(acc_target, Some(&x.target), Some(&base.target));
        let deltas = if self.return_convergence_delta {
            let fx = forward_scores(ctx, step, &x, 1)?;
            let baseline_inputs = Embedded {
                source: base.source.clone(),
                target: if interpolate_target {
                    base.target.clone()
                } else {
                    x.target.clone()
                },
            };
            let fb = forward_scores(ctx, step, &baseline_inputs, 1)?;
            let total = |t: &Option<Tensor<3>>| {
                t.as_ref()
                    .map(|t| t.clone().sum_dim(2).sum_dim(1).reshape([batch]))
            };
            let sum_attr = match (total(&source), total(&target)) {
                (Some(s), Some(t)) => s + t,
                (Some(s), None) => s,
                (None, Some(t)) => t,
                (None, None) => return Err(Error::Numerical("nothing attributed".into())),
            };
            let delta = sum_attr - (fx - fb);
            Some(
                delta
                    .try_to_vec_as::<f32>()
                    .map_err(|e| Error::Numerical(format!("{e:?}")))?,
            )
        } else {
            None
        };
        Ok(StepAttribution {
            source,
            target,
            deltas,
            score_dims: None,
        })
    }
}
