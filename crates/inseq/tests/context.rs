//! `attribute-context` (PECoRe) on the tiny models of both kinds and on SmolLM2: input context,
//! output context (strategies `pre`, `auto`, `manual`), Inseq's JSON layout, CTI scores against an
//! independent KL divergence and against Python Inseq 0.7.1.

mod common;

use std::process::Command;

use burn::tensor::Device;
use inseq::context::{
    ContextArgs, ContextOutput, OutputContextStrategy, attribute_context, rank_above,
    scores_threshold, split_output_context,
};
use inseq::models::{ForwardOptions, ModelInput, ModelKind, ids_tensor};
use inseq::{AttributionModel, MethodArgs, load_model};

const INPUT_CONTEXT: &str = "George was sick yesterday.";
const INPUT_CURRENT: &str = "His colleagues asked him";
const OUTPUT_CONTEXT: &str = "He stayed home.";
const OUTPUT_CURRENT: &str = "to take the day off";

fn load(name: &str) -> AttributionModel {
    let model = if name == "smollm2" {
        name.to_string()
    } else {
        common::model_dir(name)
    };
    load_model(
        &model,
        "saliency",
        MethodArgs::default(),
        &Device::default(),
    )
    .unwrap()
}

fn base_args() -> ContextArgs {
    ContextArgs {
        input_context_text: Some(INPUT_CONTEXT.into()),
        input_current_text: INPUT_CURRENT.into(),
        context_sensitivity_std_threshold: 0.0,
        generation: inseq::GenerationOptions {
            max_new_tokens: 4,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Input and output context, both given (`pre`), with the current output forced.
fn with_output_context(attributed_fn: &str) -> ContextArgs {
    ContextArgs {
        output_context_text: Some(OUTPUT_CONTEXT.into()),
        output_current_text: Some(OUTPUT_CURRENT.into()),
        handle_output_context_strategy: OutputContextStrategy::Pre,
        attributed_fn: attributed_fn.into(),
        ..base_args()
    }
}

/// Tokens as running text.
fn joined(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| t.replace(['Ġ', '▁'], " "))
        .collect::<String>()
        .trim()
        .to_string()
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

/// The structure of Inseq's `AttributeContextOutput.to_dict()` and the invariants of a result.
fn check_structure(out: &ContextOutput, has_input: bool, has_output: bool) {
    let v = serde_json::to_value(out).unwrap();
    let mut expected = vec![
        "cci_scores",
        "cti_scores",
        "cti_threshold",
        "cues",
        "info",
        "input_context",
        "input_context_tokens",
        "output_context",
        "output_context_tokens",
        "output_current",
        "output_current_tokens",
    ];
    expected.sort();
    assert_eq!(keys(&v), expected);
    let mut cci_keys = vec![
        "cti_idx",
        "cti_token",
        "cti_score",
        "contextual_output",
        "contrast_token",
        "contextless_output",
        "input_context_scores",
        "output_context_scores",
    ];
    cci_keys.sort();
    for c in v["cci_scores"].as_array().unwrap() {
        assert_eq!(keys(c), cci_keys, "CCIOutput fields");
    }
    assert_eq!(v["info"]["has_input_context"], has_input);
    assert_eq!(v["info"]["has_output_context"], has_output);
    // CTI scores: one per current output token, and the tokens are the current output's only.
    assert_eq!(out.cti_scores.len(), out.output_current_tokens.len());
    assert_eq!(
        joined(&out.output_current_tokens),
        out.output_current.trim()
    );
    assert!(
        out.cti_scores
            .iter()
            .all(|s| s.is_finite() && f64::from(*s) >= -kl_rounding_tiny()),
        "{:?}",
        out.cti_scores
    );
    assert_eq!(out.input_context.is_some(), has_input);
    assert_eq!(out.output_context.is_some(), has_output);
    if let Some(t) = &out.output_context_tokens {
        assert_eq!(joined(t), out.output_context.as_deref().unwrap().trim());
    }
    if let Some(t) = &out.input_context_tokens {
        assert_eq!(joined(t), out.input_context.as_deref().unwrap().trim());
    }
    assert!(
        !out.cci_scores.is_empty(),
        "with threshold = mean some token is above it"
    );
    assert_eq!(out.cues.len(), out.cci_scores.len());
    for (c, q) in out.cci_scores.iter().zip(&out.cues) {
        assert_eq!(c.cti_idx, q.cti_idx);
        assert!(c.cti_score.abs() >= out.cti_threshold);
        assert_eq!(c.cti_token, out.output_current_tokens[c.cti_idx]);
        match (&c.input_context_scores, &out.input_context_tokens) {
            (Some(s), Some(t)) => {
                assert_eq!(s.len(), t.len());
                assert!(s.iter().all(|x| x.is_finite()));
            }
            (None, None) => assert!(!has_input),
            _ => panic!("input context scores and tokens disagree"),
        }
        match (&c.output_context_scores, &out.output_context_tokens) {
            (Some(s), Some(t)) => {
                assert_eq!(s.len(), t.len(), "one CCI score per output context token");
                assert!(s.iter().all(|x| x.is_finite() && *x >= 0.0));
                assert!(
                    s.iter().any(|x| *x > 0.0),
                    "output context gets some salience"
                );
            }
            (None, None) => assert!(!has_output),
            _ => panic!("output context scores and tokens disagree"),
        }
        // Cues pass the joint threshold and point at the right tokens.
        for cue in q.input_context.iter().chain(&q.output_context) {
            assert!(cue.score.abs() >= q.threshold);
        }
        for cue in &q.output_context {
            assert_eq!(
                cue.token,
                out.output_context_tokens.as_ref().unwrap()[cue.index]
            );
            assert_eq!(
                cue.score,
                c.output_context_scores.as_ref().unwrap()[cue.index]
            );
        }
        // The contextual output stops inside the current output, after the attributed token
        // (exactly at it when the current output tokenises the same with and without context).
        let cur = out.output_current.as_str();
        let stop = (1..=cur.len())
            .rev()
            .find(|&j| cur.is_char_boundary(j) && c.contextual_output.ends_with(&cur[..j]))
            .unwrap_or_else(|| panic!("`{}` does not end inside `{cur}`", c.contextual_output));
        let tok = c.cti_token.replace(['Ġ', '▁'], " ");
        assert!(
            cur[..stop].ends_with(tok.trim()) || cur[..stop].contains(tok.trim()),
            "`{}` lacks `{tok}`",
            c.contextual_output
        );
    }
    // The JSON round-trips.
    let back: ContextOutput = serde_json::from_value(v).unwrap();
    assert_eq!(&back, out);
}

#[test]
fn pecore_runs_on_tiny_models_of_both_kinds() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-marian", "tiny-bart"] {
        let m = load(name);
        for f in ["probability", "contrast_prob_diff"] {
            // random tiny models generate byte soup: give the output to explain
            let args = ContextArgs {
                attributed_fn: f.into(),
                output_current_text: Some(OUTPUT_CURRENT.into()),
                ..base_args()
            };
            let out = attribute_context(&m, &args).unwrap();
            check_structure(&out, true, false);
            for c in &out.cci_scores {
                assert_eq!(c.contrast_token.is_some(), f == "contrast_prob_diff");
                assert_eq!(c.contextless_output.is_some(), f == "contrast_prob_diff");
            }
            let text = inseq::viz::render_context_text(&out);
            assert!(text.contains("Input context"), "{text}");
            assert!(inseq::viz::render_context_html(&out).contains("<html"));
        }
    }
}

#[test]
fn output_context_pre_on_decoder_only_and_encoder_decoder() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-marian", "tiny-bart"] {
        let m = load(name);
        for f in ["probability", "contrast_prob_diff"] {
            let out = attribute_context(&m, &with_output_context(f)).unwrap();
            check_structure(&out, true, true);
            assert_eq!(out.output_context.as_deref(), Some(OUTPUT_CONTEXT));
            assert_eq!(out.output_current, OUTPUT_CURRENT);
            let text = inseq::viz::render_context_text(&out);
            assert!(
                text.contains("Output context") && text.contains(OUTPUT_CONTEXT),
                "{name}: {text}"
            );
            let html = inseq::viz::render_context_html(&out);
            assert!(html.contains("Output context cues"), "{name}");
        }
        // Output context alone (no input context).
        let args = ContextArgs {
            input_context_text: None,
            ..with_output_context("contrast_prob_diff")
        };
        let out = attribute_context(&m, &args).unwrap();
        check_structure(&out, false, true);
    }
}

