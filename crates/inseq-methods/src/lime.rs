//! LIME (Ribeiro et al., 2016, <https://arxiv.org/abs/1602.04938>) for text, in
//! the spirit of Inseq's `lime` (token masking + a ridge surrogate).

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::ModelKind;

use crate::gradient_shap::SplitMix64;
use crate::occlusion::to_vec;
use crate::{
    AttributionMethod, Embedded, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step,
    forward_scores,
};

/// The most perturbed samples `lime` takes (they run in chunks of `internal_batch_size`; the
/// masks and outputs of all of them are kept for the final regression).
pub const MAX_SAMPLES: usize = 100_000;

/// LIME with token masking, as Inseq's `lime` describes it: each of `n_samples`
/// perturbations (default 50) replaces every real input token, independently
/// with probability `mask_prob` (default 0.3), by the baseline token's
/// embedding (`unk`; end-of-sequence tokens keep their own, as in every
/// baseline here). A weighted ridge regression (scikit-learn's `Ridge`, Inseq's
/// default surrogate: `alpha=1`, with intercept) is fitted from the binary
/// "token kept" vectors to the attributed function; each sample is weighted by
/// Inseq's similarity kernel, the number of unchanged tokens. A token's score is
/// its ridge coefficient.
///
/// Deviations from Python Inseq 0.7.1, whose `lime` mixes token ids into
/// embeddings and regresses on every embedding dimension: the surrogate here
/// works on one binary feature per token, so scores are one per token
/// ([`StepAttribution::score_dims`] `Some(vec![])`); source and target prefix
/// (with `attribute_target`) are perturbed jointly, which Inseq does not
/// support; and draws come from a SplitMix64 generator seeded with `seed`
/// (default 42), so the same seed gives the same output.
#[derive(Debug, Clone)]
pub struct Lime {
    /// Perturbed samples per batch row (default 50).
    pub n_samples: usize,
    /// Probability that a token is masked in a sample (default 0.3).
    pub mask_prob: f64,
    /// Ridge penalty of the surrogate (default 1.0).
    pub alpha: f64,
    /// Seed of the perturbations (default 42).
    pub seed: u64,
    /// Most perturbed rows per forward pass (default 256).
    pub internal_batch_size: usize,
}

impl Default for Lime {
    fn default() -> Self {
        Self {
            n_samples: 50,
            mask_prob: 0.3,
            alpha: 1.0,
            seed: 42,
            internal_batch_size: 256,
        }
    }
}

impl Lime {
    /// Builds from arguments (`n_samples`, `mask_prob`, `alpha`, `seed`, `internal_batch_size`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let d = Self::default();
        let l = Self {
            n_samples: args.take_size("n_samples", d.n_samples, MAX_SAMPLES)?,
            mask_prob: args.take("mask_prob", d.mask_prob)?,
            alpha: args.take("alpha", d.alpha)?,
            seed: args.take("seed", d.seed)?,
            internal_batch_size: args.take("internal_batch_size", d.internal_batch_size)?,
        };
        args.finish("lime")?;
        if l.internal_batch_size == 0 {
            return Err(Error::invalid_arg(
                "internal_batch_size",
                "must be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&l.mask_prob) {
            return Err(Error::invalid_arg("mask_prob", "must be in [0, 1]"));
        }
        if !l.alpha.is_finite() || l.alpha < 0.0 {
            return Err(Error::invalid_arg("alpha", "must be finite and >= 0"));
        }
        Ok(l)
    }
}

/// `[rows, len, 1]` keep-mask tensor (1 = original token).
fn mask_tensor(keep: &[Vec<f32>], len: usize, device: &burn::tensor::Device) -> Tensor<3> {
    let flat: Vec<f32> = keep.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [keep.len(), len, 1]), device)
}

/// Mixes `n` copies of `x` and `base` by `[n * batch, len, 1]` keep masks.
fn mix(x: &Tensor<3>, base: &Tensor<3>, keep: Tensor<3>, n: usize) -> Tensor<3> {
    x.clone().repeat_dim(0, n) * keep.clone() + base.clone().repeat_dim(0, n) * (keep.neg() + 1.0)
}

