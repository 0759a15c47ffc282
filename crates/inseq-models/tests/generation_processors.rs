//! Generation with Hugging Face's logits processors: the tokens `transformers` `generate` gives
//! on the tiny fixture models (`fixtures/generation_reference.json`, written by
//! `fixtures/generation_reference.py`), beam search against the same (`fixtures/beam_reference.json`,
//! `fixtures/beam_reference.py`), and seeded sampling.

use burn::tensor::Device;
use inseq_fixtures::tolerance::{gamma, model_pass};
use inseq_models::{
    BeamHypothesis, GenerationOptions, ModelKind, Pretrained, beam_search, generate_greedy,
    load_pretrained,
};
use serde_json::Value;

fn load(name: &str) -> Pretrained {
    let dir = inseq_fixtures::model_dir(name);
    load_pretrained(dir.to_str().expect("utf-8 path"), &Device::default()).unwrap()
}

/// The options of one reference case (its `settings`, named as in `generate`).
fn options(settings: &Value) -> GenerationOptions {
    let mut options = GenerationOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    options
        .update_from_json(settings.as_object().unwrap(), "settings")
        .unwrap();
    options
}

fn ids(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Generates from `prompt`: the decoder-only prompt, or the encoder-decoder source.
fn run(m: &Pretrained, prompt: &[usize], options: GenerationOptions) -> Vec<usize> {
    let model = m.model.as_ref();
    match model.kind() {
        ModelKind::DecoderOnly => generate_greedy(model, None, prompt, options),
        ModelKind::EncoderDecoder => generate_greedy(model, Some(prompt), &[], options),
    }
    .unwrap()
}

#[test]
fn greedy_processors_match_transformers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/generation_reference.json"
    );
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut loaded: Vec<(String, Pretrained)> = Vec::new();
    for case in &cases {
        let name = case["model"].as_str().unwrap();
        if !loaded.iter().any(|(n, _)| n == name) {
            loaded.push((name.to_string(), load(name)));
        }
        let m = &loaded.iter().find(|(n, _)| n == name).unwrap().1;
        let got = run(m, &ids(&case["prompt"]), options(&case["settings"]));
        assert_eq!(got, ids(&case["new"]), "{name} {case}");
    }
}

fn sampling(seed: u64) -> GenerationOptions {
    GenerationOptions {
        max_new_tokens: 10,
        do_sample: true,
        seed,
        temperature: 3.0,
        ..Default::default()
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = load("tiny-gpt2");
    let prompt = [1, 17, 42, 99];
    let first = run(&m, &prompt, sampling(7));
    assert_eq!(first.len(), 10);
    assert_eq!(first, run(&m, &prompt, sampling(7)));
    let others: Vec<Vec<usize>> = (0..4).map(|s| run(&m, &prompt, sampling(s))).collect();
    assert!(
        others.iter().any(|o| *o != first),
        "seeds give different draws"
    );
}

#[test]
fn top_k_one_and_tiny_top_p_sample_the_argmax() {
    let m = load("tiny-llama");
    let prompt = [5, 6, 7];
    let greedy = run(
        &m,
        &prompt,
        GenerationOptions {
            max_new_tokens: 10,
            ..Default::default()
        },
    );
    let top_k = GenerationOptions {
        top_k: 1,
        ..sampling(3)
    };
    let top_p = GenerationOptions {
        top_p: 1e-6,
        ..sampling(3)
    };
    assert_eq!(run(&m, &prompt, top_k), greedy);
    assert_eq!(run(&m, &prompt, top_p), greedy);
}

#[test]
fn invalid_processor_values_are_errors() {
    let m = load("tiny-gpt2");
    for bad in [
        GenerationOptions {
            temperature: 0.0,
            ..sampling(0)
        },
        GenerationOptions {
            top_p: 1.5,
            ..sampling(0)
        },
        GenerationOptions {
            repetition_penalty: -1.0,
            ..Default::default()
        },
    ] {
        let err = generate_greedy(m.model.as_ref(), None, &[1, 2], bad).unwrap_err();
        assert!(err.to_string().contains("must be"), "{err}");
    }
}

/// Beam search: the hypotheses and scores `transformers` gives, in its order.
#[test]
fn beam_search_matches_transformers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/beam_reference.json"
    );
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut loaded: Vec<(String, Pretrained)> = Vec::new();
    for case in reference["cases"].as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        if !loaded.iter().any(|(n, _)| n == name) {
            loaded.push((name.to_string(), load(name)));
        }
        let m = &loaded.iter().find(|(n, _)| n == name).unwrap().1;
        let mut options = GenerationOptions {
            max_new_tokens: 8,
            ..Default::default()
        };
        options
            .update_from_json(case["settings"].as_object().unwrap(), "case")
            .unwrap();
        let model = m.model.as_ref();
        let prompt = ids(&case["prompt"]);
        let got: Vec<BeamHypothesis> = match model.kind() {
            ModelKind::DecoderOnly => beam_search(model, None, &prompt, options.clone()),
            ModelKind::EncoderDecoder => beam_search(model, Some(&prompt), &[], options.clone()),
        }
        .unwrap();
        let expected = case["hypotheses"].as_array().unwrap();
        assert_eq!(got.len(), expected.len(), "{name} {case}");
        for (ours, theirs) in got.iter().zip(expected) {
            assert_eq!(ours.ids, ids(&theirs["new"]), "{name} {case}: {got:?}");
            // Sums of up to 8 log-probabilities, each logit - log-sum-exp: the logits' model-pass
            // rounding twice (the tiny models' |logits| < 0.7, tests/fixtures/golden/logits.json),
            // the log-sum-exp's own sum (γ(400)) and the subtraction (γ(2) of |log p| ~ 6).
            let per_token = 2.0 * model_pass(0.7) + gamma(400) + gamma(2) * 6.0;
            let score = theirs["score"].as_f64().unwrap() as f32;
            assert!(
                f64::from((ours.score - score).abs()) <= 8.0 * per_token,
                "{name} {case}: score {}",
                ours.score
            );
        }
        // The best hypothesis is what `generate_greedy` returns with these options.
        let best = run(m, &prompt, options);
        assert_eq!(best, got[0].ids, "{name} {case}");
    }
}

#[test]
fn beam_search_options_are_checked() {
    let m = load("tiny-gpt2");
    for bad in [
        r#"{"num_beams": 0}"#,
        r#"{"num_beams": 2, "num_return_sequences": 3}"#,
        r#"{"num_beams": 2, "do_sample": true}"#,
        r#"{"early_stopping": "sometimes"}"#,
    ] {
        let mut options = GenerationOptions::default();
        let args: serde_json::Map<String, Value> = serde_json::from_str(bad).unwrap();
        let err = options
            .update_from_json(&args, "args")
            .and_then(|()| generate_greedy(m.model.as_ref(), None, &[1, 2], options).map(|_| ()))
            .unwrap_err();
        assert!(!err.to_string().is_empty(), "{bad}");
    }
}
