//! GGUF reading: dequantization against gguf-py, metadata value types, and the
//! llama.cpp -> Hugging Face name/layout mapping on tiny models
//! (fixtures from `tests/fixtures/gguf/make_fixtures.py`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use inseq_fixtures::tolerance::{max_abs, model_pass};
use inseq_models::gguf::{GgmlType, GgufFile, GgufModelFile, GgufValue};
use inseq_models::{
    ForwardOptions, LanguageModel, ModelInput, SafetensorsSource, WeightSource, ids_tensor,
    load_pretrained,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

#[test]
fn dequantization_matches_gguf_py() {
    let file = GgufFile::open(&fixture("quants.gguf")).unwrap();
    assert_eq!(file.version(), 3);
    let types = [
        ("F32", GgmlType::F32),
        ("F16", GgmlType::F16),
        ("BF16", GgmlType::BF16),
        ("Q8_0", GgmlType::Q8_0),
        ("Q4_0", GgmlType::Q4_0),
        ("Q4_1", GgmlType::Q4_1),
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
    ];
    for (name, ty) in types {
        let info = file.tensor_info(&format!("q.{name}")).unwrap();
        assert_eq!(info.ty, ty, "{name}");
        assert_eq!(info.dims, vec![512, 2], "{name}");
        let got = file.read_f32(&format!("q.{name}")).unwrap().unwrap();
        let want = file.read_f32(&format!("expected.{name}")).unwrap().unwrap();
        assert_eq!(got.shape, vec![2, 512], "{name}");
        assert_eq!(want.shape, vec![2, 512], "{name}");
        assert!(
            want.data.iter().any(|&v| v != 0.0),
            "{name}: expected values are all zero"
        );
        for (i, (&g, &w)) in got.data.iter().zip(&want.data).enumerate() {
            // Dequantization is a few scale products and an offset (at most ~3 roundings of
            // terms about |w| in size) in each implementation: 16u ~ 1e-6 relative.
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-6),
                "{name}[{i}]: got {g}, gguf-py says {w}"
            );
        }
    }
}

#[test]
fn dequantize_rejects_wrong_sizes() {
    use inseq_models::gguf::dequantize;
    assert!(dequantize(GgmlType::Q4K, &[0u8; 143], 256).is_err());
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], 31).is_err());
    assert!(dequantize(GgmlType::Q2K, &[0u8; 84], 256).is_err());
    assert_eq!(
        dequantize(GgmlType::Q8_0, &[0u8; 34], 32).unwrap(),
        vec![0.0; 32]
    );
}

#[test]
fn metadata_value_types() {
    let file = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let get = |k: &str| file.get(k).unwrap_or_else(|| panic!("missing {k}")).clone();
    assert_eq!(get("test.u8"), GgufValue::U8(200));
    assert_eq!(get("test.i8"), GgufValue::I8(-100));
    assert_eq!(get("test.u16"), GgufValue::U16(60000));
    assert_eq!(get("test.i16"), GgufValue::I16(-30000));
    assert_eq!(get("test.u32"), GgufValue::U32(4_000_000_000));
    assert_eq!(get("test.i32"), GgufValue::I32(-2_000_000_000));
    assert_eq!(get("test.f32"), GgufValue::F32(0.25));
    assert_eq!(get("test.bool"), GgufValue::Bool(true));
    assert_eq!(get("test.string"), GgufValue::String("héllo GGUF".into()));
    assert_eq!(get("test.u64"), GgufValue::U64((1 << 63) + 5));
    assert_eq!(get("test.i64"), GgufValue::I64(-(1 << 62)));
    assert_eq!(get("test.f64"), GgufValue::F64(-1.5e-300));
    assert_eq!(
        get("test.array_i32"),
        GgufValue::Array(vec![
            GgufValue::I32(1),
            GgufValue::I32(-2),
            GgufValue::I32(3)
        ])
    );
    assert_eq!(
        get("test.array_str"),
        GgufValue::Array(vec![
            GgufValue::String("a".into()),
            GgufValue::String("bc".into()),
            GgufValue::String(String::new())
        ])
    );
    assert_eq!(
        get("test.array_nested"),
        GgufValue::Array(vec![
            GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(2)]),
            GgufValue::Array(vec![GgufValue::I32(3)]),
        ])
    );
    assert_eq!(get("general.architecture").as_str(), Some("none"));
}

