//! The `inseq` binary: happy path and a clear error (non-zero exit, no panic) for each bad input.

mod common;

use common::{assert_error, inseq};

#[test]
fn attribute_prints_heatmap_and_saves_json() {
    let dir = std::env::temp_dir().join(format!("inseq-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let save = dir.join("out.json");
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-gpt2"),
        "--method",
        "integrated_gradients",
        "--method-args",
        "n_steps=8",
        "--input",
        "Hello ladies and",
        "--max-new-tokens",
        "3",
        "--step-scores",
        "probability,entropy",
        "--save",
        save.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ladies") || stdout.contains("la "),
        "heatmap lacks tokens: {stdout}"
    );
    assert!(
        stdout.contains("probability"),
        "heatmap lacks step scores: {stdout}"
    );
    let saved = inseq::AttributionOutput::load(&save).unwrap();
    // the 3 generated tokens are re-tokenised as Inseq does, which may give more tokens
    assert!(saved.sequence_attributions[0].n_steps() >= 3);
    assert_eq!(saved.info["attribution_method"], "integrated_gradients");
}

#[test]
fn list_commands_show_ids() {
    let out = inseq(&["list-methods"]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for id in ["saliency", "input_x_gradient", "integrated_gradients"] {
        assert!(s.contains(id), "{s}");
    }
    let out = inseq(&["list-step-functions"]);
    let s = String::from_utf8_lossy(&out.stdout);
    for id in [
        "logit",
        "probability",
        "entropy",
        "crossentropy",
        "perplexity",
        "top_p_size",
    ] {
        assert!(s.contains(id), "{s}");
    }
}

#[test]
fn unknown_method_id() {
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-gpt2"),
        "--method",
        "magic",
        "--input",
        "Hi",
    ]);
    assert_error(&out, "unknown attribution method `magic`");
}

#[test]
fn unknown_step_function() {
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-gpt2"),
        "--input",
        "Hello",
        "--step-scores",
        "nope",
    ]);
    assert_error(&out, "unknown step function `nope`");
}

#[test]
fn missing_model_directory() {
    let out = inseq(&[
        "attribute",
        "--model",
        "/nonexistent/model",
        "--input",
        "Hi",
    ]);
    assert_error(&out, "missing model file");
}

#[test]
fn missing_tokenizer_and_corrupt_files() {
    let base = std::env::temp_dir().join(format!("inseq-bad-model-{}", std::process::id()));
    let src = common::shared().join("models/tiny-gpt2");
    // no tokenizer.json
    let no_tok = base.join("no-tokenizer");
    std::fs::create_dir_all(&no_tok).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), no_tok.join(f)).unwrap();
    }
    assert_error(
        &inseq(&[
            "attribute",
            "--model",
            no_tok.to_str().unwrap(),
            "--input",
            "Hi",
        ]),
        "tokenizer.json",
    );
    // corrupt config.json
    let bad_cfg = base.join("bad-config");
    std::fs::create_dir_all(&bad_cfg).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), bad_cfg.join(f)).unwrap();
    }
    std::fs::write(bad_cfg.join("config.json"), "{not json").unwrap();
    assert_error(
        &inseq(&[
            "attribute",
            "--model",
            bad_cfg.to_str().unwrap(),
            "--input",
            "Hi",
        ]),
        "config.json",
    );
    // truncated safetensors
    let trunc = base.join("truncated");
    std::fs::create_dir_all(&trunc).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), trunc.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert_error(
        &inseq(&[
            "attribute",
            "--model",
            trunc.to_str().unwrap(),
            "--input",
            "Hi",
        ]),
        "model.safetensors",
    );
    // unsupported architecture
    let arch = base.join("arch");
    std::fs::create_dir_all(&arch).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), arch.join(f)).unwrap();
    }
    std::fs::write(arch.join("config.json"), r#"{"model_type": "whisper"}"#).unwrap();
    assert_error(
        &inseq(&[
            "attribute",
            "--model",
            arch.to_str().unwrap(),
            "--input",
            "Hi",
        ]),
        "unsupported model architecture `whisper",
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn empty_input() {
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-gpt2"),
        "--input",
        "   ",
    ]);
    assert_error(&out, "input text is empty");
}