/// KL(P_contextless || P_contextual) of the next-token distributions, in f64.
fn kl(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax_f64(p_logits), log_softmax_f64(q_logits));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// Log-softmax of f32 logits computed in f64.
fn log_softmax_f64(l: &[f32]) -> Vec<f64> {
    let m = l.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let z = l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    l.iter().map(|&x| x as f64 - z).collect()
}

/// The rounding error of `KL(P || Q)` computed in f32 from these logits, in any summation order:
/// each `ln Σ exp` sums `V` positive terms (relative error `γ(V)`, so `γ(V)` absolute on the
/// log-partition, shifting every log-probability alike); each log-probability `x − max − ln Σ`
/// takes a few roundings of its own magnitude (`γ(4)·|log p|`); and the KL sum has `V` terms
/// `p·(log p − log q)`. The two sides' `log p` of magnitude ~5 cancel to a KL of ~0.004, which is
/// why a relative tolerance on the KL itself cannot hold.
fn kl_f32_error(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    use inseq_fixtures::tolerance::{f32_sum, gamma};
    let (lp, lq) = (log_softmax_f64(p_logits), log_softmax_f64(q_logits));
    let weighted = |f: &dyn Fn(f64, f64) -> f64| -> f64 {
        lp.iter().zip(&lq).map(|(&a, &b)| a.exp() * f(a, b)).sum()
    };
    let vocab = p_logits.len();
    2.0 * gamma(vocab)
        + f32_sum(weighted(&|a, b| a.abs() + b.abs()), 4)
        + f32_sum(weighted(&|a, b| (a - b).abs()), vocab)
}

