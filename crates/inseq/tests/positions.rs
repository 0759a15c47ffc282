//! `attr_pos_start`/`attr_pos_end` follow Inseq 0.7.1's rules (see `inseq::AttributedSpan`):
//! a decoder-only start inside the prompt is clamped to the prompt length, negative positions
//! count from the end, and prompt positions are attributed only when asked for explicitly.

mod common;

use inseq::{AttributeOptions, AttributionOutput, MethodArgs, load_model};
use inseq_fixtures::tolerance::model_pass;

const INPUT: &str = "Hello ladies and";
const TARGET: &str = "Hello ladies and gentlemen, welcome to the show";

fn attribute(model: &str, opts: AttributeOptions) -> inseq::Result<AttributionOutput> {
    let device = burn::tensor::Device::default();
    let m = load_model(
        &common::model_dir(model),
        "saliency",
        MethodArgs::default(),
        &device,
    )?;
    let target = if model == "tiny-marian" {
        "gentlemen, welcome"
    } else {
        TARGET
    };
    m.attribute(
        &[INPUT],
        &AttributeOptions {
            targets: Some(vec![target.into()]),
            ..opts
        },
    )
}

fn span(out: &AttributionOutput) -> (usize, usize) {
    let s = &out.sequence_attributions[0];
    (s.attr_pos_start, s.attr_pos_end)
}

#[test]
fn decoder_only_start_inside_the_prompt_is_clamped_as_in_inseq() {
    let default = attribute("tiny-gpt2", AttributeOptions::default()).unwrap();
    let (prompt, len) = span(&default);
    assert!(prompt > 2 && len > prompt + 2, "{prompt} {len}");
    for start in [1, 2, -3] {
        let out = attribute(
            "tiny-gpt2",
            AttributeOptions {
                attr_pos_start: Some(start),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(span(&out), (prompt, len), "start {start}");
        let (a, b) = (
            &out.sequence_attributions[0].target_attributions,
            &default.sequence_attributions[0].target_attributions,
        );
        // Bit for bit: the same computation (NaN marks positions after the step's token).
        let bits = |x: &inseq::Array| x.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a.as_ref().unwrap()), bits(b.as_ref().unwrap()));
    }
}

#[test]
fn negative_positions_count_from_the_end() {
    let (prompt, len) = span(&attribute("tiny-gpt2", AttributeOptions::default()).unwrap());
    let end = attribute(
        "tiny-gpt2",
        AttributeOptions {
            attr_pos_end: Some(-1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(span(&end), (prompt, len - 1));
    let (_, mt_len) = span(&attribute("tiny-marian", AttributeOptions::default()).unwrap());
    let last_two = attribute(
        "tiny-marian",
        AttributeOptions {
            attr_pos_start: Some(-2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(span(&last_two), (mt_len - 2, mt_len));
}

#[test]
fn prompt_positions_only_on_request() {
    let default = attribute("tiny-gpt2", AttributeOptions::default()).unwrap();
    let (prompt, len) = span(&default);
    let out = attribute(
        "tiny-gpt2",
        AttributeOptions {
            attr_pos_start: Some(1),
            attribute_prompt: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(span(&out), (1, len));
    // The steps after the prompt are those of the default run.
    let (all, generated) = (
        out.sequence_attributions[0]
            .target_attributions
            .as_ref()
            .unwrap(),
        default.sequence_attributions[0]
            .target_attributions
            .as_ref()
            .unwrap(),
    );
    // Raw layout [position, step, hidden...].
    let (steps, gen_steps) = (all.shape()[1], generated.shape()[1]);
    assert_eq!(steps, len - 1);
    assert_eq!(gen_steps, len - prompt);
    // The steps run in other batches (other padding, so other summation orders): they agree to
    // the relative error of a reordered forward and backward pass, the model-pass rule.
    let rest: usize = generated.shape()[2..].iter().product();
    let scale = generated
        .data()
        .iter()
        .filter(|x| !x.is_nan())
        .fold(0f32, |m, x| m.max(x.abs()));
    let tol = model_pass(scale.into()) as f32;
    for (i, x) in generated.data().iter().enumerate() {
        let (row, col, k) = (i / rest / gen_steps, i / rest % gen_steps, i % rest);
        let y = all.data()[(row * steps + col + prompt - 1) * rest + k];
        let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol;
        assert!(same, "position {row}, step {col}: {x} vs {y}");
    }
}

#[test]
fn invalid_positions_are_errors_naming_them() {
    for (start, end, needle) in [
        (Some(-100), None, "attr_pos_start"),
        (None, Some(-100), "attr_pos_end"),
        (Some(40), None, "nothing to attribute"),
    ] {
        let err = attribute(
            "tiny-marian",
            AttributeOptions {
                attr_pos_start: start,
                attr_pos_end: end,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(needle), "{start:?} {end:?}: {err}");
    }
}

/// A Marian repository with only SentencePiece files: the source is tokenised with `source.spm`,
/// the forced target with `target.spm` (as transformers' `MarianTokenizer(text_target=...)`),
/// after the decoder start token.
#[test]
fn marian_spm_targets_use_the_target_sentencepiece_model() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            inseq_fixtures::golden_dir()
                .parent()
                .unwrap()
                .join("zoo/marian_spm_tokens.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let ids = |side: &str| -> Vec<i64> {
        reference[side][1]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_i64().unwrap())
            .collect()
    };
    let text = reference["source"][1]["text"].as_str().unwrap();
    let device = burn::tensor::Device::default();
    let m = load_model(
        &common::model_dir("tiny-marian-spm"),
        "saliency",
        MethodArgs::default(),
        &device,
    )
    .unwrap();
    let out = m
        .attribute(
            &[text],
            &AttributeOptions {
                targets: Some(vec![text.into()]),
                ..Default::default()
            },
        )
        .unwrap();
    let seq = &out.sequence_attributions[0];
    let got = |t: &[inseq_core::TokenWithId]| t.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(got(seq.source.as_ref().unwrap()), ids("source"));
    // The decoder start (<pad>) then the target.spm segmentation, which differs from the source's.
    let start = m.model().info().decoder_start_token_id.unwrap() as i64;
    assert_eq!(got(&seq.target), [vec![start], ids("target")].concat());
    assert_ne!(ids("source"), ids("target"));
}
