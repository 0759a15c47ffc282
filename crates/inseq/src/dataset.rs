//! Reading datasets for `inseq attribute-dataset`: local JSONL, CSV and Parquet
//! files and Hugging Face dataset ids (Parquet files through hf-hub), with
//! `split[start:end]` slicing and `I/N` sharding.

use std::path::{Path, PathBuf};

use inseq_core::{Error, Result};

/// One dataset row, numbered from 0 in file order (after `split` selection).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    /// Row number in the dataset (stable across shards and resumed runs).
    pub index: usize,
    /// The input text and optional target, or why the row cannot be used.
    pub content: std::result::Result<(String, Option<String>), String>,
}

/// `train`, `train[:20]`, `train[5:10]`, `train[5:]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSpec {
    /// Split name (used for hub datasets).
    pub name: String,
    /// First row (inclusive).
    pub start: usize,
    /// Last row (exclusive), `None` for the end.
    pub end: Option<usize>,
}

impl std::str::FromStr for SplitSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid_arg(
                "split",
                format!("`{s}` is not `name`, `name[start:end]`, `name[:end]` or `name[start:]`"),
            )
        };
        let Some((name, rest)) = s.split_once('[') else {
            return Ok(Self {
                name: s.trim().to_string(),
                start: 0,
                end: None,
            });
        };
        let inner = rest.strip_suffix(']').ok_or_else(bad)?;
        let (a, b) = inner.split_once(':').ok_or_else(bad)?;
        let num = |x: &str| -> Result<Option<usize>> {
            let x = x.trim();
            if x.is_empty() {
                Ok(None)
            } else {
                x.parse().map(Some).map_err(|_| bad())
            }
        };
        let (start, end) = (num(a)?.unwrap_or(0), num(b)?);
        if end.is_some_and(|e| e < start) {
            return Err(bad());
        }
        Ok(Self {
            name: name.trim().to_string(),
            start,
            end,
        })
    }
}

/// `I/N`: this job processes the rows whose index is `I` modulo `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard (0-based).
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid_arg("shard", format!("`{s}` is not `I/N` with 0 <= I < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// Whether row `index` belongs to this shard.
    pub fn contains(&self, index: usize) -> bool {
        index % self.count == self.index
    }
}

/// Reads the rows of `source` (a `.jsonl`, `.csv` or `.parquet` file, a directory
/// of such files, or a Hugging Face dataset id), keeping `split`'s slice.
pub fn read_rows(
    source: &str,
    split: &SplitSpec,
    input_field: &str,
    target_field: Option<&str>,
) -> Result<Vec<DatasetRow>> {
    let path = Path::new(source);
    let files = if path.is_file() {
        vec![path.to_path_buf()]
    } else if path.is_dir() {
        data_files_in(path, &split.name)?
    } else if path.exists()
        || source.starts_with('.')
        || source.starts_with('/')
        || source.contains('.') && !source.contains('/')
    {
        return Err(Error::InvalidInput(format!(
            "no dataset file or directory {} (expected a .jsonl, .csv or .parquet file, a \
             directory of them, or a Hugging Face dataset id)",
            path.display()
        )));
    } else {
        data_files_in(
            &inseq_models::hub::dataset_dir(source, &split.name)?,
            &split.name,
        )?
    };
    let mut records = Vec::new();
    for f in &files {
        let file_records = read_records(f)?;
        for field in std::iter::once(input_field).chain(target_field) {
            check_field_exists(f, &file_records, field)?;
        }
        records.extend(file_records);
    }
    let end = split.end.unwrap_or(records.len()).min(records.len());
    let start = split.start.min(end);
    Ok(records[start..end]
        .iter()
        .enumerate()
        .map(|(i, rec)| DatasetRow {
            index: start + i,
            content: row_content(rec, input_field, target_field),
        })
        .collect())
}

/// Fails when no readable record of file `path` has `field` (a misspelt `--input-field`),
/// naming the fields the file has; a field missing from some rows only skips those rows.
fn check_field_exists(path: &Path, records: &[Record], field: &str) -> Result<()> {
    let mut readable = records.iter().flatten().peekable();
    let Some(first) = readable.peek().copied() else {
        return Ok(());
    };
    if readable.any(|rec| rec.iter().any(|(k, _)| k == field)) {
        return Ok(());
    }
    let fields: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    Err(Error::InvalidInput(format!(
        "no row of {} has the field `{field}`; its fields are: {}",
        path.display(),
        fields.join(", ")
    )))
}

/// A record: field name -> text (non-text values rendered as JSON), or a reason it could not be read.
type Record = std::result::Result<Vec<(String, String)>, String>;

fn row_content(
    rec: &Record,
    input_field: &str,
    target_field: Option<&str>,
) -> std::result::Result<(String, Option<String>), String> {
    let fields = rec.as_ref().map_err(Clone::clone)?;
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let input = get(input_field).ok_or_else(|| format!("missing field `{input_field}`"))?;
    if input.trim().is_empty() {
        return Err(format!("empty text in field `{input_field}`"));
    }
    let target = match target_field {
        Some(t) => {
            let v = get(t).ok_or_else(|| format!("missing field `{t}`"))?;
            if v.trim().is_empty() {
                return Err(format!("empty text in field `{t}`"));
            }
            Some(v)
        }
        None => None,
    };
    Ok((input, target))
}

fn data_files_in(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(|e| Error::io(&d, e))?
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "jsonl" || x == "csv" || x == "parquet")
            {
                all.push(p);
            }
        }
    }
    all.sort();
    // Prefer files named after the split (Hugging Face layouts: `data/train-00000-of-00001.parquet`, `train/...`).
    let for_split: Vec<PathBuf> = all
        .iter()
        .filter(|p| {
            p.strip_prefix(dir).is_ok_and(|rel| {
                rel.components().any(|c| {
                    let c = c.as_os_str().to_string_lossy();
                    c == split
                        || c.starts_with(&format!("{split}-"))
                        || c.starts_with(&format!("{split}."))
                })
            })
        })
        .cloned()
        .collect();
    let files = if for_split.is_empty() { all } else { for_split };
    if files.is_empty() {
        return Err(Error::InvalidInput(format!(
            "no .jsonl, .csv or .parquet dataset file in {}",
            dir.display()
        )));
    }
    Ok(files)
}

