//! `cargo xtask bench --long`: time and peak RSS of SmolLM2 attribution on long inputs (a
//! forced target of a prompt of N words plus two attributed words), through the release `inseq`
//! CLI (model loading included) and through Python Inseq 0.7.1 (`model.attribute`, eager
//! attention), each process under `/usr/bin/time -v`. Python rows whose estimated peak exceeds
//! `--python-max-gb` are skipped and say so. The table is printed and written to
//! `<target>/bench/long.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// Words the prompts are made of: common words that SmolLM2's tokenizer keeps as one token each
/// (with their leading space), so that N words are about N tokens.
const WORDS: &[&str] = &[
    "the", "people", "of", "this", "small", "town", "have", "always", "known", "that", "water",
    "from", "a", "river", "is", "good", "for", "their", "fields", "and", "when", "rain", "comes",
    "late", "they", "walk", "to", "hills", "where", "old", "trees", "grow", "near", "stone",
    "house", "built", "by", "first", "family", "who", "lived", "there", "long", "ago",
];

/// The two attributed words after the prompt.
const TARGET_TAIL: &str = " in the";

/// One method of the long job set: inseq-rs `--method-args` and Python keyword arguments (JSON),
/// and Python's peak at 2,000 words measured on this machine (GB, scaled by `len²` for the skip
/// estimate; attention weights and their gradients dominate).
struct LongMethod {
    id: &'static str,
    rust_args: &'static str,
    py_args: &'static str,
    py_gb_at_2k: f64,
}

const LONG_METHODS: &[LongMethod] = &[
    LongMethod {
        id: "saliency",
        rust_args: "",
        py_args: "{}",
        py_gb_at_2k: 9.2,
    },
    LongMethod {
        id: "integrated_gradients",
        rust_args: "n_steps=8",
        py_args: r#"{"n_steps": 8}"#,
        py_gb_at_2k: 8.0 * 9.2,
    },
    LongMethod {
        id: "attention",
        rust_args: "",
        py_args: "{}",
        py_gb_at_2k: 14.4,
    },
];

/// Options of `cargo xtask bench --long`.
pub struct LongArgs<'a> {
    pub lengths: &'a [usize],
    pub methods: &'a [String],
    pub no_python: bool,
    pub python_max_gb: f64,
}

/// What one process reported: wall seconds, peak RSS (MB) and its JSON line (Python).
struct Measured {
    wall_s: f64,
    peak_mb: f64,
    json: Option<Value>,
}

/// The output directory (`<target>/bench`), the SmolLM2 GGUF and the release CLI, built.
fn setup() -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => std::env::current_dir()?.join(d),
        _ => root.join("target"),
    };
    let out = target.join("bench");
    std::fs::create_dir_all(&out)?;
    let gguf = inseq::models::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.is_file() {
        bail!(
            "{} is missing: run `cargo xtask fetch-models`",
            gguf.display()
        );
    }
    println!("== building the release CLI");
    crate::bench::run_checked(
        Command::new(env!("CARGO"))
            .args(["build", "--release", "--workspace", "--bin", "inseq"])
            .current_dir(&root),
    )?;
    Ok((out, gguf, target.join("release").join("inseq")))
}

