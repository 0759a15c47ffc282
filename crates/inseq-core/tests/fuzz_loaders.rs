//! Property-based fuzzing of the two result loaders: this project's JSON
//! (`AttributionOutput::from_json`) and Python Inseq's file format
//! (`inseq_format::from_inseq_json` / `from_inseq_bytes`).
//!
//! Random text, random bytes, mutated valid files and hostile headers must give
//! an `Err`, never a panic, and never an allocation sized from a claimed (not
//! actual) length. Whatever loads must be safe to use (`n_steps`, `generated`).

use std::io::Write;

use base64::Engine;
use inseq_core::inseq_format::{from_inseq_bytes, from_inseq_json, to_inseq_bytes};
use inseq_core::{
    Array, AttributionOutput, Error, InseqSaveOptions, SequenceAttribution, TokenWithId,
};
use proptest::prelude::*;

fn sample() -> AttributionOutput {
    let target = ["Hel", "lo", "Ġla", "dies"]
        .iter()
        .enumerate()
        .map(|(i, t)| TokenWithId::new(*t, i as i64))
        .collect();
    let mut a = Array::full(vec![4, 2, 3], f32::NAN);
    for r in 0..4 {
        for c in 0..2 {
            for k in 0..3 {
                a.set(&[r, c, k], (r + c + k) as f32 * 0.5 - 1.0);
            }
        }
    }
    let seq = SequenceAttribution {
        source: None,
        target,
        source_attributions: None,
        target_attributions: Some(a),
        step_scores: [("probability".to_string(), vec![0.25, 0.5])]
            .into_iter()
            .collect(),
        sequence_scores: Default::default(),
        attr_pos_start: 2,
        attr_pos_end: 4,
        aggregations: vec![],
    };
    AttributionOutput {
        sequence_attributions: vec![seq],
        info: [("attribution_method".to_string(), "saliency".into())]
            .into_iter()
            .collect(),
    }
}

/// Whatever a loader accepted must be usable without panics.
fn exercise(out: &AttributionOutput) {
    for seq in &out.sequence_attributions {
        assert!(seq.attr_pos_start <= seq.attr_pos_end);
        assert!(seq.attr_pos_end <= seq.target.len());
        let _ = seq.n_steps();
        let _ = seq.generated();
        for a in [&seq.source_attributions, &seq.target_attributions]
            .into_iter()
            .flatten()
        {
            assert_eq!(a.shape().iter().product::<usize>(), a.data().len());
            let _ = a.max_abs();
        }
    }
    // Re-serialising what was loaded also works.
    let _ = out.to_json();
}

fn mutate(bytes: &mut Vec<u8>, edits: &[(usize, u8, u8)]) {
    for &(at, op, val) in edits {
        if bytes.is_empty() {
            bytes.push(val);
            continue;
        }
        let at = at % bytes.len();
        match op % 4 {
            0 => bytes[at] = val,
            1 => {
                bytes.remove(at);
            }
            2 => bytes.insert(at, val),
            _ => bytes.truncate(at),
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn from_json_random_text_never_panics(text in ".{0,300}") {
        if let Ok(out) = AttributionOutput::from_json(&text) {
            exercise(&out);
        }
    }

    #[test]
    fn from_json_mutated_never_panics(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let mut bytes = sample().to_json().unwrap().into_bytes();
        mutate(&mut bytes, &edits);
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(out) = AttributionOutput::from_json(&text) {
            exercise(&out);
        }
    }

    #[test]
    fn from_inseq_bytes_random_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(out) = from_inseq_bytes(&bytes) {
            exercise(&out);
        }
        // Also behind a (valid) gzip layer.
        if let Ok(out) = from_inseq_bytes(&gzip(&bytes)) {
            exercise(&out);
        }
    }

    #[test]
    fn from_inseq_mutated_never_panics(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
        compress in any::<bool>(),
    ) {
        let opts = InseqSaveOptions { compress, ..Default::default() };
        let mut bytes = to_inseq_bytes(&sample(), &opts).unwrap();
        mutate(&mut bytes, &edits);
        if let Ok(out) = from_inseq_bytes(&bytes) {
            exercise(&out);
        }
    }

    /// Array shapes whose product overflows or does not match the data.
    #[test]
    fn hostile_array_shapes_are_errors(shape in prop::collection::vec(any::<usize>(), 0..5), n in 0usize..8) {
        let data: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let text = format!(
            r#"{{"sequence_attributions":[{{"source":null,"target":[{{"token":"a","id":0}}],
               "source_attributions":null,"target_attributions":{{"shape":{shape:?},"data":[{}]}},
               "step_scores":{{}},"attr_pos_start":0,"attr_pos_end":1}}],"info":{{}}}}"#,
            data.join(",")
        );
        match AttributionOutput::from_json(&text) {
            Ok(out) => exercise(&out),
            Err(e) => prop_assert!(matches!(e, Error::Json(_)), "{e}"),
        }
    }

    /// Positions outside the target never load (they would make `n_steps` and
    /// `generated` panic later).
    #[test]
    fn inconsistent_positions_are_errors(start in 0usize..10, end in 0usize..10) {
        let mut out = sample();
        out.sequence_attributions[0].attr_pos_start = start;
        out.sequence_attributions[0].attr_pos_end = end;
        let text = serde_json::to_string(&out).unwrap();
        let res = AttributionOutput::from_json(&text);
        if start <= end && end <= 4 {
            prop_assert!(res.is_ok());
        } else {
            let msg = res.unwrap_err().to_string();
            prop_assert!(msg.contains("attr_pos"), "{msg}");
        }
    }
}

