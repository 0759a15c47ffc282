//! Contrastive attribution: contrastive targets with alignments, contrastive sources.

mod common;

use inseq::{AttributeOptions, ContrastAlignment, MethodArgs, StepArgs, load_model};

#[test]
fn contrastive_source_changes_the_contrast_scores() {
    let device = burn::tensor::Device::default();
    let m = load_model(
        &common::model_dir("tiny-marian"),
        "saliency",
        MethodArgs::default(),
        &device,
    )
    .unwrap();
    let opts = AttributeOptions {
        targets: Some(vec!["Le développeur s'est disputé.".into()]),
        contrast_sources: Some(vec!["Hello".into()]),
        attributed_fn: "contrast_prob_diff".into(),
        step_scores: vec!["probability".into(), "contrast_prob".into(), "pcxmi".into()],
        ..Default::default()
    };
    let out = m
        .attribute(&["The developer argued with the designer."], &opts)
        .unwrap();
    let seq = &out.sequence_attributions[0];
    let (p, c) = (
        &seq.step_scores["probability"],
        &seq.step_scores["contrast_prob"],
    );
    assert!(
        p.iter().zip(c).any(|(a, b)| a != b),
        "contrast source had no effect: {p:?} {c:?}"
    );
    assert!(seq.source_attributions.is_some());
    assert!(seq.step_scores["pcxmi"].iter().all(|v| v.is_finite()));
}

#[test]
fn contrast_targets_of_different_length_with_alignments() {
    let device = burn::tensor::Device::default();
    let m = load_model(
        &common::model_dir("tiny-gpt2"),
        "input_x_gradient",
        MethodArgs::default(),
        &device,
    )
    .unwrap();
    let run = |alignment: ContrastAlignment| {
        let opts = AttributeOptions {
            targets: Some(vec!["The manager went home because he was sick".into()]),
            contrast_targets: Some(vec![
                "The manager went home because she was very sick".into(),
            ]),
            contrast_alignments: Some(vec![alignment]),
            attributed_fn: "contrast_prob_diff".into(),
            step_scores: vec!["contrast_prob_diff".into(), "kl_divergence".into()],
            step_scores_args: StepArgs::parse("top_k=5").unwrap(),
            ..Default::default()
        };
        m.attribute(&["The manager went home because"], &opts)
            .unwrap()
    };
    for alignment in [
        ContrastAlignment::Auto,
        ContrastAlignment::RightAligned,
        "5-5,6-6,7-8".parse().unwrap(),
    ] {
        let out = run(alignment.clone());
        let seq = &out.sequence_attributions[0];
        assert_eq!(seq.n_steps(), 3);
        assert_eq!(
            seq.target[5].id, -1,
            "{alignment:?}: differing token not marked: {:?}",
            seq.target[5]
        );
        assert!(seq.target[5].token.contains('→'));
        assert!(
            seq.step_scores["kl_divergence"]
                .iter()
                .all(|v| v.is_finite())
        );
    }
    // "auto" and explicit pairs map the last token `sick` to `sick`: same token, not marked
    let out = run(ContrastAlignment::Auto);
    assert_ne!(out.sequence_attributions[0].target[7].id, -1);
}

#[test]
fn contrast_sources_need_an_encoder_decoder() {
    let device = burn::tensor::Device::default();
    let m = load_model(
        &common::model_dir("tiny-gpt2"),
        "saliency",
        MethodArgs::default(),
        &device,
    )
    .unwrap();
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen".into()]),
        contrast_sources: Some(vec!["Hi".into()]),
        ..Default::default()
    };
    let err = m
        .attribute(&["Hello ladies and"], &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("decoder-only models have no source"), "{err}");
}

#[test]
fn mc_dropout_step_score_is_seeded_and_finite() {
    let device = burn::tensor::Device::default();
    for model in ["tiny-gpt2", "tiny-llama"] {
        let m = load_model(
            &common::model_dir(model),
            "saliency",
            MethodArgs::default(),
            &device,
        )
        .unwrap();
        let run = |args: &str| {
            let opts = AttributeOptions {
                targets: Some(vec!["Hello ladies and gentlemen".into()]),
                step_scores: vec!["mc_dropout_prob_avg".into()],
                step_scores_args: StepArgs::parse(args).unwrap(),
                ..Default::default()
            };
            m.attribute(&["Hello ladies and"], &opts)
                .unwrap()
                .sequence_attributions[0]
                .step_scores["mc_dropout_prob_avg"]
                .clone()
        };
        let a = run("n_mcd_steps=4,seed=1");
        assert!(a.iter().all(|v| v.is_finite()), "{model}: {a:?}");
        assert_eq!(a, run("n_mcd_steps=4,seed=1"), "{model}: not reproducible");
        assert_ne!(a, run("n_mcd_steps=4,seed=2"), "{model}: seed ignored");
    }
    let m = load_model(
        &common::model_dir("tiny-gpt2"),
        "saliency",
        MethodArgs::default(),
        &device,
    )
    .unwrap();
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen".into()]),
        attributed_fn: "mc_dropout_prob_avg".into(),
        ..Default::default()
    };
    let err = m
        .attribute(&["Hello ladies and"], &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not as the attributed function"), "{err}");
}
