//! The metrics against values computed by hand on the tiny GPT-2 fixture, their properties
//! (leave-one-out scores beat random on deletion, a constant attribution scores as random),
//! determinism under a seed, and batched equal to one-at-a-time evaluation.

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use inseq::models::{ForwardOptions, ModelInput, ids_tensor};
use inseq::{AttributionModel, MethodArgs};
use inseq_eval::metrics::{SoftComprehensiveness, SoftSufficiency};
use inseq_eval::{EvalConfig, EvalStep, Evaluator, Metric, MetricRegistry, StepScores};

fn model() -> AttributionModel {
    let device = inseq::default_device().unwrap();
    inseq::load_model(
        &inseq_fixtures::model_path("tiny-gpt2"),
        "dummy",
        MethodArgs::default(),
        &device,
    )
    .unwrap()
}

fn all_metrics() -> Vec<Arc<dyn Metric>> {
    let r = MetricRegistry::with_defaults();
    r.ids().iter().map(|id| r.get(id).unwrap()).collect()
}

fn evaluator(model: &AttributionModel, config: EvalConfig) -> Evaluator<'_> {
    Evaluator::new(
        model,
        "probability",
        Default::default(),
        all_metrics(),
        config,
    )
    .unwrap()
}

/// A step over the token ids `prefix` explaining token `target`, with `scores` for every token.
fn step(prefix: &[usize], target: usize, scores: &[f32], seed: u64) -> EvalStep {
    assert_eq!(prefix.len(), scores.len());
    EvalStep {
        source: None,
        attributed: (0..prefix.len()).collect(),
        prefix: prefix.to_vec(),
        target,
        scores: scores.to_vec(),
        seed,
    }
}

/// `p(target | embeds)` computed directly: softmax of the last position's logits.
fn prob_of_embeds(model: &AttributionModel, embeds: Tensor<3>, target: usize) -> f64 {
    let len = embeds.dims()[1];
    let input = ModelInput {
        target_embeds: embeds,
        target_mask: vec![vec![true; len]],
        source_embeds: None,
        source_mask: None,
    };
    let logits = model
        .model()
        .forward(input, ForwardOptions::default())
        .last_logits();
    let v: Vec<f32> = logits.try_to_vec_as::<f32>().unwrap();
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = v.iter().map(|&x| (x as f64 - max).exp()).sum();
    (v[target] as f64 - max).exp() / z
}

fn prob(model: &AttributionModel, ids: &[usize], target: usize) -> f64 {
    let embeds = model
        .model()
        .embed(ids_tensor(&[ids.to_vec()], model.model().device()));
    prob_of_embeds(model, embeds, target)
}

/// `ids` with the positions in `removed` replaced by `baseline`.
fn without(ids: &[usize], removed: &[usize], baseline: usize) -> Vec<usize> {
    ids.iter()
        .enumerate()
        .map(|(i, &id)| if removed.contains(&i) { baseline } else { id })
        .collect()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{what}: {a} vs {b}");
}

#[test]
fn hard_metrics_match_hand_computed_values() {
    let m = model();
    let b = m.baseline_token_id();
    // Scores rank the four tokens 3, 1, 2, 0.
    let s = step(&[15, 7, 42, 3], 11, &[0.1, 0.5, 0.3, 0.9], 1);
    let ids = s.prefix.clone();
    let config = EvalConfig {
        fractions: vec![0.0, 0.5, 1.0],
        aopc_bins: vec![0.25, 0.5],
        ..Default::default()
    };
    let result = evaluator(&m, config)
        .evaluate_steps(std::slice::from_ref(&s))
        .unwrap()
        .remove(0);
    let p = |removed: &[usize]| prob(&m, &without(&ids, removed, b), 11);
    let (full, empty) = (p(&[]), p(&[0, 1, 2, 3]));
    close(result.original as f64, full, "p(y|x)");
    close(result.empty as f64, empty, "p(y|0)");
    let del = 0.5 * (full + p(&[3, 1])) / 2.0 + 0.5 * (p(&[3, 1]) + empty) / 2.0;
    close(result.metrics["deletion"].value, del, "deletion AUC");
    let ins = 0.5 * (empty + p(&[0, 2])) / 2.0 + 0.5 * (p(&[0, 2]) + full) / 2.0;
    close(result.metrics["insertion"].value, ins, "insertion AUC");
    // 25 % of 4 tokens is 1, 50 % is 2.
    let comp = ((full - p(&[3])) + (full - p(&[3, 1]))) / 2.0;
    close(
        result.metrics["comprehensiveness"].value,
        comp,
        "comprehensiveness",
    );
    let suff = ((full - p(&[0, 1, 2])) + (full - p(&[0, 2]))) / 2.0;
    close(result.metrics["sufficiency"].value, suff, "sufficiency");
}

