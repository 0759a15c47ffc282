//! `cargo xtask bench`: runs the same attribution jobs through inseq-rs and through Python Inseq
//! 0.7.1 and prints a comparison table.
//!
//! Each job is one process of `inseq-bench-job` (`benches/job.rs`, built in release once per
//! distinct feature set of the requested backends) and one of `benches/python/inseq_job.py`: both
//! generate `--max-new-tokens` tokens greedily and attribute every generated step with the
//! `probability` step score, and print one JSON line with their timings, peak memory and target
//! tokens. The table is printed and written with the raw JSON lines to `<target>/bench/results.md`
//! and `<target>/bench/results.jsonl` (`<target>` is `$CARGO_TARGET_DIR`, else the workspace's
//! `target/`).
//!
//! Setup, done as needed and reported as it goes:
//! - Python: `$INSEQ_PYTHON`, else the venv `~/.cache/inseq-rs/pyenv` (as in `.ci/run`), created
//!   with `python3 -m venv` if missing; `inseq==0.7.1`, `gguf` and `accelerate` are pip-installed
//!   into it when they are not importable.
//! - Models, under `<models dir>/bench/` (see [`inseq::models::models_dir`]): the SmolLM2 GGUF of
//!   `cargo xtask fetch-models`, which inseq-rs loads directly, converted once to a float32
//!   safetensors directory for Python (transformers dequantizes GGUFs slowly on every load), and a
//!   randomly initialised GPT-2-small-shaped model with the SmolLM2 tokenizer, which both sides
//!   load (`benches/python/prepare_models.py`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::fetch_models;

/// The default prompt (30 SmolLM2 tokens).
const PROMPT: &str = "The Eiffel Tower was built in 1889 for the World Fair in Paris. It was designed by Gustave Eiffel and it is";

/// Python packages the Python side needs: (module, pip requirement).
const PY_PACKAGES: &[(&str, &str)] = &[
    ("inseq", "inseq==0.7.1"),
    ("gguf", "gguf"),
    ("accelerate", "accelerate"),
];

/// Files that make a prepared model directory complete.
const MODEL_DIR_FILES: &[&str] = &["config.json", "model.safetensors", "tokenizer.json"];

/// A model of the default job set.
struct Model {
    /// Name in the job id (`model/method`).
    name: &'static str,
    /// What `inseq-bench-job --model` gets: an alias, or `None` for the prepared directory.
    rust_alias: Option<&'static str>,
    /// Directory under `<models>/bench/` that Python Inseq loads (and inseq-rs, without alias).
    dir: &'static str,
}

const MODELS: &[Model] = &[
    Model {
        name: "smollm2",
        rust_alias: Some("smollm2"),
        dir: "smollm2-f32",
    },
    Model {
        name: "gpt2-small-random",
        rust_alias: None,
        dir: "gpt2-small-random",
    },
];

/// An attribution method of the default job set.
struct Method {
    id: &'static str,
    /// `inseq-bench-job --method-args`.
    rust_args: &'static str,
    /// `inseq_job.py --method-args` (JSON).
    py_args: &'static str,
    /// Uses `--slow-repeats`.
    slow: bool,
}

const METHODS: &[Method] = &[
    Method {
        id: "saliency",
        rust_args: "",
        py_args: "{}",
        slow: false,
    },
    Method {
        id: "input_x_gradient",
        rust_args: "",
        py_args: "{}",
        slow: false,
    },
    Method {
        id: "integrated_gradients",
        rust_args: "n_steps=50",
        py_args: r#"{"n_steps": 50}"#,
        slow: true,
    },
    Method {
        id: "attention",
        rust_args: "",
        py_args: "{}",
        slow: false,
    },
    Method {
        id: "occlusion",
        rust_args: "",
        py_args: "{}",
        slow: false,
    },
];

/// An inseq-rs backend: the `inseq-bench-job` features it is built with and its `--device`.
struct Backend {
    name: &'static str,
    features: &'static str,
    device: &'static str,
}

