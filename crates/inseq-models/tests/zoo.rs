//! The decoder-only architectures of the block layer (tests/fixtures/zoo/make_zoo.py): logits and
//! last-layer attention against transformers (eager attention) on an input longer than every
//! sliding window, left padding, the key/value cache, and config fields that are not implemented
//! (their hand-written backward passes: `backprop.rs`).

use burn::tensor::Device;
use inseq_fixtures::tolerance::{max_abs, model_pass};
use inseq_models::{
    ForwardOptions, KvCache, LanguageModel, ModelInput, ids_tensor, load_pretrained,
};
use serde_json::Value;

const ZOO: [&str; 13] = [
    "tiny-gemma",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-phi3",
    "tiny-qwen3",
    "tiny-olmo2",
    "tiny-gpt_neox",
    "tiny-opt",
    "tiny-opt_350m",
    "tiny-falcon",
    "tiny-falcon_mq",
    "tiny-falcon_rw",
    "tiny-mistral",
];

fn model(name: &str) -> Box<dyn LanguageModel> {
    let dir = inseq_fixtures::model_dir(name);
    load_pretrained(dir.to_str().unwrap(), &Device::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .model
}

fn flatten(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(flatten).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        _ => panic!("unexpected json"),
    }
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn input(m: &dyn LanguageModel, rows: &[Vec<usize>], mask: Vec<Vec<bool>>) -> ModelInput {
    ModelInput {
        target_embeds: m.embed(ids_tensor(rows, m.device())),
        target_mask: mask,
        source_embeds: None,
        source_mask: None,
    }
}

/// Logits within 1e-4 and last-layer attention within the model-pass rule of transformers'.
#[test]
fn logits_and_attention_match_transformers() {
    let path = inseq_fixtures::root().join("zoo/logits.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for name in ZOO {
        let case = &golden[name];
        let ids: Vec<usize> = flatten(&case["input_ids"])
            .iter()
            .map(|&v| v as usize)
            .collect();
        let m = model(name);
        let options = ForwardOptions {
            attentions: true,
            ..Default::default()
        };
        let out = m.forward(
            input(
                m.as_ref(),
                std::slice::from_ref(&ids),
                vec![vec![true; ids.len()]],
            ),
            options,
        );
        let expected = flatten(&case["logits"]);
        let logits = worst(&out.logits.try_to_vec_as::<f32>().unwrap(), &expected);
        // The brief's 1e-4, and the model-pass rule (smaller here: logits up to ~5).
        assert!(
            logits <= 1e-4_f32.min(model_pass(max_abs(&expected)) as f32),
            "{name}: logits off by {logits}"
        );
        let expected = flatten(&case["attentions_last_layer"]);
        let attn = out
            .attentions
            .last()
            .unwrap()
            .clone()
            .try_to_vec_as::<f32>()
            .unwrap();
        let attn = worst(&attn, &expected);
        assert!(
            attn <= model_pass(max_abs(&expected)) as f32,
            "{name}: attention off by {attn}"
        );
        assert_eq!(out.attentions.len(), m.info().num_layers);
        println!("{name}: max |logit diff| {logits:.2e}, max |attention diff| {attn:.2e}");
    }
}

/// A left-padded row gives the logits of the unpadded one (sliding windows count padded
/// positions as transformers does, so the window of a padded row still covers the same tokens).
#[test]
fn left_padding_does_not_change_logits() {
    let ids: Vec<usize> = vec![373, 275, 311, 389, 295, 364, 315];
    for name in ZOO {
        let m = model(name);
        let last = |rows: Vec<Vec<usize>>, mask| {
            let options = ForwardOptions {
                last_position_only: true,
                ..Default::default()
            };
            m.forward(input(m.as_ref(), &rows, mask), options)
                .last_logits()
                .try_to_vec_as::<f32>()
                .unwrap()
        };
        let plain = last(vec![ids.clone()], vec![vec![true; 7]]);
        let padded_ids = [vec![0, 0], ids.clone()].concat();
        let mask = vec![[vec![false; 2], vec![true; 7]].concat(), vec![true; 9]];
        let padded = last(vec![padded_ids, (1..10).collect()], mask);
        let diff = worst(&plain, &padded[..plain.len()]);
        assert!(
            diff <= model_pass(max_abs(&plain)) as f32,
            "{name}: padded row differs by {diff}"
        );
    }
}

/// Incremental decoding with a key/value cache, past the sliding windows, gives the full pass's
/// logits.
#[test]
fn kv_cache_matches_full_forward() {
    let ids: Vec<usize> = vec![5, 17, 42, 8, 99, 3, 61, 7, 200];
    for name in ZOO {
        let m = model(name);
        let run = |from: usize, to: usize, kv_cache: Option<KvCache>| {
            let options = ForwardOptions {
                last_position_only: true,
                kv_cache,
                ..Default::default()
            };
            let x = input(m.as_ref(), &[ids[from..to].to_vec()], vec![vec![true; to]]);
            m.forward(x, options)
                .last_logits()
                .try_to_vec_as::<f32>()
                .unwrap()
        };
        let cache = KvCache::default();
        for (from, to) in [(0, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9)] {
            let full = run(0, to, None);
            let diff = worst(&run(from, to, Some(cache.clone())), &full);
            assert!(
                diff <= model_pass(max_abs(&full)) as f32,
                "{name} at {to}: {diff}"
            );
        }
    }
}

/// Config fields this crate does not implement are errors naming the field.
#[test]
fn unimplemented_config_fields_are_errors() {
    let cases = [
        (
            "tiny-phi3",
            "rope_parameters",
            serde_json::json!({"rope_type": "su_typo"}),
            "su_typo",
        ),
        (
            "tiny-gemma",
            "hidden_act",
            serde_json::json!("swiglu_typo"),
            "swiglu_typo",
        ),
        (
            "tiny-gemma",
            "use_bidirectional_attention",
            serde_json::json!(true),
            "use_bidirectional_attention",
        ),
        (
            "tiny-gemma2",
            "layer_types",
            serde_json::json!(["chunked_attention", "full_attention", "full_attention"]),
            "chunked_attention",
        ),
    ];
    for (name, field, value, needle) in cases {
        let dir = inseq_fixtures::copy_model(name, &format!("zoo-{field}"));
        let path = dir.join("config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[field] = value;
        std::fs::write(&path, config.to_string()).unwrap();
        let err = load_pretrained(dir.to_str().unwrap(), &Device::default())
            .err()
            .expect("an error");
        assert!(err.to_string().contains(needle), "{name} {field}: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
