//! The GGUF container: header, metadata key/values and tensor table, parsed
//! from a memory map with every header-claimed size checked against the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use inseq_core::{Error, Result};

use super::quants::{GgmlType, dequantize};
use crate::weights::{RawTensor, map_weight_file};

/// `"GGUF"` read as a little-endian `u32`.
const MAGIC: u32 = u32::from_le_bytes(*b"GGUF");
/// Default data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays inside arrays accepted in metadata.
const MAX_ARRAY_DEPTH: usize = 4;
/// Most elements accepted in one metadata array (vocabularies have well under a million).
const MAX_ARRAY_LEN: u64 = 1 << 22;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string (invalid sequences replaced).
    String(String),
    /// Array of values of one type.
    Array(Vec<GgufValue>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    /// Name as llama.cpp writes it (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions as stored in the file: innermost (contiguous) first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the file.
    pub offset: usize,
    /// Size of the data in bytes.
    pub nbytes: usize,
}

impl GgufTensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        // Checked during parsing: the product fits and matches `nbytes`.
        self.dims.iter().product::<u64>() as usize
    }

    /// Row-major shape (outermost first), the reverse of [`Self::dims`].
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed, memory-mapped GGUF file with tensors under their llama.cpp names.
pub struct GgufFile {
    path: PathBuf,
    mmap: std::sync::Arc<memmap2::Mmap>,
    version: u32,
    metadata: HashMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Bounds-checked little-endian reader over the mapped bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {} left",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| {
                format!(
                    "{what}: string length {len} at offset {} exceeds the {} bytes left in the file",
                    self.pos - 8,
                    self.remaining()
                )
            })?;
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(
        &mut self,
        ty: u32,
        depth: usize,
        what: &str,
    ) -> std::result::Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array::<1>(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array::<2>(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array::<2>(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array::<4>(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array::<4>(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array::<4>(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("{what}: invalid bool byte {b}")),
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    ));
                }
                let elem_ty = self.u32(what)?;
                let count = self.u64(what)?;
                if count > MAX_ARRAY_LEN {
                    return Err(format!(
                        "{what}: array of {count} elements (at most {MAX_ARRAY_LEN} accepted)"
                    ));
                }
                let min_size = min_value_size(elem_ty)
                    .ok_or_else(|| format!("{what}: unknown array element type {elem_ty}"))?;
                let fits = usize::try_from(count)
                    .ok()
                    .and_then(|c| c.checked_mul(min_size))
                    .is_some_and(|b| b <= self.remaining());
                if !fits {
                    return Err(format!(
                        "{what}: array of {count} elements cannot fit in the {} bytes left in the file",
                        self.remaining()
                    ));
                }
                let count = count as usize;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem_ty, depth + 1, what)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array::<8>(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array::<8>(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array::<8>(what)?)),
            other => return Err(format!("{what}: unknown value type {other}")),
        })
    }
}

/// Smallest encoded size of a value of type `ty` (for bounding array counts).
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

impl GgufFile {
    /// Opens, memory-maps and parses a GGUF (v2 or v3) file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_mmap(path, map_weight_file(path, "a GGUF model file")?)
    }

    fn from_mmap(path: &Path, mmap: memmap2::Mmap) -> Result<Self> {
        let parsed = parse(&mmap).map_err(|reason| Error::CorruptFile {
            path: path.to_path_buf(),
            reason,
        })?;
        let (version, metadata, tensors) = parsed;
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            mmap: std::sync::Arc::new(mmap),
            version,
            metadata,
            tensors,
            by_name,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata key/values.
    pub fn metadata(&self) -> &HashMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The tensor called `name` (llama.cpp name).
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw (possibly quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        // Bounds checked during parsing.
        &self.mmap[info.offset..info.offset + info.nbytes]
    }

    /// The raw bytes of a tensor, sharing the file's mapping.
    pub(crate) fn tensor_mapped(&self, info: &GgufTensorInfo) -> crate::compact::MappedBytes {
        // Bounds checked during parsing.
        crate::compact::MappedBytes::new(self.mmap.clone(), info.offset..info.offset + info.nbytes)
    }

    /// Reads and dequantizes the tensor `name` (llama.cpp name) to `f32`, in
    /// row-major order with the row-major shape (the file's dims reversed).
    pub fn read_f32(&self, name: &str) -> Result<Option<RawTensor>> {
        let Some(info) = self.tensor_info(name) else {
            return Ok(None);
        };
        let data =
            dequantize(info.ty, self.tensor_bytes(info), info.numel()).map_err(|reason| {
                Error::CorruptFile {
                    path: self.path.clone(),
                    reason: format!("tensor `{name}`: {reason}"),
                }
            })?;
        Ok(Some(RawTensor {
            shape: info.shape(),
            data,
        }))
    }
}

type Parsed = (u32, HashMap<String, GgufValue>, Vec<GgufTensorInfo>);

/// A tensor-table entry as the file states it: name, dims, type and offset
/// relative to the start of the tensor data.
type RawTensorInfo = (String, Vec<u64>, GgmlType, u64);