#[test]
fn target_must_start_with_input_for_decoder_only() {
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-llama"),
        "--input",
        "Hello ladies",
        "--target",
        "Goodbye everyone",
    ]);
    assert_error(&out, "target must start with the input");
}

#[test]
fn input_longer_than_context() {
    let long = "word ".repeat(300);
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-gpt2"),
        "--input",
        &long,
    ]);
    assert_error(&out, "longer than the model's context of 128 tokens");
}

#[test]
fn bad_method_argument() {
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-gpt2"),
        "--method",
        "integrated_gradients",
        "--method-args",
        "n_steps=0",
        "--input",
        "Hello",
    ]);
    assert_error(&out, "n_steps");
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-gpt2"),
        "--method",
        "saliency",
        "--method-args",
        "n_steps=4",
        "--input",
        "Hello",
    ]);
    assert_error(&out, "not an argument of `saliency`");
}

#[test]
fn save_failure_leaves_no_partial_file() {
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-gpt2"),
        "--input",
        "Hello",
        "--max-new-tokens",
        "1",
        "--save",
        "/nonexistent-dir/out.json",
    ]);
    assert_error(&out, "out.json");
}

#[test]
fn viz_and_inseq_format_outputs() {
    let dir = std::env::temp_dir().join(format!("inseq-cli-viz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (html, svg, inseq_file) = (
        dir.join("out.html"),
        dir.join("out.svg"),
        dir.join("out.inseq.json"),
    );
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-marian"),
        "--method",
        "saliency",
        "--input",
        "The developer argued with the designer.",
        "--target",
        "Le développeur s'est disputé.",
        "--attribute-target",
        "--viz",
        &format!("html:{}", html.display()),
        "--viz",
        &format!("svg:{}", svg.display()),
        "--save-inseq",
        inseq_file.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<html") && page.contains("designer"),
        "html lacks tokens"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "html must be self-contained"
    );
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(
        picture.starts_with("<svg") || picture.contains("<svg"),
        "not an svg"
    );
    let back = inseq::AttributionOutput::load_inseq(&inseq_file).unwrap();
    let seq = &back.sequence_attributions[0];
    assert!(
        seq.source.is_some()
            && seq.source_attributions.is_some()
            && seq.target_attributions.is_some()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn source_longer_than_context_for_encoder_decoder() {
    let long = "word ".repeat(300);
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-bart"),
        "--input",
        &long,
        "--target",
        "Le",
    ]);
    assert_error(&out, "longer than the model's context");
}