const BACKENDS: &[Backend] = &[
    Backend {
        name: "flex",
        features: "",
        device: "cpu",
    },
    Backend {
        name: "ndarray",
        features: "ndarray",
        device: "ndarray",
    },
    Backend {
        name: "openblas",
        features: "openblas-system",
        device: "ndarray",
    },
    Backend {
        name: "wgpu",
        features: "wgpu",
        device: "wgpu",
    },
];

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Only the jobs whose `model/method` contains one of these comma-separated substrings
    /// (models: smollm2, gpt2-small-random; methods: saliency, input_x_gradient,
    /// integrated_gradients, attention, occlusion).
    #[arg(long, value_delimiter = ',')]
    jobs: Vec<String>,
    /// Timed runs per job (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Timed runs of the slow jobs (integrated_gradients); default: --repeats.
    #[arg(long)]
    slow_repeats: Option<usize>,
    /// Untimed runs before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Tokens generated, and attributed, per run.
    #[arg(long, default_value_t = 10)]
    max_new_tokens: usize,
    /// inseq-rs backends, comma-separated: flex (`--device cpu`), ndarray, openblas (ndarray with
    /// system OpenBLAS), wgpu.
    #[arg(long, value_delimiter = ',', default_value = "flex")]
    backends: Vec<String>,
    /// Skip the Python Inseq side.
    #[arg(long)]
    no_python: bool,
    /// Threads: torch.set_num_threads for Python, RAYON_NUM_THREADS for inseq-rs (default: each
    /// library's own default).
    #[arg(long)]
    threads: Option<usize>,
    /// Prompt.
    #[arg(long, default_value = PROMPT)]
    input: String,
    /// Long inputs instead of the default job set: SmolLM2 with prompts of `--lengths` words
    /// (saliency, integrated_gradients n_steps=8, attention; filter with --jobs), release CLI
    /// against Python Inseq (see `bench_long`).
    #[arg(long)]
    long: bool,
    /// Prompt lengths (words) of `--long`.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000,8000")]
    lengths: Vec<usize>,
    /// `--long`: skip Python rows whose estimated peak memory is over this many GB.
    #[arg(long, default_value_t = 6.0)]
    python_max_gb: f64,
    /// A randomly initialised Llama-shaped model (`--shape`, default Llama-2-7B's) written as
    /// sharded bf16 safetensors and a Q4_0 GGUF (`benches/python/random_llama.py`), each
    /// attributed with saliency on a 256-word input and two generated tokens; the files are
    /// deleted afterwards.
    #[arg(long = "7b")]
    seven_b: bool,
    /// Shape of `--7b`: 7b, 1b or tiny.
    #[arg(long, default_value = "7b")]
    shape: String,
}

/// One job: a model and a method.
struct Job {
    model: &'static Model,
    method: &'static Method,
}

impl Job {
    fn id(&self) -> String {
        format!("{}/{}", self.model.name, self.method.id)
    }
}

/// What one process reported: its JSON line, or why it failed.
type Outcome = Result<Value, String>;