fn parse(buf: &[u8]) -> std::result::Result<Parsed, String> {
    let mut c = Cursor { buf, pos: 0 };
    let (version, tensor_count, kv_count) = read_header(&mut c)?;
    let metadata = read_metadata(&mut c, kv_count)?;
    let alignment = alignment_of(&metadata)?;
    let infos = read_tensor_infos(&mut c, tensor_count)?;
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    if data_start > buf.len() as u64 && tensor_count > 0 {
        return Err(format!(
            "truncated: tensor data should start at offset {data_start} but the file is {} bytes",
            buf.len()
        ));
    }
    let mut tensors = Vec::with_capacity(infos.len());
    let mut seen = std::collections::HashSet::new();
    for info in infos {
        if !seen.insert(info.0.clone()) {
            return Err(format!("duplicate tensor name `{}`", info.0));
        }
        tensors.push(locate_tensor(info, data_start, alignment, buf.len())?);
    }
    Ok((version, metadata, tensors))
}

/// Reads and checks the magic bytes, version and the two counts; returns
/// `(version, tensor_count, kv_count)`.
fn read_header(c: &mut Cursor) -> std::result::Result<(u32, u64, u64), String> {
    let magic = c.u32("magic")?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file: magic bytes are {:?}, expected \"GGUF\"",
            String::from_utf8_lossy(&magic.to_le_bytes())
        ));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (supported: 2, 3)"
        ));
    }
    let tensor_count = c.u64("tensor count")?;
    let kv_count = c.u64("metadata count")?;
    // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes; each
    // tensor info at least 8 (name length) + 4 + 4 + 8 bytes.
    let fits = |count: u64, min_bytes: u64| {
        count
            .checked_mul(min_bytes)
            .is_some_and(|b| b <= c.remaining() as u64)
    };
    if !fits(kv_count, 13) {
        return Err(format!(
            "header claims {kv_count} metadata entries, more than the {} byte file can hold",
            c.buf.len()
        ));
    }
    if !fits(tensor_count, 24) {
        return Err(format!(
            "header claims {tensor_count} tensors, more than the {} byte file can hold",
            c.buf.len()
        ));
    }
    Ok((version, tensor_count, kv_count))
}

/// Reads the `kv_count` metadata key/values.
fn read_metadata(
    c: &mut Cursor,
    kv_count: u64,
) -> std::result::Result<HashMap<String, GgufValue>, String> {
    let mut metadata = HashMap::with_capacity(kv_count.min(1024) as usize);
    for i in 0..kv_count {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of metadata `{key}`"))?;
        let value = c.value(ty, 0, &format!("metadata `{key}`"))?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// The tensor-data alignment: `general.alignment` (a power of two up to
/// 1 MiB) or [`DEFAULT_ALIGNMENT`].
fn alignment_of(metadata: &HashMap<String, GgufValue>) -> std::result::Result<u64, String> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => Ok(a),
            _ => Err(format!(
                "invalid general.alignment {v:?} (must be a power of two)"
            )),
        },
    }
}

/// Reads the `tensor_count` tensor-table entries, checking rank and type.
fn read_tensor_infos(
    c: &mut Cursor,
    tensor_count: u64,
) -> std::result::Result<Vec<RawTensorInfo>, String> {
    let mut infos = Vec::with_capacity(tensor_count.min(4096) as usize);
    for i in 0..tensor_count {
        let name = c.string(&format!("tensor #{i} name"))?;
        let n_dims = c.u32(&format!("tensor `{name}` rank"))?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&format!("tensor `{name}` dims"))?);
        }
        let ty_id = c.u32(&format!("tensor `{name}` type"))?;
        let rel_offset = c.u64(&format!("tensor `{name}` offset"))?;
        let ty = GgmlType::from_id(ty_id)
            .ok_or_else(|| format!("tensor `{name}` has unknown ggml type {ty_id}"))?;
        infos.push((name, dims, ty, rel_offset));
    }
    Ok(infos)
}

/// Places one tensor in the file: checks its size against the block size,
/// its offset against the alignment, and its bytes against the file length.
fn locate_tensor(
    (name, dims, ty, rel_offset): RawTensorInfo,
    data_start: u64,
    alignment: u64,
    file_len: usize,
) -> std::result::Result<GgufTensorInfo, String> {
    let numel = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as u64)
        .ok_or_else(|| format!("tensor `{name}` dims {dims:?} overflow"))?;
    let (block_elems, block_bytes) = ty.block();
    if dims
        .first()
        .is_some_and(|&d| !d.is_multiple_of(block_elems as u64))
        || !numel.is_multiple_of(block_elems as u64)
    {
        return Err(format!(
            "tensor `{name}` of type {ty:?}: innermost dimension {} is not a multiple of the block size {block_elems}",
            dims.first().copied().unwrap_or(1)
        ));
    }
    let nbytes = (numel / block_elems as u64)
        .checked_mul(block_bytes as u64)
        .ok_or_else(|| format!("tensor `{name}` size overflows"))?;
    if !rel_offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor `{name}` offset {rel_offset} is not a multiple of the alignment {alignment}"
        ));
    }
    let start = data_start
        .checked_add(rel_offset)
        .ok_or_else(|| format!("tensor `{name}` offset overflows"))?;
    let end = start
        .checked_add(nbytes)
        .ok_or_else(|| format!("tensor `{name}` offset overflows"))?;
    if end > file_len as u64 {
        return Err(format!(
            "truncated: tensor `{name}` needs bytes {start}..{end} but the file is {file_len} bytes"
        ));
    }
    Ok(GgufTensorInfo {
        name,
        dims,
        ty,
        offset: start as usize,
        nbytes: nbytes as usize,
    })
}