#[test]
fn soft_metrics_match_hand_computed_values() {
    let m = model();
    // Importances normalise to [0, 1]: the Bernoulli masks keep token 1 whole and zero token 0
    // (Soft-NS), or the reverse (Soft-NC), whatever the draw.
    // The token explained: the one the baseline lowers most among a few candidates.
    let b = m.baseline_token_id();
    let target = (0..50)
        .max_by(|&x, &y| {
            let drop = |t| prob(&m, &[15, 7], t) - prob(&m, &[b, b], t);
            drop(x).total_cmp(&drop(y))
        })
        .unwrap();
    let s = step(&[15, 7], target, &[-2.0, 3.0], 5);
    let result = evaluator(&m, EvalConfig::default())
        .evaluate_steps(std::slice::from_ref(&s))
        .unwrap()
        .remove(0);
    let embeds = m.model().embed(ids_tensor(
        std::slice::from_ref(&s.prefix),
        m.model().device(),
    ));
    let hidden = m.model().info().hidden_size;
    let zeroed = |pos: usize| {
        let mut mask = vec![1.0f32; 2 * hidden];
        mask[pos * hidden..(pos + 1) * hidden].fill(0.0);
        let mask =
            Tensor::<3>::from_data(TensorData::new(mask, [1, 2, hidden]), m.model().device());
        prob_of_embeds(&m, embeds.clone() * mask, target)
    };
    let (full, empty) = (result.original as f64, result.empty as f64);
    let norm = (full - empty).max(0.0);
    assert!(
        norm > 0.0,
        "the all-baseline input must lower the probability for this check"
    );
    close(
        result.metrics["soft_nc"].value,
        (full - zeroed(1)).max(0.0) / norm,
        "Soft-NC",
    );
    close(
        result.metrics["soft_ns"].value,
        1.0 - (full - zeroed(0)).max(0.0) / norm,
        "Soft-NS",
    );
}

#[test]
fn soft_formulas_by_hand() {
    let s = EvalStep {
        source: None,
        prefix: vec![1, 2],
        target: 3,
        attributed: vec![0, 1],
        scores: vec![0.0, 1.0],
        seed: 0,
    };
    let config = EvalConfig::default();
    let scores = StepScores {
        step: &s,
        original: 0.5,
        empty: 0.1,
        config: &config,
    };
    // Soft-NC = max(0, 0.5 - 0.3) / (0.5 - 0.1) = 0.5; Soft-NS = 1 - that.
    close(
        SoftComprehensiveness.finish(&scores, &[0.3]).value,
        0.5,
        "Soft-NC",
    );
    close(
        SoftSufficiency.finish(&scores, &[0.3]).value,
        0.5,
        "Soft-NS",
    );
    // A perturbation that raises the probability counts as no drop.
    close(
        SoftComprehensiveness.finish(&scores, &[0.7]).value,
        0.0,
        "Soft-NC clipped",
    );
    // Erasing everything does not lower it: undefined.
    let flat = StepScores {
        empty: 0.6,
        ..scores
    };
    assert!(SoftComprehensiveness.finish(&flat, &[0.3]).value.is_nan());
}

const PROMPTS: [&str; 4] = [
    "Hello ladies and gentlemen",
    "The quick brown fox jumps",
    "Once upon a time there",
    "A developer writes code",
];

