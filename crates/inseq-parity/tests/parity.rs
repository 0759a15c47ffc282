//! Every golden case of Python Inseq 0.7.1 that this project supports must match within tolerance.

use inseq_parity::{CaseModel, CaseOutcome, golden_cases, run_case, run_loaded_case};

fn run_model(prefix: &str) {
    let device = burn::tensor::Device::default();
    let mut failures = Vec::new();
    let (mut passed, mut skipped) = (0, 0);
    for case in golden_cases(&inseq_fixtures::golden_dir()).unwrap() {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        match run_case(&case, &inseq_fixtures::models_dir(), &device) {
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

/// mBART, M2M100, mT5 and UMT5 cases of tests/fixtures/zoo/make_encdec_golden.py.
#[test]
fn tiny_mbart_matches_python_inseq() {
    run_model("tiny-mbart__");
}

#[test]
fn tiny_m2m100_matches_python_inseq() {
    run_model("tiny-m2m100__");
}

#[test]
fn tiny_mt5_matches_python_inseq() {
    run_model("tiny-mt5__");
}

#[test]
fn tiny_umt5_matches_python_inseq() {
    run_model("tiny-umt5__");
}

/// Python Inseq 0.7.1 on the real SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised by transformers):
/// 42 cases over eight prompts of different shapes, written by tests/fixtures/smollm2/make_golden.py.
#[test]
fn smollm2_matches_python_inseq() {
    if !inseq_fixtures::smollm2_present(&inseq::models::models_dir()) {
        return;
    }
    let dir = inseq_fixtures::root().join("smollm2").join("golden");
    let device = burn::tensor::Device::default();
    // One load for every case (each sets its own method).
    let mut model = CaseModel::load("smollm2", &device).unwrap();
    let mut failures = Vec::new();
    let mut passed = 0;
    for case in golden_cases(&dir).unwrap() {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let start = std::time::Instant::now();
        let outcome = run_loaded_case(&case, &mut model);
        println!("{name}: {:.1} s", start.elapsed().as_secs_f32());
        match outcome {
            Ok(CaseOutcome::Passed) => passed += 1,
            Ok(CaseOutcome::Skipped(why)) => failures.push(format!("{name}: skipped: {why}")),
            Ok(CaseOutcome::Failed(p)) => failures.push(format!("{name}: {}", p.join("; "))),
            Err(e) => failures.push(format!("{name}: error {e}")),
        }
    }
    println!("smollm2: {passed} passed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
