//! Files written in Python Inseq's format load in Python Inseq 0.7.1 itself
//! (`FeatureAttributionOutput.load`). Runs when `$INSEQ_PYTHON` (default `python3`) can
//! `import inseq`; `.ci/run` installs it. Set `INSEQ_REQUIRE_PYTHON_INSEQ=1` to fail instead of skip.

mod common;

use std::process::Command;

use inseq::{AttributeOptions, MethodArgs, load_model};
use inseq_fixtures::tolerance::{gamma, probability_sum};

fn python() -> String {
    std::env::var("INSEQ_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn inseq_available() -> bool {
    Command::new(python())
        .args(["-c", "import inseq"])
        .output()
        .is_ok_and(|o| o.status.success())
}

const LOAD: &str = r#"
import json, sys, math
from inseq import FeatureAttributionOutput
out = FeatureAttributionOutput.load(sys.argv[1], decompress=sys.argv[2] == "1")
seq = out.sequence_attributions[0]
agg = out.aggregate()[0]
print(json.dumps({
    "target": [t.token for t in seq.target],
    "ids": [t.id for t in seq.target],
    "shape": list(seq.target_attributions.shape),
    "agg": [[None if math.isnan(v) else v for v in row] for row in agg.target_attributions.tolist()],
    "step_scores": {k: v.tolist() for k, v in seq.step_scores.items()},
    "attr_pos_start": seq.attr_pos_start,
}))
"#;

#[test]
fn python_inseq_loads_our_files() {
    if !inseq_available() {
        assert!(
            std::env::var("INSEQ_REQUIRE_PYTHON_INSEQ").is_err(),
            "`{} -c 'import inseq'` fails",
            python()
        );
        eprintln!("skipping: Python Inseq is not installed");
        return;
    }
    let device = burn::tensor::Device::default();
    let m = load_model(
        &common::model_dir("tiny-gpt2"),
        "saliency",
        MethodArgs::default(),
        &device,
    )
    .unwrap();
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen, welcome".into()]),
        step_scores: vec!["probability".into()],
        ..Default::default()
    };
    let out = m.attribute(&["Hello ladies and"], &opts).unwrap();
    let ours = inseq::aggregate(&out).unwrap();
    let ours = &ours.sequence_attributions[0];
    let dir = std::env::temp_dir().join(format!("inseq-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for compress in [false, true] {
        let path = dir.join(format!("out-{compress}.json"));
        out.save_inseq(
            &path,
            &inseq::core::InseqSaveOptions {
                compress,
                ..Default::default()
            },
        )
        .unwrap();
        let run = Command::new(python())
            .args([
                "-c",
                LOAD,
                path.to_str().unwrap(),
                if compress { "1" } else { "0" },
            ])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        let ids: Vec<i64> = v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(ids, ours.target.iter().map(|t| t.id).collect::<Vec<_>>());
        assert_eq!(
            v["attr_pos_start"].as_u64().unwrap() as usize,
            ours.attr_pos_start
        );
        assert_eq!(v["shape"][2].as_u64().unwrap(), 32, "raw hidden size kept");
        let agg = ours.target_attributions.as_ref().unwrap();
        // Our raw f32 scores aggregated by Inseq (torch) and by us, in other orders: the L2 norm
        // over the 32 hidden values (γ(33)) and the normalization over the rows, on each side.
        let tol = (2.0 * (gamma(33) + probability_sum(agg.shape()[0]))) as f32;
        for (r, row) in v["agg"].as_array().unwrap().iter().enumerate() {
            for (c, x) in row.as_array().unwrap().iter().enumerate() {
                let o = agg.get(&[r, c]);
                match x.as_f64() {
                    None => assert!(o.is_nan(), "({r},{c}) python NaN, ours {o}"),
                    Some(p) => assert!(
                        (p as f32 - o).abs() <= tol,
                        "({r},{c}) python {p}, ours {o}"
                    ),
                }
            }
        }
        let p = v["step_scores"]["probability"].as_array().unwrap();
        for (x, o) in p.iter().zip(&ours.step_scores["probability"]) {
            // Our own f32 values, saved and read back by Python: exact.
            assert_eq!(x.as_f64().unwrap() as f32, *o);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
