//! Reliability of the `inseq` command: every class of bad input gives a clear error, long inputs
//! stay within a memory bound, and a killed run leaves no partial output. See
//! `docs/reliability.md` for the list and the measured limits. Classes already covered by
//! `tests/cli.rs` are not repeated here; the library's own cases are in
//! `crates/inseq/tests/reliability.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{assert_error, assert_ok, inseq};
use inseq::{MethodArgs, load_model};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "inseq-rel-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A copy of a shared fixture model, with `edit` applied to its config.json text.
    fn model(tag: &str, name: &str, edit: impl Fn(String) -> String) -> Self {
        let s = Self::new(tag);
        let src = common::shared().join("models").join(name);
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), s.0.join(f)).unwrap();
        }
        let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
        std::fs::write(s.0.join("config.json"), edit(cfg)).unwrap();
        s
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gpt2() -> String {
    common::model_dir("tiny-gpt2")
}

fn device() -> burn::tensor::Device {
    burn::tensor::Device::default()
}

// ------------------------------------------------------------- unknown ids

#[test]
fn unknown_aggregator_and_attributed_fn() {
    let out = inseq(&[
        "attribute",
        "--model",
        &gpt2(),
        "--input",
        "Hello",
        "--max-new-tokens",
        "1",
        "--aggregation",
        "subwords,words",
    ]);
    assert_error(&out, "unknown aggregator `words`; available:");
    let out = inseq(&[
        "attribute",
        "--model",
        &gpt2(),
        "--input",
        "Hello",
        "--attributed-fn",
        "surprise",
    ]);
    assert_error(&out, "unknown step function `surprise`; available:");
    let out = inseq(&[
        "attribute",
        "--model",
        &gpt2(),
        "--input",
        "Hello",
        "--device",
        "tpu",
    ]);
    assert_error(&out, "tpu");
}

// ------------------------------------------------- argument types and ranges

#[test]
fn argument_types_and_ranges() {
    let m = gpt2();
    let base = ["attribute", "--model", m.as_str(), "--input", "Hello"];
    let run = |extra: &[&str]| inseq(&[&base[..], extra].concat());
    assert_error(
        &run(&[
            "--method",
            "integrated_gradients",
            "--method-args",
            "n_steps=abc",
        ]),
        "invalid argument `n_steps`: cannot parse `abc`",
    );
    assert_error(
        &run(&[
            "--method",
            "integrated_gradients",
            "--method-args",
            "n_steps=-3",
        ]),
        "invalid argument `n_steps`",
    );
    assert_error(
        &run(&[
            "--method",
            "integrated_gradients",
            "--method-args",
            "n_steps",
        ]),
        "`n_steps` is not name=value",
    );
    assert_error(
        &run(&[
            "--step-scores",
            "top_p_size",
            "--step-scores-args",
            "top_p=-0.5",
        ]),
        "invalid argument `top_p`: must be in (0, 1], got -0.5",
    );
    assert_error(
        &run(&[
            "--step-scores",
            "top_p_size",
            "--step-scores-args",
            "top_p=1.5",
        ]),
        "invalid argument `top_p`: must be in (0, 1], got 1.5",
    );
    assert_error(
        &run(&["--step-scores-args", "top_p=lots"]),
        "invalid argument `top_p`: `lots` is not a number or boolean",
    );
    assert_error(
        &run(&["--max-new-tokens", "0"]),
        "invalid argument `max_new_tokens`: must be at least 1",
    );
    // clap rejects non-numeric and negative integers for its own options
    assert_error(&run(&["--max-new-tokens", "many"]), "invalid value 'many'");
    assert_error(
        &run(&["--max-new-tokens", "-1"]),
        "invalid value '-1' for '--max-new-tokens",
    );
    assert_error(
        &run(&["--attr-pos-start", "9", "--max-new-tokens", "1"]),
        "nothing to attribute: attr_pos_start 9",
    );
    assert_error(&run(&["--viz", "png:out.png"]), "unknown kind");
    assert_error(
        &run(&["--contrast-alignments", "1:2"]),
        "invalid argument `contrast alignments`: `1:2` is not `i-j`",
    );
    assert_error(
        &run(&["--target", "Hello there", "--target", "Hello again"]),
        "got 2 --target for 1 --input",
    );
}

// -------------------------------------------- model files: missing, corrupt

