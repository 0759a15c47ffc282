//! SmolLM2-135M-Instruct (Q4_1 GGUF): saliency matches Python Inseq 0.7.1 run on the same file
//! through transformers (reference made by tests/fixtures/make_smollm2_reference.py).

use inseq::parity::compare_arrays;
use inseq::{Array, AttributeOptions, MethodArgs, aggregate, load_model};

#[test]
fn saliency_matches_python_inseq_on_smollm2() {
    let path = inseq::models::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(
            std::env::var("INSEQ_REQUIRE_MODELS").is_err(),
            "SmolLM2 missing: run cargo xtask fetch-models"
        );
        eprintln!("skipping: SmolLM2 not downloaded (cargo xtask fetch-models)");
        return;
    }
    let reference = inseq::core::inseq_format::parse_python_json(include_str!(
        "fixtures/smollm2_saliency.json"
    ))
    .unwrap();
    let device = inseq::default_device().unwrap();
    let model = load_model("smollm2", "saliency", MethodArgs::default(), &device).unwrap();
    let opts = AttributeOptions {
        targets: Some(vec![reference["target"].as_str().unwrap().to_string()]),
        step_scores: vec!["probability".into()],
        ..Default::default()
    };
    let raw = model
        .attribute(&[reference["input"].as_str().unwrap()], &opts)
        .unwrap();
    let agg = aggregate(&raw).unwrap();
    let (seq, shown) = (&raw.sequence_attributions[0], &agg.sequence_attributions[0]);
    let ids: Vec<i64> = seq.target.iter().map(|t| t.id).collect();
    let golden_ids: Vec<i64> = reference["target_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids, golden_ids);
    assert_eq!(
        seq.attr_pos_start as u64,
        reference["attr_pos_start"].as_u64().unwrap()
    );
    for (key, ours) in [
        ("raw_target_attributions", seq.target_attributions.as_ref()),
        ("target_attributions", shown.target_attributions.as_ref()),
    ] {
        let golden = Array::from_nested_json(&reference[key]).unwrap();
        if let Some(problem) = compare_arrays(key, Some(&golden), ours) {
            panic!("{problem}");
        }
    }
    let golden_p: Vec<f64> = reference["step_scores"]["probability"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (o, g) in seq.step_scores["probability"].iter().zip(&golden_p) {
        assert!(
            (*o as f64 - g).abs() < 1e-3 * g.abs().max(1e-3),
            "probability {o} vs {g}"
        );
    }
}
