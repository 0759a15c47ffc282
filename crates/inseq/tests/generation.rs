//! Attributing a generated continuation gives the same result as attributing the same text given
//! as the target (for `attention`, the first reads the weights recorded during generation).

mod common;

use inseq::{AttributeOptions, GenerationOptions, MethodArgs, load_model};

#[test]
fn generated_equals_forced_target() {
    let device = burn::tensor::Device::flex();
    for model_name in ["tiny-gpt2", "tiny-llama"] {
        for method in ["attention", "saliency"] {
            let what = format!("{model_name} {method}");
            let model = load_model(
                &common::model_dir(model_name),
                method,
                MethodArgs::default(),
                &device,
            )
            .unwrap();
            let input = "Hello ladies and";
            let generated = model
                .attribute(
                    &[input],
                    &AttributeOptions {
                        generation: GenerationOptions {
                            max_new_tokens: 5,
                            min_new_tokens: 5,
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                )
                .unwrap();
            let text = generated.info["generated_texts"][0]
                .as_str()
                .unwrap()
                .to_string();
            let forced = model
                .attribute(
                    &[input],
                    &AttributeOptions {
                        targets: Some(vec![text]),
                        ..Default::default()
                    },
                )
                .unwrap();
            let (g, f) = (
                &generated.sequence_attributions[0],
                &forced.sequence_attributions[0],
            );
            // The generated ids are attributed as generated; the forced target is their decoded
            // text tokenised again, which differs from the first partial byte token on (it
            // decodes to U+FFFD). Causal attribution of a step depends only on the tokens before
            // it, so both agree on the steps (columns) and tokens (rows) of their common prefix.
            let prompt_len = g.target.len() - g.n_steps();
            let common = g
                .target
                .iter()
                .zip(&f.target)
                .take_while(|(a, b)| a == b)
                .count();
            assert!(common >= prompt_len + 2, "{what}: {:?}", g.target);
            let (g, f) = (
                g.target_attributions.as_ref().unwrap(),
                f.target_attributions.as_ref().unwrap(),
            );
            let common_block = |a: &inseq::Array| {
                let s = a.shape();
                let rest: usize = s[2..].iter().product();
                let mut out = Vec::new();
                for i in 0..common {
                    for j in 0..common - prompt_len {
                        let at = (i * s[1] + j) * rest;
                        out.extend_from_slice(&a.data()[at..at + rest]);
                    }
                }
                out
            };
            let (g, f) = (common_block(g), common_block(f));
            let scale = f
                .iter()
                .filter(|v| v.is_finite())
                .fold(0f32, |m, v| m.max(v.abs()));
            let worst = g
                .iter()
                .zip(&f)
                .filter(|(a, b)| a.is_finite() || b.is_finite())
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 1e-4 * scale + 1e-6,
                "{what}: differ by {worst} (scale {scale})"
            );
        }
    }
}

/// The generated ids are attributed as they are: `max_new_tokens` N gives N steps even when the
/// continuation holds partial UTF-8 byte tokens (decoding and re-tokenising, as Inseq does, turns
/// each into `U+FFFD` tokens the model never produced; `inseq_compat` keeps that).
#[test]
fn smollm2_attributes_exactly_the_generated_steps() {
    let path = inseq::models::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(
            std::env::var("INSEQ_REQUIRE_MODELS").is_err(),
            "SmolLM2 missing: run cargo xtask fetch-models"
        );
        eprintln!("skipping: SmolLM2 not downloaded (cargo xtask fetch-models)");
        return;
    }
    let device = inseq::default_device().unwrap();
    let model = load_model("smollm2", "attention", MethodArgs::default(), &device).unwrap();
    for n in [3, 30] {
        let opts = AttributeOptions {
            generation: GenerationOptions {
                max_new_tokens: n,
                min_new_tokens: n,
                ..Default::default()
            },
            ..Default::default()
        };
        let out = model
            .attribute(&["Écris en japonais : bonjour, ça va ? 日本語で"], &opts)
            .unwrap();
        assert_eq!(out.sequence_attributions[0].n_steps(), n);
    }
}