fn read_records(path: &Path) -> Result<Vec<Record>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") | Some("json") => read_jsonl(path),
        Some("csv") => read_csv(path),
        Some("parquet") => read_parquet(path),
        _ => Err(Error::invalid_arg(
            "dataset",
            format!(
                "{}: unknown format (expected .jsonl, .csv or .parquet)",
                path.display()
            ),
        )),
    }
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| {
            let text = std::str::from_utf8(line).map_err(|e| format!("invalid UTF-8: {e}"))?;
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(m)) => {
                    Ok(m.iter().map(|(k, v)| (k.clone(), json_text(v))).collect())
                }
                Ok(_) => Err("not a JSON object".to_string()),
                Err(e) => Err(format!("invalid JSON: {e}")),
            }
        })
        .collect())
}

fn read_csv(path: &Path) -> Result<Vec<Record>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| not_a_dataset("CSV", path, e))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| not_a_dataset("CSV", path, e))?
        .iter()
        .map(String::from)
        .collect();
    Ok(reader
        .byte_records()
        .map(|r| {
            let r = r.map_err(|e| e.to_string())?;
            r.iter()
                .zip(&headers)
                .map(|(v, h)| {
                    std::str::from_utf8(v)
                        .map(|s| (h.clone(), s.to_string()))
                        .map_err(|e| format!("invalid UTF-8 in column `{h}`: {e}"))
                })
                .collect()
        })
        .collect())
}

/// `not a FORMAT dataset file: PATH (reason)`.
fn not_a_dataset(format: &str, path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!(
        "not a {format} dataset file: {} ({reason})",
        path.display()
    ))
}

