//! Integrated Gradients completeness: attributions sum to f(x) - f(baseline)
//! up to an integration error that shrinks as n_steps grows.

mod common;

use inseq::{AttributeOptions, MethodArgs, load_model};
use inseq_fixtures::tolerance::{max_abs, model_pass};

fn max_abs_delta(n_steps: usize, model: &str) -> (f32, f32) {
    let device = burn::tensor::Device::default();
    let args =
        MethodArgs::parse(&format!("n_steps={n_steps},return_convergence_delta=true")).unwrap();
    let m = load_model(
        &common::model_dir(model),
        "integrated_gradients",
        args,
        &device,
    )
    .unwrap();
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen".into()]),
        step_scores: vec!["probability".into()],
        ..Default::default()
    };
    let out = m.attribute(&["Hello ladies and"], &opts).unwrap();
    let seq = &out.sequence_attributions[0];
    let deltas = &seq.step_scores["deltas"];
    let probs = &seq.step_scores["probability"];
    assert_eq!(deltas.len(), seq.n_steps());
    let worst = deltas.iter().fold(0f32, |m, d| m.max(d.abs()));
    let scale = probs.iter().fold(0f32, |m, p| m.max(p.abs()));
    (worst, scale)
}

#[test]
fn completeness_improves_with_more_steps() {
    for model in ["tiny-gpt2", "tiny-llama"] {
        let (coarse, scale) = max_abs_delta(2, model);
        let (fine, _) = max_abs_delta(64, model);
        println!("{model}: |delta| n=2 {coarse:.3e}, n=64 {fine:.3e}, f scale {scale:.3e}");
        // IG's quadrature error (not rounding) shrinks from 2 to 64 steps, far more than the
        // deltas' rounding (the model-pass rule on f); below 1 % of f at 64 steps.
        assert!(
            f64::from(fine) <= f64::from(coarse) + model_pass(scale.into()),
            "{model}: delta did not shrink ({coarse} -> {fine})"
        );
        assert!(
            fine < 1e-2 * scale.max(1e-6),
            "{model}: delta {fine} too large vs f = {scale}"
        );
    }
}

#[test]
fn batched_attribution_equals_one_by_one() {
    let device = burn::tensor::Device::default();
    let m = load_model(
        &common::model_dir("tiny-llama"),
        "saliency",
        MethodArgs::default(),
        &device,
    )
    .unwrap();
    let inputs = ["Hello ladies and", "The manager went home because"];
    let targets = [
        "Hello ladies and gentlemen, welcome",
        "The manager went home because he was sick",
    ];
    let opts = |t: Vec<&str>| AttributeOptions {
        targets: Some(t.into_iter().map(String::from).collect()),
        step_scores: vec!["probability".into()],
        ..Default::default()
    };
    let batched = m.attribute(&inputs, &opts(targets.to_vec())).unwrap();
    for i in 0..2 {
        let single = m
            .attribute(&inputs[i..=i], &opts(vec![targets[i]]))
            .unwrap();
        let (a, b) = (
            &batched.sequence_attributions[i],
            &single.sequence_attributions[0],
        );
        assert_eq!(a.target, b.target);
        let (ta, tb) = (
            a.target_attributions.as_ref().unwrap(),
            b.target_attributions.as_ref().unwrap(),
        );
        assert_eq!(ta.shape(), tb.shape());
        // The same rows in a padded batch: the model-pass rule.
        let tol = model_pass(tb.max_abs().into()) as f32;
        for (x, y) in ta.data().iter().zip(tb.data()) {
            assert_eq!(x.is_nan(), y.is_nan());
            if !x.is_nan() {
                assert!((x - y).abs() <= tol, "row {i}: {x} vs {y}");
            }
        }
        for (k, v) in &b.step_scores {
            let tol = model_pass(max_abs(v)) as f32; // probabilities, as above
            for (x, y) in a.step_scores[k].iter().zip(v) {
                assert!((x - y).abs() <= tol, "{k}: {x} vs {y}");
            }
        }
    }
}

/// End-of-sequence tokens keep their own embedding in the baseline (occluding one changes
/// nothing: score exactly 0), unless `include_eos_baseline` (Inseq's option) replaces them too.
#[test]
fn include_eos_baseline_replaces_end_tokens_too() {
    let device = burn::tensor::Device::default();
    let m = load_model(
        &common::model_dir("tiny-gpt2"),
        "occlusion",
        MethodArgs::default(),
        &device,
    )
    .unwrap();
    let input = "Hello</s> ladies";
    let eos_score = |include_eos_baseline| {
        let opts = AttributeOptions {
            targets: Some(vec![format!("{input} and")]),
            include_eos_baseline,
            ..Default::default()
        };
        let out = m.attribute(&[input], &opts).unwrap();
        let seq = &out.sequence_attributions[0];
        let eos = seq
            .target
            .iter()
            .position(|t| t.id == 2)
            .expect("</s> in the input");
        let a = seq.target_attributions.as_ref().unwrap();
        // Occlusion: one score per token and step, `[target_len, steps]`.
        let steps = a.shape()[1];
        a.data()[eos * steps..(eos + 1) * steps].to_vec()
    };
    assert!(
        eos_score(false).iter().all(|&v| v == 0.0),
        "{:?}",
        eos_score(false)
    );
    assert!(
        eos_score(true).iter().any(|&v| v != 0.0),
        "{:?}",
        eos_score(true)
    );
}
