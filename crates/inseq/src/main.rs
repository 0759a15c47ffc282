//! The `inseq` command-line tool.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use inseq::{
    AttributeOptions, GenerationOptions, MethodArgs, MethodRegistry, StepArgs, StepRegistry,
};

#[derive(Parser)]
#[command(
    name = "inseq",
    version,
    about = "Attribute the generations of Transformer language models to their inputs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attribute a model's generation (or a forced target) for one or more inputs.
    Attribute(Box<AttributeArgs>),
    /// List the attribution method ids.
    ListMethods,
    /// List the step function ids.
    ListStepFunctions,
}

#[derive(clap::Args)]
struct AttributeArgs {
    /// Model directory, .gguf file, alias (smollm2) or Hugging Face id.
    #[arg(long)]
    model: String,
    /// Attribution method id (see `inseq list-methods`).
    #[arg(long, default_value = "saliency")]
    method: String,
    /// Method arguments, e.g. `n_steps=16,internal_batch_size=8`.
    #[arg(long, default_value = "")]
    method_args: String,
    /// Input text (repeat for a batch).
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Forced target text, one per input (decoder-only: must start with the input).
    #[arg(long)]
    target: Vec<String>,
    /// Tokens to generate when no target is given.
    #[arg(long, default_value_t = 10)]
    max_new_tokens: usize,
    /// Minimum new tokens (end-of-sequence suppressed before).
    #[arg(long, default_value_t = 0)]
    min_new_tokens: usize,
    /// Step scores to record, comma separated (see `inseq list-step-functions`).
    #[arg(long, value_delimiter = ',')]
    step_scores: Vec<String>,
    /// Step score arguments, e.g. `top_p=0.9`.
    #[arg(long, default_value = "")]
    step_scores_args: String,
    /// Function to attribute (a step function id).
    #[arg(long, default_value = "probability")]
    attributed_fn: String,
    /// Arguments of the attributed function, e.g. `logprob=true`.
    #[arg(long, default_value = "")]
    attributed_fn_args: String,
    /// Encoder-decoder models: also attribute the target prefix.
    #[arg(long)]
    attribute_target: bool,
    /// Contrastive target, one per input (decoder-only: the full contrastive text, prompt included).
    #[arg(long)]
    contrast_target: Vec<String>,
    /// Contrastive source, one per input (encoder-decoder models).
    #[arg(long)]
    contrast_source: Vec<String>,
    /// Alignment of target to contrastive positions: `auto`, `right` (default) or pairs `5-5,6-7`; one per input.
    #[arg(long)]
    contrast_alignments: Vec<String>,
    /// First target position to attribute.
    #[arg(long)]
    attr_pos_start: Option<usize>,
    /// One past the last target position to attribute.
    #[arg(long)]
    attr_pos_end: Option<usize>,
    /// Save the raw (not aggregated) result as JSON (this project's schema).
    #[arg(long)]
    save: Option<std::path::PathBuf>,
    /// Save the raw result in Python Inseq's file format (`FeatureAttributionOutput.load` reads it).
    #[arg(long)]
    save_inseq: Option<std::path::PathBuf>,
    /// Extra visualisations: `html:PATH` (self-contained page) or `svg:PATH` (one file per sequence).
    #[arg(long)]
    viz: Vec<String>,
    /// Aggregation pipeline for display instead of Inseq's default, e.g. `subwords:sum,vnorm`.
    #[arg(long)]
    aggregation: Option<String>,
    /// Device: cpu, ndarray, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Never use colours.
    #[arg(long)]
    no_color: bool,
    /// Do not print the heatmap.
    #[arg(long)]
    quiet: bool,
    /// Reproduce Python Inseq 0.7.1's numbers where they are wrong (Marian's double embedding scale).
    #[arg(long)]
    inseq_compat: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::ListMethods => {
            for (id, desc) in MethodRegistry::with_defaults().describe() {
                println!("{id:<28} {desc}");
            }
            Ok(())
        }
        Command::ListStepFunctions => {
            for (id, desc) in StepRegistry::with_defaults().describe() {
                println!("{id:<22} {desc}");
            }
            Ok(())
        }
        Command::Attribute(a) => attribute(*a),
    }
}