fn read_parquet(path: &Path) -> Result<Vec<Record>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let corrupt = |e: parquet::errors::ParquetError| not_a_dataset("Parquet", path, e);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(corrupt)?;
    let rows = reader.get_row_iter(None).map_err(corrupt)?;
    Ok(rows
        .map(|row| {
            let row = row.map_err(|e| e.to_string())?;
            Ok(row
                .get_column_iter()
                .map(|(name, field)| {
                    let text = match field {
                        parquet::record::Field::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (name.clone(), text)
                })
                .collect())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_shard_syntax() {
        assert_eq!(
            "train[:20]".parse::<SplitSpec>().unwrap(),
            SplitSpec {
                name: "train".into(),
                start: 0,
                end: Some(20)
            }
        );
        assert_eq!("test[5:]".parse::<SplitSpec>().unwrap().start, 5);
        assert!("train[9:3]".parse::<SplitSpec>().is_err());
        assert!("train[a:]".parse::<SplitSpec>().is_err());
        let s: Shard = "1/3".parse().unwrap();
        assert!(s.contains(4) && !s.contains(3));
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
    }
}

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

/// Where per-row results go: a directory with one `row-NNNNNN.json` per row,
/// or one JSONL file with a `{"row": N, "output": {...}}` line per row.
///
/// Both are resumable: rows already stored are skipped. A JSONL line cut short by an
/// interruption (the last line, with no newline) is dropped when the store is reopened; any
/// other row that cannot be read is an error naming its file and line, and nothing is deleted.
/// One process writes a store at a time (see [`OutputStore::lock`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputStore {
    /// One JSON file per row.
    Dir(PathBuf),
    /// One JSONL file.
    Jsonl(PathBuf),
}

/// What reading a store found: its rows, the rows it could not read, and for JSONL the
/// byte offset of a trailing line cut short by an interrupted write.
#[derive(Default)]
struct StoreScan {
    rows: Vec<(usize, inseq_core::AttributionOutput)>,
    /// `file: line N: reason` (JSONL) or `file: reason` (directory), one per unreadable row.
    unreadable: Vec<String>,
    /// Where an unterminated, unparseable last line starts (1-based line number, byte offset).
    partial_tail: Option<(usize, usize)>,
}

/// Held while a process writes a store; the OS releases it when the process exits or is killed.
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] std::fs::File);

impl OutputStore {
    /// A `.jsonl` path is a JSONL store; anything else a directory.
    pub fn from_path(path: &Path) -> Self {
        if path.extension().is_some_and(|e| e == "jsonl") {
            Self::Jsonl(path.to_path_buf())
        } else {
            Self::Dir(path.to_path_buf())
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Dir(p) | Self::Jsonl(p) => p,
        }
    }

    fn row_file(dir: &Path, index: usize) -> PathBuf {
        dir.join(format!("row-{index:06}.json"))
    }

    /// The lock file beside the store: `out.jsonl.lock` or `out.lock` for a directory `out`.
    pub fn lock_path(&self) -> PathBuf {
        let path = self.path();
        let name = path
            .file_name()
            .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
        path.with_file_name(format!("{name}.lock"))
    }

    /// Takes the store's write lock (an advisory `flock` on [`Self::lock_path`]), failing at once
    /// when another process holds it. The lock file is left in place; it is the held lock, not
    /// the file, that excludes a second writer, so a killed process leaves no stale lock.
    pub fn lock(&self) -> Result<StoreLock> {
        let lock_path = self.lock_path();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(StoreLock(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::InvalidInput(format!(
                "{} is being written by another inseq process (it holds {}): wait for it to \
                 finish, or save to another path",
                self.path().display(),
                lock_path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&lock_path, e)),
        }
    }

    /// Every stored row, sorted by row number; an error listing every row that cannot be read
    /// (a trailing JSONL line cut short by an interruption is not a row yet and is ignored).
    pub fn read_all(&self) -> Result<Vec<(usize, inseq_core::AttributionOutput)>> {
        let scan = self.scan()?;
        unreadable_error(self.path(), &scan.unreadable)?;
        Ok(scan.rows)
    }

    fn scan(&self) -> Result<StoreScan> {
        let mut scan = match self {
            Self::Dir(dir) if dir.exists() => scan_dir(dir)?,
            Self::Jsonl(path) if path.exists() => {
                scan_jsonl(path, &std::fs::read(path).map_err(|e| Error::io(path, e))?)
            }
            _ => StoreScan::default(),
        };
        scan.rows.sort_by_key(|r| r.0);
        Ok(scan)
    }

    /// Row numbers already stored. Refuses a store with an unreadable row; for JSONL, drops a
    /// trailing line cut short by an interrupted write (after checking every other line); for a
    /// directory, removes the temporary files of a killed writer. Call it holding the lock.
    pub fn open(&self) -> Result<std::collections::BTreeSet<usize>> {
        let scan = self.scan()?;
        unreadable_error(self.path(), &scan.unreadable)?;
        match self {
            Self::Jsonl(path) => {
                if let Some((_, offset)) = scan.partial_tail {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| Error::io(path, e))?;
                    f.set_len(offset as u64).map_err(|e| Error::io(path, e))?;
                }
            }
            Self::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                remove_stale_temp_files(dir)?;
            }
        }
        Ok(scan.rows.into_iter().map(|r| r.0).collect())
    }

    /// Stores one row (atomically for directories; one flushed, synced line for JSONL).
    pub fn write(&self, index: usize, out: &inseq_core::AttributionOutput) -> Result<()> {
        match self {
            Self::Dir(dir) => out.save(Self::row_file(dir, index)),
            Self::Jsonl(path) => {
                use std::io::Write;
                let line = jsonl_line(index, out)?;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                f.write_all(line.as_bytes())
                    .map_err(|e| Error::io(path, e))?;
                f.sync_data().map_err(|e| Error::io(path, e))
            }
        }
    }

    /// Writes `rows` as a complete store, replacing what is there.
    pub fn write_all(&self, rows: &[(usize, inseq_core::AttributionOutput)]) -> Result<()> {
        match self {
            Self::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                rows.iter()
                    .try_for_each(|(i, out)| out.save(Self::row_file(dir, *i)))
            }
            Self::Jsonl(path) => {
                let text = rows
                    .iter()
                    .map(|(i, out)| jsonl_line(*i, out))
                    .collect::<Result<String>>()?;
                inseq_core::write_atomic(path, text.as_bytes())
            }
        }
    }
}

