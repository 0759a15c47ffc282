//! Each step function against values computed by hand on a small distribution.

use burn::tensor::{Device, Tensor};
use inseq_fixtures::tolerance::{f32_sum, gamma};
use inseq_steps::{ContrastOutput, StepArgs, StepContext, StepRegistry};

fn logits(rows: &[[f32; 4]]) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::<1>::from_floats(flat.as_slice(), &Device::default()).reshape([rows.len(), 4])
}

fn softmax(row: &[f32; 4]) -> [f64; 4] {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    [e[0] / s, e[1] / s, e[2] / s, e[3] / s]
}

fn run(id: &str, ctx: &StepContext, args: &str) -> Vec<f32> {
    StepRegistry::with_defaults()
        .get(id)
        .unwrap()
        .compute(ctx, &StepArgs::parse(args).unwrap())
        .unwrap()
        .try_to_vec_as::<f32>()
        .unwrap()
}

/// The f32 rounding of every step score here, against its f64 reference: a chain of at most 16
/// roundings (max, subtraction, exp, a sum of 4, ln, products, a sum of 4, kernels' exp/ln a
/// few ulps) of terms no larger than 8 (|log₂ p| <= 5 for these logits |x| <= 3 over 4 tokens).
fn step_tolerance() -> f64 {
    f32_sum(8.0, 16)
}

fn close(a: f32, b: f64, what: &str) {
    let tol = step_tolerance();
    assert!((a as f64 - b).abs() <= tol, "{what}: got {a}, expected {b}");
}

const A: [f32; 4] = [1.0, 2.0, 0.5, -1.0];
const B: [f32; 4] = [0.0, 0.0, 3.0, 1.0];

fn ctx() -> StepContext {
    StepContext {
        logits: logits(&[A, B]),
        target_ids: vec![1, 2],
        contrast: Some(ContrastOutput {
            logits: logits(&[B, A]),
            target_ids: vec![0, 2],
        }),
        dropout_logits: vec![],
    }
}

#[test]
fn logit_probability_logprob() {
    let c = ctx();
    let (pa, pb) = (softmax(&A), softmax(&B));
    let l = run("logit", &c, "");
    close(l[0], 2.0, "logit");
    close(l[1], 3.0, "logit");
    let p = run("probability", &c, "");
    close(p[0], pa[1], "probability");
    close(p[1], pb[2], "probability");
    let lp = run("probability", &c, "logprob=true");
    close(lp[0], pa[1].ln(), "logprob");
}

#[test]
fn entropy_crossentropy_perplexity() {
    let c = ctx();
    let pa = softmax(&A);
    let h: f64 = -pa.iter().map(|p| p * p.ln()).sum::<f64>();
    close(run("entropy", &c, "")[0], h, "entropy");
    let ce = -pa[1].ln();
    close(run("crossentropy", &c, "")[0], ce, "crossentropy");
    // batch size 1 works too (Python Inseq 0.7.1 fails there)
    let single = StepContext::new(logits(&[A]), vec![1]);
    close(
        run("crossentropy", &single, "")[0],
        ce,
        "crossentropy, batch 1",
    );
    let ppl = run("perplexity", &single, "")[0];
    // exp turns the cross-entropy's absolute error into a relative one, plus its own rounding.
    let tol = ce.exp() * (step_tolerance() + gamma(2));
    assert!(
        (ppl as f64 - ce.exp()).abs() <= tol,
        "perplexity {ppl} vs {}",
        ce.exp()
    );
}

#[test]
fn top_p_size_counts_the_nucleus() {
    // probabilities of A sorted: 0.61, 0.22, 0.14, 0.03 (approx.)
    let c = StepContext::new(logits(&[A]), vec![0]);
    let pa = softmax(&A);
    let mut sorted = pa.to_vec();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let expected = |top_p: f64| {
        let mut cum = 0.0;
        let mut n = 0;
        for p in &sorted {
            n += 1;
            cum += p;
            if cum >= top_p {
                break;
            }
        }
        n as f32
    };
    for top_p in [0.5, 0.7, 0.9, 0.99] {
        let got = run("top_p_size", &c, &format!("top_p={top_p}"))[0];
        assert_eq!(got, expected(top_p), "top_p={top_p}");
    }
    // default top_p (0.9) instead of Inseq's failure
    assert_eq!(run("top_p_size", &c, "")[0], expected(0.9));
    let bad = StepRegistry::with_defaults()
        .get("top_p_size")
        .unwrap()
        .compute(&c, &StepArgs::parse("top_p=-0.1").unwrap());
    assert!(bad.unwrap_err().to_string().contains("top_p"));
}