/// Steps of greedy continuations of the prompts, with `scores(step)` as attribution.
fn steps_with(m: &AttributionModel, scores: impl Fn(&EvalStep) -> Vec<f32>) -> Vec<EvalStep> {
    let opts = inseq::AttributeOptions {
        generation: inseq::GenerationOptions {
            max_new_tokens: 3,
            min_new_tokens: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut steps = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        let out = m.attribute(&[p], &opts).unwrap();
        let seq = &out.sequence_attributions[0];
        for t in seq.attr_pos_start..seq.attr_pos_end {
            let prefix: Vec<usize> = seq.target[..t].iter().map(|x| x.id as usize).collect();
            let mut s = EvalStep {
                source: None,
                attributed: (0..t).collect(),
                prefix,
                target: seq.target[t].id as usize,
                scores: vec![0.0; t],
                seed: (i * 100 + t) as u64,
            };
            s.scores = scores(&s);
            steps.push(s);
        }
    }
    steps
}

fn mean_metric(e: &Evaluator, steps: &[EvalStep], id: &str) -> f64 {
    let results = e.evaluate_steps(steps).unwrap();
    results.iter().map(|r| r.metrics[id].value).sum::<f64>() / results.len() as f64
}

#[test]
fn leave_one_out_scores_beat_random_on_deletion() {
    let m = model();
    let e = evaluator(&m, EvalConfig::default());
    let b = m.baseline_token_id();
    let loo = steps_with(&m, |s| {
        let full = prob(&m, &s.prefix, s.target);
        (0..s.prefix.len())
            .map(|i| (full - prob(&m, &without(&s.prefix, &[i], b), s.target)) as f32)
            .collect()
    });
    let loo_auc = mean_metric(&e, &loo, "deletion");
    let random_auc: f64 = (0..10)
        .map(|seed| {
            let steps = steps_with(&m, |s| {
                let mut rng = inseq_eval::rng::Rng::new(seed * 1000 + s.seed);
                (0..s.prefix.len()).map(|_| rng.next_f64() as f32).collect()
            });
            mean_metric(&e, &steps, "deletion")
        })
        .sum::<f64>()
        / 10.0;
    assert!(
        loo_auc < random_auc,
        "leave-one-out deletion AUC {loo_auc} >= random {random_auc}"
    );
}

#[test]
fn constant_attribution_scores_as_random() {
    let m = model();
    let e = evaluator(
        &m,
        EvalConfig {
            fractions: vec![0.0, 0.25, 0.5, 0.75, 1.0],
            ..Default::default()
        },
    );
    let base = steps_with(&m, |s| vec![0.0; s.prefix.len()]);
    let (mut constant, mut random) = (Vec::new(), Vec::new());
    for seed in 0..40u64 {
        let reseed = |steps: &[EvalStep], random_scores: bool| -> Vec<EvalStep> {
            steps
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    s.seed = s.seed * 7919 + seed;
                    if random_scores {
                        let mut rng = inseq_eval::rng::Rng::new(s.seed ^ 0xabc);
                        s.scores = (0..s.scores.len()).map(|_| rng.next_f64() as f32).collect();
                    }
                    s
                })
                .collect()
        };
        constant.push(mean_metric(&e, &reseed(&base, false), "deletion"));
        random.push(mean_metric(&e, &reseed(&base, true), "deletion"));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let sd = |v: &[f64]| {
        (v.iter().map(|x| (x - mean(v)).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    let se = ((sd(&constant).powi(2) + sd(&random).powi(2)) / 40.0).sqrt();
    let gap = (mean(&constant) - mean(&random)).abs();
    assert!(
        gap <= 4.0 * se + 1e-9,
        "constant {} vs random {} (se {se})",
        mean(&constant),
        mean(&random)
    );
}

#[test]
fn same_seed_same_values_batched_or_not() {
    let m = model();
    let steps = steps_with(&m, |s| {
        (0..s.prefix.len()).map(|i| ((i * 7) % 5) as f32).collect()
    });
    let config = EvalConfig {
        soft_samples: 3,
        ..Default::default()
    };
    let a = evaluator(&m, config.clone())
        .evaluate_steps(&steps)
        .unwrap();
    let b = evaluator(&m, config.clone())
        .evaluate_steps(&steps)
        .unwrap();
    assert_eq!(a, b, "same seed, same values");
    let one = evaluator(
        &m,
        EvalConfig {
            batch_size: 1,
            ..config
        },
    )
    .evaluate_steps(&steps)
    .unwrap();
    for (x, y) in a.iter().zip(&one) {
        for (id, v) in &x.metrics {
            let w = y.metrics[id].value;
            assert!(
                (v.value - w).abs() <= 1e-5 || (v.value.is_nan() && w.is_nan()),
                "{id}: batched {} vs one at a time {w}",
                v.value
            );
        }
    }
}

#[test]
fn a_metric_gives_the_same_values_whatever_else_is_asked() {
    let m = model();
    let steps = steps_with(&m, |s| {
        (0..s.prefix.len()).map(|i| ((i * 3) % 4) as f32).collect()
    });
    let with = |metrics: Vec<Arc<dyn Metric>>| {
        Evaluator::new(
            &m,
            "probability",
            Default::default(),
            metrics,
            EvalConfig::default(),
        )
        .unwrap()
        .evaluate_steps(&steps)
        .unwrap()
    };
    let all = with(all_metrics());
    let alone = with(vec![Arc::new(SoftSufficiency)]);
    // Exact: the masks are drawn from the metric's id, not its position in the list.
    for (a, b) in all.iter().zip(&alone) {
        let (x, y) = (a.metrics["soft_ns"].value, b.metrics["soft_ns"].value);
        assert!(x == y || (x.is_nan() && y.is_nan()), "{x} vs {y}");
    }
}

#[test]
fn teacher_forced_pass_equals_one_pass_per_step() {
    let m = model();
    let steps = steps_with(&m, |s| vec![1.0; s.prefix.len()]);
    let e = evaluator(&m, EvalConfig::default());
    for seq in steps.chunks(3) {
        let inputs: Vec<Vec<usize>> = seq.iter().map(EvalStep::flat_ids).collect();
        let shared = e.scorer.score_sequence(seq, &inputs).unwrap();
        for (s, v) in seq.iter().zip(shared) {
            let alone = e.scorer.score_ids(s, &[s.flat_ids()]).unwrap()[0];
            assert!(
                (v - alone).abs() <= 1e-5,
                "teacher-forced {v} vs alone {alone}"
            );
        }
    }
}

#[test]
fn random_method_is_seeded_and_ignores_batching() {
    let device = inseq::default_device().unwrap();
    let mut registries = inseq::Registries::default();
    inseq_eval::register_random_method(&mut registries.methods);
    let m = inseq::load_model_with(
        &inseq_fixtures::model_path("tiny-gpt2"),
        "random",
        MethodArgs::parse("seed=3").unwrap(),
        &device,
        registries,
    )
    .unwrap();
    let opts = inseq::AttributeOptions {
        generation: inseq::GenerationOptions {
            max_new_tokens: 2,
            min_new_tokens: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let alone = m.attribute(&["Hello"], &opts).unwrap();
    let batched = m
        .attribute(&["Hello", "The quick brown fox"], &opts)
        .unwrap();
    let a = alone.sequence_attributions[0]
        .target_attributions
        .as_ref()
        .unwrap();
    let b = batched.sequence_attributions[0]
        .target_attributions
        .as_ref()
        .unwrap();
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a.data()), bits(b.data()));
    assert!(
        a.data()
            .iter()
            .filter(|v| v.is_finite())
            .all(|v| (0.0..1.0).contains(v))
    );
}

#[test]
fn bad_settings_are_named() {
    let m = model();
    let bad = EvalConfig {
        fractions: vec![0.0, 0.5],
        ..Default::default()
    };
    let err = Evaluator::new(&m, "probability", Default::default(), all_metrics(), bad)
        .err()
        .unwrap();
    assert!(err.to_string().contains("fractions"), "{err}");
    let bad = EvalConfig {
        baseline: Some(1 << 30),
        ..Default::default()
    };
    let err = Evaluator::new(&m, "probability", Default::default(), all_metrics(), bad)
        .err()
        .unwrap();
    assert!(err.to_string().contains("baseline"), "{err}");
    let err = MetricRegistry::with_defaults().get("nope").err().unwrap();
    assert!(err.to_string().contains("deletion"), "{err}");
}

#[test]
fn encoder_decoder_steps_perturb_the_source() {
    let device = inseq::default_device().unwrap();
    let m = inseq::load_model(
        &inseq_fixtures::model_path("tiny-bart"),
        "saliency",
        MethodArgs::default(),
        &device,
    )
    .unwrap();
    let opts = inseq::AttributeOptions {
        generation: inseq::GenerationOptions {
            max_new_tokens: 2,
            min_new_tokens: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let out = inseq::aggregate(&m.attribute(&["Hello world"], &opts).unwrap()).unwrap();
    let steps = inseq_eval::steps_of_sequence(&out.sequence_attributions[0], 0).unwrap();
    let src_len = steps[0].source_len();
    assert!(src_len > 0);
    assert_eq!(
        steps[0].attributed,
        (0..src_len).collect::<Vec<_>>(),
        "the source only, without --attribute-target"
    );
    let e = evaluator(
        &m,
        EvalConfig {
            fractions: vec![0.0, 1.0],
            aopc_bins: vec![0.5],
            ..Default::default()
        },
    );
    let results = e.evaluate_steps(&steps).unwrap();
    let b = m.baseline_token_id();
    for (s, r) in steps.iter().zip(&results) {
        // Deletion with two points: the mean of p(y|x) and p(y| source all baseline).
        let source = s.source.clone().unwrap();
        let empty = e
            .scorer
            .score_ids(s, &[[vec![b; source.len()], s.prefix.clone()].concat()])
            .unwrap()[0];
        let full = e.scorer.score_ids(s, &[s.flat_ids()]).unwrap()[0];
        close(
            r.metrics["deletion"].value,
            (f64::from(full) + f64::from(empty)) / 2.0,
            "deletion",
        );
        close(f64::from(r.empty), f64::from(empty), "p(y|0)");
    }
}