/// Weighted ridge regression with an unpenalised intercept (scikit-learn's
/// `Ridge(alpha).fit(x, y, sample_weight=w)`); returns the coefficients.
pub(crate) fn weighted_ridge(x: &[Vec<f64>], y: &[f64], w: &[f64], alpha: f64) -> Vec<f64> {
    let m = x.first().map_or(0, Vec::len);
    let wsum: f64 = w.iter().sum();
    if m == 0 || wsum <= 0.0 {
        return vec![0.0; m];
    }
    let xm: Vec<f64> = (0..m)
        .map(|j| x.iter().zip(w).map(|(r, wi)| r[j] * wi).sum::<f64>() / wsum)
        .collect();
    let ym = y.iter().zip(w).map(|(v, wi)| v * wi).sum::<f64>() / wsum;
    // Normal equations (Xc^T W Xc + alpha I) b = Xc^T W yc.
    let mut a = vec![vec![0.0; m + 1]; m];
    for ((row, &yi), &wi) in x.iter().zip(y).zip(w) {
        for j in 0..m {
            let xj = row[j] - xm[j];
            for k in 0..m {
                a[j][k] += wi * xj * (row[k] - xm[k]);
            }
            a[j][m] += wi * xj * (yi - ym);
        }
    }
    for (j, r) in a.iter_mut().enumerate() {
        // A tiny jitter keeps constant (never masked) features solvable when alpha = 0.
        r[j] += alpha + 1e-12;
    }
    solve(a)
}

/// Solves an augmented `[m, m + 1]` system by Gauss–Jordan elimination with
/// partial pivoting; singular directions get 0.
fn solve(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let m = a.len();
    for c in 0..m {
        let p = (c..m)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap_or(c);
        a.swap(c, p);
        let piv = a[c][c];
        if piv.abs() < 1e-300 {
            continue;
        }
        let pivot_row = a[c].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / piv;
                if f != 0.0 {
                    for (x, p) in row.iter_mut().zip(&pivot_row).skip(c) {
                        *x -= f * p;
                    }
                }
            }
        }
    }
    (0..m)
        .map(|i| {
            if a[i][i].abs() < 1e-300 {
                0.0
            } else {
                a[i][m] / a[i][i]
            }
        })
        .collect()
}

/// Token masks, `[row][position]` (true = a real token).
type Masks = Vec<Vec<bool>>;

/// The source and target masks of the positions `lime` attributes: the source
/// whenever there is one, the target prefix when `attribute_target`.
fn attributed_masks<'a>(
    x: &Embedded,
    step: &'a StepInput,
    attribute_target: bool,
) -> Result<(Option<&'a Masks>, Option<&'a Masks>)> {
    let source_mask = match (&x.source, &step.source_mask) {
        (Some(_), Some(m)) => Some(m),
        (Some(_), None) => {
            return Err(Error::InvalidInput("lime: the source has no mask".into()));
        }
        _ => None,
    };
    let target_mask = attribute_target.then_some(&step.prefix_mask);
    if source_mask.is_none() && target_mask.is_none() {
        return Err(Error::InvalidInput("lime: nothing to attribute".into()));
    }
    Ok((source_mask, target_mask))
}

/// `(is_src, j)` for each real token `j` of row `r` of `mask` (none without a mask).
fn real_positions(
    mask: Option<&Masks>,
    r: usize,
    is_src: bool,
) -> impl Iterator<Item = (bool, usize)> + '_ {
    mask.into_iter().flat_map(move |m| {
        m[r].iter()
            .enumerate()
            .filter(|e| *e.1)
            .map(move |(j, _)| (is_src, j))
    })
}

/// The binary features of the surrogate: the real tokens of each batch row.
struct Features {
    /// Per row, the attributed positions: (is_source, position).
    rows: Vec<Vec<(bool, usize)>>,
    /// Whether source tokens are perturbed.
    attribute_source: bool,
    /// Whether target-prefix tokens are perturbed.
    attribute_target: bool,
    /// Padded source length (0 without source attribution).
    src_len: usize,
    /// Padded target-prefix length.
    tgt_len: usize,
}

impl Features {
    fn new(source_mask: Option<&Masks>, target_mask: Option<&Masks>, step: &StepInput) -> Self {
        let rows = (0..step.prefix_ids.len())
            .map(|r| {
                real_positions(source_mask, r, true)
                    .chain(real_positions(target_mask, r, false))
                    .collect()
            })
            .collect();
        Self {
            rows,
            attribute_source: source_mask.is_some(),
            attribute_target: target_mask.is_some(),
            src_len: source_mask.and_then(|m| m.first()).map_or(0, Vec::len),
            tgt_len: step.prefix_mask.first().map_or(0, Vec::len),
        }
    }

    /// `[n * batch][len]` source and target keep masks (1 = original token) of
    /// a chunk of `n` samples; positions that are not features are kept.
    fn keep_masks(&self, chunk: &[Vec<Vec<bool>>]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let batch = self.rows.len();
        let mut src_keep = vec![vec![1f32; self.src_len]; chunk.len() * batch];
        let mut tgt_keep = vec![vec![1f32; self.tgt_len]; chunk.len() * batch];
        for (s, sample) in chunk.iter().enumerate() {
            for (r, keep) in sample.iter().enumerate() {
                for (&(is_src, j), &k) in self.rows[r].iter().zip(keep) {
                    let row = if is_src { &mut src_keep } else { &mut tgt_keep };
                    row[s * batch + r][j] = if k { 1.0 } else { 0.0 };
                }
            }
        }
        (src_keep, tgt_keep)
    }
}

