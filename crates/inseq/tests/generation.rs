//! Attributing a generated continuation gives the same result as attributing the same text given
//! as the target (for `attention`, the first reads the weights recorded during generation).

mod common;

use inseq::{AttributeOptions, GenerationOptions, MethodArgs, load_model};
use inseq_fixtures::tolerance::model_pass;

#[test]
fn generated_equals_forced_target() {
    let device = burn::tensor::Device::default();
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
            // The same steps in other batches (other padding): the model-pass rule.
            assert!(
                f64::from(worst) <= model_pass(scale.into()),
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
    if !common::smollm2_present() {
        return;
    }
    let device = burn::tensor::Device::default();
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

/// The generated token ids of `input` on the model in `dir` (greedy, at most 8 new tokens).
fn generated_ids(dir: &std::path::Path, input: &str) -> Vec<i64> {
    let model = dummy_model(dir);
    let opts = AttributeOptions {
        generation: GenerationOptions {
            max_new_tokens: 8,
            ..Default::default()
        },
        ..Default::default()
    };
    let out = model.attribute(&[input], &opts).unwrap();
    let seq = &out.sequence_attributions[0];
    seq.target[seq.attr_pos_start..]
        .iter()
        .map(|t| t.id)
        .collect()
}

/// A copy of tiny-llama whose `config.json` (and, if given, `generation_config.json`) declare
/// `eos_token_id` as a list, as Llama 3 does.
fn llama_with_eos(
    name: &str,
    config_eos: &[i64],
    generation_eos: Option<&[i64]>,
) -> std::path::PathBuf {
    let dir = common::copy_model("tiny-llama", &format!("eos-{name}"));
    let set = |file: &str, ids: &[i64]| {
        let path = dir.join(file);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["eos_token_id"] = serde_json::json!(ids);
        std::fs::write(&path, v.to_string()).unwrap();
    };
    set("config.json", config_eos);
    if let Some(ids) = generation_eos {
        set("generation_config.json", ids);
    } else {
        std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    }
    dir
}

#[test]
fn generation_stops_at_any_of_several_end_tokens() {
    let input = "Hello ladies and";
    let free = generated_ids(&llama_with_eos("free", &[2], None), input);
    assert!(free.len() >= 4, "{free:?}");
    // The third generated token declared an end token (second in the list): generation stops
    // after it, whatever its position in the list.
    let until = |t: i64| &free[..=free.iter().position(|&x| x == t).unwrap()];
    let third = free[2];
    let dir = llama_with_eos("config", &[2, third], None);
    assert_eq!(generated_ids(&dir, input), until(third));
    // generation_config.json's list takes precedence over config.json's, as in transformers.
    let second = free[1];
    let dir = llama_with_eos("generation", &[2, third], Some(&[second, 2]));
    assert_eq!(generated_ids(&dir, input), until(second));
}

/// `num_beams` > 1: the attributed continuation is beam search's best hypothesis, and
/// `num_return_sequences` > 1 (which Inseq attributes one by one) is a clear error.
#[test]
fn beam_search_continuation_is_attributed() {
    let device = burn::tensor::Device::default();
    let dir = common::model_dir("tiny-gpt2");
    let model = load_model(&dir, "saliency", MethodArgs::default(), &device).unwrap();
    let generation = GenerationOptions {
        max_new_tokens: 5,
        num_beams: 3,
        ..Default::default()
    };
    let opts = AttributeOptions {
        generation: generation.clone(),
        ..Default::default()
    };
    let out = model.attribute(&["Hello ladies and"], &opts).unwrap();
    let seq = &out.sequence_attributions[0];
    let prompt: Vec<usize> = seq.target[..seq.attr_pos_start]
        .iter()
        .map(|t| t.id as usize)
        .collect();
    let best = inseq::models::beam_search(model.model(), None, &prompt, generation.clone())
        .unwrap()
        .remove(0);
    let attributed: Vec<usize> = seq.target[seq.attr_pos_start..]
        .iter()
        .map(|t| t.id as usize)
        .collect();
    assert_eq!(attributed, best.ids);
    let several = AttributeOptions {
        generation: GenerationOptions {
            num_return_sequences: 2,
            ..generation
        },
        ..Default::default()
    };
    let err = model
        .attribute(&["Hello ladies and"], &several)
        .unwrap_err();
    assert!(err.to_string().contains("num_return_sequences"), "{err}");
}

/// Seeded sampling: a row draws the same tokens on every run, alone or at any position of a batch.
#[test]
fn seeded_sampling_is_the_same_in_any_batch() {
    let device = burn::tensor::Device::default();
    let dir = common::model_dir("tiny-llama");
    let model = load_model(&dir, "dummy", MethodArgs::default(), &device).unwrap();
    let opts = |seed| AttributeOptions {
        generation: GenerationOptions {
            max_new_tokens: 6,
            min_new_tokens: 6,
            do_sample: true,
            temperature: 2.0,
            seed,
            ..Default::default()
        },
        ..Default::default()
    };
    let generated = |inputs: &[&str], seed| -> Vec<Vec<i64>> {
        let out = model.attribute(inputs, &opts(seed)).unwrap();
        out.sequence_attributions
            .iter()
            .map(|s| s.target[s.attr_pos_start..].iter().map(|t| t.id).collect())
            .collect()
    };
    let (a, b) = ("Hello ladies and", "The weather is");
    let alone = generated(&[a], 11);
    assert_eq!(alone, generated(&[a], 11), "the same on every run");
    assert_eq!(generated(&[b, a], 11)[1], alone[0], "second in a batch");
    assert_eq!(generated(&[a, b, b], 11)[0], alone[0], "first in a batch");
    let others: Vec<_> = (0..4).map(|s| generated(&[a], s)[0].clone()).collect();
    assert!(
        others.iter().any(|o| *o != alone[0]),
        "seeds give other draws"
    );
}

/// A text that starts with the BOS token its tokenizer also adds (a chat template) gets one BOS,
/// as in Inseq, not two.
#[test]
fn duplicate_bos_is_removed() {
    let dir = common::copy_model("tiny-llama", "bos");
    // Llama 2's layout: the tokenizer adds `<s>` (id 1) before every text.
    let path = dir.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
    });
    std::fs::write(&path, tok.to_string()).unwrap();
    let model = dummy_model(&dir);
    let ids = |input: &str| -> Vec<i64> {
        let opts = AttributeOptions {
            targets: Some(vec![format!("{input} ladies")]),
            ..Default::default()
        };
        let out = model.attribute(&[input], &opts).unwrap();
        out.sequence_attributions[0]
            .target
            .iter()
            .map(|t| t.id)
            .collect()
    };
    let plain = ids("Hello");
    assert_eq!(plain[0], 1, "the tokenizer adds <s>: {plain:?}");
    assert_eq!(ids("<s>Hello"), plain, "one <s>, not two");
}

/// The model in `dir` with the `dummy` method (token ids and step scores only).
fn dummy_model(dir: &std::path::Path) -> inseq::AttributionModel {
    let device = burn::tensor::Device::default();
    load_model(
        dir.to_str().unwrap(),
        "dummy",
        MethodArgs::default(),
        &device,
    )
    .unwrap()
}
