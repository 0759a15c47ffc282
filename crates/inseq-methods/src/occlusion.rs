//! Occlusion (Zeiler & Fergus, 2014): the change in the attributed function
//! when a window of input tokens is replaced by the baseline.

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::ModelKind;

use crate::{
    AttributionMethod, Embedded, MethodArgs, MethodContext, SequenceInput, StepAttribution,
    StepInput, embed_step, forward_scores, forward_scores_all_steps,
};

/// Runs the model on `n` stacked perturbed copies of a batch and returns the attributed
/// function of every step, `[steps][n * batch]`.
type StepScorer<'a> = dyn Fn(&Embedded, usize) -> Result<Vec<Vec<f32>>> + 'a;

/// Occlusion as Inseq runs Captum's `Occlusion`: sliding windows of
/// `sliding_window` tokens × the whole embedding (Inseq's default
/// `(1, hidden)`), moved by `stride` tokens, are replaced by the baseline
/// embeddings (the `unk` token; end-of-sequence tokens keep their own). A
/// token's score is `|f(x) - f(x with the window occluded)|`, averaged over the
/// windows that cover it (Captum's rule; tokens no window covers score 0).
/// Each input (source, target prefix) is occluded separately, the other kept intact.
///
/// Scores are one per token: [`StepAttribution::score_dims`] is `Some(vec![])`
/// and Inseq stores them as `[len, steps]` with no default aggregation.
#[derive(Debug, Clone)]
pub struct Occlusion {
    /// Window length in tokens (default 1).
    pub sliding_window: usize,
    /// Step between window starts in tokens (default 1).
    pub stride: usize,
    /// Most perturbed rows per forward pass (default 256).
    pub internal_batch_size: usize,
}

impl Default for Occlusion {
    fn default() -> Self {
        Self {
            sliding_window: 1,
            stride: 1,
            internal_batch_size: 256,
        }
    }
}

