//! `cargo xtask parity --golden DIR`: every golden case through the CLI's code path.

use std::path::Path;

use inseq_parity::{CaseOutcome, golden_cases, run_case};

/// Runs all cases; prints one line per case and `N passed, M failed, K skipped`. Returns `true` when none failed.
pub fn run(golden: &Path, models: &Path) -> anyhow::Result<bool> {
    let device = inseq::default_device()?;
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for case in golden_cases(golden)? {
        let name = case
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        match run_case(&case, models, &device) {
            Ok(CaseOutcome::Passed) => {
                passed += 1;
                println!("PASS {name}");
            }
            Ok(CaseOutcome::Skipped(why)) => {
                skipped += 1;
                println!("SKIP {name}: {why}");
            }
            Ok(CaseOutcome::Failed(problems)) => {
                failed += 1;
                println!("FAIL {name}: {}", problems.join("; "));
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: error: {e}");
            }
        }
    }
    if skipped > 0 {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    Ok(failed == 0)
}
