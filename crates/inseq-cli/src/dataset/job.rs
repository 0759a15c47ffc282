//! Attributing a dataset's rows in batches into a store ([`attribute_dataset`]).

use inseq::{AttributeOptions, AttributionModel, AttributionOutput, Error, Result};

use super::{DatasetRow, OutputStore, Shard};

/// What to do with a row that cannot be attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Report it (row number and reason) and go on.
    Skip,
    /// Stop with an error naming the row.
    Fail,
}

impl std::str::FromStr for OnError {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            other => Err(Error::invalid_arg(
                "on-error",
                format!("`{other}` (expected skip or fail)"),
            )),
        }
    }
}

/// Outcome of [`attribute_dataset`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetReport {
    /// Rows attributed in this run.
    pub attributed: usize,
    /// Rows skipped because they were already stored.
    pub resumed: usize,
    /// Rows not attributed, with the reason.
    pub failed: Vec<(usize, String)>,
}

/// How a dataset is processed by [`attribute_dataset`].
#[derive(Debug, Clone)]
pub struct DatasetJob {
    /// Where results go.
    pub store: OutputStore,
    /// Only the rows of this shard.
    pub shard: Option<Shard>,
    /// Rows attributed together.
    pub batch_size: usize,
    /// Skip or stop at a bad row.
    pub on_error: OnError,
}

/// Attributes every row of `rows` in the job's shard that is not stored yet, `batch_size` rows at
/// a time, storing each result as soon as its batch is done; `progress` is told how many rows each
/// batch finished (and, first, how many were already stored).
///
/// Batches are formed over all valid rows of the shard, stored or not, so a row is always batched
/// with the same neighbours: a batch that is partly stored is computed whole again and only its
/// missing rows are written. Batching changes a row's numbers at the level of float rounding
/// (padding and matrix shapes differ), so this is what makes a resumed run write the same bytes as
/// an uninterrupted one with the same `batch_size`.
///
/// Holds the store's lock ([`OutputStore::lock`]) throughout: a second process is refused.
pub fn attribute_dataset(
    model: &AttributionModel,
    rows: &[DatasetRow],
    opts: &AttributeOptions,
    job: &DatasetJob,
    mut progress: impl FnMut(usize),
) -> Result<DatasetReport> {
    let _lock = job.store.lock()?;
    let done = job.store.open()?;
    let mut report = DatasetReport::default();
    let valid = valid_rows(rows, job, &mut report)?;
    report.resumed = valid.iter().filter(|r| done.contains(&r.0)).count();
    if report.resumed > 0 {
        progress(report.resumed);
    }
    let is_pending = |index: &usize| !done.contains(index);
    for batch in valid.chunks(job.batch_size.max(1)) {
        let pending = batch.iter().filter(|r| is_pending(&r.0)).count();
        if pending > 0 {
            store_batch(model, batch, opts, job, &is_pending, &mut report)?;
            progress(pending);
        }
    }
    report.failed.sort_by_key(|f| f.0);
    Ok(report)
}

/// A row that can be attributed: its number, input text and target.
type ValidRow<'a> = (usize, &'a str, Option<String>);

/// The rows of the job's shard that can be attributed; the others are failures (see
/// [`record_failure`]).
fn valid_rows<'a>(
    rows: &'a [DatasetRow],
    job: &DatasetJob,
    report: &mut DatasetReport,
) -> Result<Vec<ValidRow<'a>>> {
    let mut valid = Vec::new();
    for row in rows
        .iter()
        .filter(|r| job.shard.is_none_or(|s| s.contains(r.index)))
    {
        match &row.content {
            Ok((input, target)) => valid.push((row.index, input.as_str(), target.clone())),
            Err(reason) => record_failure(job.on_error, row.index, reason.clone(), report)?,
        }
    }
    Ok(valid)
}

/// Attributes `batch` and stores its pending rows. One bad row fails its batch: the pending rows
/// are then retried one by one to isolate it.
fn store_batch(
    model: &AttributionModel,
    batch: &[ValidRow],
    opts: &AttributeOptions,
    job: &DatasetJob,
    is_pending: &impl Fn(&usize) -> bool,
    report: &mut DatasetReport,
) -> Result<()> {
    match attribute_batch(model, batch, opts) {
        Ok(outs) => {
            for ((index, _, _), out) in batch.iter().zip(outs) {
                if is_pending(index) {
                    job.store.write(*index, &out)?;
                    report.attributed += 1;
                }
            }
            Ok(())
        }
        Err(_) if batch.len() > 1 => batch
            .chunks(1)
            .filter(|one| is_pending(&one[0].0))
            .try_for_each(|one| store_batch(model, one, opts, job, is_pending, report)),
        Err(e) => record_failure(job.on_error, batch[0].0, e.to_string(), report),
    }
}

/// Reports row `index` as failed (`OnError::Skip`) or stops the job with an error naming it.
fn record_failure(
    on_error: OnError,
    index: usize,
    reason: String,
    report: &mut DatasetReport,
) -> Result<()> {
    match on_error {
        OnError::Skip => {
            report.failed.push((index, reason));
            Ok(())
        }
        OnError::Fail => Err(Error::InvalidInput(format!("row {index}: {reason}"))),
    }
}

/// Attributes a batch of `(row, input, target)` and splits the result into one output per row,
/// without the run time (so results do not depend on when they were computed).
fn attribute_batch(
    model: &AttributionModel,
    batch: &[ValidRow],
    opts: &AttributeOptions,
) -> Result<Vec<AttributionOutput>> {
    let inputs: Vec<&str> = batch.iter().map(|b| b.1).collect();
    let targets: Option<Vec<String>> = batch.iter().map(|b| b.2.clone()).collect();
    let opts = AttributeOptions {
        targets: targets.or(opts.targets.clone()),
        ..opts.clone()
    };
    let out = model.attribute(&inputs, &opts)?;
    let mut info = out.info.clone();
    info.remove("exec_time");
    Ok(out
        .sequence_attributions
        .into_iter()
        .zip(batch)
        .map(|(seq, (index, input, _))| {
            let mut info = info.clone();
            info.insert("row".into(), serde_json::json!(index));
            info.insert("input_texts".into(), serde_json::json!([input]));
            if let Some(serde_json::Value::Array(g)) = out.info.get("generated_texts") {
                let pos = batch.iter().position(|b| b.0 == *index).unwrap_or(0);
                info.insert("generated_texts".into(), serde_json::json!([g.get(pos)]));
            }
            AttributionOutput {
                sequence_attributions: vec![seq],
                info,
            }
        })
        .collect())
}