#[test]
fn huge_array_shape_is_rejected_quickly() {
    // 2^62 * 4 overflows usize: must be an error, not an overflow panic.
    let text = r#"{"sequence_attributions":[{"source":null,"target":[{"token":"a","id":0}],
        "source_attributions":null,"target_attributions":{"shape":[4611686018427387904,4],"data":[]},
        "step_scores":{},"attr_pos_start":0,"attr_pos_end":1}],"info":{}}"#;
    let err = AttributionOutput::from_json(text).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
}

/// Nested lists whose first elements claim a huge product (10 levels of 64
/// entries would be 64^10 floats) but are ragged: a small error, no allocation
/// sized from the first elements.
#[test]
fn ragged_nested_lists_do_not_preallocate() {
    let mut v = String::from("0");
    for _ in 0..10 {
        let siblings = vec!["[]"; 63].join(",");
        v = format!("[{v},{siblings}]");
    }
    // A nested first element of length 1 under 63 empty siblings: ragged.
    let text = format!(
        r#"{{"__instance_type__":["inseq.data.attribution","FeatureAttributionOutput"],
            "attributes":{{"sequence_attributions":[{{"__instance_type__":["inseq.data.attribution","FeatureAttributionSequenceOutput"],
            "attributes":{{"target":[],"target_attributions":{v},"attr_pos_start":0,"attr_pos_end":0}}}}],"info":{{}}}}}}"#
    );
    let t0 = std::time::Instant::now();
    let err = from_inseq_json(&text).unwrap_err().to_string();
    assert!(err.contains("ragged") || err.contains("nested"), "{err}");
    assert!(t0.elapsed().as_secs() < 5);
    // The same hostile shape as a wide first row: 4 levels of 4096.
    let wide = (0..4096).map(|_| "0").collect::<Vec<_>>().join(",");
    let mut v = format!("[{wide}]");
    for _ in 0..3 {
        let siblings = vec!["[]"; 4095].join(",");
        v = format!("[{v},{siblings}]");
    }
    let value: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert!(Array::from_nested_json(&value).is_err());
}

/// A safetensors buffer inside an Inseq file whose header claims a huge tensor.
#[test]
fn embedded_safetensors_with_huge_claimed_shape() {
    let header = r#"{"attribution":{"dtype":"F32","shape":[1000000000,1000],"data_offsets":[0,4000000000000]}}"#;
    let mut buf = (header.len() as u64).to_le_bytes().to_vec();
    buf.extend(header.as_bytes());
    buf.extend([0u8; 16]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&buf);
    let text = format!(
        r#"{{"__instance_type__":["inseq.data.attribution","FeatureAttributionOutput"],
            "attributes":{{"sequence_attributions":[{{"__instance_type__":["inseq.data.attribution","FeatureAttributionSequenceOutput"],
            "attributes":{{"target":[{{"__instance_type__":["inseq.utils.typing","TokenWithId"],"attributes":{{"token":"a","id":0}}}}],
            "target_attributions":"{b64}","attr_pos_start":0,"attr_pos_end":1}}}}],"info":{{}}}}}}"#
    );
    let t0 = std::time::Instant::now();
    let err = from_inseq_json(&text).unwrap_err().to_string();
    assert!(err.contains("target_attributions"), "{err}");
    assert!(t0.elapsed().as_secs() < 5);
}

#[test]
fn not_an_inseq_file() {
    let err = from_inseq_bytes(b"{}").unwrap_err().to_string();
    assert!(err.contains("__instance_type__"), "{err}");
    let err = from_inseq_bytes(&[0x1f, 0x8b, 1, 2, 3])
        .unwrap_err()
        .to_string();
    assert!(err.contains("gzip"), "{err}");
    let err = from_inseq_bytes(&[0xff, 0xfe, 0x00])
        .unwrap_err()
        .to_string();
    assert!(err.contains("UTF-8"), "{err}");
    let err = AttributionOutput::from_json("").unwrap_err().to_string();
    assert!(err.contains("json error"), "{err}");
}
