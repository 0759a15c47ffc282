//! Which rows: `split[start:end]` slicing, `I/N` sharding, the data files of a folder or a Hugging
//! Face dataset, and each row's input and target.

use std::path::{Path, PathBuf};

use inseq::{Error, Result};

use super::formats::{Record, read_records};

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
            &inseq::models::hub::dataset_dir(source, &split.name)?,
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
