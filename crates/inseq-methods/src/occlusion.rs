//! Occlusion (Zeiler & Fergus, 2014): the change in the attributed function
//! when a window of input tokens is replaced by the baseline.

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::ModelKind;

use crate::{
    AttributionMethod, Embedded, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step,
    forward_scores,
};

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

    /// Occludes the source (`source = true`) or the target prefix; returns `[batch, len, 1]`.
    fn occlude(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        x: &Embedded,
        base: &Embedded,
        source: bool,
        f0: &[f32],
    ) -> Result<Tensor<3>> {
        let batch = step.prefix_ids.len();
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
        let [_, len, _] = input.dims();
        let device = input.device();
        let starts = self.windows(len);
        let per_chunk = (self.internal_batch_size / batch.max(1)).max(1);
        let mut acc = vec![0f32; batch * len];
        let mut count = vec![0f32; len];
        for &s in &starts {
            for c in count.iter_mut().skip(s).take(self.sliding_window) {
                *c += 1.0;
            }
        }
        for chunk in starts.chunks(per_chunk) {
            let n = chunk.len();
            // mask[w * batch + b, p] = 1 where window w covers position p.
            let mut mask = vec![0f32; n * batch * len];
            for (w, &s) in chunk.iter().enumerate() {
                for b in 0..batch {
                    let row = (w * batch + b) * len;
                    mask[row + s..row + s + self.sliding_window].fill(1.0);
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
            let scores = to_vec(forward_scores(ctx, step, &emb, n)?)?;
            for (w, &s) in chunk.iter().enumerate() {
                for b in 0..batch {
                    let diff = f0[b] - scores[w * batch + b];
                    for p in s..s + self.sliding_window {
                        acc[b * len + p] += diff;
                    }
                }
            }
        }
        let out: Vec<f32> = acc
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let c = count[i % len];
                if c > 0.0 { (a / c).abs() } else { 0.0 }
            })
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(out, [batch, len, 1]),
            &device,
        ))
    }
}

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
        let f0 = to_vec(forward_scores(ctx, step, &x, 1)?)?;
        let source = if x.source.is_some() {
            Some(self.occlude(ctx, step, &x, &base, true, &f0)?)
        } else {
            None
        };
        let attribute_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
        let target = if attribute_target {
            Some(self.occlude(ctx, step, &x, &base, false, &f0)?)
        } else {
            None
        };
        Ok(StepAttribution {
            source,
            target,
            deltas: None,
            score_dims: Some(vec![]),
        })
    }
}