#[test]
fn unknown_architecture_is_unsupported() {
    let err = GgufModelFile::open(&fixture("quants.gguf")).unwrap_err();
    assert!(
        matches!(err, inseq_core::Error::UnsupportedArchitecture(_)),
        "{err:?}"
    );
}

/// Every tensor of the GGUF model, read under Hugging Face names, equals the
/// Hugging Face-layout copy the fixture script saved.
fn assert_same_as_hf(gguf: &str, safetensors: &str) {
    let mut model = GgufModelFile::open(&fixture(gguf)).unwrap();
    let mut hf = SafetensorsSource::open_files(&[fixture(safetensors)]).unwrap();
    let gguf_names: BTreeSet<String> = model.names().into_iter().collect();
    let hf_names: BTreeSet<String> = hf.names().into_iter().collect();
    assert_eq!(gguf_names, hf_names);
    for name in &hf_names {
        let want = hf.read(name).unwrap().unwrap();
        let got = model.read(name).unwrap().unwrap();
        assert_eq!(got.shape, want.shape, "{name}");
        assert_eq!(got.data, want.data, "{name}");
        // The base-model prefix is optional.
        if let Some(bare) = name
            .strip_prefix("model.")
            .or_else(|| name.strip_prefix("transformer."))
        {
            assert_eq!(model.read(bare).unwrap().unwrap().data, want.data, "{bare}");
        }
    }
    assert!(model.read("no.such.weight").unwrap().is_none());
}

#[test]
fn tiny_llama_weights_in_hf_layout() {
    assert_same_as_hf("tiny-llama.gguf", "tiny-llama.safetensors");
}

#[test]
fn tiny_gpt2_weights_in_hf_layout() {
    assert_same_as_hf("tiny-gpt2.gguf", "tiny-gpt2.safetensors");
}

#[test]
fn tiny_llama_config() {
    let model = GgufModelFile::open(&fixture("tiny-llama.gguf")).unwrap();
    assert_eq!(model.architecture(), "llama");
    let c = model.hf_config().unwrap();
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["vocab_size"], 263);
    assert_eq!(c["hidden_size"], 32);
    assert_eq!(c["intermediate_size"], 32);
    assert_eq!(c["num_hidden_layers"], 2);
    assert_eq!(c["num_attention_heads"], 4);
    assert_eq!(c["num_key_value_heads"], 2);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["rope_theta"], 10000.0);
    assert_eq!(c["max_position_embeddings"], 64);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 0);
}

#[test]
fn tiny_gpt2_config() {
    let model = GgufModelFile::open(&fixture("tiny-gpt2.gguf")).unwrap();
    let c = model.hf_config().unwrap();
    assert_eq!(c["model_type"], "gpt2");
    assert_eq!(c["vocab_size"], 263);
    assert_eq!(c["n_embd"], 32);
    assert_eq!(c["n_layer"], 1);
    assert_eq!(c["n_head"], 4);
    assert_eq!(c["n_positions"], 16);
    assert_eq!(c["n_inner"], 64);
    assert_eq!(c["layer_norm_epsilon"], 1e-5);
    assert_eq!(c["tie_word_embeddings"], false);
}

#[test]
fn tiny_tokenizer_byte_level_bpe() {
    let model = GgufModelFile::open(&fixture("tiny-llama.gguf")).unwrap();
    let tok = model.tokenizer().unwrap();
    assert_eq!(tok.get_vocab_size(true), 263);
    // "Ġthe" is a merged token (id 260: merges Ġ t -> Ġt, h e -> he, Ġt he -> Ġthe);
    // "<|im_start|>" is a control token kept whole; add_bos_token is false.
    let enc = tok.encode("hello the<|im_start|>", true).unwrap();
    let tokens: Vec<&str> = enc.get_tokens().iter().map(String::as_str).collect();
    assert_eq!(tokens, ["he", "llo", "Ġthe", "<|im_start|>"]);
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hello the");
    assert_eq!(
        tok.decode(enc.get_ids(), false).unwrap(),
        "hello the<|im_start|>"
    );
}