/// The worst f32 rounding of a KL of the tiny models' next-token distributions (V = 400,
/// |log p| <= 8), the [`kl_f32_error`] bound with every weight at its largest: a KL that is 0
/// may come out this negative.
fn kl_rounding_tiny() -> f64 {
    use inseq_fixtures::tolerance::{f32_sum, gamma};
    2.0 * gamma(400) + f32_sum(16.0, 4) + f32_sum(16.0, 400)
}

/// The tolerance between Python Inseq's CTI score (a KL of two next-token distributions) and
/// ours, `kl_ref` being Inseq's: both compute it in f32 (each off by up to `2γ(V)` through the
/// log-partitions) from logits that differ by the model-pass rule (tiny-gpt2's |logits| < 0.7).
/// A logit perturbation `δ` moves the KL by at most `max|δ|·(Σ p|log p − log q − KL| + ‖p − q‖₁)`
/// (`∂KL/∂x_j = p_j(log p_j − log q_j − KL)`, `∂KL/∂y_j = q_j − p_j`), both sums of the order
/// of `√(2·KL)` (Pinsker for the second).
fn cti_parity_tolerance(kl_ref: f64) -> f64 {
    use inseq_fixtures::tolerance::{gamma, model_pass};
    2.0 * 2.0 * gamma(400) + 2.0 * (2.0 * kl_ref.abs()).sqrt() * model_pass(0.7)
}

