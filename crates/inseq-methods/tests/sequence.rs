//! Attributing every step of a sequence from shared forward passes
//! (`AttributionMethod::attribute_sequence`) equals attributing step by step.

mod common;

use burn::tensor::Tensor;
use inseq_methods::{
    Attention, AttributionMethod, MethodArgs, Occlusion, SequenceInput, StepAttribution,
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
                let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = x
                    .iter()
                    .zip(&y)
                    .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(
                    worst <= 1e-4 * scale + 1e-6,
                    "{what} {part}: sequence and step differ by {worst} (scale {scale})"
                );
            }
            _ => panic!("{what} {part}: present in one result only"),
        }
    }
}

fn check(model_name: &str, seq: &SequenceInput, attribute_target: bool) {
    let pretrained = common::load(model_name);
    let model = pretrained.model.as_ref();
    let f = common::step_fn("probability");
    let ctx = common::ctx(model, &f, 3, attribute_target);
    let methods: Vec<Box<dyn AttributionMethod>> = vec![
        Box::new(Attention::from_args(MethodArgs::default()).unwrap()),
        Box::new(Occlusion::from_args(MethodArgs::default()).unwrap()),
        Box::new(
            Occlusion::from_args(MethodArgs::parse("sliding_window=2,stride=1").unwrap()).unwrap(),
        ),
    ];
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
        check(model, &seq, true);
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
        check(model, &seq, false);
        check(model, &seq, true);
    }
}

#[test]
fn gradient_methods_attribute_step_by_step() {
    let saliency = inseq_methods::Saliency { abs: true };
    let pretrained = common::load("tiny-gpt2");
    let f = common::step_fn("probability");
    let ctx = common::ctx(pretrained.model.as_ref(), &f, 3, true);
    let seq = SequenceInput::decoder_only(vec![vec![1, 2, 3]], vec![vec![true; 3]], 1).unwrap();
    assert!(saliency.attribute_sequence(&ctx, &seq).is_none());
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
