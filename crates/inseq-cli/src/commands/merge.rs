//! `inseq merge`: joins the outputs of several `attribute-dataset` runs (e.g. shards).

use std::path::PathBuf;

use anyhow::Result;

use crate::dataset::OutputStore;

#[derive(clap::Args)]
pub(crate) struct MergeArgs {
    /// Outputs of `attribute-dataset` runs (directories or .jsonl files).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Merged output (a directory or a .jsonl file).
    #[arg(long)]
    output: PathBuf,
}

pub(crate) fn run(m: MergeArgs) -> Result<()> {
    let inputs: Vec<OutputStore> = m.inputs.iter().map(|p| OutputStore::from_path(p)).collect();
    let n = crate::dataset::merge(&inputs, &OutputStore::from_path(&m.output))?;
    eprintln!("merged {n} rows into {}", m.output.display());
    Ok(())
}
