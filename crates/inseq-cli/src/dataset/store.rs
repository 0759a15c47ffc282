//! Where per-row results go ([`OutputStore`]): resumable, locked while written, merged across
//! shards.

use std::path::{Path, PathBuf};

use inseq::{AttributionOutput, Error, Result};

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
    rows: Vec<(usize, AttributionOutput)>,
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
    pub fn read_all(&self) -> Result<Vec<(usize, AttributionOutput)>> {
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
    pub fn write(&self, index: usize, out: &AttributionOutput) -> Result<()> {
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
    pub fn write_all(&self, rows: &[(usize, AttributionOutput)]) -> Result<()> {
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
                inseq::core::write_atomic(path, text.as_bytes())
            }
        }
    }
}

/// One JSONL store line, newline included.
fn jsonl_line(index: usize, out: &AttributionOutput) -> Result<String> {
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
                AttributionOutput::from_json(&text)
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

fn parse_line(line: &[u8]) -> std::result::Result<(usize, AttributionOutput), String> {
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
    let mut all: std::collections::BTreeMap<usize, (serde_json::Value, AttributionOutput)> =
        Default::default();
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