/// Logits predicting `target[pos]` (decoder-only: `ids` is the whole sequence; encoder-decoder:
/// `source` and the decoder ids).
fn next_logits(
    m: &AttributionModel,
    source: Option<&[usize]>,
    ids: &[usize],
    pos: usize,
) -> Vec<f32> {
    let model = m.model();
    let device = model.device();
    let prefix = ids[..pos].to_vec();
    let input = ModelInput {
        target_embeds: model.embed(ids_tensor(std::slice::from_ref(&prefix), device)),
        target_mask: vec![vec![true; prefix.len()]],
        source_embeds: source.map(|s| model.embed_source(ids_tensor(&[s.to_vec()], device))),
        source_mask: source.map(|s| vec![vec![true; s.len()]]),
    };
    let out = model.forward(
        input,
        ForwardOptions {
            last_position_only: true,
            ..Default::default()
        },
    );
    out.logits.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn cti_score_equals_an_independent_kl_divergence() {
    for name in ["tiny-gpt2", "tiny-marian"] {
        let m = load(name);
        let out = attribute_context(&m, &with_output_context("probability")).unwrap();
        let tok = m.tokenizer();
        let enc = |t: &str| tok.encode(t, true).unwrap();
        // Tokens the tokenizer appends (an end-of-sequence token for most encoder-decoders).
        let trail =
            usize::from(enc(OUTPUT_CURRENT).last().copied() == m.model().info().eos_token_id);
        let n = out.output_current_tokens.len();
        // The last current output token and the fourth from the end, as predicted (1) without the
        // contexts and (2) with them: KL(P_1 || P_2).
        for n_after in [0, 3] {
            let k = n - 1 - n_after;
            let (p, q) = match m.model().kind() {
                ModelKind::DecoderOnly => {
                    let ctxless = enc(&format!("{INPUT_CURRENT} {OUTPUT_CURRENT}"));
                    let ctx = enc(&format!(
                        "{INPUT_CONTEXT} {INPUT_CURRENT} {OUTPUT_CONTEXT} {OUTPUT_CURRENT}"
                    ));
                    (
                        next_logits(&m, None, &ctxless, ctxless.len() - 1 - trail - n_after),
                        next_logits(&m, None, &ctx, ctx.len() - 1 - trail - n_after),
                    )
                }
                ModelKind::EncoderDecoder => {
                    let start = m.model().info().decoder_start_token_id.unwrap();
                    let dec = |t: &str| [vec![start], enc(t)].concat();
                    let ctxless = dec(OUTPUT_CURRENT);
                    let ctx = dec(&format!("{OUTPUT_CONTEXT} {OUTPUT_CURRENT}"));
                    (
                        next_logits(
                            &m,
                            Some(&enc(INPUT_CURRENT)),
                            &ctxless,
                            ctxless.len() - 1 - trail - n_after,
                        ),
                        next_logits(
                            &m,
                            Some(&enc(&format!("{INPUT_CONTEXT} {INPUT_CURRENT}"))),
                            &ctx,
                            ctx.len() - 1 - trail - n_after,
                        ),
                    )
                }
            };
            let expected = kl(&p, &q);
            let got = out.cti_scores[k] as f64;
            assert!(expected > 0.0);
            // The f32 rounding of the CTI's KL, bounded in any summation order (was
            // `1e-4 * expected`, which the cancellation of log-probabilities ~5 into a KL ~0.004
            // breaks on CPUs whose kernels sum in another order).
            let tolerance = kl_f32_error(&p, &q);
            assert!(
                (got - expected).abs() <= tolerance,
                "{name} token {k}: CTI {got} vs independent KL {expected} (tolerance {tolerance:e})"
            );
        }
    }
}

#[test]
fn cti_scores_match_python_inseq() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/context_gpt2_reference.json")).unwrap();
    let m = load("tiny-gpt2");
    for (case, r) in reference.as_object().unwrap() {
        let a = &r["args"];
        let text = |k: &str| a.get(k).and_then(|v| v.as_str()).map(String::from);
        let args = ContextArgs {
            input_context_text: text("input_context_text"),
            input_current_text: text("input_current_text").unwrap(),
            output_context_text: text("output_context_text"),
            output_current_text: text("output_current_text"),
            handle_output_context_strategy: text("handle_output_context_strategy")
                .map_or(OutputContextStrategy::Manual, |s| s.parse().unwrap()),
            // CTI only, as the reference
            context_sensitivity_std_threshold: 1000.0,
            ..Default::default()
        };
        let out = attribute_context(&m, &args).unwrap();
        let tokens: Vec<String> = r["output_current_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(out.output_current_tokens, tokens, "{case}");
        let scores = r["cti_scores"].as_array().unwrap();
        assert_eq!(scores.len(), out.cti_scores.len(), "{case}");
        for (i, (p, o)) in scores.iter().zip(&out.cti_scores).enumerate() {
            let p = p.as_f64().unwrap();
            assert!(
                (p - *o as f64).abs() <= cti_parity_tolerance(p),
                "{case} token {i}: Inseq {p}, ours {o}"
            );
        }
        assert!(out.cci_scores.is_empty(), "{case}: no token above k = 1000");
    }
}

fn python() -> Option<String> {
    if let Ok(p) = std::env::var("INSEQ_PYTHON") {
        return Some(p);
    }
    let home = std::env::var_os("HOME")?;
    let venv = std::path::Path::new(&home).join(".cache/inseq-rs/pyenv/bin/python");
    Some(if venv.exists() {
        venv.to_string_lossy().into_owned()
    } else {
        "python3".into()
    })
}

/// Our JSON loads with Inseq 0.7.1's `AttributeContextOutput.from_dict`.
#[test]
fn saved_json_loads_in_python_inseq() {
    let py = python().unwrap();
    let available = Command::new(&py)
        .args(["-c", "import inseq.commands.attribute_context"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var("INSEQ_REQUIRE_PYTHON_INSEQ").is_err(),
            "`{py}` cannot import inseq"
        );
        eprintln!("skipping: Python Inseq is not installed");
        return;
    }
    let m = load("tiny-gpt2");
    let out = attribute_context(&m, &with_output_context("contrast_prob_diff")).unwrap();
    let dir = std::env::temp_dir().join(format!("inseq-ctx-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ctx.json");
    out.save(&path).unwrap();
    assert_eq!(ContextOutput::load(&path).unwrap(), out);
    let script = r#"
import json, sys
from inseq.commands.attribute_context.attribute_context_helpers import AttributeContextOutput
out = AttributeContextOutput.from_dict(json.load(open(sys.argv[1])))
print(json.dumps({
    "output_context": out.output_context,
    "n_cci": len(out.cci_scores),
    "output_context_scores": out.output_context_scores,
    "cti_max": out.max_cti,
    "has_output_context": out.info.has_output_context,
    "output_template": out.info.output_template,
}))
"#;
    let run = Command::new(&py)
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["output_context"], OUTPUT_CONTEXT);
    assert_eq!(v["n_cci"], out.cci_scores.len());
    assert_eq!(v["has_output_context"], true);
    assert_eq!(v["output_template"], "{context} {current}");
    assert_eq!(
        v["output_context_scores"][0].as_array().unwrap().len(),
        out.output_context_tokens.as_ref().unwrap().len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn output_context_auto_splits_the_generation() {
    assert_eq!(
        split_output_context("He stayed home. to take", ". "),
        Some("He stayed home".into())
    );
    assert_eq!(
        split_output_context("Er blieb zu Hause.|Sie", "|"),
        Some("Er blieb zu Hause.".into())
    );
    // the separator splits in more than two parts: punctuation decides
    assert_eq!(split_output_context("Yes, right", "\n"), Some("Yes".into()));
    assert_eq!(split_output_context("one two three", " "), None);
    // The random tiny models repeat one word: with two new tokens they generate `w w`, which the
    // template's separator splits into output context `w` and current output `w`.
    for (name, input, word) in [
        ("tiny-gpt2", "Hello ladies and", "and"),
        ("tiny-marian", INPUT_CURRENT, "de"),
    ] {
        let m = load(name);
        let args = ContextArgs {
            input_current_text: input.into(),
            output_template: Some("{context} {current}".into()),
            handle_output_context_strategy: OutputContextStrategy::Auto,
            attributed_fn: "contrast_prob_diff".into(),
            generation: inseq::GenerationOptions {
                max_new_tokens: 2,
                ..Default::default()
            },
            ..base_args()
        };
        let out = attribute_context(&m, &args).unwrap();
        assert_eq!(out.output_context.as_deref(), Some(word), "{name}");
        assert_eq!(out.output_current, word, "{name}");
        check_structure(&out, true, true);
        let info = out.info.as_ref().unwrap();
        assert_eq!(info.handle_output_context_strategy, "auto");
        assert_eq!(info.output_context_text.as_deref(), Some(word));
        // With three tokens (`w w w`) no split is found: auto falls back to asking, which a
        // non-interactive run cannot do.
        let args = ContextArgs {
            generation: inseq::GenerationOptions {
                max_new_tokens: 3,
                ..Default::default()
            },
            ..args
        };
        let msg = attribute_context(&m, &args).unwrap_err().to_string();
        assert!(
            msg.contains("no automatic split") && msg.contains("--output-context-text"),
            "{msg}"
        );
    }
}

#[test]
fn manual_without_terminal_is_a_clear_error() {
    let m = load("tiny-gpt2");
    let args = ContextArgs {
        output_template: Some("{context} {current}".into()),
        handle_output_context_strategy: OutputContextStrategy::Manual,
        ..base_args()
    };
    let msg = attribute_context(&m, &args).unwrap_err().to_string();
    assert!(
        msg.contains("--output-context-text") && msg.contains("auto"),
        "{msg}"
    );
    // `pre` needs the output context up front.
    let args = ContextArgs {
        handle_output_context_strategy: OutputContextStrategy::Pre,
        ..args
    };
    let msg = attribute_context(&m, &args).unwrap_err().to_string();
    assert!(msg.contains("--output-context-text"), "{msg}");
}

#[test]
fn bad_templates_are_clear_errors() {
    let m = load("tiny-gpt2");
    let cases: Vec<(ContextArgs, &str)> = vec![
        (
            ContextArgs {
                input_context_text: None,
                ..base_args()
            },
            "no context",
        ),
        (
            ContextArgs {
                output_template: Some("{current} {context}".into()),
                output_context_text: Some("x".into()),
                ..base_args()
            },
            "before {current}",
        ),
        (
            ContextArgs {
                input_template: Some("{context}".into()),
                ..base_args()
            },
            "{current}",
        ),
        (
            ContextArgs {
                contextless_output_current_text: Some("nothing".into()),
                ..base_args()
            },
            "{current}",
        ),
        (
            ContextArgs {
                special_tokens_to_keep: vec!["<no-such-token>".into()],
                ..base_args()
            },
            "<no-such-token>",
        ),
    ];
    for (args, needle) in cases {
        let msg = attribute_context(&m, &args).unwrap_err().to_string();
        assert!(msg.contains(needle), "`{msg}` lacks `{needle}`");
    }
}

#[test]
fn contextless_templates_and_special_tokens_to_keep() {
    let m = load("tiny-gpt2");
    // Contextless templates with a prefix: CTI still scores the current output's tokens only.
    let args = ContextArgs {
        contextless_input_current_text: Some("Then: {current}".into()),
        contextless_output_current_text: Some("so {current}".into()),
        ..with_output_context("contrast_prob_diff")
    };
    let out = attribute_context(&m, &args).unwrap();
    check_structure(&out, true, true);
    let info = out.info.as_ref().unwrap();
    assert_eq!(info.contextless_output_current_text, "so {current}");
    for c in &out.cci_scores {
        assert!(
            c.contextless_output
                .as_deref()
                .unwrap()
                .starts_with("Then: ")
        );
    }
    // Another separator between input and output (decoder-only models).
    let args = ContextArgs {
        decoder_input_output_separator: "\n".into(),
        ..with_output_context("contrast_prob_diff")
    };
    let out = attribute_context(&m, &args).unwrap();
    check_structure(&out, true, true);
    for c in &out.cci_scores {
        assert!(
            c.contextual_output.contains("him\nHe stayed home."),
            "{}",
            c.contextual_output
        );
        assert!(
            c.contextless_output
                .as_deref()
                .unwrap()
                .starts_with("His colleagues asked him\n")
        );
    }
    // A special token inside the input context is dropped from its tokens unless kept.
    let context = "George was sick</s> yesterday.";
    let run = |keep: Vec<String>| {
        let args = ContextArgs {
            input_context_text: Some(context.into()),
            special_tokens_to_keep: keep,
            ..with_output_context("probability")
        };
        attribute_context(&m, &args).unwrap()
    };
    let dropped = run(vec![]);
    let kept = run(vec!["</s>".into()]);
    let tokens = |o: &ContextOutput| o.input_context_tokens.clone().unwrap();
    assert!(!tokens(&dropped).contains(&"</s>".to_string()));
    assert!(tokens(&kept).contains(&"</s>".to_string()));
    assert_eq!(tokens(&kept).len(), tokens(&dropped).len() + 1);
    for o in [&dropped, &kept] {
        for c in &o.cci_scores {
            assert_eq!(
                c.input_context_scores.as_ref().unwrap().len(),
                tokens(o).len()
            );
        }
    }
}

#[test]
fn thresholds_follow_inseq() {
    assert_eq!(scores_threshold(&[1.0, 2.0, 3.0], 0.0), 2.0);
    // sample std of [1,2,3] is 1
    // Exact: every intermediate (sum 6, mean 2, deviations, variance 1, std 1) is representable.
    assert_eq!(scores_threshold(&[1.0, 2.0, 3.0], 1.0), 3.0);
    assert_eq!(rank_above(&[0.1, -0.5, 0.3], 0.2, None), vec![1, 2]);
    assert_eq!(rank_above(&[0.1, -0.5, 0.3], 0.2, Some(1)), vec![1]);
}

#[test]
fn pecore_on_smollm2() {
    if !common::smollm2_present() {
        return;
    }
    let args = ContextArgs {
        attributed_fn: "contrast_prob_diff".into(),
        context_sensitivity_std_threshold: 1.0,
        ..base_args()
    };
    let out = attribute_context(&load("smollm2"), &args).unwrap();
    println!("{}", inseq::viz::render_context_text(&out));
    assert!(!out.output_current.is_empty());
    assert!(!out.cci_scores.is_empty());
}

/// The documented example (docs/attribute-context.md): input and output context given, the current
/// output generated.
#[test]
fn pecore_on_smollm2_with_output_context() {
    if !common::smollm2_present() {
        return;
    }
    let args = ContextArgs {
        input_context_text: Some("The story takes place in Paris.".into()),
        input_current_text: "Tell me a short story about a cat.".into(),
        output_context_text: Some("Once upon a time, there was a cat named Tom.".into()),
        handle_output_context_strategy: OutputContextStrategy::Pre,
        attributed_fn: "contrast_prob_diff".into(),
        context_sensitivity_std_threshold: 0.5,
        generation: inseq::GenerationOptions {
            max_new_tokens: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let out = attribute_context(&load("smollm2"), &args).unwrap();
    println!("{}", inseq::viz::render_context_text(&out));
    check_structure(&out, true, true);
    assert!(
        out.output_current.starts_with("Tom"),
        "{}",
        out.output_current
    );
    // `Tom` is context-sensitive, and its main cue is `Tom` in the output context.
    let k = out
        .cci_scores
        .iter()
        .position(|c| c.cti_token == "ĠTom")
        .expect("Tom is context-sensitive");
    let top = &out.cues[k].output_context[0];
    assert_eq!(top.token, "ĠTom");
}
