//! PyTorch checkpoints (`pytorch_model.bin`, `torch.save` of a state dict) read without Python:
//! the zip archive (`zip.rs`), its `data.pkl` (`pickle.rs`, a safe subset), and each tensor's
//! storage `data/<key>` decoded to `f32` on demand (f32, f16, bf16, f64; strided views included).
//! The legacy pre-1.6 format (consecutive pickles, then the raw storages) is read too.

mod pickle;
mod zip;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use inseq_core::{Error, Result};

use crate::weights::{RawTensor, WeightSource, map_weight_file, shard_files};
use pickle::{DType, TensorRef, Value};

/// One opened `.bin` file: its bytes, the byte range of each storage, and its tensors.
struct BinFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    storages: HashMap<String, Range<usize>>,
}

/// Tensors of one or more `torch.save` zip archives (a checkpoint, or the shards listed by a
/// `pytorch_model.bin.index.json`).
pub struct TorchBinSource {
    files: Vec<BinFile>,
    /// tensor name -> (file index, view)
    index: HashMap<String, (usize, TensorRef)>,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The archive's `data.pkl` and storage ranges (`<archive>/data/<key>` → key).
fn read_archive(path: &Path, bytes: &[u8]) -> Result<(Value, HashMap<String, Range<usize>>)> {
    if !zip::is_zip(bytes) {
        return read_legacy(path, bytes);
    }
    let entries = zip::stored_entries(bytes).map_err(|e| corrupt(path, e))?;
    let pkl = entries
        .iter()
        .find(|(name, _)| name.ends_with("data.pkl") && name.matches('/').count() == 1)
        .map(|(_, r)| r.clone())
        .ok_or_else(|| corrupt(path, "no `data.pkl` in the archive"))?;
    if let Some((_, r)) = entries.iter().find(|(n, _)| n.ends_with("/byteorder"))
        && &bytes[r.clone()] != b"little"
    {
        return Err(corrupt(path, "big-endian checkpoint"));
    }
    let value = pickle::unpickle(&bytes[pkl]).map_err(|e| corrupt(path, e))?;
    let storages = entries
        .into_iter()
        .filter_map(|(name, r)| {
            let (_, key) = name.split_once("/data/")?;
            (!key.contains('/')).then(|| (key.to_string(), r))
        })
        .collect();
    Ok((value, storages))
}

/// The first pickle of a legacy `torch.save` file: protocol 2, the magic number
/// `0x1950a86a20f9469cfc6c`.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";

/// A legacy (pre-1.6) `torch.save` file: the magic, protocol and system-info pickles, the object
/// pickle, the sorted storage keys, then each storage as an 8-byte element count and its bytes.
fn read_legacy(path: &Path, bytes: &[u8]) -> Result<(Value, HashMap<String, Range<usize>>)> {
    if !bytes.starts_with(LEGACY_MAGIC) {
        return Err(corrupt(
            path,
            "neither a zip archive nor a legacy torch.save file",
        ));
    }
    let err = |e: String| corrupt(path, e);
    let (_, at) = pickle::unpickle_at(bytes, LEGACY_MAGIC.len()).map_err(err)?;
    let (info, at) = pickle::unpickle_at(bytes, at).map_err(err)?;
    let little = Value::Str("little_endian".into());
    if let Value::Dict(items) = &info
        && items
            .iter()
            .any(|(k, v)| *k == little && *v == Value::Bool(false))
    {
        return Err(corrupt(path, "big-endian checkpoint"));
    }
    let (value, at) = pickle::unpickle_at(bytes, at).map_err(err)?;
    let (keys, at) = pickle::unpickle_at(bytes, at).map_err(err)?;
    let Value::List(keys) = keys else {
        return Err(corrupt(path, "the storage key list is missing"));
    };
    let tensors = state_dict(path, value.clone())?;
    let storages = legacy_storages(path, bytes, at, keys, &tensors)?;
    Ok((value, storages))
}

/// The byte ranges of a legacy file's storages, laid out from `at` in `keys` order.
fn legacy_storages(
    path: &Path,
    bytes: &[u8],
    mut at: usize,
    keys: Vec<Value>,
    tensors: &[(String, TensorRef)],
) -> Result<HashMap<String, Range<usize>>> {
    let mut storages = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(corrupt(path, "a storage key is not a string"));
        };
        let t = tensors
            .iter()
            .map(|(_, t)| t)
            .find(|t| t.storage == key)
            .ok_or_else(|| corrupt(path, format!("storage `{key}` belongs to no tensor")))?;
        let numel = at
            .checked_add(8)
            .and_then(|end| bytes.get(at..end))
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| corrupt(path, format!("storage `{key}` cut short")))?;
        let end = usize::try_from(numel)
            .ok()
            .filter(|&n| n == t.storage_len)
            .and_then(|n| n.checked_mul(t.dtype.width()))
            .and_then(|len| (at + 8).checked_add(len))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| corrupt(path, format!("storage `{key}`: bad size {numel}")))?;
        storages.insert(key, at + 8..end);
        at = end;
    }
    Ok(storages)
}

