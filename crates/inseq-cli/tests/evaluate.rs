//! `inseq evaluate` and `inseq bench` on the tiny fixture models.

mod common;

use std::path::PathBuf;

use common::{assert_error, assert_ok, inseq, model_dir};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inseq-evaluate-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn prompts(dir: &std::path::Path) -> String {
    let path = dir.join("prompts.jsonl");
    let rows = [
        "Hello ladies and",
        "The quick brown fox",
        "Once upon a time",
        "A developer writes",
    ];
    let text: String = rows
        .iter()
        .map(|r| format!("{}\n", serde_json::json!({"text": r})))
        .collect();
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn evaluate_writes_a_ranked_report_and_resumes() {
    let dir = tmp("report");
    let data = prompts(&dir);
    let (save, html) = (dir.join("report.json"), dir.join("report.html"));
    let model = model_dir("tiny-gpt2");
    let args = [
        "evaluate",
        "--model",
        &model,
        "--methods",
        "saliency,ig,random",
        "--method-args",
        "ig:n_steps=4",
        "--data",
        &data,
        "--max-new-tokens",
        "2",
        "--min-new-tokens",
        "2",
        "--randomisation-levels",
        "2",
        "--save",
        save.to_str().unwrap(),
        "--viz",
        html.to_str().unwrap(),
    ];
    let stdout = assert_ok(&inseq(&args));
    assert!(
        stdout.contains("| method |") && stdout.contains("random"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let methods = report["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 3);
    assert_eq!(methods[1]["method"], "integrated_gradients");
    for m in methods {
        for id in [
            "deletion",
            "insertion",
            "comprehensiveness",
            "sufficiency",
            "soft_nc",
            "soft_ns",
            "model_randomisation",
        ] {
            let s = &m["metrics"][id];
            assert!(s["mean"].is_number(), "{} {id}: {s}", m["method"]);
            assert!(
                s["ci_low"].as_f64() <= s["mean"].as_f64()
                    && s["mean"].as_f64() <= s["ci_high"].as_f64()
            );
        }
        assert_eq!(m["examples"].as_array().unwrap().len(), 4);
        assert_eq!(m["curves"]["deletion"].as_array().unwrap().len(), 11);
    }
    assert_eq!(report["ranking"].as_array().unwrap().len(), 3);
    assert_eq!(report["randomisation_levels"], serde_json::json!([1, 2]));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("deletion"));
    // A second run reuses the stored attributions and gives the same report numbers.
    assert_ok(&inseq(&args));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    assert_eq!(
        again["methods"][0]["metrics"],
        report["methods"][0]["metrics"]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn evaluate_rejects_bad_arguments() {
    let dir = tmp("bad");
    let data = prompts(&dir);
    let save = dir.join("r.json");
    let model = model_dir("tiny-gpt2");
    let base = [
        "evaluate",
        "--model",
        &model,
        "--data",
        &data,
        "--save",
        save.to_str().unwrap(),
    ];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        inseq(&args)
    };
    assert_error(&run(&["--methods", "nope"]), "nope");
    assert_error(
        &run(&["--methods", "saliency", "--metrics", "nope"]),
        "deletion",
    );
    assert_error(
        &run(&[
            "--methods",
            "saliency",
            "--method-args",
            "occlusion:stride=2",
        ]),
        "not in --methods",
    );
    assert_error(
        &run(&["--methods", "saliency", "--curve-points", "1"]),
        "curve-points",
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_prints_a_table_and_json() {
    let dir = tmp("bench");
    let save = dir.join("bench.json");
    let model = model_dir("tiny-gpt2");
    let stdout = assert_ok(&inseq(&[
        "bench",
        "--model",
        &model,
        "--devices",
        "cpu,flex",
        "--methods",
        "saliency,attention",
        "--input",
        "Hello ladies and",
        "--input",
        "The quick brown fox",
        "--max-new-tokens",
        "2",
        "--min-new-tokens",
        "2",
        "--save",
        save.to_str().unwrap(),
    ]));
    assert!(stdout.contains("ms/token"), "{stdout}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["tokens"], 4);
    assert!(
        rows[0]["max_abs_diff"].is_null(),
        "the reference has no difference"
    );
    // The same backend twice: the same attributions.
    assert_eq!(rows[2]["max_abs_diff"].as_f64(), Some(0.0));
    assert_error(
        &inseq(&[
            "bench",
            "--model",
            &model,
            "--devices",
            "tpu",
            "--input",
            "Hi",
        ]),
        "tpu",
    );
    std::fs::remove_dir_all(dir).unwrap();
}
