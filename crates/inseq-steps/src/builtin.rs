//! The step functions of Python Inseq 0.7.1, under the same ids.

use burn::tensor::{Bool, Tensor, TensorData, activation};
use inseq_core::{Error, Result};

use crate::{StepArgs, StepContext, StepFunction, gather_ids};

/// Masking value for filtered logits: finite, so filtered tokens get zero
/// probability without producing NaN in log-space differences.
const FILTERED: f32 = -1.0e9;

fn host_rows(t: &Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [_, v] = t.dims();
    let data = t
        .try_to_vec_as::<f32>()
        .map_err(|e| Error::Numerical(format!("{e:?}")))?;
    Ok(data.chunks(v.max(1)).map(<[f32]>::to_vec).collect())
}

/// HF/Inseq top-p mask for one row: `true` = removed. Tokens are sorted by
/// ascending logit; those whose cumulative probability is `<= 1 - top_p` are
/// removed, keeping at least `min_keep`.
pub(crate) fn top_p_remove(row: &[f32], top_p: f64, min_keep: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = order
        .iter()
        .map(|&i| ((row[i] - max) as f64).exp())
        .collect();
    let total: f64 = exps.iter().sum();
    let mut remove = vec![false; row.len()];
    let mut cum = 0.0;
    let n = row.len();
    for (rank, (&i, e)) in order.iter().zip(&exps).enumerate() {
        cum += e / total;
        if cum <= 1.0 - top_p && rank < n.saturating_sub(min_keep) {
            remove[i] = true;
        }
    }
    remove
}

/// HF/Inseq top-k mask for one row: `true` = removed (logit below the k-th largest).
pub(crate) fn top_k_remove(row: &[f32], top_k: usize, min_keep: usize) -> Vec<bool> {
    let k = top_k.max(min_keep).min(row.len()).max(1);
    let mut sorted = row.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    row.iter().map(|&v| v < kth).collect()
}

fn check_top_p(top_p: f64) -> Result<()> {
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(Error::invalid_arg(
            "top_p",
            format!("must be in (0, 1], got {top_p}"),
        ));
    }
    Ok(())
}

macro_rules! step_fn {
    (
        $name:ident,
        $id:literal,
        $desc:literal,
        contrastive: $contrastive:literal,
        span_aggregation: $span:literal,
        |$ctx:ident, $args:ident| $body:expr
    ) => {
        #[doc = $desc]
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl StepFunction for $name {
            fn id(&self) -> &str {
                $id
            }
            fn description(&self) -> &str {
                $desc
            }
            fn compute(&self, $ctx: &StepContext, $args: &StepArgs) -> Result<Tensor<1>> {
                $body
            }
            fn is_contrastive(&self) -> bool {
                $contrastive
            }
            fn span_aggregation(&self) -> &str {
                $span
            }
        }
    };
}

fn probability(logits: Tensor<2>, ids: &[usize], logprob: bool) -> Result<Tensor<1>> {
    let scores = if logprob {
        activation::log_softmax(logits, 1)
    } else {
        activation::softmax(logits, 1)
    };
    gather_ids(scores, ids)
}

fn crossentropy(ctx: &StepContext) -> Result<Tensor<1>> {
    Ok(gather_ids(
        activation::log_softmax(ctx.logits.clone(), 1),
        &ctx.target_ids,
    )?
    .neg())
}

step_fn!(
    Logit,
    "logit",
    "Logit of the target token.",
    contrastive: false,
    span_aggregation: "absmax",
    |ctx, _args| gather_ids(ctx.logits.clone(), &ctx.target_ids)
);

step_fn!(
    Probability,
    "probability",
    "Probability of the target token (log-probability with `logprob=true`).",
    contrastive: false,
    span_aggregation: "prod",
    |ctx, args| probability(
        ctx.logits.clone(),
        &ctx.target_ids,
        args.bool_or("logprob", false)
    )
);

step_fn!(
    Entropy,
    "entropy",
    "Entropy (nats) of the output distribution.",
    contrastive: false,
    span_aggregation: "sum",
    |ctx, _args| {
        let logp = activation::log_softmax(ctx.logits.clone(), 1);
        let [b, _] = logp.dims();
        Ok((logp.clone().exp() * logp).sum_dim(1).reshape([b]).neg())
    }
);