/// The results of one job.
struct JobResult {
    id: String,
    repeats: usize,
    /// `None` with `--no-python`.
    python: Option<Outcome>,
    /// One per backend, in `--backends` order.
    rust: Vec<(&'static str, Outcome)>,
}

/// Paths the run uses.
struct Paths {
    root: PathBuf,
    target: PathBuf,
    out: PathBuf,
    bench_models: PathBuf,
}

/// Runs the benchmark; `Ok(false)` when a job failed.
pub fn run(args: BenchArgs) -> anyhow::Result<bool> {
    if args.seven_b {
        return crate::bench_long::run_random(&args.shape);
    }
    if args.long {
        return crate::bench_long::run(&crate::bench_long::LongArgs {
            lengths: &args.lengths,
            methods: &args.jobs,
            no_python: args.no_python,
            python_max_gb: args.python_max_gb,
        });
    }
    if args.repeats == 0 || args.slow_repeats == Some(0) {
        bail!("--repeats and --slow-repeats must be at least 1");
    }
    let backends = parse_backends(&args.backends)?;
    let jobs = select_jobs(&args.jobs)?;
    let paths = paths()?;
    std::fs::create_dir_all(&paths.out)
        .with_context(|| format!("creating {}", paths.out.display()))?;
    let python = prepare_python_and_models(&args, &paths, &jobs)?;
    let py_versions = match (&python, args.no_python) {
        (Some(py), false) => python_versions(py),
        _ => None,
    };
    let binaries = build_job_runners(&paths, &backends)?;

    println!("== jobs");
    let jsonl_path = paths.out.join("results.jsonl");
    let jsonl =
        File::create(&jsonl_path).with_context(|| format!("creating {}", jsonl_path.display()))?;
    let mut runner = JobRunner {
        args: &args,
        paths: &paths,
        backends: &backends,
        binaries: &binaries,
        python: python.as_deref().filter(|_| !args.no_python),
        jsonl,
        n: 0,
        total: jobs.len() * (backends.len() + usize::from(!args.no_python)),
    };
    let results = jobs
        .iter()
        .map(|job| runner.run(job))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let md = render_report(&args, &paths, py_versions.as_deref(), &results);
    println!();
    print!("{md}");
    let md_path = paths.out.join("results.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\nwrote {} and {}", md_path.display(), jsonl_path.display());
    let failed = failed_runs(&results);
    if failed > 0 {
        eprintln!("{failed} run(s) failed");
    }
    Ok(failed == 0)
}

/// Fetches the models, sets up Python where the jobs need it (the Python side,
/// or preparing a missing model directory) and prepares the model directories.
/// Returns the Python interpreter, if set up.
fn prepare_python_and_models(
    args: &BenchArgs,
    paths: &Paths,
    jobs: &[Job],
) -> anyhow::Result<Option<PathBuf>> {
    println!("== models");
    fetch_models::run()?;
    let mut needed: Vec<&str> = Vec::new();
    for job in jobs {
        let model = job.model;
        let needs_dir = !args.no_python || model.rust_alias.is_none();
        if needs_dir && !needed.contains(&model.dir) {
            needed.push(model.dir);
        }
    }
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|d| !model_dir_complete(&paths.bench_models.join(d)))
        .collect();
    let python = if !args.no_python || !missing.is_empty() {
        println!("== python");
        Some(python_env()?)
    } else {
        None
    };
    if let Some(py) = &python {
        prepare_models(py, paths, &needed, &missing)?;
    }
    Ok(python)
}

/// Builds the inseq-rs job runner once per distinct feature set of `backends`.
fn build_job_runners(
    paths: &Paths,
    backends: &[&'static Backend],
) -> anyhow::Result<BTreeMap<&'static str, PathBuf>> {
    println!("== build");
    let mut binaries: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for b in backends {
        if !binaries.contains_key(b.features) {
            let bin = build_job_runner(paths, b.features)?;
            binaries.insert(b.features, bin);
        }
    }
    Ok(binaries)
}

/// How many runs of `results` failed.
fn failed_runs(results: &[JobResult]) -> usize {
    results
        .iter()
        .flat_map(|r| r.rust.iter().map(|(_, o)| o).chain(r.python.iter()))
        .filter(|o| o.is_err())
        .count()
}

/// Runs jobs on every backend (and Python), numbering the runs and logging them to `jsonl`.
struct JobRunner<'a> {
    args: &'a BenchArgs,
    paths: &'a Paths,
    backends: &'a [&'static Backend],
    binaries: &'a BTreeMap<&'static str, PathBuf>,
    /// The Python interpreter, `None` with `--no-python`.
    python: Option<&'a Path>,
    jsonl: File,
    /// Runs started so far.
    n: usize,
    /// Runs in all.
    total: usize,
}