#[test]
fn contrastive_functions() {
    let c = ctx();
    let (pa, pb) = (softmax(&A), softmax(&B));
    // row 0: target 1 under A; contrast target 0 under B
    close(
        run("contrast_logits", &c, "")[0],
        B[0] as f64,
        "contrast_logits",
    );
    close(run("contrast_prob", &c, "")[0], pb[0], "contrast_prob");
    close(
        run("contrast_prob_diff", &c, "")[0],
        pa[1] - pb[0],
        "contrast_prob_diff",
    );
    close(
        run("contrast_logits_diff", &c, "")[0],
        (A[1] - B[0]) as f64,
        "contrast_logits_diff",
    );
    close(run("pcxmi", &c, "")[0], -(pa[1] / pb[0]).log2(), "pcxmi");
    close(
        run("in_context_pvi", &c, "")[0],
        -pa[1].ln() + pb[0].ln(),
        "in_context_pvi",
    );
    let kl: f64 = (0..4).map(|i| pa[i] * (pa[i].ln() - pb[i].ln())).sum();
    close(run("kl_divergence", &c, "")[0], kl, "kl_divergence");
}

#[test]
fn kl_divergence_with_top_k_and_top_p_is_finite() {
    let c = ctx();
    for args in ["top_k=2", "top_p=0.5", "top_k=1,top_p=0.9"] {
        let v = run("kl_divergence", &c, args);
        assert!(
            // KL >= 0, up to its rounding.
            v.iter()
                .all(|x| x.is_finite() && f64::from(*x) >= -step_tolerance()),
            "{args}: {v:?}"
        );
    }
    // top_k=2 on merged logits A+B = [1, 2, 3.5, 0] keeps tokens 2 and 1
    let keep = [1usize, 2];
    let renorm = |row: &[f32; 4]| {
        let m: Vec<f64> = keep.iter().map(|&i| (row[i] as f64).exp()).collect();
        let s: f64 = m.iter().sum();
        m.iter().map(|v| v / s).collect::<Vec<_>>()
    };
    let (p, q) = (renorm(&A), renorm(&B));
    let kl: f64 = p.iter().zip(&q).map(|(p, q)| p * (p.ln() - q.ln())).sum();
    close(run("kl_divergence", &c, "top_k=2")[0], kl, "kl top_k=2");
}

#[test]
fn contrastive_functions_need_contrast() {
    let c = StepContext::new(logits(&[A]), vec![0]);
    let err = StepRegistry::with_defaults()
        .get("contrast_prob_diff")
        .unwrap()
        .compute(&c, &StepArgs::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("contrastive"), "{err}");
    let err = StepRegistry::with_defaults()
        .get("nope")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown step function `nope`"), "{err}");
}

#[test]
fn mc_dropout_prob_avg_standardises_against_the_samples() {
    let mut c = StepContext::new(logits(&[A]), vec![1]);
    let samples = [B, [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]];
    c.dropout_logits = samples.iter().map(|s| logits(&[*s])).collect();
    let p0 = softmax(&A)[1];
    let ps: Vec<f64> = samples.iter().map(|s| softmax(s)[1]).collect();
    let mean = ps.iter().sum::<f64>() / 3.0;
    let std = (ps.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    close(
        run("mc_dropout_prob_avg", &c, "")[0],
        (p0 - mean) / std,
        "mc_dropout_prob_avg",
    );
    let f = StepRegistry::with_defaults()
        .get("mc_dropout_prob_avg")
        .unwrap();
    assert_eq!(
        f.dropout_samples(&StepArgs::parse("n_mcd_steps=7").unwrap()),
        7
    );
    let err = f
        .compute(
            &StepContext::new(logits(&[A]), vec![1]),
            &StepArgs::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("step score"), "{err}");
}
