//! Python Inseq file interop: every golden `*.inseq.json` loads, our files
//! round-trip, and random outputs survive a save/load cycle.

use std::path::PathBuf;

use inseq_core::inseq_format::{
    from_inseq_bytes, from_inseq_json, parse_python_json, to_inseq_bytes, to_inseq_json,
};
use inseq_core::{
    Array, AttributionOutput, InseqSaveOptions, ScorePrecision, SequenceAttribution, TokenWithId,
};
use proptest::prelude::*;

fn golden_dir() -> PathBuf {
    inseq_fixtures::golden_dir()
}

fn golden_files() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(golden_dir()) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".inseq.json"))
        .collect();
    files.sort();
    files
}

/// Approximate equality with NaN positions matching.
fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol)
}

#[test]
fn every_golden_file_loads() {
    let files = golden_files();
    if files.is_empty() {
        eprintln!(
            "note: no golden fixtures under {}; skipping",
            golden_dir().display()
        );
        return;
    }
    for path in &files {
        let out = AttributionOutput::load_inseq(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(out.sequence_attributions.len(), 1, "{}", path.display());
        let seq = &out.sequence_attributions[0];
        assert!(seq.attr_pos_end <= seq.target.len());
        assert!(
            out.info.contains_key("attribution_method"),
            "{}",
            path.display()
        );
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let case = name.trim_end_matches(".inseq.json");
        let golden = parse_python_json(
            &std::fs::read_to_string(golden_dir().join(format!("{case}.json"))).unwrap(),
        )
        .unwrap();
        let toks = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect()
        };
        let target: Vec<String> = seq.target.iter().map(|t| t.token.clone()).collect();
        assert_eq!(target, toks(&golden["target_tokens"]), "{case}");
        let ids: Vec<i64> = seq.target.iter().map(|t| t.id).collect();
        let gids: Vec<i64> = golden["target_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ids, gids, "{case}");
        assert_eq!(
            seq.attr_pos_start as u64,
            golden["attr_pos_start"].as_u64().unwrap(),
            "{case}"
        );
        assert_eq!(
            seq.attr_pos_end as u64,
            golden["attr_pos_end"].as_u64().unwrap(),
            "{case}"
        );
        // Decoder-only models: the prompt is not kept as a source. (Step-score-only
        // cases have no attributions and a source equal to the target prefix either way.)
        let is_dec_only = !["tiny-bart", "tiny-marian"]
            .iter()
            .any(|m| case.starts_with(m));
        if !case.contains("__step_") {
            assert_eq!(seq.source.is_none(), is_dec_only, "{case}");
        }
        if let Some(src) = &seq.source {
            let s: Vec<String> = src.iter().map(|t| t.token.clone()).collect();
            assert_eq!(s, toks(&golden["source_tokens"]), "{case}");
        }
        // Raw attributions match the golden raw arrays.
        for (ours, key) in [
            (&seq.source_attributions, "raw_source_attributions"),
            (&seq.target_attributions, "raw_target_attributions"),
        ] {
            match (ours, golden.get(key)) {
                (None, None | Some(serde_json::Value::Null)) => {}
                (Some(a), Some(g)) if !g.is_null() => {
                    let g = Array::from_nested_json(g).unwrap();
                    assert_eq!(a.shape(), g.shape(), "{case} {key}");
                    // The same f32 values Python saved twice (safetensors in the .inseq.json,
                    // shortest round-trip decimals in the golden JSON): exact.
                    assert!(close(a.data(), g.data(), 0.0), "{case} {key}");
                }
                (a, g) => panic!(
                    "{case} {key}: ours {:?} vs golden {:?}",
                    a.as_ref().map(Array::shape),
                    g.is_some()
                ),
            }
        }
        for (k, v) in &seq.step_scores {
            let g = Array::from_nested_json(&golden["step_scores"][k]).unwrap();
            assert!(
                close(v, g.data(), 0.0), // exact, as above
                "{case} step score {k}"
            );
        }
    }
}

#[test]
fn golden_files_round_trip_through_our_writer() {
    for path in golden_files() {
        let out = AttributionOutput::load_inseq(&path).unwrap();
        for compress in [false, true] {
            let opts = InseqSaveOptions {
                compress,
                scores_precision: ScorePrecision::Float32,
            };
            let bytes = to_inseq_bytes(&out, &opts).unwrap();
            assert_eq!(compress, bytes.starts_with(&[0x1f, 0x8b]));
            let back = from_inseq_bytes(&bytes).unwrap();
            assert_eq!(
                back.to_json().unwrap(),
                out.to_json().unwrap(),
                "{}",
                path.display()
            );
        }
        // The Python layout: same keys and token objects as the original file.
        let ours: serde_json::Value =
            serde_json::from_str(&to_inseq_json(&out, ScorePrecision::Float32).unwrap()).unwrap();
        let theirs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let (o, t) = (
            &ours["attributes"]["sequence_attributions"][0],
            &theirs["attributes"]["sequence_attributions"][0],
        );
        assert_eq!(
            o["__instance_type__"],
            t["__instance_type__"],
            "{}",
            path.display()
        );
        assert_eq!(
            o["attributes"]["source"],
            t["attributes"]["source"],
            "{}",
            path.display()
        );
        assert_eq!(
            o["attributes"]["target"],
            t["attributes"]["target"],
            "{}",
            path.display()
        );
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&o["attributes"]), keys(&t["attributes"]));
        assert_eq!(keys(&ours["attributes"]), keys(&theirs["attributes"]));
        assert_eq!(ours["attributes"]["info"], theirs["attributes"]["info"]);
    }
}

