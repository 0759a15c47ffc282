//! Attributing every step of a sequence from shared forward passes
//! (`AttributionMethod::attribute_sequence`) equals attributing step by step.

mod common;

use burn::tensor::Tensor;
use inseq_fixtures::tolerance::{max_abs, model_pass};
use inseq_methods::{
    Attention, AttributionMethod, InputXGradient, IntegratedGradients, MethodArgs, Occlusion,
    Saliency, SequenceInput, StepAttribution,
};

fn host(t: &Option<Tensor<3>>) -> Option<(Vec<usize>, Vec<f32>)> {
    t.as_ref()
        .map(|t| (t.dims().to_vec(), t.clone().try_to_vec_as::<f32>().unwrap()))
}

fn assert_same(what: &str, a: &StepAttribution, b: &StepAttribution) {
    assert_eq!(a.score_dims, b.score_dims, "{what}: score dims");
    for (part, x, y) in [
        ("source", &a.source, &b.source),
        ("target", &a.target, &b.target),
    ] {
        match (host(x), host(y)) {
            (None, None) => {}
            (Some((dx, x)), Some((dy, y))) => {
                assert_eq!(dx, dy, "{what} {part}: shape");
                // Shared passes and a hand-written backward against per-step autodiff: the
                // same values summed in other orders, the model-pass rule.
                let scale = max_abs(&y);
                let worst = x
                    .iter()
                    .zip(&y)
                    .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(
                    f64::from(worst) <= model_pass(scale),
                    "{what} {part}: sequence and step differ by {worst} (scale {scale})"
                );
            }
            _ => panic!("{what} {part}: present in one result only"),
        }
    }
    match (&a.deltas, &b.deltas) {
        (None, None) => {}
        (Some(x), Some(y)) => {
            // Σ attributions − (f(x) − f(baseline)) with probabilities f <= 1: the model-pass
            // rule on scale 1.
            let tol = model_pass(1.0) as f32;
            for (p, q) in x.iter().zip(y) {
                assert!((p - q).abs() <= tol, "{what} deltas: {p} vs {q}");
            }
        }
        _ => panic!("{what}: deltas in one result only"),
    }
}

/// Gradient methods, which share work between steps of decoder-only models only
/// (one forward pass, a hand-written backward pass per step).
fn gradient_methods() -> Vec<Box<dyn AttributionMethod>> {
    let ig = |args: &str| IntegratedGradients::from_args(MethodArgs::parse(args).unwrap()).unwrap();
    vec![
        Box::new(Saliency { abs: true }),
        Box::new(Saliency { abs: false }),
        Box::new(InputXGradient),
        Box::new(ig("n_steps=6,return_convergence_delta=true")),
        // Two interpolation points per pass: chunks of points accumulate.
        Box::new(ig(
            "n_steps=5,internal_batch_size=4,method=riemann_trapezoid",
        )),
    ]
}

fn check(
    model_name: &str,
    seq: &SequenceInput,
    attribute_target: bool,
    extra: Vec<Box<dyn AttributionMethod>>,
) {
    let pretrained = common::load(model_name);
    let model = pretrained.model.as_ref();
    let f = common::step_fn("probability");
    let ctx = common::ctx(model, &f, 3, attribute_target);
    let mut methods: Vec<Box<dyn AttributionMethod>> = vec![
        Box::new(Attention::from_args(MethodArgs::default()).unwrap()),
        Box::new(Occlusion::from_args(MethodArgs::default()).unwrap()),
        Box::new(
            Occlusion::from_args(MethodArgs::parse("sliding_window=2,stride=1").unwrap()).unwrap(),
        ),
    ];
    methods.extend(extra);
    for method in methods {
        let all = method
            .attribute_sequence(&ctx, seq)
            .expect("the method attributes whole sequences")
            .unwrap();
        assert_eq!(all.len(), seq.steps);
        for (s, got) in all.iter().enumerate() {
            let want = method.attribute_step(&ctx, &seq.step(s)).unwrap();
            assert_same(
                &format!("{model_name} {} step {s}", method.id()),
                got,
                &want,
            );
        }
    }
}

#[test]
fn decoder_only_batches_with_left_padding() {
    for model in ["tiny-gpt2", "tiny-llama"] {
        let seq = SequenceInput::decoder_only(
            vec![
                vec![0, 0, 11, 12, 13, 14, 15],
                vec![21, 22, 23, 24, 25, 26, 27],
            ],
            vec![
                vec![false, false, true, true, true, true, true],
                vec![true; 7],
            ],
            3,
        )
        .unwrap();
        check(model, &seq, true, gradient_methods());
    }
}

#[test]
fn encoder_decoder_source_and_target() {
    for model in ["tiny-bart", "tiny-marian"] {
        let pretrained = common::load(model);
        let start = pretrained.model.info().decoder_start_token_id.unwrap();
        let seq = SequenceInput {
            source_ids: Some(vec![vec![31, 32, 33, 34, 2], vec![41, 42, 2, 1, 1]]),
            source_mask: Some(vec![vec![true; 5], vec![true, true, true, false, false]]),
            ids: vec![vec![start, 51, 52, 53], vec![start, 61, 62, 63]],
            mask: vec![vec![true; 4]; 2],
            steps: 3,
        };
        seq.check().unwrap();
        check(model, &seq, false, vec![]);
        check(model, &seq, true, vec![]);
    }
}

