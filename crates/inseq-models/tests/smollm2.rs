//! The real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by `cargo xtask fetch-models`):
//! greedy generation, logits and tokenization against Hugging Face transformers
//! (reference from `tests/fixtures/gguf/make_tokenizer_reference.py`).
//!
//! Skipped with a note when the model file is absent, unless
//! `INSEQ_REQUIRE_MODELS=1`, in which case a missing model fails the test.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use inseq_fixtures::tolerance::smollm2_logits;
use inseq_models::{
    ForwardOptions, GenerationOptions, ModelInput, generate_greedy, ids_tensor, load_pretrained,
    models_dir,
};

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model path, or `None` (after printing why) when the test should be skipped.
fn model_path() -> Option<PathBuf> {
    let path = models_dir().join(FILE);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("INSEQ_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!(
            "{} is missing and INSEQ_REQUIRE_MODELS=1; run `cargo xtask fetch-models`",
            path.display()
        );
    }
    eprintln!(
        "skipping: {} not found (run `cargo xtask fetch-models`)",
        path.display()
    );
    None
}

fn reference() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf/smollm2_tokenizer_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Greedy generation gives what transformers gives (` Paris.` then a newline for
/// 3 new tokens), and the last-position logits agree with transformers'.
#[test]
fn smollm2_greedy_paris() {
    if model_path().is_none() {
        return;
    }
    let device = Device::default();
    let m = load_pretrained("smollm2", &device).unwrap();
    let info = m.model.info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.vocab_size, 49152);
    assert_eq!(info.num_layers, 30);
    let reference = reference();
    let gen_ref = &reference["generation"];
    let prompt = m
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    assert_eq!(prompt, ids(&gen_ref["prompt_ids"]));
    let opts = GenerationOptions {
        max_new_tokens: 3,
        ..Default::default()
    };
    let new = generate_greedy(m.model.as_ref(), None, &prompt, opts).unwrap();
    assert_eq!(new, ids(&gen_ref["new_ids"]));
    let text = m.tokenizer.decode(&new, true).unwrap();
    assert!(text.starts_with(" Paris."), "{text:?}");
    assert_eq!(text, gen_ref["text"].as_str().unwrap());

    let embeds = m
        .model
        .embed(ids_tensor(std::slice::from_ref(&prompt), &device));
    let out = m.model.forward(
        ModelInput {
            target_embeds: embeds,
            target_mask: vec![vec![true; prompt.len()]],
            source_embeds: None,
            source_mask: None,
        },
        ForwardOptions {
            last_position_only: true,
            ..Default::default()
        },
    );
    let logits = out.last_logits().into_data().try_to_vec::<f32>().unwrap();
    let head: Vec<f64> = gen_ref["last_logits_head"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let max_ref = gen_ref["last_logits_max"].as_f64().unwrap();
    let tol = smollm2_logits(max_ref); // ~1.9e-3 for logits up to ~17.4
    for (i, (&got, want)) in logits.iter().zip(&head).enumerate() {
        assert!(
            (f64::from(got) - want).abs() <= tol,
            "logit {i}: {got} vs transformers {want}"
        );
    }
    let (argmax, max) =
        logits.iter().enumerate().fold(
            (0, f32::MIN),
            |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
        );
    assert_eq!(
        argmax as u64,
        gen_ref["last_logits_argmax"].as_u64().unwrap()
    );
    assert!((f64::from(max) - max_ref).abs() <= tol);
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    let Some(path) = model_path() else {
        return;
    };
    let gguf = inseq_models::gguf::GgufModelFile::open(&path).unwrap();
    let tok = inseq_models::TextTokenizer::new(gguf.tokenizer().unwrap());
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids_no_special"]),
            "{text:?}"
        );
        // Decoding gives the text back (byte-level BPE is lossless).
        assert_eq!(
            tok.decode(&ids(&case["ids"]), false).unwrap(),
            text,
            "{text:?}"
        );
    }
}

/// Beam search (and greedy decoding) give `transformers`' tokens and scores on SmolLM2:
/// `tests/fixtures/smollm2/beam_search.json` (written by `tests/fixtures/smollm2/make_golden.py`),
/// with several beams, returned sequences, length penalties and early stopping.
#[test]
fn beam_search_matches_transformers_on_smollm2() {
    let Some(path) = model_path() else { return };
    let m = load_pretrained(path.to_str().unwrap(), &Device::default()).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(inseq_fixtures::root().join("smollm2/beam_search.json")).unwrap(),
    )
    .unwrap();
    // Stored as Python literals: `[1, 2]`, `{'num_beams': 4, 'early_stopping': True}`.
    let parse = |v: &serde_json::Value| -> serde_json::Value {
        match v {
            serde_json::Value::String(s) => serde_json::from_str(
                &s.replace('\'', "\"")
                    .replace("True", "true")
                    .replace("False", "false")
                    .replace("None", "null"),
            )
            .unwrap(),
            other => other.clone(),
        }
    };
    let ids = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let eos = m.special_tokens.eos.unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let name = case["prompt_name"].as_str().unwrap();
        let prompt = ids(&parse(&case["input_ids"]));
        let mut options = GenerationOptions::default();
        let mut kwargs = parse(&case["generate_kwargs"]);
        kwargs.as_object_mut().unwrap().remove("attention_mask");
        options
            .update_from_json(kwargs.as_object().unwrap(), name)
            .unwrap();
        let expected: Vec<Vec<usize>> = parse(&case["output_ids"])
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let new = &ids(row)[prompt.len()..];
                // Rows are padded with the pad id, which is SmolLM2's eos: cut after the first.
                match new.iter().position(|&t| t == eos) {
                    Some(end) => new[..=end].to_vec(),
                    None => new.to_vec(),
                }
            })
            .collect();
        let model = m.model.as_ref();
        if options.num_beams == 1 {
            let got = generate_greedy(model, None, &prompt, options).unwrap();
            assert_eq!(vec![got], expected, "{name} {kwargs}");
            continue;
        }
        let got = inseq_models::beam_search(model, None, &prompt, options).unwrap();
        let got_ids: Vec<Vec<usize>> = got.iter().map(|h| h.ids.clone()).collect();
        assert_eq!(got_ids, expected, "{name} {kwargs}");
        let scores: Vec<f64> = serde_json::from_value(parse(&case["sequences_scores"])).unwrap();
        for (h, s) in got.iter().zip(&scores) {
            // Each log-probability, logit - log-sum-exp, carries the logits' rounding twice
            // (SmolLM2's |logits| <= ~20); a score sums n <= 12 of them (a random walk, √n)
            // over n^length_penalty with length_penalty >= 0.5: at most that of one.
            let tol = 2.0 * smollm2_logits(20.0);
            assert!(
                (h.score as f64 - s).abs() <= tol,
                "{name} {kwargs}: {} vs {s}",
                h.score
            );
        }
    }
}