impl JobRunner<'_> {
    /// Runs `job` on every backend, then on Python Inseq.
    fn run(&mut self, job: &Job) -> anyhow::Result<JobResult> {
        let id = job.id();
        let repeats = if job.method.slow {
            self.args.slow_repeats.unwrap_or(self.args.repeats)
        } else {
            self.args.repeats
        };
        let mut rust = Vec::new();
        for b in self.backends {
            let mut cmd = self.rust_command(job, b, repeats);
            let outcome = self.run_one(&id, &format!("inseq-rs {}", b.name), &mut cmd);
            write_jsonl(&mut self.jsonl, &id, "inseq-rs", Some(b.name), &outcome)?;
            rust.push((b.name, outcome));
        }
        let python = match self.python {
            Some(py) => {
                let mut cmd = self.python_command(py, job, repeats);
                let outcome = self.run_one(&id, "Inseq (Python)", &mut cmd);
                write_jsonl(&mut self.jsonl, &id, "python-inseq", None, &outcome)?;
                Some(outcome)
            }
            None => None,
        };
        Ok(JobResult {
            id,
            repeats,
            python,
            rust,
        })
    }

    /// Runs `cmd` as run `n` of the total, printing its progress and outcome.
    fn run_one(&mut self, id: &str, side: &str, cmd: &mut Command) -> Outcome {
        self.n += 1;
        print!("[{}/{}] {id} {side} ... ", self.n, self.total);
        let _ = std::io::stdout().flush();
        let outcome = run_job(cmd);
        report(&outcome);
        outcome
    }

    /// The `inseq-bench-job` command of `job` on backend `b`.
    fn rust_command(&self, job: &Job, b: &Backend, repeats: usize) -> Command {
        let args = self.args;
        let mut cmd = Command::new(&self.binaries[b.features]);
        let model = match job.model.rust_alias {
            Some(alias) => alias.to_string(),
            None => self
                .paths
                .bench_models
                .join(job.model.dir)
                .display()
                .to_string(),
        };
        cmd.args(["--model", &model, "--method", job.method.id])
            .args(["--method-args", job.method.rust_args])
            .args(["--input", &args.input])
            .args(["--max-new-tokens", &args.max_new_tokens.to_string()])
            .args(["--repeats", &repeats.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--device", b.device]);
        if let Some(t) = args.threads {
            cmd.env("RAYON_NUM_THREADS", t.to_string());
        }
        cmd
    }

    /// The `inseq_job.py` command of `job` run by the interpreter `py`.
    fn python_command(&self, py: &Path, job: &Job, repeats: usize) -> Command {
        let args = self.args;
        let mut cmd = Command::new(py);
        cmd.arg(self.paths.root.join("benches/python/inseq_job.py"))
            .arg("--model")
            .arg(self.paths.bench_models.join(job.model.dir))
            .args(["--method", job.method.id])
            .args(["--method-args", job.method.py_args])
            .args(["--input", &args.input])
            .args(["--max-new-tokens", &args.max_new_tokens.to_string()])
            .args(["--repeats", &repeats.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--threads", &args.threads.unwrap_or(0).to_string()])
            .env("HF_HUB_OFFLINE", "1")
            .env("TOKENIZERS_PARALLELISM", "false");
        cmd
    }
}

fn parse_backends(names: &[String]) -> anyhow::Result<Vec<&'static Backend>> {
    let mut out: Vec<&'static Backend> = Vec::new();
    for name in names.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let b = BACKENDS.iter().find(|b| b.name == name).with_context(|| {
            let known: Vec<_> = BACKENDS.iter().map(|b| b.name).collect();
            format!("unknown backend {name:?} (known: {})", known.join(", "))
        })?;
        if !out.iter().any(|o| o.name == b.name) {
            out.push(b);
        }
    }
    if out.is_empty() {
        bail!("--backends names no backend");
    }
    Ok(out)
}

fn select_jobs(filters: &[String]) -> anyhow::Result<Vec<Job>> {
    let filters: Vec<&str> = filters
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let jobs: Vec<Job> = MODELS
        .iter()
        .flat_map(|model| METHODS.iter().map(move |method| Job { model, method }))
        .filter(|j| filters.is_empty() || filters.iter().any(|f| j.id().contains(f)))
        .collect();
    if jobs.is_empty() {
        let all: Vec<String> = MODELS
            .iter()
            .flat_map(|m| METHODS.iter().map(move |x| format!("{}/{}", m.name, x.id)))
            .collect();
        bail!(
            "--jobs {} matches no job (jobs: {})",
            filters.join(","),
            all.join(", ")
        );
    }
    Ok(jobs)
}

fn paths() -> anyhow::Result<Paths> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => std::env::current_dir()?.join(d),
        _ => root.join("target"),
    };
    Ok(Paths {
        out: target.join("bench"),
        bench_models: inseq::models::models_dir().join("bench"),
        root,
        target,
    })
}