/// `cargo xtask bench --7b`: writes the random model of `shape`, attributes a 256-word input
/// with saliency and two generated tokens from its safetensors and from its GGUF, prints time
/// and peak RSS, and deletes the files.
pub fn run_random(shape: &str) -> anyhow::Result<bool> {
    let (out, gguf, cli) = setup()?;
    let py = crate::bench::python_env()?;
    let (_, smol_dir) = prepare_python(&gguf)?;
    let dir = out.join(format!("random-{shape}"));
    let q4 = out.join(format!("random-{shape}.Q4_0.gguf"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/python/random_llama.py");
    println!("== writing the random {shape} model");
    let written = crate::bench::run_checked(
        Command::new(&py)
            .arg(script)
            .args(["--shape", shape, "--tokenizer-dir"])
            .arg(&smol_dir)
            .arg("--tokenizer-gguf")
            .arg(&gguf)
            .arg("--out")
            .arg(&dir)
            .arg("--gguf")
            .arg(&q4),
    );
    let (input, _) = write_texts(&out, 256)?;
    let mut md =
        String::from("| model file | time s (CLI, with load) | peak RSS GB |\n|---|---:|---:|\n");
    let mut ok = written.is_ok();
    if written.is_ok() {
        for (what, model) in [("bf16 safetensors", &dir), ("Q4_0 GGUF", &q4)] {
            println!("== {shape} {what}");
            let mut cmd = Command::new("/usr/bin/time");
            cmd.arg("-v")
                .arg(&cli)
                .args(["attribute", "--model"])
                .arg(model)
                .args([
                    "--method",
                    "saliency",
                    "--max-new-tokens",
                    "2",
                    "--quiet",
                    "--input",
                ])
                .arg(std::fs::read_to_string(&input)?);
            let cell = match timed(&mut cmd) {
                Ok(m) => format!("{:.1} | {:.2}", m.wall_s, m.peak_mb / 1000.0),
                Err(e) => {
                    ok = false;
                    format!("failed: {e} |")
                }
            };
            md.push_str(&format!("| {shape} {what} | {cell} |\n"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&q4);
    written?;
    print!("\n{md}");
    std::fs::write(out.join(format!("random-{shape}.md")), &md)?;
    Ok(ok)
}

/// Runs the long-input benchmark; `Ok(false)` when a run failed.
pub fn run(args: &LongArgs<'_>) -> anyhow::Result<bool> {
    let (out, gguf, cli) = setup()?;
    let python = (!args.no_python)
        .then(|| prepare_python(&gguf))
        .transpose()?;
    let mut rows = Vec::new();
    let mut failed = 0;
    for &words in args.lengths {
        let (input, forced) = write_texts(&out, words)?;
        for m in LONG_METHODS.iter().filter(|m| selected(m, args.methods)) {
            println!("== {words} words, {}", m.id);
            let rs = run_rust(&cli, &gguf, m, &input, &forced);
            let py = python
                .as_ref()
                .map(|(py, dir)| run_python(py, dir, m, words, &input, &forced, args));
            failed += usize::from(rs.is_err()) + usize::from(matches!(py, Some(Err(_))));
            rows.push(row(words, m.id, &rs, py.as_ref()));
        }
    }
    let md = render(&rows);
    print!("\n{md}");
    let path = out.join("long.md");
    std::fs::write(&path, &md)?;
    println!("\nwrote {}", path.display());
    Ok(failed == 0)
}

fn selected(m: &LongMethod, filters: &[String]) -> bool {
    filters.is_empty() || filters.iter().any(|f| m.id.contains(f.as_str()))
}

/// Writes the prompt of `words` words and the forced target (prompt + two words) under `out`.
fn write_texts(out: &Path, words: usize) -> anyhow::Result<(PathBuf, PathBuf)> {
    let prompt: Vec<&str> = (0..words).map(|i| WORDS[i % WORDS.len()]).collect();
    let prompt = prompt.join(" ");
    let input = out.join(format!("long-{words}.input.txt"));
    let forced = out.join(format!("long-{words}.target.txt"));
    std::fs::write(&input, &prompt)?;
    std::fs::write(&forced, format!("{prompt}{TARGET_TAIL}"))?;
    Ok((input, forced))
}

/// The Python interpreter and SmolLM2 converted to a float32 directory for it.
fn prepare_python(gguf: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let py = crate::bench::python_env()?;
    let dir = inseq::models::models_dir()
        .join("bench")
        .join("smollm2-f32");
    if !dir.join("model.safetensors").is_file() {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/python/prepare_models.py");
        crate::bench::run_checked(
            Command::new(&py)
                .arg(script)
                .arg("--gguf")
                .arg(gguf)
                .arg("--out")
                .arg(dir.parent().expect("bench dir"))
                .args(["--only", "smollm2-f32"]),
        )?;
    }
    Ok((py, dir))
}

fn run_rust(
    cli: &Path,
    gguf: &Path,
    m: &LongMethod,
    input: &Path,
    forced: &Path,
) -> anyhow::Result<Measured> {
    let read = |p: &Path| std::fs::read_to_string(p);
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v")
        .arg(cli)
        .args(["attribute", "--model"])
        .arg(gguf)
        .args(["--method", m.id, "--method-args", m.rust_args, "--quiet"])
        .arg("--input")
        .arg(read(input)?)
        .arg("--target")
        .arg(read(forced)?);
    timed(&mut cmd)
}

fn run_python(
    py: &Path,
    dir: &Path,
    m: &LongMethod,
    words: usize,
    input: &Path,
    forced: &Path,
    args: &LongArgs<'_>,
) -> anyhow::Result<Option<Measured>> {
    let estimate = m.py_gb_at_2k * (words as f64 / 2000.0).powi(2);
    if estimate > args.python_max_gb {
        return Ok(None);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/python/long_job.py");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v")
        .arg(py)
        .arg(script)
        .arg("--model")
        .arg(dir)
        .args(["--method", m.id, "--method-args", m.py_args])
        .arg("--input-file")
        .arg(input)
        .arg("--target-file")
        .arg(forced);
    timed(&mut cmd).map(Some)
}

/// Runs `/usr/bin/time -v …` and reads its wall time and maximum resident set size.
fn timed(cmd: &mut Command) -> anyhow::Result<Measured> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!("{}", tail.join("\n"));
        bail!("failed ({})", out.status);
    }
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::trim).map(String::from))
            .with_context(|| format!("no `{name}` in /usr/bin/time's output"))
    };
    let kb: f64 = field("Maximum resident set size (kbytes):")?.parse()?;
    let wall = parse_wall(&field("Elapsed (wall clock) time (h:mm:ss or m:ss):")?)?;
    let json = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok());
    println!("  {wall:.1} s, {:.0} MB", kb / 1024.0);
    Ok(Measured {
        wall_s: wall,
        peak_mb: kb / 1024.0,
        json,
    })
}

