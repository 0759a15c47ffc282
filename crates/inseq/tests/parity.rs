//! Every golden case of Python Inseq 0.7.1 that this project supports must match within tolerance.

mod common;

use inseq::parity::{CaseOutcome, golden_cases, run_case};

fn run_model(prefix: &str) {
    let device = burn::tensor::Device::flex();
    let mut failures = Vec::new();
    let (mut passed, mut skipped) = (0, 0);
    for case in golden_cases(&common::golden_dir()).unwrap() {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        match run_case(&case, &common::shared().join("models"), &device) {
            Ok(CaseOutcome::Passed) => passed += 1,
            Ok(CaseOutcome::Skipped(why)) => {
                skipped += 1;
                println!("skipped {name}: {why}");
            }
            Ok(CaseOutcome::Failed(p)) => failures.push(format!("{name}: {}", p.join("; "))),
            Err(e) => failures.push(format!("{name}: error {e}")),
        }
    }
    println!(
        "{prefix}: {passed} passed, {} failed, {skipped} skipped",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
    assert!(passed > 0, "no {prefix} case ran");
}

#[test]
fn tiny_gpt2_matches_python_inseq() {
    run_model("tiny-gpt2__");
}

#[test]
fn tiny_llama_matches_python_inseq() {
    run_model("tiny-llama__");
}

#[test]
fn tiny_bart_matches_python_inseq() {
    run_model("tiny-bart__");
}

#[test]
fn tiny_marian_matches_python_inseq() {
    run_model("tiny-marian__");
}