/// Options are checked before any model work: a bad `--aggregation` or `--viz`, or a `--viz`
/// folder that does not exist, fails without writing the `--save` file.
#[test]
fn bad_output_options_fail_before_saving() {
    let dir = std::env::temp_dir().join(format!("inseq-cli-late-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let save = dir.join("out.json");
    let cases = [
        (["--aggregation", "words"], "words"),
        (["--viz", "bogus:x"], "unknown kind `bogus`"),
        (
            ["--viz", "html:/missing/dir/x.html"],
            "the folder /missing/dir does not exist",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec![
            "attribute",
            "--model",
            "/nonexistent/model",
            "--input",
            "Hello",
            "--save",
            save.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = inseq(&args);
        assert_error(&out, needle);
        // checked before the model is loaded (its path does not exist)
        assert!(!String::from_utf8_lossy(&out.stderr).contains("missing model file"));
        assert!(!save.exists(), "{extra:?} wrote --save");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A copy of tiny-llama whose `generation_config.json` also holds `extra`.
fn llama_with_generation_config(name: &str, extra: serde_json::Value) -> std::path::PathBuf {
    let dir = common::copy_model("tiny-llama", &format!("gencfg-{name}"));
    let path = dir.join("generation_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

/// The generated token ids `inseq attribute` saves for `args`.
fn generated_by_cli(model: &std::path::Path, args: &[&str]) -> Vec<i64> {
    let save = model.join(format!(
        "out-{}.json",
        args.join("_").replace(['{', '}', '"', ':', ' '], "")
    ));
    let mut all = vec![
        "attribute",
        "--model",
        model.to_str().unwrap(),
        "--method",
        "dummy",
    ];
    all.extend([
        "--input",
        "Hello ladies and",
        "--max-new-tokens",
        "5",
        "--save",
    ]);
    all.push(save.to_str().unwrap());
    all.extend(args);
    let out = inseq(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let seq = &saved["sequence_attributions"][0];
    let start = seq["attr_pos_start"].as_u64().unwrap() as usize;
    seq["target"].as_array().unwrap()[start..]
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect()
}

/// The CLI decodes as `generate` does: from the model's generation_config.json, overridden by the
/// flags given and `--generation-args`; an unimplemented key that matters is a clear error.
#[test]
fn generation_config_defaults_apply_and_flags_override_them() {
    let plain = llama_with_generation_config("plain", serde_json::json!({}));
    let beams = llama_with_generation_config("beams", serde_json::json!({"num_beams": 3}));
    let greedy = generated_by_cli(&plain, &[]);
    let beam = generated_by_cli(&plain, &["--num-beams", "3"]);
    assert_eq!(
        generated_by_cli(&beams, &[]),
        beam,
        "num_beams from the file"
    );
    assert_eq!(generated_by_cli(&beams, &["--num-beams", "1"]), greedy);
    let json = r#"{"num_beams": 1}"#;
    assert_eq!(
        generated_by_cli(&beams, &["--generation-args", json]),
        greedy
    );
    let bad = llama_with_generation_config("bad", serde_json::json!({"suppress_tokens": [5]}));
    let attribute_bad = |extra: &[&str]| {
        let mut args = vec![
            "attribute",
            "--model",
            bad.to_str().unwrap(),
            "--method",
            "dummy",
        ];
        args.extend(["--input", "Hello"]);
        args.extend(extra);
        inseq(&args)
    };
    let out = attribute_bad(&[]);
    assert_error(&out, "suppress_tokens");
    assert_error(&out, "generation_config.json");
    let forced = attribute_bad(&["--target", "Hello there"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
}

#[test]
fn memory_budget_too_small_fails_before_attributing_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("inseq-cli-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let save = dir.join("out.json");
    let model = common::model_dir("tiny-gpt2");
    let run = |budget: &str| {
        common::inseq(&[
            "attribute",
            "--model",
            &model,
            "--input",
            "Hello ladies and",
            "--max-new-tokens",
            "2",
            "--memory-budget",
            budget,
            "--save",
            save.to_str().unwrap(),
        ])
    };
    common::assert_error(&run("1K"), "not enough memory");
    assert!(!save.exists(), "nothing is written");
    common::assert_error(&run("lots"), "not a positive size");
    common::assert_ok(&run("1G"));
    assert!(save.exists());
}

/// `--src-lang` / `--tgt-lang` reach the tokenizer: a tokenizer without languages to set (here
/// tiny-mbart's tokenizer.json) says so.
#[test]
fn language_flags_reach_the_tokenizer() {
    let out = inseq(&[
        "attribute",
        "--model",
        &common::model_dir("tiny-mbart"),
        "--input",
        "Hello",
        "--src-lang",
        "en_XX",
    ]);
    assert_error(&out, "src_lang/tgt_lang");
}

/// `--weights compact` (bf16 matrices kept as stored, widened per use) prints what `--weights f32`
/// prints; a storage name outside auto/compact/f32 is a clear error.
#[test]
fn weights_compact_and_f32_print_the_same() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../inseq-models/tests/fixtures/compact/tiny-llama-bf16");
    let model = model.to_str().unwrap();
    let run = |weights: &str| {
        inseq(&[
            "attribute",
            "--model",
            model,
            "--weights",
            weights,
            "--input",
            "Hello ladies and",
            "--max-new-tokens",
            "3",
        ])
    };
    let compact = common::assert_ok(&run("compact"));
    assert_eq!(compact, common::assert_ok(&run("f32")));
    assert_error(&run("bf16"), "`bf16` (expected auto, compact or f32");
}