/// `h:mm:ss` or `m:ss.ss` → seconds.
fn parse_wall(text: &str) -> anyhow::Result<f64> {
    text.split(':')
        .try_fold(0.0, |acc, part| Ok(acc * 60.0 + part.parse::<f64>()?))
}

fn row(
    words: usize,
    method: &str,
    rs: &anyhow::Result<Measured>,
    py: Option<&anyhow::Result<Option<Measured>>>,
) -> Vec<String> {
    let secs = |m: &Measured| format!("{:.1}", m.wall_s);
    let gb = |m: &Measured| format!("{:.2}", m.peak_mb / 1000.0);
    let (rs_t, rs_m) = match rs {
        Ok(m) => (secs(m), gb(m)),
        Err(e) => (format!("failed: {e}"), String::new()),
    };
    let (py_t, py_a, py_m) = match py {
        None => ("not run".into(), String::new(), String::new()),
        Some(Ok(None)) => (
            "skipped: estimate over --python-max-gb".into(),
            String::new(),
            String::new(),
        ),
        Some(Ok(Some(m))) => {
            let attribute = m
                .json
                .as_ref()
                .and_then(|j| j["attribute_s"].as_f64())
                .map_or(String::new(), |s| format!("{s:.1}"));
            (secs(m), attribute, gb(m))
        }
        Some(Err(e)) => (format!("failed: {e}"), String::new(), String::new()),
    };
    vec![
        words.to_string(),
        method.into(),
        rs_t,
        rs_m,
        py_t,
        py_a,
        py_m,
    ]
}

fn render(rows: &[Vec<String>]) -> String {
    let mut md = String::from(
        "| words | method | inseq-rs s (CLI, with load) | inseq-rs peak RSS GB | Inseq s (process) | Inseq s (`attribute`) | Inseq peak RSS GB |\n|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        md.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    md
}