#[test]
fn gradient_methods_attribute_encoder_decoder_models_step_by_step() {
    let pretrained = common::load("tiny-bart");
    let start = pretrained.model.info().decoder_start_token_id.unwrap();
    let f = common::step_fn("probability");
    let ctx = common::ctx(pretrained.model.as_ref(), &f, 3, true);
    let seq = SequenceInput {
        source_ids: Some(vec![vec![31, 32, 2]]),
        source_mask: Some(vec![vec![true; 3]]),
        ids: vec![vec![start, 51, 52]],
        mask: vec![vec![true; 3]],
        steps: 2,
    };
    for method in gradient_methods() {
        assert!(
            method.attribute_sequence(&ctx, &seq).is_none(),
            "{}",
            method.id()
        );
    }
}

#[test]
fn gradient_methods_fall_back_to_steps_beyond_the_shared_forward_budget() {
    let pretrained = common::load("tiny-gpt2");
    let model = pretrained.model.as_ref();
    let f = common::step_fn("probability");
    let ctx = common::ctx(model, &f, 3, true);
    // The pass keeps memory linear in the width (block inputs, one block's tape): 60 rows of
    // this width exceed the budget, one row does not.
    let (rows, width) = (60, 16_000);
    assert_eq!(inseq_methods::shared_forward_copies(model, rows, width), 0);
    assert!(inseq_methods::shared_forward_copies(model, 1, width) > 50);
    let ids = vec![(0..width).map(|i| 5 + i % 50).collect::<Vec<_>>(); rows];
    let seq = SequenceInput::decoder_only(ids, vec![vec![true; width]; rows], 1).unwrap();
    assert!(
        Saliency { abs: true }
            .attribute_sequence(&ctx, &seq)
            .is_none()
    );
}

#[test]
fn malformed_sequences_are_rejected() {
    assert!(SequenceInput::decoder_only(vec![vec![1, 2]], vec![vec![true; 2]], 2).is_err());
    assert!(SequenceInput::decoder_only(vec![vec![1, 2, 3]], vec![vec![true; 2]], 1).is_err());
    assert!(
        SequenceInput::decoder_only(vec![vec![0, 2, 3]], vec![vec![false, false, true]], 1)
            .is_err()
    );
    assert!(SequenceInput::decoder_only(vec![], vec![], 1).is_err());
}

/// A generated sequence's attention comes from the weights recorded during generation, and
/// equals step-by-step attribution; weights recorded for other tokens are not used.
#[test]
fn attention_from_recorded_generation_equals_step_by_step() {
    use inseq_models::{GenerationOptions, RecordedAttentions, generate_greedy_recording};
    for model_name in ["tiny-gpt2", "tiny-llama"] {
        let pretrained = common::load(model_name);
        let model = pretrained.model.as_ref();
        let prompt = vec![11, 12, 13, 14];
        let options = GenerationOptions {
            max_new_tokens: 4,
            min_new_tokens: 4,
            ..Default::default()
        };
        let (new, recorded) = generate_greedy_recording(model, None, &prompt, options).unwrap();
        let recorded = recorded.unwrap();
        let ids = [&prompt[..], &new[..]].concat();
        let seq =
            SequenceInput::decoder_only(vec![ids.clone()], vec![vec![true; ids.len()]], 4).unwrap();
        let f = common::step_fn("probability");
        let method = Attention::from_args(MethodArgs::default()).unwrap();
        let mut ctx = common::ctx(model, &f, 3, true);
        let run = |ctx: &inseq_methods::MethodContext| {
            method.attribute_sequence(ctx, &seq).unwrap().unwrap()
        };
        let want: Vec<StepAttribution> = (0..seq.steps)
            .map(|s| method.attribute_step(&ctx, &seq.step(s)).unwrap())
            .collect();
        // The recorded weights give the step-by-step result.
        ctx.recorded_attentions = Some(&recorded);
        for (s, (got, want)) in run(&ctx).iter().zip(&want).enumerate() {
            assert_same(&format!("{model_name} recorded, step {s}"), got, want);
        }
        // They are what the method reads: zeroed ones give zero scores ...
        let zeroed = RecordedAttentions {
            ids: recorded.ids.clone(),
            rows: recorded.rows.clone(),
            weights: recorded.weights.iter().map(|w| w.zeros_like()).collect(),
        };
        ctx.recorded_attentions = Some(&zeroed);
        for got in run(&ctx) {
            let total: f32 = got.target.unwrap().abs().sum().into_scalar();
            assert_eq!(total, 0.0, "{model_name}: recorded weights not used");
        }
        // ... unless they were recorded for other tokens.
        let mut other = zeroed.clone();
        other.ids[0] += 1;
        ctx.recorded_attentions = Some(&other);
        for (s, (got, want)) in run(&ctx).iter().zip(&want).enumerate() {
            assert_same(&format!("{model_name} other ids, step {s}"), got, want);
        }
    }
}