/// `out.svg` -> `out-2.svg` for the i-th (0-based) sequence.
fn numbered(path: &str, i: usize) -> String {
    let p = std::path::Path::new(path);
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = p.extension().and_then(|s| s.to_str()).unwrap_or("svg");
    p.with_file_name(format!("{stem}-{}.{ext}", i + 1))
        .to_string_lossy()
        .into_owned()
}

fn attribute(a: AttributeArgs) -> Result<()> {
    if !a.target.is_empty() && a.target.len() != a.input.len() {
        bail!(
            "got {} --target for {} --input: give one target per input",
            a.target.len(),
            a.input.len()
        );
    }
    let device = inseq::parse_device(&a.device)?;
    let model = inseq::load_model(
        &a.model,
        &a.method,
        MethodArgs::parse(&a.method_args)?,
        &device,
    )
    .with_context(|| format!("loading `{}` with method `{}`", a.model, a.method))?;
    let opts = AttributeOptions {
        targets: (!a.target.is_empty()).then(|| a.target.clone()),
        generation: GenerationOptions {
            max_new_tokens: a.max_new_tokens,
            min_new_tokens: a.min_new_tokens,
            forced_eos_token_id: None,
        },
        attr_pos_start: a.attr_pos_start,
        attr_pos_end: a.attr_pos_end,
        step_scores: a
            .step_scores
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        step_scores_args: StepArgs::parse(&a.step_scores_args)?,
        attributed_fn: a.attributed_fn.clone(),
        attributed_fn_args: StepArgs::parse(&a.attributed_fn_args)?,
        attribute_target: a.attribute_target,
        contrast_targets: (!a.contrast_target.is_empty()).then(|| a.contrast_target.clone()),
        contrast_sources: (!a.contrast_source.is_empty()).then(|| a.contrast_source.clone()),
        contrast_alignments: if a.contrast_alignments.is_empty() {
            None
        } else {
            Some(
                a.contrast_alignments
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<Vec<_>, _>>()?,
            )
        },
        show_progress: std::io::stderr().is_terminal(),
        inseq_compat: a.inseq_compat,
    };
    let inputs: Vec<&str> = a.input.iter().map(String::as_str).collect();
    let out = model.attribute(&inputs, &opts)?;
    if let Some(path) = &a.save {
        out.save(path)?;
        eprintln!("saved {}", path.display());
    }
    if let Some(path) = &a.save_inseq {
        out.save_inseq(path, &Default::default())?;
        eprintln!("saved {} (Python Inseq format)", path.display());
    }
    let shown = match &a.aggregation {
        Some(p) => inseq::aggregation::Pipeline::parse(p)?.apply_output(&out)?,
        None => inseq::aggregate(&out)?,
    };
    for spec in &a.viz {
        let (kind, path) = spec
            .split_once(':')
            .with_context(|| format!("--viz `{spec}`: expected html:PATH or svg:PATH"))?;
        match kind {
            "html" => inseq::viz::save_html(path, &shown.sequence_attributions)?,
            "svg" => {
                for (i, seq) in shown.sequence_attributions.iter().enumerate() {
                    let p = if shown.sequence_attributions.len() == 1 {
                        path.to_string()
                    } else {
                        numbered(path, i)
                    };
                    inseq::viz::save_svg(&p, seq)?;
                }
            }
            other => bail!("--viz `{other}`: unknown kind (expected html or svg)"),
        }
        eprintln!("wrote {path}");
    }
    if !a.quiet {
        let color = !a.no_color
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none();
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(120);
        for seq in &shown.sequence_attributions {
            let opts = inseq::viz::TerminalOptions {
                color,
                width,
                ..Default::default()
            };
            println!("{}", inseq::viz::render_terminal(seq, &opts));
        }
    }
    Ok(())
}
