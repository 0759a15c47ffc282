//! The dataset file formats: JSONL, CSV and Parquet, read into records of text fields.

use std::path::Path;

use inseq::{Error, Result};

/// A record: field name -> text (non-text values rendered as JSON), or a reason it could not be read.
pub(super) type Record = std::result::Result<Vec<(String, String)>, String>;

pub(super) fn read_records(path: &Path) -> Result<Vec<Record>> {
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
                // A `null` field is a missing value, reported as such for the fields read.
                Ok(serde_json::Value::Object(m)) => Ok((m.iter())
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), json_text(v)))
                    .collect()),
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