#[test]
fn config_claims_wider_model_than_weights() {
    let s = Scratch::model("wide", "tiny-gpt2", |c| {
        c.replace("\"n_embd\": 32", "\"n_embd\": 64")
    });
    let out = inseq(&["attribute", "--model", s.path(), "--input", "Hi"]);
    assert_error(&out, "shape mismatch for weight `transformer.");
    assert_error(&out, "expected [");
    let s = Scratch::model("layers", "tiny-llama", |c| {
        c.replace(
            "\"num_hidden_layers\": 2",
            "\"num_hidden_layers\": 1000000000000",
        )
    });
    let out = inseq(&["attribute", "--model", s.path(), "--input", "Hi"]);
    assert_error(
        &out,
        "`num_hidden_layers` is 1000000000000 but the weights hold only",
    );
}

#[test]
fn corrupt_tokenizer_weights_and_gguf() {
    let s = Scratch::model("tok", "tiny-gpt2", |c| c);
    let tok = std::fs::read(s.0.join("tokenizer.json")).unwrap();
    std::fs::write(s.0.join("tokenizer.json"), &tok[..tok.len() / 3]).unwrap();
    assert_error(
        &inseq(&["attribute", "--model", s.path(), "--input", "Hi"]),
        "corrupt or unsupported model file",
    );
    // garbage weights
    let s = Scratch::model("garbage", "tiny-gpt2", |c| c);
    std::fs::write(s.0.join("model.safetensors"), b"not a safetensors file").unwrap();
    assert_error(
        &inseq(&["attribute", "--model", s.path(), "--input", "Hi"]),
        "model.safetensors",
    );
    // truncated and missing GGUF files
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../inseq-models/tests/fixtures/gguf/tiny-llama.gguf");
    let bytes = std::fs::read(&gguf).unwrap();
    let s = Scratch::new("gguf");
    let p = s.0.join("cut.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_error(
        &inseq(&["attribute", "--model", p.to_str().unwrap(), "--input", "Hi"]),
        "corrupt or unsupported model file",
    );
    let p = s.0.join("absent.gguf");
    assert_error(
        &inseq(&["attribute", "--model", p.to_str().unwrap(), "--input", "Hi"]),
        "absent.gguf",
    );
    // an empty model name
    assert_error(
        &inseq(&["attribute", "--model", " ", "--input", "Hi"]),
        "empty model name",
    );
}

// ---------------------------------------------------------- input texts

#[test]
fn empty_input_texts() {
    assert_error(
        &inseq(&["attribute", "--model", &gpt2(), "--input", ""]),
        "invalid input: input text is empty",
    );
    assert_error(
        &inseq(&["attribute", "--model", &gpt2(), "--input", "\n\t "]),
        "invalid input: input text is empty",
    );
}

/// A forced target longer than the context is refused before any work.
#[test]
fn target_longer_than_context() {
    let target = format!("Hello{}", " word".repeat(300));
    let out = inseq(&[
        "attribute",
        "--model",
        &gpt2(),
        "--input",
        "Hello",
        "--target",
        &target,
    ]);
    assert_error(&out, "longer than the model's context of 128 tokens");
}

// --------------------------------------------------------- long inputs

/// The ~1,000-token prompt: tiny-llama copied with a 2,048-position context
/// (RoPE has no position table, so only the config limit changes).
fn long_context_llama() -> Scratch {
    Scratch::model("long", "tiny-llama", |c| {
        c.replace(
            "\"max_position_embeddings\": 128",
            "\"max_position_embeddings\": 2048",
        )
    })
}

fn long_prompt() -> String {
    // "word" and " " are single tokens of the fixture tokenizer: ~2 tokens per repetition.
    let s = "The cat sat on the mat. ".repeat(90);
    s.trim_end().to_string()
}

/// Peak RSS bound for the long-input run (measured: see docs/reliability.md).
const LONG_INPUT_RSS_LIMIT_MB: u64 = 1024;

