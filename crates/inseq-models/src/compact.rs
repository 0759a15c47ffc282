//! Weight matrices kept as their file stores them (bf16/f16 safetensors, GGUF quantised blocks),
//! read in place from the memory-mapped file and widened to `f32` just in time, each time a layer
//! uses them ([`Matrix::dense`]), the widened copy dropped after that use.
//!
//! A widened matrix holds the same `f32` values, in the same layout, as the matrix the loader
//! widens once at load time ([`crate::Weights::tensor2`], [`crate::Weights::tensor2_transposed`]),
//! so the products and the attributions are the same; what changes is memory (the file's size,
//! in reclaimable file-backed pages, instead of 4 bytes a weight) and time (one widening per
//! use). [`WeightStorage`] says when weights are kept compact.

use std::ops::Range;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use inseq_core::{Error, Result};
use rayon::prelude::*;

use crate::gguf::quants::{GgmlType, dequantize};

/// The environment variable that chooses [`WeightStorage`]: `auto` (the default), `compact`
/// or `f32`.
pub const WEIGHTS_ENV: &str = "INSEQ_WEIGHTS";

/// Widened (`f32`) size of a model's weights above which [`WeightStorage::Auto`] keeps them
/// compact: 4 GiB, about a billion weights. Smaller models are widened once at load time, as
/// before (no widening per use).
pub const COMPACT_ABOVE_BYTES: u64 = 4 << 30;

/// How weight matrices (linear layers, embedding tables, LM heads) are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightStorage {
    /// Widened to `f32` once at load time.
    F32,
    /// Kept as the file stores them where that is bf16, f16 or a GGUF block type, widened per use.
    Compact,
    /// [`WeightStorage::Compact`] when the widened weights would exceed [`COMPACT_ABOVE_BYTES`]
    /// and the device computes on this process's CPU cores; else [`WeightStorage::F32`].
    #[default]
    Auto,
}

impl WeightStorage {
    /// Parses `auto`, `compact` or `f32`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "auto" => Ok(Self::Auto),
            "compact" => Ok(Self::Compact),
            "f32" => Ok(Self::F32),
            other => Err(Error::invalid_arg(
                "weights",
                format!(
                    "`{other}` (expected auto, compact or f32; from --weights or {WEIGHTS_ENV})"
                ),
            )),
        }
    }

    /// The storage [`WEIGHTS_ENV`] asks for ([`WeightStorage::Auto`] when unset).
    pub fn from_env() -> Result<Self> {
        match std::env::var(WEIGHTS_ENV) {
            Ok(text) => Self::parse(text.trim()),
            Err(_) => Ok(Self::Auto),
        }
    }

    /// Whether weights of `f32_bytes` widened bytes are kept compact on `device`.
    pub fn compact(self, f32_bytes: u64, device: &Device) -> bool {
        match self {
            Self::F32 => false,
            Self::Compact => true,
            Self::Auto => {
                f32_bytes > COMPACT_ABOVE_BYTES && crate::nn::computed_on_host_cores(device)
            }
        }
    }
}

/// Bytes of a memory-mapped weight file: the mapping, shared, and a range of it.
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<memmap2::Mmap>,
    range: Range<usize>,
}

impl MappedBytes {
    /// `range` of `map` (checked by the caller against the file's table).
    pub(crate) fn new(map: Arc<memmap2::Mmap>, range: Range<usize>) -> Self {
        Self { map, range }
    }

    fn bytes(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// A 2-D tensor under its Hugging Face name as its file stores it: `stored_rows` rows of
/// `stored_cols` elements of type `ty` (whole blocks per row), possibly with its rows reordered
/// (llama.cpp's rotary permutation of query/key rows undone) and transposed on the way.
#[derive(Clone)]
pub struct StoredMatrix {
    bytes: MappedBytes,
    ty: GgmlType,
    stored_rows: usize,
    stored_cols: usize,
    /// Row `r` of the tensor is stored row `row_order[r]` (identity when `None`).
    row_order: Option<Arc<[usize]>>,
    /// The tensor is the transpose of the (reordered) stored rows.
    transposed: bool,
}

impl std::fmt::Debug for StoredMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredMatrix")
            .field("ty", &self.ty)
            .field("stored", &[self.stored_rows, self.stored_cols])
            .field("transposed", &self.transposed)
            .finish()
    }
}

