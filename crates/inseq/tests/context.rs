//! `attribute-context` (PECoRe) on the tiny models of both kinds and on SmolLM2.

mod common;

use inseq::context::{ContextArgs, attribute_context, rank_above, scores_threshold};
use inseq::{MethodArgs, load_model};

fn run(model: &str, attributed_fn: &str, output: Option<&str>) -> inseq::context::ContextOutput {
    let device = burn::tensor::Device::flex();
    let m = load_model(model, "saliency", MethodArgs::default(), &device).unwrap();
    let args = ContextArgs {
        input_context_text: "George was sick yesterday.".into(),
        input_current_text: "His colleagues asked him".into(),
        attributed_fn: attributed_fn.into(),
        output_current_text: output.map(String::from),
        context_sensitivity_std_threshold: 0.0,
        generation: inseq::GenerationOptions {
            max_new_tokens: 4,
            ..Default::default()
        },
        ..Default::default()
    };
    attribute_context(&m, &args).unwrap()
}

#[test]
fn pecore_runs_on_tiny_models_of_both_kinds() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-marian", "tiny-bart"] {
        for f in ["probability", "contrast_prob_diff"] {
            // random tiny models generate byte soup: give the output to explain
            let out = run(&common::model_dir(name), f, Some("to take the day off"));
            assert_eq!(
                out.cti_scores.len(),
                out.output_current_tokens.len(),
                "{name}"
            );
            assert!(
                out.cti_scores.iter().all(|s| s.is_finite() && *s >= -1e-6),
                "{name}: {:?}",
                out.cti_scores
            );
            assert!(
                !out.cci.is_empty(),
                "{name}: with threshold = mean some token is above it"
            );
            for c in &out.cci {
                assert!(c.cti_score.abs() >= out.cti_threshold);
                assert_eq!(c.input_context_scores.len(), out.input_context_tokens.len());
                assert_eq!(c.contrast_token.is_some(), f == "contrast_prob_diff");
            }
            let text = out.render_text();
            assert!(text.contains("cues"), "{text}");
            assert!(out.render_html().contains("<html"));
        }
    }
}

#[test]
fn thresholds_follow_inseq() {
    assert_eq!(scores_threshold(&[1.0, 2.0, 3.0], 0.0), 2.0);
    // sample std of [1,2,3] is 1
    assert!((scores_threshold(&[1.0, 2.0, 3.0], 1.0) - 3.0).abs() < 1e-6);
    assert_eq!(rank_above(&[0.1, -0.5, 0.3], 0.2, None), vec![1, 2]);
    assert_eq!(rank_above(&[0.1, -0.5, 0.3], 0.2, Some(1)), vec![1]);
}

#[test]
fn pecore_on_smollm2() {
    let path = inseq::models::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(
            std::env::var("INSEQ_REQUIRE_MODELS").is_err(),
            "SmolLM2 missing: run cargo xtask fetch-models"
        );
        eprintln!("skipping: SmolLM2 not downloaded");
        return;
    }
    let out = run("smollm2", "contrast_prob_diff", None);
    println!("{}", out.render_text());
    assert!(!out.output_current.is_empty());
    assert!(!out.cci.is_empty());
}