/// One JSONL store line, newline included.
fn jsonl_line(index: usize, out: &inseq_core::AttributionOutput) -> Result<String> {
    let line = serde_json::to_string(&serde_json::json!({ "row": index, "output": out }))?;
    Ok(format!("{line}\n"))
}

/// An error naming `store` and listing `unreadable`, or `Ok` when it is empty.
fn unreadable_error(store: &Path, unreadable: &[String]) -> Result<()> {
    if unreadable.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "{} stored row(s) of {} cannot be read:\n  {}\nNo row was changed. Repair or delete the \
         listed lines or files (the other rows are kept) and run again.",
        unreadable.len(),
        store.display(),
        unreadable.join("\n  ")
    )))
}

/// Removes the `.row-N.json.PID.tmp` files a killed writer left (the caller holds the lock).
fn remove_stale_temp_files(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".row-") && name.ends_with(".tmp") {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

fn scan_dir(dir: &Path) -> Result<StoreScan> {
    let mut scan = StoreScan::default();
    for e in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("row-")
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let path = e.path();
        let row = n
            .parse::<usize>()
            .map_err(|_| "not named row-NUMBER.json".to_string())
            .and_then(|index| {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                inseq_core::AttributionOutput::from_json(&text)
                    .map(|out| (index, out))
                    .map_err(|e| {
                        if text.trim().is_empty() {
                            "empty file".into()
                        } else {
                            e.to_string()
                        }
                    })
            });
        match row {
            Ok(row) => scan.rows.push(row),
            Err(reason) => scan
                .unreadable
                .push(format!("{}: {reason}", path.display())),
        }
    }
    scan.unreadable.sort();
    Ok(scan)
}

fn scan_jsonl(path: &Path, bytes: &[u8]) -> StoreScan {
    let mut scan = StoreScan::default();
    let mut offset = 0;
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let terminated = offset + line.len() < bytes.len();
        let blank = line.iter().all(u8::is_ascii_whitespace);
        if !blank {
            match parse_line(line) {
                Ok(row) => scan.rows.push(row),
                Err(_) if !terminated => scan.partial_tail = Some((i + 1, offset)),
                Err(reason) => {
                    scan.unreadable
                        .push(format!("{}: line {}: {reason}", path.display(), i + 1))
                }
            }
        }
        offset += line.len() + 1;
    }
    scan
}

fn parse_line(line: &[u8]) -> std::result::Result<(usize, inseq_core::AttributionOutput), String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("invalid UTF-8: {e}"))?;
    let mut v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let index = v
        .get("row")
        .and_then(serde_json::Value::as_u64)
        .ok_or("no `row` number")? as usize;
    let output = v.get_mut("output").ok_or("no `output`")?.take();
    let out = serde_json::from_value(output).map_err(|e| format!("invalid `output`: {e}"))?;
    Ok((index, out))
}