impl StoredMatrix {
    /// `[rows, cols]` elements of `ty` in `bytes`; `None` when `ty` is not one this module keeps
    /// compact (only types narrower than `f32` are worth keeping) or `bytes` does not hold exactly
    /// that many elements in whole blocks per row.
    pub(crate) fn new(bytes: MappedBytes, ty: GgmlType, [rows, cols]: [usize; 2]) -> Option<Self> {
        let compactable = matches!(
            ty,
            GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q8_0
                | GgmlType::Q4K
                | GgmlType::Q5K
                | GgmlType::Q6K
        );
        let (block_elems, block_bytes) = ty.block();
        let whole_rows = cols.is_multiple_of(block_elems)
            && rows
                .checked_mul(cols / block_elems * block_bytes)
                .is_some_and(|n| n == bytes.range.len());
        (compactable && whole_rows).then_some(Self {
            bytes,
            ty,
            stored_rows: rows,
            stored_cols: cols,
            row_order: None,
            transposed: false,
        })
    }

    /// The same matrix with its rows reordered: row `r` becomes stored row `order[r]`.
    pub(crate) fn reordered(self, order: Vec<usize>) -> Self {
        debug_assert_eq!(order.len(), self.stored_rows);
        Self {
            row_order: Some(order.into()),
            ..self
        }
    }

    /// The transposed matrix.
    pub(crate) fn transposed(self) -> Self {
        Self {
            transposed: !self.transposed,
            ..self
        }
    }

    /// Shape of the tensor (after reordering and transposing).
    pub fn shape(&self) -> [usize; 2] {
        if self.transposed {
            [self.stored_cols, self.stored_rows]
        } else {
            [self.stored_rows, self.stored_cols]
        }
    }

    /// Bytes of one stored row.
    fn row_bytes(&self) -> usize {
        let (block_elems, block_bytes) = self.ty.block();
        self.stored_cols / block_elems * block_bytes
    }

    /// Widens the (reordered, untransposed) rows `rows` into `out` (`rows.len() * stored_cols`).
    fn widen_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        let (bytes, row_bytes, cols) = (self.bytes.bytes(), self.row_bytes(), self.stored_cols);
        for (r, dst) in rows.zip(out.chunks_exact_mut(cols)) {
            let stored = self.row_order.as_ref().map_or(r, |o| o[r]);
            let src = &bytes[stored * row_bytes..(stored + 1) * row_bytes];
            // Sizes checked in `new`: whole blocks per row.
            let widened = dequantize(self.ty, src, cols).expect("checked row size");
            dst.copy_from_slice(&widened);
        }
    }

    /// The reordered stored rows, widened, row-major, on rayon's threads.
    fn widen_stored_layout(&self) -> Vec<f32> {
        let cols = self.stored_cols;
        let mut out = vec![0f32; self.stored_rows * cols];
        let per_task = (1 << 16) / cols.max(1) + 1;
        out.par_chunks_mut(per_task * cols)
            .enumerate()
            .for_each(|(task, chunk)| {
                let start = task * per_task;
                self.widen_rows(start..start + chunk.len() / cols, chunk);
            });
        out
    }

    /// The tensor, widened, row-major, with [`Self::shape`].
    pub fn widen(&self) -> Vec<f32> {
        let stored = self.widen_stored_layout();
        if self.transposed {
            transpose(&stored, [self.stored_rows, self.stored_cols])
        } else {
            stored
        }
    }

    /// Rows `ids` of the (untransposed) tensor, widened, row-major `[ids.len(), cols]`.
    fn widen_selected(&self, ids: &[usize]) -> Vec<f32> {
        let cols = self.stored_cols;
        let mut out = vec![0f32; ids.len() * cols];
        out.par_chunks_mut(cols)
            .zip(ids)
            .for_each(|(dst, &r)| self.widen_rows(r..r + 1, dst));
        out
    }
}

