//! `inseq attribute`: attributes a model's generation (or forced targets) for one or more inputs,
//! then saves, draws and prints the result.

use std::path::PathBuf;

use anyhow::{Result, bail};
use inseq::Registries;
use inseq::{AttributeOptions, AttributionOutput};

use crate::args::{ModelArgs, RunArgs};
use crate::output::{VizOutput, check_output_file, print_heatmaps, use_color};

#[derive(clap::Args)]
pub(crate) struct AttributeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Input text (repeat for a batch).
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Forced target text, one per input (decoder-only: must start with the input).
    #[arg(long)]
    target: Vec<String>,
    /// Contrastive target, one per input (decoder-only: the full contrastive text, prompt included).
    #[arg(long)]
    contrast_target: Vec<String>,
    /// Contrastive source, one per input (encoder-decoder models).
    #[arg(long)]
    contrast_source: Vec<String>,
    /// Alignment of target to contrastive positions: `auto`, `right` (default) or pairs `5-5,6-7`; one per input.
    #[arg(long)]
    contrast_alignments: Vec<String>,
    /// Save the raw (not aggregated) result as JSON (this project's schema).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Save the raw result in Python Inseq's file format (`FeatureAttributionOutput.load` reads it).
    #[arg(long)]
    save_inseq: Option<PathBuf>,
    /// Extra visualisations: `html:PATH` (self-contained page) or `svg:PATH` (one file per sequence).
    #[arg(long)]
    viz: Vec<String>,
    /// Aggregation pipeline for display instead of Inseq's default, e.g. `subwords:sum,vnorm`.
    #[arg(long)]
    aggregation: Option<String>,
    /// Never use colours.
    #[arg(long)]
    no_color: bool,
    /// Do not print the heatmap.
    #[arg(long)]
    quiet: bool,
}

pub(crate) fn run(a: AttributeArgs, registries: &Registries) -> Result<()> {
    if !a.target.is_empty() && a.target.len() != a.input.len() {
        bail!(
            "got {} --target for {} --input: give one target per input",
            a.target.len(),
            a.input.len()
        );
    }
    let viz = a
        .viz
        .iter()
        .map(|spec| VizOutput::parse(spec))
        .collect::<Result<Vec<_>>>()?;
    let pipeline = (a.aggregation.as_deref())
        .map(|spec| registries.pipeline(spec))
        .transpose()?;
    for (flag, path) in [("--save", &a.save), ("--save-inseq", &a.save_inseq)] {
        if let Some(path) = path {
            check_output_file(flag, path)?;
        }
    }
    let mut opts = a.options()?;
    let model = crate::load_model(&a.model, registries)?;
    opts.generation = a.run.generation_for(&model, !a.target.is_empty())?;
    let inputs: Vec<&str> = a.input.iter().map(String::as_str).collect();
    let out = model.attribute(&inputs, &opts)?;
    // Outputs are written only once everything they depend on has succeeded.
    let shown = match &pipeline {
        Some(p) => model.aggregate_with(&out, p)?,
        None => inseq::aggregate(&out)?,
    };
    a.save(&out)?;
    for v in &viz {
        v.write(&shown.sequence_attributions)?;
        eprintln!("wrote {}", v.path());
    }
    if !a.quiet {
        print_heatmaps(&shown.sequence_attributions, use_color(a.no_color));
    }
    Ok(())
}

impl AttributeArgs {
    /// The run options with this command's targets, contrasts and alignments.
    fn options(&self) -> Result<AttributeOptions> {
        let given = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let contrast_alignments = given(&self.contrast_alignments)
            .map(|specs| {
                specs
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(AttributeOptions {
            targets: given(&self.target),
            contrast_targets: given(&self.contrast_target),
            contrast_sources: given(&self.contrast_source),
            contrast_alignments,
            ..self.run.options()?
        })
    }

    /// Writes the raw result where `--save` and `--save-inseq` say.
    fn save(&self, out: &AttributionOutput) -> Result<()> {
        if let Some(path) = &self.save {
            out.save(path)?;
            eprintln!("saved {}", path.display());
        }
        if let Some(path) = &self.save_inseq {
            out.save_inseq(path, &Default::default())?;
            eprintln!("saved {} (Python Inseq format)", path.display());
        }
        Ok(())
    }
}