step_fn!(
    CrossEntropy,
    "crossentropy",
    "Cross-entropy (nats) of the target token; works at any batch size (Inseq 0.7.1 fails at batch size 1).",
    contrastive: false,
    span_aggregation: "sum",
    |ctx, _args| crossentropy(ctx)
);

step_fn!(
    Perplexity,
    "perplexity",
    "Perplexity of the target token, exp(crossentropy). Inseq 0.7.1 computes 2**crossentropy with a natural-log cross-entropy, which is not a perplexity; this is the correct value.",
    contrastive: false,
    span_aggregation: "prod",
    |ctx, _args| Ok(crossentropy(ctx)?.exp())
);

step_fn!(
    TopPSize,
    "top_p_size",
    "Number of tokens in the nucleus of cumulative probability `top_p` (default 0.9 when not given; Inseq 0.7.1 fails without it).",
    contrastive: false,
    span_aggregation: "absmax",
    |ctx, args| {
        let top_p = args.f64_or("top_p", 0.9);
        check_top_p(top_p)?;
        let sizes: Vec<f32> = host_rows(&ctx.logits)?
            .iter()
            .map(|row| top_p_remove(row, top_p, 1).iter().filter(|r| !**r).count() as f32)
            .collect();
        let n = sizes.len();
        Ok(Tensor::from_data(
            TensorData::new(sizes, [n]),
            &ctx.logits.device(),
        ))
    }
);

step_fn!(
    ContrastLogits,
    "contrast_logits",
    "Logit of the contrastive target token given the contrastive input.",
    contrastive: true,
    span_aggregation: "absmax",
    |ctx, _args| {
        let c = ctx.contrast("contrast_logits")?;
        gather_ids(c.logits.clone(), &c.target_ids)
    }
);

step_fn!(
    ContrastProb,
    "contrast_prob",
    "Probability of the contrastive target token given the contrastive input (`logprob` supported).",
    contrastive: true,
    span_aggregation: "prod",
    |ctx, args| {
        let c = ctx.contrast("contrast_prob")?;
        probability(
            c.logits.clone(),
            &c.target_ids,
            args.bool_or("logprob", false),
        )
    }
);

step_fn!(
    ContrastProbDiff,
    "contrast_prob_diff",
    "Probability of the target minus probability of the contrastive target (Yin and Neubig, 2022).",
    contrastive: true,
    span_aggregation: "prod",
    |ctx, args| {
        let logprob = args.bool_or("logprob", false);
        let c = ctx.contrast("contrast_prob_diff")?;
        Ok(probability(ctx.logits.clone(), &ctx.target_ids, logprob)?
            - probability(c.logits.clone(), &c.target_ids, logprob)?)
    }
);

step_fn!(
    ContrastLogitsDiff,
    "contrast_logits_diff",
    "Logit of the target minus logit of the contrastive target (Yin and Neubig, 2022).",
    contrastive: true,
    span_aggregation: "absmax",
    |ctx, _args| {
        let c = ctx.contrast("contrast_logits_diff")?;
        Ok(gather_ids(ctx.logits.clone(), &ctx.target_ids)?
            - gather_ids(c.logits.clone(), &c.target_ids)?)
    }
);

step_fn!(
    Pcxmi,
    "pcxmi",
    "Pointwise contextual cross-mutual information: -log2(p(target) / p_contrast(target)).",
    contrastive: true,
    span_aggregation: "sum",
    |ctx, _args| {
        let c = ctx.contrast("pcxmi")?;
        let orig = probability(ctx.logits.clone(), &ctx.target_ids, true)?;
        let contrast = probability(c.logits.clone(), &c.target_ids, true)?;
        Ok((orig - contrast).neg() / std::f64::consts::LN_2)
    }
);

step_fn!(
    InContextPvi,
    "in_context_pvi",
    "In-context pointwise V-usable information: -log p(target) + log p_contrast(target).",
    contrastive: true,
    span_aggregation: "absmax",
    |ctx, _args| {
        let c = ctx.contrast("in_context_pvi")?;
        Ok(probability(c.logits.clone(), &c.target_ids, true)?
            - probability(ctx.logits.clone(), &ctx.target_ids, true)?)
    }
);