#[test]
fn long_input_integrated_gradients_has_bounded_memory() {
    let dir = long_context_llama();
    let prompt = long_prompt();
    {
        let m = load_model(dir.path(), "saliency", MethodArgs::default(), &device()).unwrap();
        let n = m.tokenizer().encode(&prompt, true).unwrap().len();
        assert!((900..=1200).contains(&n), "prompt has {n} tokens");
    }
    let t0 = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_inseq"))
        .args([
            "attribute",
            "--model",
            dir.path(),
            "--method",
            "integrated_gradients",
            "--method-args",
            "n_steps=16,internal_batch_size=4",
            "--input",
            &prompt,
            "--max-new-tokens",
            "1",
            "--quiet",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .output();
    let Ok(out) = out else {
        eprintln!("note: /usr/bin/time not available; skipping the RSS measurement");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let kb: u64 = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("time -v reports the peak RSS");
    eprintln!(
        "long input: peak RSS {} MB, {:.1} s",
        kb / 1024,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        kb / 1024 < LONG_INPUT_RSS_LIMIT_MB,
        "peak RSS {} MB over {LONG_INPUT_RSS_LIMIT_MB} MB",
        kb / 1024
    );
}

/// SIGKILL in the middle of a long run leaves neither the `--save` target nor a
/// stray temporary file (outputs are written to a temp file and renamed).
#[test]
fn killed_run_leaves_no_partial_output() {
    let dir = long_context_llama();
    let out_dir = Scratch::new("kill");
    let save = out_dir.0.join("out.json");
    let save_inseq = out_dir.0.join("out.inseq.json");
    let prompt = long_prompt();
    for delay_ms in [300u64, 1500] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_inseq"))
            .args([
                "attribute",
                "--model",
                dir.path(),
                "--method",
                "integrated_gradients",
                "--method-args",
                "n_steps=64,internal_batch_size=8",
                "--input",
                &prompt,
                "--max-new-tokens",
                "4",
                "--quiet",
                "--save",
                save.to_str().unwrap(),
                "--save-inseq",
                save_inseq.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        let left: Vec<String> = std::fs::read_dir(&out_dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if finished {
            // The run beat the kill: both files are complete.
            assert!(inseq::AttributionOutput::load(&save).is_ok());
            continue;
        }
        assert!(
            left.iter().all(|n| !n.ends_with(".tmp")),
            "stray temp file: {left:?}"
        );
        for name in &left {
            // Whatever was renamed into place is complete.
            let p = out_dir.0.join(name);
            if name == "out.json" {
                inseq::AttributionOutput::load(&p).unwrap();
            } else {
                inseq::AttributionOutput::load_inseq(&p).unwrap();
            }
        }
        assert!(left.is_empty(), "killed run left {left:?}");
    }
}

/// Progress is reported on a terminal: run the CLI under `script` (a pty)
/// and look for the indicatif bar.
#[test]
fn progress_bar_on_a_terminal() {
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("note: no /usr/bin/script; skipping");
        return;
    }
    let cmd = format!(
        "{} attribute --model {} --input Hello --max-new-tokens 3 --quiet",
        env!("CARGO_BIN_EXE_inseq"),
        gpt2()
    );
    let out = Command::new("/usr/bin/script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("attributing"), "no progress bar: {text}");
    // Without a terminal, no bar is drawn.
    let out = inseq(&[
        "attribute",
        "--model",
        &gpt2(),
        "--input",
        "Hello",
        "--max-new-tokens",
        "3",
        "--quiet",
    ]);
    assert_ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("attributing"));
}

// ------------------------------------------- numerical errors and hostile configs

/// Overwrites every value of the F32 tensor `name` in `dir/model.safetensors` with `value`.
fn poison_tensor(dir: &Path, name: &str, value: f32) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let offsets = &header[name]["data_offsets"];
    let (from, to) = (offsets[0].as_u64().unwrap(), offsets[1].as_u64().unwrap());
    let data = 8 + header_len;
    for chunk in bytes[data + from as usize..data + to as usize].chunks_exact_mut(4) {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
}

/// Asserts a failed run that wrote nothing at `save`.
fn assert_error_nothing_saved(out: &Output, needle: &str, save: &Path) {
    assert_error(out, needle);
    assert!(!save.exists(), "{} was written", save.display());
}

#[test]
fn nan_weights_are_a_numerical_error_not_null_output() {
    let s = Scratch::model("nanw", "tiny-gpt2", |c| c);
    poison_tensor(&s.0, "transformer.ln_f.weight", f32::NAN);
    let save = s.0.join("out.json");
    let save_arg = save.to_str().unwrap();
    let base = ["attribute", "--model", s.path(), "--input", "Hello"];
    // Greedy generation reads the logits first.
    let out = inseq(&[&base[..], &["--save", save_arg]].concat());
    assert_error_nothing_saved(
        &out,
        "generation step 0: the next-token logits are not finite",
        &save,
    );
    // A forced target reaches the attributions.
    let forced = [&base[..], &["--target", "Hello ladies", "--save", save_arg]].concat();
    let out = inseq(&forced);
    assert_error_nothing_saved(
        &out,
        "target attributions of input 0 at target position",
        &save,
    );
    assert_error(&out, "the model's weights or config");
    // Kept on request, for debugging.
    let out = inseq(&[&forced[..], &["--allow-non-finite"]].concat());
    assert_ok(&out);
    assert!(save.exists());
}

#[test]
fn impossible_config_values_name_config_json_and_the_field() {
    let cases: [(&str, &str, &str, &str); 7] = [
        (
            "tiny-gpt2",
            "\"layer_norm_epsilon\": 1e-05",
            "\"layer_norm_epsilon\": -1e-05",
            "`layer_norm_epsilon` is -0.00001",
        ),
        (
            "tiny-gpt2",
            "\"n_layer\": 2",
            "\"n_layer\": 0",
            "`n_layer` is 0",
        ),
        (
            "tiny-gpt2",
            "\"n_head\": 4",
            "\"n_head\": 5",
            "`n_head` (5) does not divide `n_embd` (32)",
        ),
        (
            "tiny-gpt2",
            "\"activation_function\": \"gelu_new\"",
            "\"activation_function\": \"mish\"",
            "activation function `mish`",
        ),
        (
            "tiny-llama",
            "\"rope_theta\": 10000.0",
            "\"rope_theta\": 0.0",
            "`rope_theta` is 0",
        ),
        (
            "tiny-llama",
            "\"hidden_act\": \"silu\"",
            "\"hidden_act\": \"xielu\"",
            "activation function `xielu`",
        ),
        (
            "tiny-marian",
            "\"decoder_start_token_id\": 0",
            "\"decoder_start_token_id\": 999999",
            "`decoder_start_token_id` is 999999, outside the vocabulary of 400",
        ),
    ];
    for (model, from, to, needle) in cases {
        let s = Scratch::model("cfg", model, |c| {
            assert!(c.contains(from), "{model} config lacks {from}");
            c.replace(from, to)
        });
        let out = inseq(&["attribute", "--model", s.path(), "--input", "Hello"]);
        assert_error(&out, needle);
        if !needle.starts_with("activation") {
            assert_error(&out, "config.json");
        }
    }
}

/// tiny-gpt2 whose tokenizer gives `Z` the id 4000, past the model's 400 embeddings.
fn out_of_vocabulary_tokenizer() -> Scratch {
    let s = Scratch::model("oov", "tiny-gpt2", |c| c);
    let path = s.0.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["model"]["vocab"]["Z"] = 4000.into();
    std::fs::write(&path, tok.to_string()).unwrap();
    s
}

#[test]
fn token_ids_outside_the_vocabulary_are_an_error() {
    let s = out_of_vocabulary_tokenizer();
    let out = inseq(&[
        "attribute",
        "--model",
        s.path(),
        "--input",
        "Hello",
        "--target",
        "Hello Z",
    ]);
    assert_error(
        &out,
        "token id 4000 (`Z`) from the tokenizer (tokenizer.json)",
    );
    assert_error(&out, "outside the model's vocabulary of 400");
    // attribute-dataset skips the row and goes on.
    let data = s.0.join("rows.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"Hello\", \"target\": \"Hello Z\"}\n{\"text\": \"Hello\", \"target\": \"Hello you\"}\n",
    )
    .unwrap();
    let save = s.0.join("out.jsonl");
    let out = inseq(&[
        "attribute-dataset",
        "--model",
        s.path(),
        "--method",
        "saliency",
        "--data",
        data.to_str().unwrap(),
        "--target-field",
        "target",
        "--save",
        save.to_str().unwrap(),
        "--on-error",
        "skip",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("row 0: skipped:") && stderr.contains("token id 4000"),
        "{stderr}"
    );
    let rows = inseq_cli::dataset::OutputStore::from_path(&save)
        .read_all()
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn huge_sizes_fail_fast_with_the_limit() {
    let cases = [
        ("integrated_gradients", "n_steps=1000000000", "n_steps"),
        (
            "integrated_gradients",
            "n_steps=1000000000,method=riemann_trapezoid",
            "n_steps",
        ),
        (
            "layer_integrated_gradients",
            "n_steps=1000000000",
            "n_steps",
        ),
        ("gradient_shap", "n_samples=1000000000", "n_samples"),
        ("lime", "n_samples=1000000000", "n_samples"),
        ("reagent", "num_probes=1000000000", "num_probes"),
        ("reagent", "max_probe_steps=1000000000", "max_probe_steps"),
    ];
    for (method, args, name) in cases {
        let t0 = Instant::now();
        let out = inseq(&[
            "attribute",
            "--model",
            &gpt2(),
            "--input",
            "Hello",
            "--target",
            "Hello ladies",
            "--method",
            method,
            "--method-args",
            args,
        ]);
        assert_error(
            &out,
            &format!("invalid argument `{name}`: 1000000000 is over the limit"),
        );
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{method} took {:?}",
            t0.elapsed()
        );
    }
}
