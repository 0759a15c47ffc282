//! Reliability of the library: bad inputs give clear errors, non-finite numbers are reported.
//! See `docs/reliability.md`; the command-line cases are in `crates/inseq-cli/tests/reliability.rs`.

mod common;

use burn::tensor::Tensor;
use inseq::steps::{StepContext, StepFunction};
use inseq::{AttributeOptions, Error, MethodArgs, StepArgs, load_model};

fn gpt2() -> String {
    common::model_dir("tiny-gpt2")
}

fn device() -> burn::tensor::Device {
    burn::tensor::Device::default()
}

// ---------------------------------------------------------- input texts

#[test]
fn empty_inputs_and_targets() {
    let m = load_model(&gpt2(), "saliency", MethodArgs::default(), &device()).unwrap();
    let err = m.attribute(&[], &AttributeOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), "invalid input: no input texts");
    // Encoder-decoder: an empty target is an empty attribution range.
    let m = load_model(
        &common::model_dir("tiny-marian"),
        "saliency",
        MethodArgs::default(),
        &device(),
    )
    .unwrap();
    let opts = AttributeOptions {
        targets: Some(vec![String::new()]),
        ..Default::default()
    };
    let err = m.attribute(&["Hello"], &opts).unwrap_err().to_string();
    assert!(err.contains("nothing to attribute"), "{err}");
}

/// Targets whose tokens do not line up with the prompt's, or that hold
/// characters outside the vocabulary: the target is tokenised as a whole and
/// attribution starts after as many tokens as the prompt has (Inseq's rule);
/// unknown characters become byte tokens (byte-level BPE) or `<unk>`.
#[test]
fn targets_that_do_not_round_trip() {
    let m = load_model(&gpt2(), "saliency", MethodArgs::default(), &device()).unwrap();
    let tok = m.tokenizer();
    // "Hello lad" + "ies": the prompt's last token is not a prefix token of the target.
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies".into()]),
        ..Default::default()
    };
    let out = m.attribute(&["Hello lad"], &opts).unwrap();
    let seq = &out.sequence_attributions[0];
    let prompt_len = tok.encode("Hello lad", true).unwrap().len();
    let target_ids = tok.encode("Hello ladies", true).unwrap();
    assert_eq!(seq.attr_pos_start, prompt_len);
    assert_eq!(seq.target.len(), target_ids.len());
    // Characters outside the 400-token vocabulary: byte-level pieces, decoded back exactly.
    let text = "Hello ☃ 日本";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), text);
    let opts = AttributeOptions {
        targets: Some(vec![text.into()]),
        ..Default::default()
    };
    let out = m.attribute(&["Hello"], &opts).unwrap();
    assert_eq!(out.sequence_attributions[0].target.len(), ids.len());
    // The Marian fixture's tokenizer is byte-level too: the snowmen become byte pieces.
    let m = load_model(
        &common::model_dir("tiny-marian"),
        "saliency",
        MethodArgs::default(),
        &device(),
    )
    .unwrap();
    let opts = AttributeOptions {
        targets: Some(vec!["☃☃".into()]),
        ..Default::default()
    };
    let out = m.attribute(&["Hello"], &opts).unwrap();
    assert!(out.sequence_attributions[0].n_steps() >= 2);
}

/// Contrastive targets of a different length and no alignment: Inseq's default
/// right alignment (both sequences matched from their ends).
#[test]
fn contrast_of_different_length_is_right_aligned() {
    let m = load_model(&gpt2(), "saliency", MethodArgs::default(), &device()).unwrap();
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen".into()]),
        contrast_targets: Some(vec!["Hello ladies and dear gentlemen and friends".into()]),
        attributed_fn: "contrast_prob_diff".into(),
        step_scores: vec!["contrast_prob".into()],
        ..Default::default()
    };
    let out = m.attribute(&["Hello ladies"], &opts).unwrap();
    let seq = &out.sequence_attributions[0];
    assert!(seq.n_steps() >= 1);
    // The last target token is compared with the last contrastive token (`friends`).
    let last = &seq.target[seq.attr_pos_end - 1];
    assert_eq!(last.id, -1, "{last:?}");
    assert!(last.token.contains('→'), "{last:?}");
    assert!(
        seq.step_scores["contrast_prob"]
            .iter()
            .all(|v| v.is_finite())
    );
    // A contrast too short to give every attributed position a prefix is an error.
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen and friends".into()]),
        contrast_targets: Some(vec!["Hi".into()]),
        attributed_fn: "contrast_prob_diff".into(),
        ..Default::default()
    };
    let err = m.attribute(&["Hello"], &opts).unwrap_err().to_string();
    assert!(err.contains("has no prefix to condition on"), "{err}");
}

// ------------------------------------------------------------- numerics

/// A step function that returns NaN for every row.
struct NanScore;

impl StepFunction for NanScore {
    fn id(&self) -> &str {
        "nan_score"
    }
    fn description(&self) -> &str {
        "Always NaN."
    }
    fn compute(&self, ctx: &StepContext, _args: &StepArgs) -> inseq::Result<Tensor<1>> {
        let [b, _] = ctx.logits.dims();
        Ok(ctx
            .logits
            .clone()
            .sum_dim(1)
            .reshape([b])
            .mul_scalar(f32::NAN))
    }
}

#[test]
fn non_finite_step_scores_are_reported() {
    let mut m = load_model(&gpt2(), "saliency", MethodArgs::default(), &device()).unwrap();
    m.step_registry_mut().register(NanScore);
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies".into()]),
        step_scores: vec!["nan_score".into()],
        ..Default::default()
    };
    let err = m.attribute(&["Hello"], &opts).unwrap_err();
    assert!(matches!(err, Error::Numerical(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("numerical error: step score `nan_score` of input 0 is not finite"),
        "{err}"
    );
}

#[test]
fn huge_gradient_shap_noise_is_a_numerical_error() {
    let m = load_model(
        &gpt2(),
        "gradient_shap",
        MethodArgs::parse("stdevs=1e38").unwrap(),
        &device(),
    )
    .unwrap();
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies".into()]),
        ..Default::default()
    };
    let err = m.attribute(&["Hello"], &opts).unwrap_err();
    assert!(matches!(err, Error::Numerical(_)), "{err:?}");
    assert!(err.to_string().contains("are not finite"), "{err}");
    assert!(err.to_string().contains("gradient_shap"), "{err}");
}