/// Row-major `[rows, cols]` -> row-major `[cols, rows]`, in tiles on rayon's threads.
fn transpose(src: &[f32], [rows, cols]: [usize; 2]) -> Vec<f32> {
    const TILE: usize = 16;
    let mut out = vec![0f32; src.len()];
    if rows == 0 {
        return out;
    }
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(tile, dst)| {
            let c0 = tile * TILE;
            let n = dst.len() / rows;
            for r in 0..rows {
                let from = &src[r * cols + c0..r * cols + c0 + n];
                for (k, &v) in from.iter().enumerate() {
                    dst[k * rows + r] = v;
                }
            }
        });
    out
}

/// A weight matrix: an `f32` tensor, or a [`StoredMatrix`] widened on each use.
#[derive(Debug, Clone)]
// A tensor handle is large with the cuda backend built in (clippy's large_enum_variant); both
// variants are handles used by value on every product, so boxing would only add an indirection.
#[allow(clippy::large_enum_variant)]
pub enum Matrix {
    /// Widened at load time.
    Dense(Tensor<2>),
    /// Kept as stored, widened onto `device` by [`Matrix::dense`].
    Stored(Arc<StoredMatrix>, Device),
}

impl From<Tensor<2>> for Matrix {
    fn from(t: Tensor<2>) -> Self {
        Self::Dense(t)
    }
}

impl Matrix {
    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(t) => t.dims(),
            Self::Stored(s, _) => s.shape(),
        }
    }

    /// The matrix as an `f32` tensor: the tensor itself, or the stored matrix widened now (the
    /// caller drops it after use).
    pub fn dense(&self) -> Tensor<2> {
        match self {
            Self::Dense(t) => t.clone(),
            Self::Stored(s, device) => {
                Tensor::from_data(TensorData::new(s.widen(), s.shape()), device)
            }
        }
    }

    /// Rows `ids` (`[n]`), `[n, cols]`: a selection from the tensor, or only those rows widened.
    pub fn select_rows(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        match self {
            Self::Stored(s, device) if !s.transposed => {
                let wanted: Vec<Option<usize>> = ids
                    .clone()
                    .into_data()
                    .iter::<i64>()
                    .map(|i| usize::try_from(i).ok().filter(|&i| i < s.stored_rows))
                    .collect();
                // An id outside the table takes the dense selection's path (and its error).
                let Some(rows) = wanted.into_iter().collect::<Option<Vec<usize>>>() else {
                    return self.dense().select(0, ids);
                };
                let data = s.widen_selected(&rows);
                Tensor::from_data(TensorData::new(data, [rows.len(), s.stored_cols]), device)
            }
            _ => self.dense().select(0, ids),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    /// Every block type of `tests/fixtures/gguf/quants.gguf` (`[2, 512]`) widens, plain,
    /// row-reordered and transposed, to the values the loader's whole-tensor dequantization gives.
    #[test]
    fn widening_equals_load_time_dequantization() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gguf/quants.gguf");
        let file = GgufFile::open(&path).unwrap();
        for name in [
            "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K",
        ] {
            let info = file.tensor_info(&format!("q.{name}")).unwrap();
            let want = file.read_f32(&info.name).unwrap().unwrap().data;
            let stored = StoredMatrix::new(file.tensor_mapped(info), info.ty, [2, 512]).unwrap();
            assert_eq!(stored.widen(), want, "{name}");
            let swapped: Vec<f32> = [&want[512..], &want[..512]].concat();
            assert_eq!(
                stored.clone().reordered(vec![1, 0]).widen(),
                swapped,
                "{name}"
            );
            let transposed = stored.transposed();
            assert_eq!(transposed.shape(), [512, 2]);
            let t = transposed.widen();
            assert!((0..512).all(|c| t[2 * c] == want[c] && t[2 * c + 1] == want[512 + c]));
        }
        let f32_info = file.tensor_info("q.F32").unwrap();
        assert!(StoredMatrix::new(file.tensor_mapped(f32_info), f32_info.ty, [2, 512]).is_none());
        let q8 = file.tensor_info("q.Q8_0").unwrap();
        assert!(StoredMatrix::new(file.tensor_mapped(q8), q8.ty, [4, 512]).is_none());
    }

    #[test]
    fn transpose_of_odd_shapes() {
        let src: Vec<f32> = (0..3 * 37).map(|v| v as f32).collect();
        let t = transpose(&src, [3, 37]);
        assert!((0..3).all(|r| (0..37).all(|c| t[c * 3 + r] == src[r * 37 + c])));
    }
}