step_fn!(
    KlDivergence,
    "kl_divergence",
    "KL divergence KL(P || P_contrast) of the output distributions, optionally restricted by `top_k` / `top_p` (finite where Inseq 0.7.1 gives NaN).",
    contrastive: true,
    span_aggregation: "sum",
    |ctx, args| {
        let c = ctx.contrast("kl_divergence")?;
        let top_k = args.f64_or("top_k", 0.0);
        let top_p = args.f64_or("top_p", 1.0);
        let min_keep = args.f64_or("min_tokens_to_keep", 1.0).max(1.0) as usize;
        check_top_p(top_p)?;
        if top_k < 0.0 || top_k.fract() != 0.0 {
            return Err(Error::invalid_arg(
                "top_k",
                format!("must be a non-negative integer, got {top_k}"),
            ));
        }
        let (mut orig, mut contrast) = (ctx.logits.clone(), c.logits.clone());
        if top_p < 1.0 || top_k > 0.0 {
            let o_rows = host_rows(&orig)?;
            let c_rows = host_rows(&contrast)?;
            let mut removed = Vec::new();
            for (o, cr) in o_rows.iter().zip(&c_rows) {
                let merged: Vec<f32> = o.iter().zip(cr).map(|(a, b)| a + b).collect();
                let mut rm = vec![false; merged.len()];
                if top_p < 1.0 {
                    rm = top_p_remove(&merged, top_p, min_keep);
                }
                if top_k > 0.0 {
                    let masked: Vec<f32> = merged
                        .iter()
                        .zip(&rm)
                        .map(|(v, r)| if *r { f32::NEG_INFINITY } else { *v })
                        .collect();
                    let rk = top_k_remove(&masked, top_k as usize, min_keep);
                    rm.iter_mut().zip(rk).for_each(|(a, b)| *a |= b);
                }
                removed.extend(rm);
            }
            let dims = orig.dims();
            let mask = Tensor::<2, Bool>::from_data(TensorData::new(removed, dims), &orig.device());
            orig = orig.mask_fill(mask.clone(), FILTERED);
            contrast = contrast.mask_fill(mask, FILTERED);
        }
        let lo = activation::log_softmax(orig, 1);
        let lc = activation::log_softmax(contrast, 1);
        let [b, _] = lo.dims();
        Ok((lo.clone().exp() * (lo - lc)).sum_dim(1).reshape([b]))
    }
);

/// Monte Carlo dropout (Gal and Ghahramani, 2016) as Inseq's `mc_dropout_prob_avg`: the
/// probability of the target minus its mean over `n_mcd_steps` forward passes with dropout,
/// divided by their standard deviation. Arguments: `n_mcd_steps` (default 5), `logprob`,
/// `dropout` (probability used by the driver; default: the model's own, or 0.1 when the model
/// has none, where Inseq 0.7.1 would divide by a zero deviation) and `seed`.
/// Only available as a step score: the attributed function's forward pass has no dropout samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct McDropoutProbAvg;

impl StepFunction for McDropoutProbAvg {
    fn id(&self) -> &str {
        "mc_dropout_prob_avg"
    }

    fn description(&self) -> &str {
        "(p - mean of p under MC dropout) / their std, over `n_mcd_steps` (default 5) dropout samples."
    }

    fn span_aggregation(&self) -> &str {
        "prod"
    }

    fn dropout_samples(&self, args: &StepArgs) -> usize {
        args.f64_or("n_mcd_steps", 5.0).max(0.0) as usize
    }

    fn compute(&self, ctx: &StepContext, args: &StepArgs) -> Result<Tensor<1>> {
        let n = ctx.dropout_logits.len();
        if n < 2 {
            return Err(Error::invalid_arg(
                "mc_dropout_prob_avg",
                "needs at least 2 dropout samples (n_mcd_steps >= 2); it is available as a step score, not as the attributed function",
            ));
        }
        let logprob = args.bool_or("logprob", false);
        let orig = probability(ctx.logits.clone(), &ctx.target_ids, logprob)?;
        let noisy = ctx
            .dropout_logits
            .iter()
            .map(|l| probability(l.clone(), &ctx.target_ids, logprob))
            .collect::<Result<Vec<_>>>()?;
        let stacked = Tensor::stack::<2>(noisy, 0);
        let [_, b] = stacked.dims();
        let mean = stacked.clone().mean_dim(0);
        let var = (stacked - mean.clone()).square().sum_dim(0) / (n as f64 - 1.0);
        Ok((orig - mean.reshape([b])) / var.sqrt().reshape([b]))
    }
}