fn model_dir_complete(dir: &Path) -> bool {
    MODEL_DIR_FILES.iter().all(|f| dir.join(f).is_file())
}

/// Runs a setup command with inherited output, failing on a non-zero exit.
pub(crate) fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The Python interpreter for the Python side, with the packages it needs installed.
pub(crate) fn python_env() -> anyhow::Result<PathBuf> {
    let py = if let Some(p) = std::env::var_os("INSEQ_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        println!("python: {} (from INSEQ_PYTHON)", p.display());
        p
    } else {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        let venv = cache.join("inseq-rs").join("pyenv");
        let py = venv.join("bin").join("python");
        if py.exists() {
            println!("python: {}", py.display());
        } else {
            println!(
                "creating the Python venv {} (python3 -m venv)",
                venv.display()
            );
            run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        py
    };
    let missing = missing_modules(&py)?;
    if missing.is_empty() {
        let names: Vec<_> = PY_PACKAGES.iter().map(|(m, _)| *m).collect();
        println!("python packages present: {}", names.join(", "));
        return Ok(py);
    }
    let reqs: Vec<&str> = PY_PACKAGES
        .iter()
        .filter(|(m, _)| missing.iter().any(|x| x == m))
        .map(|(_, r)| *r)
        .collect();
    println!(
        "installing {} with pip into {} (inseq brings torch and transformers: this can take minutes)",
        reqs.join(" "),
        py.display()
    );
    run_checked(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&reqs),
    )?;
    let still = missing_modules(&py)?;
    if !still.is_empty() {
        bail!(
            "{} still cannot import {} after pip install",
            py.display(),
            still.join(", ")
        );
    }
    Ok(py)
}

/// The modules of [`PY_PACKAGES`] the interpreter cannot import.
fn missing_modules(py: &Path) -> anyhow::Result<Vec<String>> {
    const FIND: &str = r#"
import importlib, sys
missing = []
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except Exception:
        missing.append(m)
print(" ".join(missing))
"#;
    let out = Command::new(py)
        .args(["-c", FIND])
        .args(PY_PACKAGES.iter().map(|(m, _)| *m))
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            py.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect())
}

/// `inseq X, torch Y, transformers Z`, or `None` where that cannot be read.
fn python_versions(py: &Path) -> Option<String> {
    const VERSIONS: &str = "from importlib.metadata import version as v\n\
        print(', '.join(f'{p} {v(p)}' for p in ('inseq', 'torch', 'transformers')))";
    let out = Command::new(py).args(["-c", VERSIONS]).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || s.is_empty() {
        return None;
    }
    if !s.starts_with("inseq 0.7.1,") {
        println!("warning: this is not Python Inseq 0.7.1: {s}");
    }
    Some(s)
}

/// Writes the missing model directories under `<models>/bench/`.
fn prepare_models(
    py: &Path,
    paths: &Paths,
    needed: &[&str],
    missing: &[&str],
) -> anyhow::Result<()> {
    for d in needed.iter().filter(|d| !missing.contains(d)) {
        println!("{} already present", paths.bench_models.join(d).display());
    }
    if missing.is_empty() {
        return Ok(());
    }
    let gguf = inseq::models::models_dir().join(
        inseq::models::MODEL_ALIASES
            .iter()
            .find(|(a, _)| *a == "smollm2")
            .context("no smollm2 alias")?
            .1,
    );
    println!(
        "preparing {} under {} (benches/python/prepare_models.py)",
        missing.join(", "),
        paths.bench_models.display()
    );
    run_checked(
        Command::new(py)
            .arg(paths.root.join("benches/python/prepare_models.py"))
            .arg("--gguf")
            .arg(&gguf)
            .arg("--out")
            .arg(&paths.bench_models)
            .args(["--only", &missing.join(",")])
            .env("HF_HUB_OFFLINE", "1"),
    )
}