/// Logits of a model loaded from GGUF equal those of the same model built from
/// the Hugging Face-layout safetensors copy.
fn assert_same_logits(gguf: &str, safetensors: &str) {
    let device = Device::default();
    let path = fixture(gguf);
    let loaded = load_pretrained(path.to_str().unwrap(), &device).unwrap();
    let config = GgufModelFile::open(&path).unwrap().hf_config().unwrap();
    let source = SafetensorsSource::open_files(&[fixture(safetensors)]).unwrap();
    let reference =
        inseq_models::loader::build_model(&config, Box::new(source), &path, &device).unwrap();
    let ids = loaded.tokenizer.encode("hello the world", true).unwrap();
    assert!(ids.len() > 3);
    let logits = |m: &dyn LanguageModel| -> Vec<f32> {
        let embeds = m.embed(ids_tensor(std::slice::from_ref(&ids), &device));
        let out = m.forward(
            ModelInput {
                target_embeds: embeds,
                target_mask: vec![vec![true; ids.len()]],
                source_embeds: None,
                source_mask: None,
            },
            ForwardOptions::default(),
        );
        out.logits.into_data().try_to_vec::<f32>().unwrap()
    };
    let a = logits(loaded.model.as_ref());
    let b = logits(reference.as_ref());
    assert_eq!(a.len(), ids.len() * 263);
    // The same weights in other layouts (other matrix-product kernels): the model-pass rule.
    let tol = model_pass(max_abs(&b)) as f32;
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= tol, "{x} vs {y}");
    }
}

#[test]
fn tiny_llama_loads_end_to_end() {
    assert_same_logits("tiny-llama.gguf", "tiny-llama.safetensors");
}

#[test]
fn tiny_gpt2_loads_end_to_end() {
    assert_same_logits("tiny-gpt2.gguf", "tiny-gpt2.safetensors");
}

#[test]
fn tiny_qwen3_weights_in_hf_layout() {
    assert_same_as_hf("tiny-qwen3.gguf", "tiny-qwen3.safetensors");
}

#[test]
fn tiny_qwen3_config() {
    let model = GgufModelFile::open(&fixture("tiny-qwen3.gguf")).unwrap();
    assert_eq!(model.architecture(), "qwen3");
    let c = model.hf_config().unwrap();
    assert_eq!(c["model_type"], "qwen3");
    assert_eq!(c["head_dim"], 8);
    assert_eq!(c["num_key_value_heads"], 2);
    assert_eq!(c["attention_bias"], true);
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["rms_norm_eps"], 1e-6);
}

#[test]
fn tiny_qwen3_loads_end_to_end() {
    assert_same_logits("tiny-qwen3.gguf", "tiny-qwen3.safetensors");
}

#[test]
fn tiny_gemma_weights_in_hf_layout() {
    // Norm scales stored as 1 + weight come back as weight.
    assert_same_as_hf("tiny-gemma.gguf", "tiny-gemma.safetensors");
}

#[test]
fn tiny_gemma_loads_end_to_end() {
    let c = GgufModelFile::open(&fixture("tiny-gemma.gguf"))
        .unwrap()
        .hf_config()
        .unwrap();
    assert_eq!(
        (c["model_type"].as_str(), c["hidden_act"].as_str()),
        (Some("gemma"), Some("gelu_pytorch_tanh"))
    );
    assert_eq!(c["tie_word_embeddings"], true);
    assert_same_logits("tiny-gemma.gguf", "tiny-gemma.safetensors");
}

/// The zoo fixtures of `make_zoo_fixtures.py`: every tensor back in Hugging Face layout, and the
/// same logits as the model built from the Hugging Face-layout copy.
fn assert_zoo_fixture(arch: &str) {
    let gguf = format!("tiny-{arch}.gguf");
    let safetensors = format!("tiny-{arch}.safetensors");
    assert_same_as_hf(&gguf, &safetensors);
    assert_same_logits(&gguf, &safetensors);
}

fn zoo_config(arch: &str) -> serde_json::Value {
    GgufModelFile::open(&fixture(&format!("tiny-{arch}.gguf")))
        .unwrap()
        .hf_config()
        .unwrap()
}

#[test]
fn tiny_gemma2_loads_end_to_end() {
    let c = zoo_config("gemma2");
    assert_eq!(c["model_type"], "gemma2");
    assert_eq!(c["head_dim"], 8);
    assert_eq!(c["query_pre_attn_scalar"], 8);
    assert_eq!(c["attn_logit_softcapping"], 5.0);
    assert_eq!(c["final_logit_softcapping"], 3.0);
    assert_eq!(c["sliding_window"], 4);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_zoo_fixture("gemma2");
}