#[test]
fn written_file_round_trips_and_is_python_shaped() {
    let out = sample();
    let dir = std::env::temp_dir().join(format!("inseq-format-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.json");
    out.save_inseq(&path, &InseqSaveOptions::default()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\n    \"__instance_type__\": [\n        \"inseq.data.attribution\",\n        \"FeatureAttributionOutput\"\n    ],"));
    assert!(
        text.contains("\\u0120world"),
        "non-ASCII escaped as Python does"
    );
    assert_eq!(
        AttributionOutput::load_inseq(&path)
            .unwrap()
            .to_json()
            .unwrap(),
        out.to_json().unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn float16_and_float8_precision() {
    let out = sample();
    // Round to nearest: f16's 10 stored mantissa bits give a relative error <= 2^-11 ~ 4.9e-4
    // (1e-3), float8_e4m3's 3 bits <= 2^-4 = 0.0625 (0.07); the 0.05 floor below covers values
    // near their subnormal range.
    for (p, tol) in [
        (ScorePrecision::Float16, 1e-3f32),
        (ScorePrecision::Float8, 0.07),
    ] {
        let text = to_inseq_json(&out, p).unwrap();
        let back = from_inseq_json(&text).unwrap();
        let a = out.sequence_attributions[0]
            .target_attributions
            .as_ref()
            .unwrap();
        let b = back.sequence_attributions[0]
            .target_attributions
            .as_ref()
            .unwrap();
        assert_eq!(a.shape(), b.shape());
        for (x, y) in a.data().iter().zip(b.data()) {
            assert!(
                (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol * x.abs().max(0.05),
                "{p:?}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    for text in [
        "",
        "[]",
        "{}",
        r#"{"__instance_type__": ["inseq.data.attribution", "Other"], "attributes": {}}"#,
        r#"{"__instance_type__": ["m", "FeatureAttributionOutput"], "attributes": {"sequence_attributions": [{"attributes": {"target": [], "target_attributions": "!!!"}}]}}"#,
        r#"{"__instance_type__": ["m", "FeatureAttributionOutput"], "attributes": {"sequence_attributions": [{"attributes": {"target": [], "target_attributions": "AAAA"}}]}}"#,
        r#"{"__instance_type__": ["m", "FeatureAttributionOutput"], "attributes": {"sequence_attributions": [{"attributes": {"target": [{"id": 1}]}}]}}"#,
    ] {
        assert!(from_inseq_json(text).is_err(), "{text}");
    }
    assert!(from_inseq_bytes(&[0x1f, 0x8b, 0, 1, 2]).is_err());
    assert!(AttributionOutput::load_inseq("/nonexistent/file.json").is_err());
    // Shape inconsistent with the tokens.
    let mut out = sample();
    out.sequence_attributions[0].attr_pos_start = 0;
    let text = to_inseq_json(&out, ScorePrecision::Float32).unwrap();
    assert!(from_inseq_json(&text).is_err());
}

fn sample() -> AttributionOutput {
    let seq = SequenceAttribution {
        source: Some(vec![
            TokenWithId::new("▁Hallo", 5),
            TokenWithId::new("</s>", 2),
        ]),
        target: vec![
            TokenWithId::new("<s>", 1),
            TokenWithId::new("Hello", 7),
            TokenWithId::new("Ġworld", 8),
        ],
        source_attributions: Some(Array::new(vec![2, 2], vec![0.5, -0.25, 1.5, 3.0]).unwrap()),
        target_attributions: Some(
            Array::new(
                vec![3, 2],
                vec![0.1, 0.2, f32::NAN, 0.7, f32::NAN, f32::NAN],
            )
            .unwrap(),
        ),
        step_scores: [("probability".to_string(), vec![0.5, 0.125])]
            .into_iter()
            .collect(),
        sequence_scores: [(
            "encoder_self_attentions".to_string(),
            Array::new(vec![2, 2], vec![1.0, 0.0, 0.5, 0.5]).unwrap(),
        )]
        .into_iter()
        .collect(),
        attr_pos_start: 1,
        attr_pos_end: 3,
        aggregations: vec![],
    };
    let mut info = std::collections::BTreeMap::new();
    info.insert(
        "attribution_method".to_string(),
        serde_json::json!("saliency"),
    );
    info.insert("input_texts".to_string(), serde_json::json!(["Hallo"]));
    AttributionOutput {
        sequence_attributions: vec![seq],
        info,
    }
}

fn token() -> impl Strategy<Value = TokenWithId> {
    ("[a-zA-Z▁Ġ<>/ é漢]{0,6}", -1i64..50_000).prop_map(|(t, i)| TokenWithId::new(t, i))
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![9 => -1e3f32..1e3f32, 1 => Just(f32::NAN)]
}

prop_compose! {
    fn sequence()(enc_dec in any::<bool>(), prompt in 0usize..4, steps in 0usize..4, src_len in 1usize..4, hidden in 0usize..3)
        (source in proptest::collection::vec(token(), src_len),
         target in proptest::collection::vec(token(), prompt + steps),
         src_vals in proptest::collection::vec(value(), src_len * steps * hidden.max(1)),
         tgt_vals in proptest::collection::vec(value(), (prompt + steps) * steps * hidden.max(1)),
         probs in proptest::collection::vec(0f32..1.0, steps),
         enc_dec in Just(enc_dec), prompt in Just(prompt), steps in Just(steps), src_len in Just(src_len), hidden in Just(hidden))
        -> SequenceAttribution {
        let shape = |rows: usize| if hidden == 0 { vec![rows, steps] } else { vec![rows, steps, hidden] };
        SequenceAttribution {
            source: enc_dec.then(|| source.clone()),
            target: target.clone(),
            source_attributions: enc_dec.then(|| Array::new(shape(src_len), src_vals.clone()).unwrap()),
            target_attributions: Some(Array::new(shape(prompt + steps), tgt_vals.clone()).unwrap()),
            step_scores: [("probability".to_string(), probs.clone())].into_iter().collect(),
            sequence_scores: Default::default(),
            attr_pos_start: prompt,
            attr_pos_end: prompt + steps,
            aggregations: vec![],
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn inseq_json_round_trip(seqs in proptest::collection::vec(sequence(), 0..3), compress in any::<bool>()) {
        let out = AttributionOutput { sequence_attributions: seqs, info: Default::default() };
        let bytes = to_inseq_bytes(&out, &InseqSaveOptions { compress, scores_precision: ScorePrecision::Float32 }).unwrap();
        let back = from_inseq_bytes(&bytes).unwrap();
        // NaN != NaN, so compare through the project's own JSON (NaN -> null).
        prop_assert_eq!(back.to_json().unwrap(), out.to_json().unwrap());
    }
}
