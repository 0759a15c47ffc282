//! Encoder-decoder architectures (Marian, BART, T5) against Hugging Face transformers outputs.

use burn::tensor::{Device, Tensor};
use inseq_core::Error;
use inseq_fixtures::tolerance::{max_abs, model_pass};
use inseq_models::{
    ForwardOptions, GenerationOptions, LanguageModel, ModelInput, ModelKind, Pretrained,
    generate_greedy, ids_tensor, load_pretrained,
};
use serde_json::Value;

const T5_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/t5");

fn device() -> Device {
    Device::default()
}

/// One of the shared tiny fixture models (`tiny-marian`, `tiny-bart`).
fn load_fixture(name: &str) -> Result<Pretrained, Error> {
    let dir = inseq_fixtures::model_dir(name);
    load_pretrained(dir.to_str().expect("utf-8 path"), &device())
}

/// `golden/logits.json`: Hugging Face's logits and attention of each tiny model on one input.
fn golden_logits() -> Value {
    read_json(
        inseq_fixtures::golden_dir()
            .join("logits.json")
            .to_str()
            .expect("utf-8 path"),
    )
}

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn ids(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as usize)
        .collect()
}

/// Flattens nested JSON number arrays (row-major).
fn flatten(v: &Value, out: &mut Vec<f32>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        Value::Number(n) => out.push(n.as_f64().expect("number") as f32),
        other => panic!("unexpected JSON value {other}"),
    }
}

fn values<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let dims = t.dims().to_vec();
    let data = t.try_to_vec_as::<f32>().expect("f32 data");
    (dims, data)
}

/// `got` matches `want` (the Hugging Face golden values, or ours from another pass) within the
/// model-pass rule: the same forward pass summed in other orders.
fn assert_close(what: &str, got: &[f32], want: &Value) {
    let mut expected = Vec::new();
    flatten(want, &mut expected);
    let tol = model_pass(max_abs(&expected)) as f32;
    assert_eq!(got.len(), expected.len(), "{what}: element count");
    let (i, diff) = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0f32),
            |acc, (i, d)| if d > acc.1 { (i, d) } else { acc },
        );
    assert!(
        diff <= tol,
        "{what}: max abs diff {diff} at {i} (got {}, want {})",
        got[i],
        expected[i]
    );
}

fn run(
    model: &dyn LanguageModel,
    source: &[usize],
    target: &[usize],
    options: ForwardOptions,
) -> inseq_models::ModelOutput {
    let dev = model.device().clone();
    let input = ModelInput {
        target_embeds: model.embed(ids_tensor(&[target.to_vec()], &dev)),
        target_mask: vec![vec![true; target.len()]],
        source_embeds: Some(model.embed_source(ids_tensor(&[source.to_vec()], &dev))),
        source_mask: Some(vec![vec![true; source.len()]]),
    };
    model.forward(input, options)
}

/// Logits and last-layer decoder self- and cross-attention match `golden/logits.json`.
fn check_golden(name: &str, encoder_layers: usize, decoder_layers: usize) {
    let golden = golden_logits();
    let g = &golden[name];
    let m = load_fixture(name).expect("load");
    let model = m.model.as_ref();
    assert_eq!(model.kind(), ModelKind::EncoderDecoder);
    assert_eq!(model.info().architecture, name.trim_start_matches("tiny-"));
    let (src, tgt) = (ids(&g["source_ids"]), ids(&g["decoder_input_ids"]));
    let out = run(
        model,
        &src,
        &tgt,
        ForwardOptions {
            attentions: true,
            hidden_states: true,
            last_position_only: false,
            ..Default::default()
        },
    );
    let (dims, logits) = values(out.logits.clone());
    assert_eq!(dims, vec![1, tgt.len(), model.info().vocab_size]);
    assert_close(&format!("{name} logits"), &logits, &g["logits"]);

    assert_eq!(out.attentions.len(), decoder_layers);
    assert_eq!(out.cross_attentions.len(), decoder_layers);
    assert_eq!(out.encoder_attentions.len(), encoder_layers);
    assert_eq!(out.hidden_states.len(), decoder_layers + 1);
    let (dims, att) = values(out.attentions[decoder_layers - 1].clone());
    assert_eq!(dims, vec![1, model.info().num_heads, tgt.len(), tgt.len()]);
    assert_close(
        &format!("{name} decoder attentions"),
        &att,
        &g["decoder_attentions_last_layer"],
    );
    let (dims, cross) = values(out.cross_attentions[decoder_layers - 1].clone());
    assert_eq!(dims, vec![1, model.info().num_heads, tgt.len(), src.len()]);
    assert_close(
        &format!("{name} cross attentions"),
        &cross,
        &g["cross_attentions_last_layer"],
    );
    let (dims, _) = values(out.encoder_attentions[0].clone());
    assert_eq!(dims, vec![1, 4, src.len(), src.len()]);

    // `last_position_only` gives the last row of the full logits.
    let last = run(
        model,
        &src,
        &tgt,
        ForwardOptions {
            last_position_only: true,
            ..Default::default()
        },
    );
    let (dims, last_logits) = values(last.logits);
    assert_eq!(dims, vec![1, 1, model.info().vocab_size]);
    let (_, full_last) = values(out.last_logits());
    assert_close(
        &format!("{name} last-position logits"),
        &last_logits,
        &Value::from(full_last.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()),
    );
}