/// Merges the stores `inputs` (e.g. one per shard) into `output`, sorted by row.
///
/// Every input must exist and be fully readable (a trailing line cut short counts as
/// unreadable here), and the same row stored twice must hold the same result (`NaN` cells,
/// the not-yet-generated positions, compare equal). All problems are reported together.
pub fn merge(inputs: &[OutputStore], output: &OutputStore) -> Result<usize> {
    let mut all: std::collections::BTreeMap<
        usize,
        (serde_json::Value, inseq_core::AttributionOutput),
    > = Default::default();
    let mut problems = Vec::new();
    for store in inputs {
        if !store.path().exists() {
            problems.push(format!(
                "{}: no such file or directory",
                store.path().display()
            ));
            continue;
        }
        let mut scan = store.scan()?;
        if let Some((line, _)) = scan.partial_tail {
            let path = store.path().display();
            scan.unreadable.push(format!(
                "{path}: line {line}: cut short (an interrupted write)"
            ));
        }
        problems.append(&mut scan.unreadable);
        for (i, out) in scan.rows {
            // Serialized, NaN cells are equal (a NaN never equals itself as a float).
            let value = serde_json::to_value(&out)?;
            match all.get(&i) {
                Some((prev, _)) if prev != &value => {
                    problems.push(format!("row {i} is stored twice with different results"))
                }
                _ => {
                    all.insert(i, (value, out));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::InvalidInput(format!(
            "cannot merge, nothing was written:\n  {}",
            problems.join("\n  ")
        )));
    }
    let rows: Vec<_> = all.into_iter().map(|(i, (_, out))| (i, out)).collect();
    let _lock = output.lock()?;
    output.write_all(&rows)?;
    Ok(rows.len())
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
    model: &crate::AttributionModel,
    rows: &[DatasetRow],
    opts: &crate::AttributeOptions,
    job: &DatasetJob,
    mut progress: impl FnMut(usize),
) -> Result<DatasetReport> {
    let (store, shard, on_error) = (&job.store, job.shard, job.on_error);
    let batch_size = job.batch_size.max(1);
    let _lock = store.lock()?;
    let done = store.open()?;
    let mut report = DatasetReport::default();
    let mut valid = Vec::new();
    for row in rows
        .iter()
        .filter(|r| shard.is_none_or(|s| s.contains(r.index)))
    {
        match &row.content {
            Ok((input, target)) => {
                report.resumed += usize::from(done.contains(&row.index));
                valid.push((row.index, input.as_str(), target.clone()));
            }
            Err(reason) => {
                if on_error == OnError::Fail {
                    return Err(Error::InvalidInput(format!("row {}: {reason}", row.index)));
                }
                report.failed.push((row.index, reason.clone()));
            }
        }
    }
    if report.resumed > 0 {
        progress(report.resumed);
    }
    let is_pending = |index: &usize| !done.contains(index);
    for batch in valid.chunks(batch_size) {
        let pending = batch.iter().filter(|r| is_pending(&r.0)).count();
        if pending == 0 {
            continue;
        }
        match attribute_batch(model, batch, opts) {
            Ok(outs) => {
                for ((index, _, _), out) in batch.iter().zip(outs) {
                    if is_pending(index) {
                        store.write(*index, &out)?;
                        report.attributed += 1;
                    }
                }
            }
            // One bad row fails its batch: retry the missing rows one by one to isolate it.
            Err(_) if batch.len() > 1 => {
                for one in batch.chunks(1).filter(|one| is_pending(&one[0].0)) {
                    match attribute_batch(model, one, opts) {
                        Ok(mut outs) => {
                            store.write(one[0].0, &outs.remove(0))?;
                            report.attributed += 1;
                        }
                        Err(e) if on_error == OnError::Skip => {
                            report.failed.push((one[0].0, e.to_string()))
                        }
                        Err(e) => {
                            return Err(Error::InvalidInput(format!("row {}: {e}", one[0].0)));
                        }
                    }
                }
            }
            Err(e) if on_error == OnError::Skip => report.failed.push((batch[0].0, e.to_string())),
            Err(e) => return Err(Error::InvalidInput(format!("row {}: {e}", batch[0].0))),
        }
        progress(pending);
    }
    report.failed.sort_by_key(|f| f.0);
    Ok(report)
}

/// Attributes a batch of `(row, input, target)` and splits the result into one output per row,
/// without the run time (so results do not depend on when they were computed).
fn attribute_batch(
    model: &crate::AttributionModel,
    batch: &[(usize, &str, Option<String>)],
    opts: &crate::AttributeOptions,
) -> Result<Vec<inseq_core::AttributionOutput>> {
    let inputs: Vec<&str> = batch.iter().map(|b| b.1).collect();
    let targets: Option<Vec<String>> = batch.iter().map(|b| b.2.clone()).collect();
    let opts = crate::AttributeOptions {
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
            inseq_core::AttributionOutput {
                sequence_attributions: vec![seq],
                info,
            }
        })
        .collect())
}