/// Builds `inseq-bench-job` in release with `features` and copies it to
/// `<target>/bench/bin/`, so that builds with other features do not replace it.
fn build_job_runner(paths: &Paths, features: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(paths.root.join("Cargo.toml"))
        .args([
            "--release",
            "-p",
            "inseq-benches",
            "--bin",
            "inseq-bench-job",
        ])
        .env("CARGO_TARGET_DIR", &paths.target);
    if !features.is_empty() {
        cmd.args(["--features", features]);
    }
    let shown = if features.is_empty() {
        String::new()
    } else {
        format!(" --features {features}")
    };
    println!("cargo build --release -p inseq-benches --bin inseq-bench-job{shown}");
    run_checked(&mut cmd)?;
    let built = paths
        .target
        .join("release")
        .join(format!("inseq-bench-job{}", std::env::consts::EXE_SUFFIX));
    let bin_dir = paths.out.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let name = if features.is_empty() {
        "default"
    } else {
        features
    };
    let copy = bin_dir.join(format!(
        "inseq-bench-job-{name}{}",
        std::env::consts::EXE_SUFFIX
    ));
    std::fs::copy(&built, &copy)
        .with_context(|| format!("copying {} to {}", built.display(), copy.display()))?;
    Ok(copy)
}

/// Runs one job process and parses the last JSON object line of its output.
fn run_job(cmd: &mut Command) -> Outcome {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // The error, not the backtrace that anyhow prints after it under RUST_BACKTRACE.
        let stderr = stderr.split("Stack backtrace:").next().unwrap_or_default();
        let tail: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .filter(|l| !l.trim().is_empty())
            .collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        return Err(format!("{}: {tail}", out.status));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| "no JSON line in the output".to_string())?;
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON line: {e}"))?;
    if v.get("median_s").and_then(Value::as_f64).is_none() {
        return Err(format!("no median_s in {line}"));
    }
    Ok(v)
}

/// Prints the end of a progress line.
fn report(outcome: &Outcome) {
    match outcome {
        Ok(v) => println!(
            "{:.3} s median, {:.0} MB peak",
            v["median_s"].as_f64().unwrap_or(f64::NAN),
            peak_mb(v)
        ),
        Err(e) => println!("FAILED: {e}"),
    }
}

/// Appends one run to `results.jsonl`: its JSON with the job added, or the error.
fn write_jsonl(
    file: &mut File,
    job: &str,
    implementation: &str,
    backend: Option<&str>,
    outcome: &Outcome,
) -> anyhow::Result<()> {
    let mut v = match outcome {
        Ok(v) => v.clone(),
        Err(e) => serde_json::json!({ "impl": implementation, "error": e }),
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("job".into(), job.into());
        if let Some(b) = backend {
            obj.insert("backend".into(), b.into());
        }
    }
    writeln!(file, "{v}")?;
    Ok(())
}