#[test]
fn marian_matches_transformers() {
    check_golden("tiny-marian", 2, 2);
}

#[test]
fn bart_matches_transformers() {
    check_golden("tiny-bart", 2, 2);
}

#[test]
fn decoder_start_tokens_come_from_config() {
    let marian = load_fixture("tiny-marian").expect("marian");
    assert_eq!(marian.model.info().decoder_start_token_id, Some(0));
    assert_eq!(marian.model.info().hf_class, "MarianMTModel");
    let bart = load_fixture("tiny-bart").expect("bart");
    assert_eq!(bart.model.info().decoder_start_token_id, Some(2));
    assert_eq!(bart.model.info().hf_class, "BartForConditionalGeneration");
}

/// Left padding in a batch does not change the unpadded row's logits at real positions.
#[test]
fn padding_masks_are_honoured() {
    let golden = golden_logits();
    for name in ["tiny-marian", "tiny-bart"] {
        let g = &golden[name];
        let m = load_fixture(name).expect("load");
        let model = m.model.as_ref();
        let dev = model.device().clone();
        let (src, tgt) = (ids(&g["source_ids"]), ids(&g["decoder_input_ids"]));
        let pad = model.info().pad_token_id.unwrap_or(0);
        // Row 1 is row 0 with its source right-padded by two tokens.
        let mut padded_src = src.clone();
        padded_src.extend([pad, pad]);
        let mut src_mask = vec![vec![true; src.len() + 2]; 2];
        src_mask[1][src.len()..].fill(false);
        let mut plain_src = src.clone();
        plain_src.extend([src[0], src[1]]);
        let input = ModelInput {
            target_embeds: model.embed(ids_tensor(&[tgt.clone(), tgt.clone()], &dev)),
            target_mask: vec![vec![true; tgt.len()]; 2],
            source_embeds: Some(model.embed_source(ids_tensor(&[plain_src, padded_src], &dev))),
            source_mask: Some(src_mask),
        };
        let (_, logits) = values(model.forward(input, ForwardOptions::default()).logits);
        let row = tgt.len() * model.info().vocab_size;
        assert_close(
            &format!("{name} padded source"),
            &logits[row..],
            &g["logits"],
        );
    }
}

#[test]
fn greedy_generation_runs() {
    for name in ["tiny-marian", "tiny-bart"] {
        let m = load_fixture(name).expect("load");
        let model = m.model.as_ref();
        let src = m.tokenizer.encode("Hello world", true).expect("encode");
        let start = model.info().decoder_start_token_id.expect("decoder start");
        let new = generate_greedy(
            model,
            Some(&src),
            &[start],
            GenerationOptions {
                max_new_tokens: 6,
                ..Default::default()
            },
        )
        .expect("generate");
        assert!(!new.is_empty() && new.len() <= 6, "{name}: {new:?}");
        assert!(
            new.iter().all(|&t| t < model.info().vocab_size),
            "{name}: {new:?}"
        );
        // An empty prefix starts from the decoder start token.
        let from_empty = generate_greedy(
            model,
            Some(&src),
            &[],
            GenerationOptions {
                max_new_tokens: 6,
                ..Default::default()
            },
        )
        .expect("generate from empty prefix");
        assert_eq!(from_empty, new, "{name}");
        // Bad input is an error, not a panic.
        let vocab = model.info().vocab_size;
        assert!(
            generate_greedy(
                model,
                Some(&src),
                &[start, vocab],
                GenerationOptions::default()
            )
            .is_err()
        );
        assert!(generate_greedy(model, Some(&[]), &[start], GenerationOptions::default()).is_err());
        // An encoder-decoder model cannot generate without a source.
        assert!(generate_greedy(model, None, &[start], GenerationOptions::default()).is_err());
    }
}

#[test]
fn t5_matches_transformers() {
    let golden = read_json(&format!("{T5_DIR}/logits.json"));
    for (name, g) in golden.as_object().expect("object") {
        let m = load_pretrained(&format!("{T5_DIR}/{name}"), &device()).expect("load t5");
        let model = m.model.as_ref();
        assert_eq!(model.info().architecture, "t5");
        assert_eq!(model.info().decoder_start_token_id, Some(0));
        let (src, tgt) = (ids(&g["source_ids"]), ids(&g["decoder_input_ids"]));
        let out = run(
            model,
            &src,
            &tgt,
            ForwardOptions {
                attentions: true,
                ..Default::default()
            },
        );
        let (_, logits) = values(out.logits);
        assert_close(&format!("{name} logits"), &logits, &g["logits"]);
        let last = out.attentions.len() - 1;
        let (_, att) = values(out.attentions[last].clone());
        assert_close(
            &format!("{name} decoder attentions"),
            &att,
            &g["decoder_attentions_last_layer"],
        );
        let (_, cross) = values(out.cross_attentions[last].clone());
        assert_close(
            &format!("{name} cross attentions"),
            &cross,
            &g["cross_attentions_last_layer"],
        );
        let new = generate_greedy(model, Some(&src), &[0], GenerationOptions::default())
            .expect("generate");
        assert!(new.iter().all(|&t| t < model.info().vocab_size));
    }
}

