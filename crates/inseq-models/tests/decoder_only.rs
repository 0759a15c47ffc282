//! GPT-2 and Llama logits and last-layer attention against Hugging Face (golden/logits.json).

use burn::tensor::Device;
use inseq_fixtures::tolerance::{max_abs, model_pass};
use inseq_models::{
    ForwardOptions, LanguageModel, ModelInput, Pretrained, ids_tensor, load_pretrained,
};
use serde_json::Value;

fn shared() -> std::path::PathBuf {
    inseq_fixtures::root().to_path_buf()
}

/// One of the tiny fixture models (`tiny-gpt2`, `tiny-llama`) on `device`.
fn tiny_model(name: &str, device: &Device) -> Pretrained {
    load_pretrained(shared().join("models").join(name).to_str().unwrap(), device).unwrap()
}

fn flatten(v: &Value, out: &mut Vec<f32>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
        _ => panic!("unexpected json"),
    }
}

fn check(name: &str) {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("golden/logits.json")).unwrap(),
    )
    .unwrap();
    let case = &golden[name];
    let ids: Vec<usize> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let device = Device::default();
    let m = tiny_model(name, &device);
    let model: &dyn LanguageModel = m.model.as_ref();
    let out = model.forward(
        ModelInput {
            target_embeds: model.embed(ids_tensor(std::slice::from_ref(&ids), &device)),
            target_mask: vec![vec![true; ids.len()]],
            source_embeds: None,
            source_mask: None,
        },
        ForwardOptions {
            attentions: true,
            hidden_states: true,
            ..Default::default()
        },
    );
    let logits = out.logits.try_to_vec_as::<f32>().unwrap();
    let mut expected = Vec::new();
    flatten(&case["logits"], &mut expected);
    assert_eq!(logits.len(), expected.len());
    let worst = logits
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // Ours against transformers' torch (golden logits): the model-pass rule.
    let tol = model_pass(max_abs(&expected)) as f32;
    assert!(worst <= tol, "{name}: logits off by {worst}");
    let attn = out
        .attentions
        .last()
        .unwrap()
        .clone()
        .try_to_vec_as::<f32>()
        .unwrap();
    let mut expected = Vec::new();
    flatten(&case["attentions_last_layer"], &mut expected);
    assert_eq!(attn.len(), expected.len());
    let worst = attn
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let tol = model_pass(max_abs(&expected)) as f32; // as for the logits
    assert!(worst <= tol, "{name}: attention off by {worst}");
    assert_eq!(out.hidden_states.len(), model.info().num_layers + 1);
}

#[test]
fn gpt2_logits_and_attention_match_transformers() {
    check("tiny-gpt2");
}

#[test]
fn llama_logits_and_attention_match_transformers() {
    check("tiny-llama");
}

#[test]
fn left_padding_does_not_change_logits() {
    let device = Device::default();
    for name in ["tiny-gpt2", "tiny-llama"] {
        let m = tiny_model(name, &device);
        let model = m.model.as_ref();
        let ids = vec![373usize, 275, 311, 389];
        let run = |rows: Vec<Vec<usize>>, mask: Vec<Vec<bool>>| {
            model
                .forward(
                    ModelInput {
                        target_embeds: model.embed(ids_tensor(&rows, &device)),
                        target_mask: mask,
                        source_embeds: None,
                        source_mask: None,
                    },
                    ForwardOptions {
                        last_position_only: true,
                        ..Default::default()
                    },
                )
                .last_logits()
                .try_to_vec_as::<f32>()
                .unwrap()
        };
        let plain = run(vec![ids.clone()], vec![vec![true; 4]]);
        let padded = run(
            vec![
                vec![0, 0].into_iter().chain(ids.clone()).collect(),
                vec![1, 2, 3, 4, 5, 6],
            ],
            vec![vec![false, false, true, true, true, true], vec![true; 6]],
        );
        let worst = plain
            .iter()
            .zip(&padded[..plain.len()])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // The same row in a padded batch (other shapes): the model-pass rule.
        let tol = model_pass(max_abs(&plain)) as f32;
        assert!(worst <= tol, "{name}: padded row differs by {worst}");
    }
}

