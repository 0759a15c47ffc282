//! Loading every golden Python Inseq file and applying Inseq's default
//! aggregation gives the aggregated arrays Python Inseq produced.

use std::path::PathBuf;

use inseq_aggregate::aggregate_output_inseq_default;
use inseq_core::inseq_format::parse_python_json;
use inseq_core::{Array, AttributionOutput};
use inseq_fixtures::tolerance::model_pass;

fn golden_dir() -> PathBuf {
    inseq_fixtures::golden_dir()
}

#[test]
fn default_aggregation_matches_python_inseq() {
    let Ok(rd) = std::fs::read_dir(golden_dir()) else {
        eprintln!(
            "note: no golden fixtures under {}; skipping",
            golden_dir().display()
        );
        return;
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".inseq.json"))
        .collect();
    files.sort();
    let mut checked = 0;
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let case = name.trim_end_matches(".inseq.json");
        let golden = parse_python_json(
            &std::fs::read_to_string(golden_dir().join(format!("{case}.json"))).unwrap(),
        )
        .unwrap();
        let out = AttributionOutput::load_inseq(&path).unwrap();
        let agg = aggregate_output_inseq_default(&out).unwrap_or_else(|e| panic!("{case}: {e}"));
        let seq = &agg.sequence_attributions[0];
        for (ours, key) in [
            (&seq.source_attributions, "source_attributions"),
            (&seq.target_attributions, "target_attributions"),
        ] {
            let g = golden.get(key).filter(|g| !g.is_null());
            match (ours, g) {
                (None, None) => {}
                (Some(a), Some(g)) => {
                    let g = Array::from_nested_json(g).unwrap();
                    assert_eq!(a.shape(), g.shape(), "{case} {key}");
                    // Python's raw arrays aggregated by us and by Inseq, both in f32: the
                    // parity rule (far above the γ(32) of one hidden-size sum), as
                    // `cargo xtask parity` applies it to every golden array.
                    let tol = model_pass(g.max_abs().into()) as f32;
                    for (i, (x, y)) in a.data().iter().zip(g.data()).enumerate() {
                        assert_eq!(
                            x.is_nan(),
                            y.is_nan(),
                            "{case} {key}[{i}]: NaN positions differ"
                        );
                        assert!(
                            x.is_nan() || (x - y).abs() <= tol,
                            "{case} {key}[{i}]: {x} vs {y}"
                        );
                    }
                    checked += 1;
                }
                (a, g) => panic!(
                    "{case} {key}: ours {:?}, golden present: {}",
                    a.as_ref().map(Array::shape),
                    g.is_some()
                ),
            }
        }
        // Sequence scores (attention's encoder self-attentions) are aggregated too.
        for (k, v) in &seq.sequence_scores {
            if let Some(g) = golden["sequence_scores"].get(k) {
                let g = Array::from_nested_json(g).unwrap();
                if g.shape() == v.shape() {
                    let tol = model_pass(g.max_abs().into()) as f32; // as above
                    assert!(
                        v.data()
                            .iter()
                            .zip(g.data())
                            .all(|(x, y)| (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol),
                        "{case} sequence score {k}"
                    );
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} arrays compared");
}