#[test]
fn unsupported_architecture_is_reported() {
    let dir = std::env::temp_dir().join(format!("inseq-unsupported-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("config.json"), r#"{"model_type":"whisper"}"#).expect("config");
    for file in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(
            inseq_fixtures::model_dir("tiny-marian").join(file),
            dir.join(file),
        )
        .expect("copy");
    }
    let result = load_pretrained(dir.to_str().expect("utf-8 path"), &device());
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Err(e @ Error::UnsupportedArchitecture(_)) => {
            assert!(e.to_string().contains("whisper"), "{e}");
        }
        Err(other) => panic!("expected UnsupportedArchitecture, got {other}"),
        Ok(_) => panic!("expected UnsupportedArchitecture, got a model"),
    }
}

/// `tests/fixtures/zoo/encdec_logits.json` (written by `make_encdec.py`): transformers' logits and
/// last-layer attentions of the tiny mBART, M2M100, mT5 and UMT5 models.
fn zoo_logits() -> Value {
    let path = inseq_fixtures::golden_dir()
        .parent()
        .expect("fixtures dir")
        .join("zoo/encdec_logits.json");
    read_json(path.to_str().expect("utf-8 path"))
}

/// Max |ours − theirs| over a tensor (printed for the record; the assertion is `assert_close`).
fn max_diff(got: &[f32], want: &Value) -> f32 {
    let mut expected = Vec::new();
    flatten(want, &mut expected);
    got.iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn mbart_m2m100_mt5_umt5_match_transformers() {
    let golden = zoo_logits();
    for (name, g) in golden.as_object().expect("object") {
        let m = load_fixture(name).expect("load");
        let model = m.model.as_ref();
        assert_eq!(model.info().hf_class, g["class"].as_str().expect("class"));
        let (src, tgt) = (ids(&g["source_ids"]), ids(&g["decoder_input_ids"]));
        let options = ForwardOptions {
            attentions: true,
            hidden_states: true,
            ..Default::default()
        };
        let out = run(model, &src, &tgt, options);
        let last = out.attentions.len() - 1;
        assert_eq!(last + 1, model.info().num_layers, "{name} decoder layers");
        assert_eq!(out.hidden_states.len(), model.info().num_layers + 1);
        let (_, logits) = values(out.logits);
        let (_, att) = values(out.attentions[last].clone());
        let (_, cross) = values(out.cross_attentions[last].clone());
        eprintln!(
            "{name}: max abs diff logits {:.2e}, decoder attentions {:.2e}, cross attentions {:.2e}",
            max_diff(&logits, &g["logits"]),
            max_diff(&att, &g["decoder_attentions_last_layer"]),
            max_diff(&cross, &g["cross_attentions_last_layer"]),
        );
        assert_close(&format!("{name} logits"), &logits, &g["logits"]);
        assert!(
            max_diff(&logits, &g["logits"]) <= 1e-4,
            "{name} logits within 1e-4"
        );
        assert_close(
            &format!("{name} decoder attentions"),
            &att,
            &g["decoder_attentions_last_layer"],
        );
        assert_close(
            &format!("{name} cross attentions"),
            &cross,
            &g["cross_attentions_last_layer"],
        );
    }
}

#[test]
fn zoo_models_take_their_special_tokens_from_config() {
    let mbart = load_fixture("tiny-mbart").expect("mbart");
    assert_eq!(mbart.model.info().decoder_start_token_id, Some(2));
    let options = mbart
        .generation_config
        .options()
        .expect("generation options");
    assert_eq!(options.forced_bos_token_id, Some(250));
    let src = [5, 17, 42, 2];
    let new = generate_greedy(mbart.model.as_ref(), Some(&src), &[2], options).expect("generate");
    assert_eq!(
        new.first(),
        Some(&250),
        "the forced language code comes first"
    );
    let m2m = load_fixture("tiny-m2m100").expect("m2m100");
    assert_eq!(m2m.model.info().pad_token_id, Some(1));
    assert_eq!(m2m.model.info().decoder_start_token_id, Some(2));
    // Without `decoder_start_token_id`, generate starts from `bos_token_id` (mBART-cc25 style).
    let dir = std::env::temp_dir().join(format!("inseq-mbart-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = inseq_fixtures::model_dir("tiny-mbart");
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config
        .as_object_mut()
        .unwrap()
        .remove("decoder_start_token_id");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let cc25 = load_pretrained(dir.to_str().unwrap(), &device());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        cc25.expect("load").model.info().decoder_start_token_id,
        Some(1)
    );
    let umt5 = load_fixture("tiny-umt5").expect("umt5");
    assert_eq!(umt5.model.info().decoder_start_token_id, Some(0));
    assert_eq!(umt5.special_tokens.config_eos, vec![1, 3]);
    assert_eq!(umt5.special_tokens.unk, None);
    assert_eq!(umt5.special_tokens.bos, None);
}