/// The `name → tensor` pairs of an unpickled state dict.
fn state_dict(path: &Path, value: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(items) = value else {
        return Err(corrupt(
            path,
            "the pickle is not a state dict (a dict of tensors)",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        match (k, v) {
            (Value::Str(name), Value::Tensor(t)) => out.push((name, t)),
            (Value::Str(name), _) => {
                return Err(corrupt(path, format!("`{name}` is not a tensor")));
            }
            (k, _) => {
                return Err(corrupt(
                    path,
                    format!("state dict key {k:?} is not a string"),
                ));
            }
        }
    }
    Ok(out)
}

impl TorchBinSource {
    /// Opens `pytorch_model.bin` or the shards of `pytorch_model.bin.index.json` in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("pytorch_model.bin");
        if single.exists() {
            return Self::open_files(&[single]);
        }
        Self::open_files(&shard_files(&dir.join("pytorch_model.bin.index.json"))?)
    }

    /// Opens the given `torch.save` archives.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let mmap = map_weight_file(path, "a PyTorch weight file")?;
            let (value, storages) = read_archive(path, &mmap)?;
            for (name, t) in state_dict(path, value)? {
                index.insert(name, (i, t));
            }
            files.push(BinFile {
                path: path.clone(),
                mmap,
                storages,
            });
        }
        Ok(Self { files, index })
    }
}

/// Decodes element `i` of a little-endian storage of type `dtype`.
fn element(bytes: &[u8], dtype: DType, i: usize) -> f32 {
    let w = dtype.width();
    let b = &bytes[i * w..(i + 1) * w];
    match dtype {
        DType::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
        DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        DType::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        DType::Other(_) => unreachable!("checked by the caller"),
    }
}

/// Whether `strides` are the row-major strides of `shape` (size-1 dimensions may have any).
fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

/// The elements of a strided view, row-major; checks that it stays inside its storage.
fn gather(bytes: &[u8], t: &TensorRef) -> std::result::Result<Vec<f32>, String> {
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("tensor size overflows")?;
    let last = t
        .shape
        .iter()
        .zip(&t.strides)
        .try_fold(t.offset, |acc, (&d, &s)| {
            acc.checked_add(d.saturating_sub(1).checked_mul(s)?)
        })
        .ok_or("tensor view overflows")?;
    let stored = t.storage_len.checked_mul(t.dtype.width());
    if numel > 0 && (last >= t.storage_len || stored.is_none_or(|n| n > bytes.len())) {
        return Err(format!(
            "tensor view reaches element {last} of a storage of {} ({} bytes stored)",
            t.storage_len,
            bytes.len()
        ));
    }
    if numel == 0 {
        return Ok(Vec::new());
    }
    if is_contiguous(&t.shape, &t.strides) {
        // Row-major and dense (every checkpoint saved from a state dict): one pass over the bytes.
        let w = t.dtype.width();
        let bytes = &bytes[t.offset * w..(t.offset + numel) * w];
        return Ok(bytes
            .chunks_exact(w)
            .map(|b| element(b, t.dtype, 0))
            .collect());
    }
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset
            + idx
                .iter()
                .zip(&t.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.push(element(bytes, t.dtype, at));
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

impl WeightSource for TorchBinSource {
    fn read(&mut self, name: &str) -> Result<Option<RawTensor>> {
        let Some((i, t)) = self.index.get(name) else {
            return Ok(None);
        };
        let file = &self.files[*i];
        if let DType::Other(_) = t.dtype {
            return Err(corrupt(
                &file.path,
                format!("tensor `{name}` is not a floating-point tensor (f32, f16, bf16, f64)"),
            ));
        }
        let range = file.storages.get(&t.storage).ok_or_else(|| {
            corrupt(
                &file.path,
                format!("storage `{}` of `{name}` missing", t.storage),
            )
        })?;
        let data = gather(&file.mmap[range.clone()], t)
            .map_err(|e| corrupt(&file.path, format!("tensor `{name}`: {e}")))?;
        Ok(Some(RawTensor {
            shape: t.shape.clone(),
            data,
        }))
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort();
        names
    }

    fn origin(&self) -> PathBuf {
        self.files
            .first()
            .map(|f| f.path.clone())
            .unwrap_or_default()
    }
}
