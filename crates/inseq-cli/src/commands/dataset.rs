//! `inseq attribute-dataset`: attributes every row of a dataset into a resumable store.

use std::path::{Path, PathBuf};

use anyhow::Result;
use inseq::Registries;
use inseq::{AttributeOptions, AttributionModel};

use crate::args::{DataArgs, ModelArgs, RunArgs};
use crate::dataset::{DatasetJob, DatasetReport, DatasetRow, OnError, OutputStore, Shard};
use crate::output::{check_output_file, check_output_folder};

#[derive(clap::Args)]
pub(crate) struct DatasetArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Rows attributed together.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    batch_size: usize,
    /// Output: a directory (one JSON per row) or a `.jsonl` file. Rows already there are skipped.
    #[arg(long)]
    save: PathBuf,
    /// Also write one HTML page with every stored row.
    #[arg(long)]
    viz_path: Option<PathBuf>,
    /// Process only shard I of N (rows whose number is I modulo N); merge shards with `inseq merge`.
    #[arg(long, allow_hyphen_values = true)]
    shard: Option<String>,
    /// What to do with a row that cannot be attributed: `skip` (report it) or `fail`.
    #[arg(long, default_value = "skip")]
    on_error: String,
}

pub(crate) fn run(a: DatasetArgs, registries: &Registries) -> Result<()> {
    let split = a.data.split_spec()?;
    if a.batch_size == 0 {
        anyhow::bail!("--batch-size 0: attribute at least 1 row at a time");
    }
    check_output_folder("--save", &a.save)?;
    if let Some(path) = &a.viz_path {
        check_output_file("--viz-path", path)?;
    }
    let run_opts = a.run.options()?;
    let job = a.job()?;
    let rows = a.data.read_rows(&split)?;
    let model = crate::load_model(&a.model, registries)?;
    let forced = rows
        .iter()
        .all(|r| matches!(&r.content, Ok((_, Some(_))) | Err(_)));
    let opts = AttributeOptions {
        progress: None,
        generation: a.run.generation_for(&model, forced)?,
        ..run_opts
    };
    let report = attribute_rows(&model, &rows, &opts, &job)?;
    for (row, reason) in &report.failed {
        eprintln!("row {row}: skipped: {reason}");
    }
    eprintln!(
        "{} rows attributed, {} already done, {} skipped -> {}",
        report.attributed,
        report.resumed,
        report.failed.len(),
        a.save.display()
    );
    if let Some(path) = &a.viz_path {
        write_page(&job.store, path)?;
    }
    Ok(())
}

impl DatasetArgs {
    fn job(&self) -> Result<DatasetJob> {
        Ok(DatasetJob {
            store: OutputStore::from_path(&self.save),
            shard: self.shard.as_deref().map(str::parse::<Shard>).transpose()?,
            batch_size: self.batch_size,
            on_error: self.on_error.parse::<OnError>()?,
        })
    }
}

/// [`crate::dataset::attribute_dataset`] with a bar over the job's rows on a terminal.
fn attribute_rows(
    model: &AttributionModel,
    rows: &[DatasetRow],
    opts: &AttributeOptions,
    job: &DatasetJob,
) -> Result<DatasetReport> {
    let total = rows
        .iter()
        .filter(|r| job.shard.is_none_or(|s| s.contains(r.index)))
        .count();
    let bar = crate::progress::row_progress_bar(total);
    let report = crate::dataset::attribute_dataset(model, rows, opts, job, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    Ok(report)
}

/// One HTML page with every row stored in `store` (Inseq's default aggregation).
fn write_page(store: &OutputStore, path: &Path) -> Result<()> {
    let stored = store.read_all()?;
    let mut seqs = Vec::with_capacity(stored.len());
    for (_, out) in &stored {
        seqs.extend(inseq::aggregate(out)?.sequence_attributions);
    }
    inseq::viz::save_html(path, &seqs)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