/// The embeddings of a chunk of samples: masked tokens take the baseline's
/// embedding; unattributed inputs are repeated unchanged.
fn perturbed_embeddings(
    x: &Embedded,
    base: &Embedded,
    features: &Features,
    chunk: &[Vec<Vec<bool>>],
) -> Embedded {
    let n = chunk.len();
    let device = x.target.device();
    let (src_keep, tgt_keep) = features.keep_masks(chunk);
    Embedded {
        source: x.source.as_ref().zip(base.source.as_ref()).map(|(xs, bs)| {
            if features.attribute_source {
                mix(xs, bs, mask_tensor(&src_keep, features.src_len, &device), n)
            } else {
                xs.clone().repeat_dim(0, n)
            }
        }),
        target: if features.attribute_target {
            mix(
                &x.target,
                &base.target,
                mask_tensor(&tgt_keep, features.tgt_len, &device),
                n,
            )
        } else {
            x.target.clone().repeat_dim(0, n)
        },
    }
}

impl Lime {
    /// `samples[s][r]`: the keep vector of sample `s` over row `r`'s features.
    fn draw_samples(&self, features: &Features) -> Vec<Vec<Vec<bool>>> {
        let mut rng = SplitMix64::new(self.seed);
        (0..self.n_samples)
            .map(|_| {
                features
                    .rows
                    .iter()
                    .map(|f| f.iter().map(|_| rng.uniform() >= self.mask_prob).collect())
                    .collect()
            })
            .collect()
    }

    /// Fits the surrogate of every row; returns the `[batch * src_len]` and
    /// `[batch * tgt_len]` scores (the ridge coefficients, 0 off features).
    fn fit_scores(
        &self,
        features: &Features,
        samples: &[Vec<Vec<bool>>],
        outputs: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (batch, src_len, tgt_len) = (features.rows.len(), features.src_len, features.tgt_len);
        let mut src_out = vec![0f32; batch * src_len];
        let mut tgt_out = vec![0f32; batch * tgt_len];
        for (r, feats) in features.rows.iter().enumerate() {
            let xs: Vec<Vec<f64>> = samples
                .iter()
                .map(|s| s[r].iter().map(|&k| if k { 1.0 } else { 0.0 }).collect())
                .collect();
            let ys: Vec<f64> = (0..self.n_samples)
                .map(|s| f64::from(outputs[s * batch + r]))
                .collect();
            let ws: Vec<f64> = xs.iter().map(|v| v.iter().sum::<f64>()).collect();
            let coef = weighted_ridge(&xs, &ys, &ws, self.alpha);
            for (&(is_src, j), c) in feats.iter().zip(coef) {
                if is_src {
                    src_out[r * src_len + j] = c as f32;
                } else {
                    tgt_out[r * tgt_len + j] = c as f32;
                }
            }
        }
        (src_out, tgt_out)
    }
}

impl AttributionMethod for Lime {
    fn id(&self) -> &str {
        "lime"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let x = embed_step(ctx, step, false);
        let base = embed_step(ctx, step, true);
        let batch = step.prefix_ids.len();
        let attribute_target = ctx.attribute_target || ctx.model.kind() == ModelKind::DecoderOnly;
        let (source_mask, target_mask) = attributed_masks(&x, step, attribute_target)?;
        let features = Features::new(source_mask, target_mask, step);
        let samples = self.draw_samples(&features);
        let per_chunk = (self.internal_batch_size / batch.max(1)).max(1);
        let mut outputs: Vec<f32> = Vec::with_capacity(self.n_samples * batch);
        for chunk in samples.chunks(per_chunk) {
            let emb = perturbed_embeddings(&x, &base, &features, chunk);
            outputs.extend(to_vec(forward_scores(ctx, step, &emb, chunk.len())?)?);
        }
        let (src_out, tgt_out) = self.fit_scores(&features, &samples, &outputs);
        let device = x.target.device();
        let to_t = |v: Vec<f32>, len: usize| {
            Tensor::<3>::from_data(TensorData::new(v, [batch, len, 1]), &device)
        };
        Ok(StepAttribution {
            source: features
                .attribute_source
                .then(|| to_t(src_out, features.src_len)),
            target: features
                .attribute_target
                .then(|| to_t(tgt_out, features.tgt_len)),
            deltas: None,
            score_dims: Some(vec![]),
        })
    }
}
