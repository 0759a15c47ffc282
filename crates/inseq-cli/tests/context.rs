//! `inseq attribute-context`: the terminal prompt's refusal without a terminal, and the saved
//! JSON and HTML report. The library's PECoRe is tested in `crates/inseq/tests/context.rs`.

mod common;

use std::process::{Command, Stdio};

use inseq::context::ContextOutput;

const INPUT_CONTEXT: &str = "George was sick yesterday.";
const INPUT_CURRENT: &str = "His colleagues asked him";
const OUTPUT_CONTEXT: &str = "He stayed home.";
const OUTPUT_CURRENT: &str = "to take the day off";

/// `--handle-output-context-strategy manual` (the default) with stdin not a terminal: a clear error
/// before the model is loaded.
#[test]
fn manual_without_terminal_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_inseq"))
        .args([
            "attribute-context",
            "--model",
            &common::model_dir("tiny-gpt2"),
            "--input-context-text",
            INPUT_CONTEXT,
            "--input-current-text",
            INPUT_CURRENT,
            "--output-template",
            "{context} {current}",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("--output-context-text") && stderr.contains("not interactive"),
        "{stderr}"
    );
}

#[test]
fn cli_output_context_saves_inseq_layout() {
    let dir = std::env::temp_dir().join(format!("inseq-ctx-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (save, html) = (dir.join("ctx.json"), dir.join("ctx.html"));
    let out = Command::new(env!("CARGO_BIN_EXE_inseq"))
        .args([
            "attribute-context",
            "--model",
            &common::model_dir("tiny-marian"),
            "--input-context-text",
            INPUT_CONTEXT,
            "--input-current-text",
            INPUT_CURRENT,
            "--output-context-text",
            OUTPUT_CONTEXT,
            "--output-current-text",
            OUTPUT_CURRENT,
            "--handle-output-context-strategy",
            "pre",
            "--attributed-fn",
            "contrast_prob_diff",
            "--context-sensitivity-std-threshold",
            "0",
            "--show-intermediate-outputs",
            "--save-path",
            save.to_str().unwrap(),
            "--viz-path",
            html.to_str().unwrap(),
        ])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("--- CTI ---"), "{stdout}");
    assert!(stdout.contains("--- CCI"), "{stdout}");
    assert!(stdout.contains("Output context"), "{stdout}");
    let saved = ContextOutput::load(&save).unwrap();
    let info = saved.info.as_ref().unwrap();
    assert!(info.has_input_context && info.has_output_context);
    assert_eq!(saved.output_context.as_deref(), Some(OUTPUT_CONTEXT));
    assert_eq!(saved.cti_scores.len(), saved.output_current_tokens.len());
    assert!(
        info.model_name_or_path
            .as_deref()
            .unwrap()
            .contains("tiny-marian")
    );
    assert_eq!(info.attribution_method.as_deref(), Some("saliency"));
    assert!(
        std::fs::read_to_string(&html)
            .unwrap()
            .contains("Output context cues")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
