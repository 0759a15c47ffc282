//! The findings of the hostile run (`tests/hostile/RESULTS.md`), each now a clean error or a
//! legitimate success: one test per finding.

mod common;

use common::{assert_error, assert_ok, inseq};

fn gpt2() -> String {
    common::model_dir("tiny-gpt2")
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("inseq-hostile-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn attribute(extra: &[&str]) -> std::process::Output {
    let model = gpt2();
    let mut args = vec!["attribute", "--model", &model, "--input", "Hello world"];
    args.extend_from_slice(extra);
    inseq(&args)
}

#[test]
fn discretized_integrated_gradients_has_the_n_steps_limit() {
    let out = attribute(&[
        "--max-new-tokens",
        "1",
        "--method",
        "discretized_integrated_gradients",
        "--method-args",
        "n_steps=100000",
    ]);
    assert_error(&out, "over the limit of 10000");
}

#[test]
fn an_empty_viz_path_fails_before_anything_is_written() {
    let save = scratch("viz").join("out.json");
    let out = attribute(&[
        "--max-new-tokens",
        "1",
        "--save",
        save.to_str().unwrap(),
        "--viz",
        "html:",
    ]);
    assert_error(&out, "--viz");
    assert!(
        !save.exists(),
        "the --save file was written before the --viz check"
    );
}

#[test]
fn generation_stops_at_the_context_and_is_attributed() {
    // tiny-gpt2's context is 128 tokens: the generation stops there and is attributed whole.
    let save = scratch("ctx").join("out.json");
    assert_ok(&attribute(&[
        "--max-new-tokens",
        "200",
        "--method",
        "attention",
        "--save",
        save.to_str().unwrap(),
    ]));
    let out = inseq::AttributionOutput::load(&save).unwrap();
    assert_eq!(out.sequence_attributions[0].target.len(), 128);
}

#[test]
fn beams_are_bounded() {
    assert_error(
        &attribute(&["--max-new-tokens", "1", "--num-beams", "100000"]),
        "at most 1024",
    );
}

#[test]
fn negative_numbers_name_their_flag() {
    for flag in ["--max-new-tokens", "--top-k", "--seed", "--num-beams"] {
        assert_error(&attribute(&[flag, "-1"]), flag);
    }
}

#[test]
fn pipelines_with_empty_steps_and_alignments_outside_the_text_are_errors() {
    assert_error(
        &attribute(&[
            "--max-new-tokens",
            "1",
            "--aggregation",
            "subwords:sum,,vnorm",
        ]),
        "empty step",
    );
    let out = attribute(&[
        "--target",
        "Hello world and",
        "--contrast-target",
        "Hello world or",
        "--contrast-alignments",
        "99-99",
    ]);
    assert_error(&out, "99-99");
}

#[test]
fn a_batch_size_of_zero_is_an_error() {
    let dir = scratch("batch");
    let data = dir.join("rows.jsonl");
    std::fs::write(&data, "{\"text\": \"Hello world\"}\n").unwrap();
    let out = inseq(&[
        "attribute-dataset",
        "--model",
        &gpt2(),
        "--data",
        data.to_str().unwrap(),
        "--save",
        dir.join("store.jsonl").to_str().unwrap(),
        "--batch-size",
        "0",
    ]);
    assert_error(&out, "--batch-size");
}

#[test]
fn a_null_input_field_is_a_missing_value() {
    let dir = scratch("null");
    let data = dir.join("rows.jsonl");
    std::fs::write(&data, "{\"text\": \"Hello\"}\n{\"text\": null}\n").unwrap();
    let out = inseq(&[
        "attribute-dataset",
        "--model",
        &gpt2(),
        "--data",
        data.to_str().unwrap(),
        "--save",
        dir.join("store.jsonl").to_str().unwrap(),
        "--on-error",
        "fail",
    ]);
    assert_error(&out, "missing field `text`");
}

/// A config value the model's loader rejects names the field and the config file.
#[test]
fn config_values_rejected_by_the_loader_name_the_field_and_file() {
    let cases = [
        (
            "\"num_attention_heads\": 4",
            "\"num_attention_heads\": 3",
            "num_key_value_heads",
        ),
        (
            "\"rope_theta\": 10000.0",
            "\"rope_theta\": \"big\"",
            "rope_parameters.rope_theta",
        ),
    ];
    for (i, (from, to, field)) in cases.into_iter().enumerate() {
        let dir = inseq_fixtures::copy_model("tiny-llama", &format!("config-field-{i}"));
        let config = dir.join("config.json");
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&config, text.replace(from, to)).unwrap();
        let model = dir.to_string_lossy().into_owned();
        let out = inseq(&["attribute", "--model", &model, "--input", "Hello world"]);
        assert_error(&out, field);
        assert_error(&out, &config.to_string_lossy());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