#[test]
fn hub_cache_offline_resolves_local_snapshot() {
    // A cache laid out as hf-hub lays it out: models--org--name/{refs/main, snapshots/<rev>/...}
    let cache = std::env::temp_dir().join(format!("inseq-hub-cache-{}", std::process::id()));
    let repo = cache.join("models--tiny--gpt2");
    let snap = repo.join("snapshots").join("abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(shared().join("models/tiny-gpt2").join(f), snap.join(f)).unwrap();
    }
    // SAFETY: test-local environment changes; this test is the only one reading these variables.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", &cache);
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let m = load_pretrained("tiny/gpt2", &Device::default()).unwrap();
    assert_eq!(m.model.info().architecture, "gpt2");
    let err = load_pretrained("tiny/absent", &Device::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

/// Incremental decoding with a key/value cache gives the logits of the full forward pass.
#[test]
fn kv_cache_matches_full_forward() {
    use inseq_models::KvCache;
    for name in ["tiny-gpt2", "tiny-llama"] {
        let device = Device::default();
        let m = tiny_model(name, &device);
        let model: &dyn LanguageModel = m.model.as_ref();
        assert!(model.supports_kv_cache());
        let ids: Vec<usize> = vec![5, 17, 42, 8, 99, 3, 61];
        let run = |from: usize, to: usize, cache: Option<KvCache>| {
            let input = ModelInput {
                target_embeds: model.embed(ids_tensor(&[ids[from..to].to_vec()], &device)),
                target_mask: vec![vec![true; to]],
                source_embeds: None,
                source_mask: None,
            };
            let options = ForwardOptions {
                last_position_only: true,
                kv_cache: cache,
                ..Default::default()
            };
            model
                .forward(input, options)
                .last_logits()
                .try_to_vec_as::<f32>()
                .unwrap()
        };
        let cache = KvCache::default();
        // Prompt of 4 tokens, then one token at a time.
        for (from, to) in [(0, 4), (4, 5), (5, 6), (6, 7)] {
            let cached = run(from, to, Some(cache.clone()));
            let full = run(0, to, None);
            let worst = cached
                .iter()
                .zip(&full)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // Cached keys and values against one full pass (other shapes): the model-pass rule.
            let tol = model_pass(max_abs(&full)) as f32;
            assert!(worst <= tol, "{name} at {to}: {worst}");
            assert_eq!(cache.len(), to);
        }
    }
}

/// The attention weights recorded while generating equal those of one forward pass over the
/// fed tokens (the `attention` method uses them instead of that pass).
#[test]
fn recorded_generation_attentions_match_full_forward() {
    use inseq_models::{GenerationOptions, generate_greedy, generate_greedy_recording};
    for name in ["tiny-gpt2", "tiny-llama"] {
        let device = Device::default();
        let m = tiny_model(name, &device);
        let model: &dyn LanguageModel = m.model.as_ref();
        let prompt = vec![5, 17, 42, 8];
        let options = GenerationOptions {
            max_new_tokens: 4,
            min_new_tokens: 4,
            ..Default::default()
        };
        let (new, recorded) =
            generate_greedy_recording(model, None, &prompt, options.clone()).unwrap();
        assert_eq!(new, generate_greedy(model, None, &prompt, options).unwrap());
        let recorded = recorded.expect("decoder-only models with a cache record attentions");
        assert_eq!(recorded.ids, [&prompt[..], &new[..3]].concat());
        let n = recorded.ids.len();
        let input = ModelInput {
            target_embeds: model.embed(ids_tensor(std::slice::from_ref(&recorded.ids), &device)),
            target_mask: vec![vec![true; n]],
            source_embeds: None,
            source_mask: None,
        };
        let options = ForwardOptions {
            attentions: true,
            ..Default::default()
        };
        let full = model.forward(input, options).attentions;
        assert_eq!(full.len(), recorded.weights.len());
        // The prompt's last row, then each generated token's.
        let rows: Vec<usize> = (prompt.len() - 1..n).collect();
        assert_eq!(recorded.rows, rows);
        let rows = burn::tensor::Tensor::<1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
            &device,
        );
        let full: Vec<_> = full
            .into_iter()
            .map(|w| w.select(2, rows.clone()))
            .collect();
        for (l, (a, b)) in recorded.weights.iter().zip(&full).enumerate() {
            assert_eq!(a.dims(), b.dims(), "{name} layer {l}");
            let (a, b) = (
                a.clone().try_to_vec_as::<f32>().unwrap(),
                b.clone().try_to_vec_as::<f32>().unwrap(),
            );
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            // Cached generation steps against one full pass: the model-pass rule.
            let tol = model_pass(max_abs(&b)) as f32;
            assert!(worst <= tol, "{name} layer {l}: {worst}");
        }
    }
}