impl Occlusion {
    /// Builds from arguments (`sliding_window`, `stride`, `internal_batch_size`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let d = Self::default();
        let o = Self {
            sliding_window: args.take("sliding_window", d.sliding_window)?,
            stride: args.take("stride", d.stride)?,
            internal_batch_size: args.take("internal_batch_size", d.internal_batch_size)?,
        };
        args.finish("occlusion")?;
        for (name, v) in [
            ("sliding_window", o.sliding_window),
            ("stride", o.stride),
            ("internal_batch_size", o.internal_batch_size),
        ] {
            if v == 0 {
                return Err(Error::invalid_arg(name, "must be at least 1"));
            }
        }
        Ok(o)
    }

    /// Window start positions over a sequence of `len` tokens.
    fn windows(&self, len: usize) -> Vec<usize> {
        if len < self.sliding_window {
            return vec![];
        }
        (0..=len - self.sliding_window)
            .step_by(self.stride)
            .collect()
    }

    /// Occludes the source (`source = true`) or the target prefix of `x` and returns, per step,
    /// `[batch, limits[s], 1]` scores. `score` runs the model on `n` stacked perturbed copies
    /// and gives the attributed function of every step, `[steps][n * batch]`; `f0` is its value
    /// on `x`. Step `s` sees only windows inside its first `limits[s]` positions (its prefix).
    #[allow(clippy::too_many_arguments)]
    fn occlude(
        &self,
        x: &Embedded,
        base: &Embedded,
        source: bool,
        limits: &[usize],
        f0: &[Vec<f32>],
        max_copies: usize,
        score: &StepScorer,
    ) -> Result<Vec<Tensor<3>>> {
        let (input, baseline) = if source {
            match (&x.source, &base.source) {
                (Some(i), Some(b)) => (i, b),
                _ => {
                    return Err(Error::InvalidInput(
                        "occlusion: the step has no source".into(),
                    ));
                }
            }
        } else {
            (&x.target, &base.target)
        };
        let [batch, len, _] = input.dims();
        let device = input.device();
        let starts = self.windows(len);
        let steps = limits.len();
        let inside = |s: usize, start: usize| start + self.sliding_window <= limits[s];
        let per_chunk = (self.internal_batch_size / batch.max(1)).clamp(1, max_copies.max(1));
        let mut acc = vec![vec![0f32; batch * len]; steps];
        let mut count = vec![vec![0f32; len]; steps];
        for (s, c) in count.iter_mut().enumerate() {
            for &start in starts.iter().filter(|&&start| inside(s, start)) {
                for v in c.iter_mut().skip(start).take(self.sliding_window) {
                    *v += 1.0;
                }
            }
        }
        for chunk in starts.chunks(per_chunk) {
            let n = chunk.len();
            // mask[w * batch + b, p] = 1 where window w covers position p.
            let mut mask = vec![0f32; n * batch * len];
            for (w, &start) in chunk.iter().enumerate() {
                for b in 0..batch {
                    let row = (w * batch + b) * len;
                    mask[row + start..row + start + self.sliding_window].fill(1.0);
                }
            }
            let m = Tensor::<3>::from_data(TensorData::new(mask, [n * batch, len, 1]), &device);
            let occluded = input.clone().repeat_dim(0, n) * (m.clone().neg() + 1.0)
                + baseline.clone().repeat_dim(0, n) * m;
            let emb = if source {
                Embedded {
                    source: Some(occluded),
                    target: x.target.clone().repeat_dim(0, n),
                }
            } else {
                Embedded {
                    source: x.source.clone().map(|s| s.repeat_dim(0, n)),
                    target: occluded,
                }
            };
            let scores = score(&emb, n)?;
            for s in 0..steps {
                for (w, &start) in chunk.iter().enumerate() {
                    if !inside(s, start) {
                        continue;
                    }
                    for b in 0..batch {
                        let diff = f0[s][b] - scores[s][w * batch + b];
                        for p in start..start + self.sliding_window {
                            acc[s][b * len + p] += diff;
                        }
                    }
                }
            }
        }
        Ok((0..steps)
            .map(|s| {
                let limit = limits[s];
                let out: Vec<f32> = (0..batch * limit)
                    .map(|i| {
                        let (b, p) = (i / limit, i % limit);
                        let c = count[s][p];
                        if c > 0.0 {
                            (acc[s][b * len + p] / c).abs()
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Tensor::from_data(TensorData::new(out, [batch, limit, 1]), &device)
            })
            .collect())
    }

    /// Occlusion of the source and/or target of `x` for every step (see [`Occlusion::occlude`]).
    #[allow(clippy::too_many_arguments)]
    fn attribute_all(
        &self,
        ctx: &MethodContext,
        x: &Embedded,
        base: &Embedded,
        target_limits: &[usize],
        f0: &[Vec<f32>],
        max_copies: usize,
        score: &StepScorer,
    ) -> Result<Vec<StepAttribution>> {
        let steps = target_limits.len();
        let mut sources: Vec<Option<Tensor<3>>> = vec![None; steps];
        if let Some(src) = &x.source {
            let limits = vec![src.dims()[1]; steps];
            let per_step = self.occlude(x, base, true, &limits, f0, max_copies, score)?;
            for (slot, t) in sources.iter_mut().zip(per_step) {
                *slot = Some(t);
            }
        }
        let attribute_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
        let mut targets: Vec<Option<Tensor<3>>> = vec![None; steps];
        if attribute_target {
            let per_step = self.occlude(x, base, false, target_limits, f0, max_copies, score)?;
            for (slot, t) in targets.iter_mut().zip(per_step) {
                *slot = Some(t);
            }
        }
        Ok(sources
            .into_iter()
            .zip(targets)
            .map(|(source, target)| StepAttribution {
                source,
                target,
                deltas: None,
                score_dims: Some(vec![]),
            })
            .collect())
    }
}

/// Most logits (floats) one occlusion forward pass over a whole sequence may hold.
const SEQUENCE_LOGIT_BUDGET: usize = 1 << 25;

/// Moves a 1-D tensor to the host.
pub(crate) fn to_vec(t: Tensor<1>) -> Result<Vec<f32>> {
    t.try_to_vec_as::<f32>()
        .map_err(|e| Error::Numerical(format!("{e:?}")))
}

impl AttributionMethod for Occlusion {
    fn id(&self) -> &str {
        "occlusion"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let x = embed_step(ctx, step, false);
        let base = embed_step(ctx, step, true);
        let score =
            |emb: &Embedded, n: usize| Ok(vec![to_vec(forward_scores(ctx, step, emb, n)?)?]);
        let f0 = score(&x, 1)?;
        let len = x.target.dims()[1];
        let mut out = self.attribute_all(ctx, &x, &base, &[len], &f0, usize::MAX, &score)?;
        out.pop()
            .ok_or_else(|| Error::Numerical("occlusion produced no step".into()))
    }

    /// One forward pass per occluded window over the whole sequence gives the attributed
    /// function of every step whose prefix holds the window (causal models), instead of one
    /// forward pass per window and step.
    fn attribute_sequence(
        &self,
        ctx: &MethodContext,
        seq: &SequenceInput,
    ) -> Option<Result<Vec<StepAttribution>>> {
        let full = seq.full();
        let x = embed_step(ctx, &full, false);
        let base = embed_step(ctx, &full, true);
        let score = |emb: &Embedded, n: usize| forward_scores_all_steps(ctx, seq, emb, n);
        let limits: Vec<usize> = (0..seq.steps).map(|s| seq.prefix_width(s)).collect();
        let logits_per_copy = seq.batch() * seq.steps * ctx.model.info().vocab_size;
        let max_copies = SEQUENCE_LOGIT_BUDGET / logits_per_copy.max(1);
        Some(
            score(&x, 1).and_then(|f0| {
                self.attribute_all(ctx, &x, &base, &limits, &f0, max_copies, &score)
            }),
        )
    }
}