fn peak_mb(v: &Value) -> f64 {
    v["peak_rss_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0
}

fn tokens(v: &Value) -> Vec<&str> {
    v["target"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `None` when both sides agree on the prompt length, generated count and target tokens, else a
/// description of the first difference.
fn target_difference(rs: &Value, py: &Value) -> Option<String> {
    for key in ["input_tokens", "generated_tokens"] {
        if rs[key] != py[key] {
            return Some(format!("{key}: inseq-rs {} vs Inseq {}", rs[key], py[key]));
        }
    }
    let (a, b) = (tokens(rs), tokens(py));
    if a == b {
        return None;
    }
    let start = rs["input_tokens"].as_u64().unwrap_or(0) as usize;
    let i = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let generated = |t: &[&str]| format!("{:?}", t.get(start.min(t.len())..).unwrap_or_default());
    Some(format!(
        "first difference at token {i}; generated: inseq-rs {} vs Inseq {}",
        generated(&a),
        generated(&b)
    ))
}

/// The trimmed standard output of a command run in `dir`, `None` when it fails or prints nothing.
fn command_line(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn git_commit(root: &Path) -> String {
    let Some(hash) = command_line("git", &["rev-parse", "--short", "HEAD"], root) else {
        return "unknown".into();
    };
    let dirty = command_line(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        root,
    )
    .is_some();
    if dirty {
        format!("{hash} (with uncommitted changes)")
    } else {
        hash
    }
}

/// Renders the Markdown report: facts about the run, the table, then differences and failures.
fn render_report(
    args: &BenchArgs,
    paths: &Paths,
    py_versions: Option<&str>,
    results: &[JobResult],
) -> String {
    let mut md = report_preamble(args, paths, py_versions);
    let header = [
        "job",
        "backend",
        "inseq-rs median s",
        "Inseq median s",
        "speed-up",
        "inseq-rs peak MB",
        "Inseq peak MB",
        "repeats",
        "targets",
    ];
    let right = [false, false, true, true, true, true, true, true, false];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for r in results {
        if let Some(Err(e)) = &r.python {
            notes.push(format!("{} Inseq failed: {e}", r.id));
        }
        for (backend, rs) in &r.rust {
            rows.push(report_row(r, backend, rs, &mut notes));
        }
    }
    md += &markdown_table(&header, &right, &rows);
    if !notes.is_empty() {
        md += "\n";
        for n in &notes {
            md += &format!("- {n}\n");
        }
    }
    md
}

/// The report's title and the list of what was run where.
fn report_preamble(args: &BenchArgs, paths: &Paths, py_versions: Option<&str>) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &paths.root)
        .unwrap_or_else(|| "unknown".into());
    let mut md = String::from("# inseq-rs vs Python Inseq 0.7.1\n\n");
    md += &format!("- machine: {}, {nproc} CPUs\n", cpu_model());
    md += &format!("- date: {date}\n");
    md += &format!("- commit: {}\n", git_commit(&paths.root));
    md += &format!(
        "- job: generate {} tokens greedily after {:?}, then attribute each with the `probability` \
         step score; {} warm-up run(s), median of the timed runs\n",
        args.max_new_tokens, args.input, args.warmup
    );
    md += &format!(
        "- threads: {}\n",
        args.threads
            .map_or_else(|| "library defaults".to_string(), |t| t.to_string())
    );
    if let Some(v) = py_versions {
        md += &format!("- Python: {v}\n");
    }
    md += "\n";
    md
}

/// The median time and peak memory cells of a successful run.
fn timing_cells(v: &Value) -> (String, String) {
    (
        format!("{:.3}", v["median_s"].as_f64().unwrap_or(f64::NAN)),
        format!("{:.0}", peak_mb(v)),
    )
}

/// The table row of job `r` on `backend`, whose outcome is `rs`; failures and
/// differing targets are added to `notes`.
fn report_row(r: &JobResult, backend: &str, rs: &Outcome, notes: &mut Vec<String>) -> Vec<String> {
    let py = r.python.as_ref().and_then(|p| p.as_ref().ok());
    let (rs_median, rs_peak) = match rs {
        Ok(v) => timing_cells(v),
        Err(e) => {
            notes.push(format!("{} inseq-rs {backend} failed: {e}", r.id));
            ("FAILED".into(), "-".into())
        }
    };
    let (py_median, py_peak) = match (&r.python, py) {
        (_, Some(v)) => timing_cells(v),
        (Some(Err(_)), _) => ("FAILED".into(), "-".into()),
        _ => ("-".into(), "-".into()),
    };
    let (speedup, targets) = match (rs, py) {
        (Ok(a), Some(b)) => {
            let ratio = b["median_s"].as_f64().unwrap_or(f64::NAN)
                / a["median_s"].as_f64().unwrap_or(f64::NAN);
            let targets = match target_difference(a, b) {
                None => "same".to_string(),
                Some(d) => {
                    notes.push(format!("{} ({backend}): targets differ: {d}", r.id));
                    "DIFFER".to_string()
                }
            };
            (format!("{ratio:.2}x"), targets)
        }
        _ => ("-".into(), "-".into()),
    };
    vec![
        r.id.clone(),
        backend.to_string(),
        rs_median,
        py_median,
        speedup,
        rs_peak,
        py_peak,
        r.repeats.to_string(),
        targets,
    ]
}

/// A Markdown table with padded columns (readable as plain text too).
fn markdown_table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = (usize, &str)>| {
        let mut s = String::from("|");
        for (i, cell) in cells {
            let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
            if right[i] {
                s += &format!(" {pad}{cell} |");
            } else {
                s += &format!(" {cell}{pad} |");
            }
        }
        s + "\n"
    };
    let mut out = line(&mut header.iter().copied().enumerate());
    out += "|";
    for (i, w) in widths.iter().enumerate() {
        let dashes = "-".repeat((*w).max(3));
        if right[i] {
            out += &format!(" {}: |", &dashes[1..]);
        } else {
            out += &format!(" {dashes} |");
        }
    }
    out += "\n";
    for row in rows {
        out += &line(&mut row.iter().map(String::as_str).enumerate());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_filtered_by_substring() {
        let ids = |f: &[&str]| -> Vec<String> {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            select_jobs(&f).unwrap().iter().map(Job::id).collect()
        };
        assert_eq!(ids(&[]).len(), MODELS.len() * METHODS.len());
        assert_eq!(
            ids(&["smollm2/sal", "gpt2-small-random/occ"]),
            ["smollm2/saliency", "gpt2-small-random/occlusion"]
        );
        assert!(select_jobs(&["nothing".into()]).is_err());
    }

    #[test]
    fn backends_are_checked_and_deduplicated() {
        let names = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let b = parse_backends(&names(&["flex", "openblas", "flex"])).unwrap();
        assert_eq!(
            b.iter().map(|b| b.name).collect::<Vec<_>>(),
            ["flex", "openblas"]
        );
        assert_eq!(b[1].device, "ndarray");
        assert!(parse_backends(&names(&["tpu"])).is_err());
    }

    #[test]
    fn differing_targets_are_described() {
        let rs = serde_json::json!({"input_tokens": 2, "generated_tokens": 2,
            "target": ["a", "b", "c", "d"]});
        let mut py = rs.clone();
        assert_eq!(target_difference(&rs, &py), None);
        py["target"] = serde_json::json!(["a", "b", "c", "x"]);
        let d = target_difference(&rs, &py).unwrap();
        assert!(d.contains("token 3") && d.contains(r#"["c", "x"]"#), "{d}");
        py["input_tokens"] = 3.into();
        assert!(
            target_difference(&rs, &py)
                .unwrap()
                .starts_with("input_tokens")
        );
    }

    #[test]
    fn report_rows_compare_both_sides_and_note_failures() {
        let run = |median: f64| {
            serde_json::json!({"median_s": median, "peak_rss_kb": 2048.0,
                "input_tokens": 1, "generated_tokens": 1, "target": ["a", "b"]})
        };
        let job = JobResult {
            id: "m/saliency".into(),
            repeats: 3,
            python: Some(Ok(run(2.0))),
            rust: vec![],
        };
        let mut notes = Vec::new();
        let row = report_row(&job, "flex", &Ok(run(0.5)), &mut notes);
        assert_eq!(
            row,
            [
                "m/saliency",
                "flex",
                "0.500",
                "2.000",
                "4.00x",
                "2",
                "2",
                "3",
                "same"
            ]
        );
        assert!(notes.is_empty());
        let row = report_row(&job, "wgpu", &Err("boom".into()), &mut notes);
        assert_eq!(row[2..5], ["FAILED", "2.000", "-"]);
        assert_eq!(notes, ["m/saliency inseq-rs wgpu failed: boom"]);
    }

    #[test]
    fn table_is_padded_markdown() {
        let rows = vec![vec!["long cell".to_string(), "1.5".to_string()]];
        let t = markdown_table(&["a", "b"], &[false, true], &rows);
        assert_eq!(
            t,
            "| a         |   b |\n| --------- | --: |\n| long cell | 1.5 |\n"
        );
    }
}