#[test]
fn tiny_gemma3_loads_end_to_end() {
    let c = zoo_config("gemma3");
    assert_eq!(c["model_type"], "gemma3_text");
    assert_eq!(c["rope_theta"], 1e6);
    assert_eq!(c["rope_local_base_freq"], 10000.0);
    assert_eq!(c["sliding_window"], 4);
    assert_eq!(c["sliding_window_pattern"], 6);
    assert_eq!(c["rope_scaling"]["rope_type"], "linear");
    assert_eq!(c["rope_scaling"]["factor"], 2.0);
    assert!(c["final_logit_softcapping"].is_null());
    assert_zoo_fixture("gemma3");
}

#[test]
fn tiny_phi3_loads_end_to_end() {
    let c = zoo_config("phi3");
    assert_eq!(c["model_type"], "phi3");
    assert_eq!(c["partial_rotary_factor"], 0.5);
    assert_eq!(c["sliding_window"], 5);
    assert_eq!(c["original_max_position_embeddings"], 64);
    assert!(c.get("rope_scaling").is_none());
    assert_zoo_fixture("phi3");
}

#[test]
fn tiny_olmo2_loads_end_to_end() {
    let c = zoo_config("olmo2");
    assert_eq!(c["model_type"], "olmo2");
    assert_eq!(c["rope_theta"], 500000.0);
    assert_zoo_fixture("olmo2");
}

#[test]
fn tiny_gpt_neox_loads_end_to_end() {
    let c = zoo_config("gptneox");
    assert_eq!(c["model_type"], "gpt_neox");
    assert_eq!(c["rotary_pct"], 0.5);
    assert_eq!(c["use_parallel_residual"], false);
    assert_eq!(c["attention_bias"], true);
    assert_zoo_fixture("gptneox");
}

#[test]
fn tiny_falcon_loads_end_to_end() {
    let c = zoo_config("falcon");
    assert_eq!(c["model_type"], "falcon");
    assert_eq!(c["new_decoder_architecture"], true);
    assert_eq!(c["num_kv_heads"], 2);
    assert_eq!(c["num_ln_in_parallel_attn"], 2);
    assert_eq!(c["bias"], false);
    assert_zoo_fixture("falcon");
}

#[test]
fn unread_metadata_key_is_an_error() {
    let model = GgufModelFile::open(&fixture("olmo2-unknown-key.gguf")).unwrap();
    let err = model.hf_config().unwrap_err().to_string();
    assert!(err.contains("olmo2.expert_count"), "{err}");
    assert!(err.contains("olmo2-unknown-key.gguf"), "{err}");
}

/// The logits of each zoo GGUF fixture, loaded end to end (config from the metadata), equal
/// transformers' logits of the same weights under the Hugging Face config (`zoo_logits.json`).
#[test]
fn zoo_gguf_logits_match_transformers() {
    let text = std::fs::read_to_string(fixture("zoo_logits.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<usize> = serde_json::from_value(reference["ids"].clone()).unwrap();
    let device = Device::default();
    for arch in ["gemma2", "gemma3", "phi3", "olmo2", "gptneox", "falcon"] {
        let path = fixture(&format!("tiny-{arch}.gguf"));
        let loaded = load_pretrained(path.to_str().unwrap(), &device).unwrap();
        let m = loaded.model.as_ref();
        let out = m.forward(
            ModelInput {
                target_embeds: m.embed(ids_tensor(std::slice::from_ref(&ids), &device)),
                target_mask: vec![vec![true; ids.len()]],
                source_embeds: None,
                source_mask: None,
            },
            ForwardOptions::default(),
        );
        let got = out.logits.into_data().try_to_vec::<f32>().unwrap();
        let rows: Vec<Vec<f32>> =
            serde_json::from_value(reference["logits"][arch].clone()).unwrap();
        let want: Vec<f32> = rows.concat();
        assert_eq!(got.len(), want.len(), "{arch}");
        let tol = 1e-4_f32.min(model_pass(max_abs(&want)) as f32);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= tol,
            "{arch}: max |ours - transformers| = {worst} > {tol}"
        );
    }
}

#[test]
fn unread_tensor_is_an_error() {
    let err = GgufModelFile::open(&fixture("llama-rope-freqs.gguf")).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("rope_freqs.weight"), "{err}");
}
