//! Reading named weight tensors from safetensors files (single or sharded), PyTorch `.bin`
//! checkpoints ([`crate::torch_bin`]) or any other [`WeightSource`] (GGUF), converting them to
//! `f32` burn tensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use inseq_core::{Error, Result};
use safetensors::{Dtype, SafeTensors};

use crate::compact::{MappedBytes, Matrix, StoredMatrix, WeightStorage};
use crate::gguf::quants::GgmlType;

/// A raw tensor read from a weight file, already converted to `f32`.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Anything that can hand out named `f32` tensors under Hugging Face names.
pub trait WeightSource: Send {
    /// Reads the tensor `name`, or `Ok(None)` when the source has no such tensor.
    fn read(&mut self, name: &str) -> Result<Option<RawTensor>>;
    /// Names of every tensor the source holds.
    fn names(&self) -> Vec<String>;
    /// Where the weights come from (for error messages).
    fn origin(&self) -> PathBuf;
    /// The 2-D tensor `name` as the file stores it, when that is a type
    /// [`StoredMatrix`] keeps compact (else `Ok(None)`, and [`Self::read`] widens it).
    fn stored(&self, _name: &str) -> Result<Option<StoredMatrix>> {
        Ok(None)
    }
    /// Bytes of all the tensors once widened to `f32` (0 when unknown).
    fn f32_bytes(&self) -> u64 {
        0
    }
}

/// Memory-mapped safetensors files: one file, or the shards listed by a
/// `model.safetensors.index.json`.
pub struct SafetensorsSource {
    files: Vec<(PathBuf, Arc<memmap2::Mmap>)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    /// Opens `model.safetensors` or the shards of `model.safetensors.index.json` in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Self::open_files(&[single]);
        }
        Self::open_files(&shard_files(&dir.join("model.safetensors.index.json"))?)
    }

    /// Opens the given safetensors files.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let mmap = map_weight_file(path, "a safetensors weight file")?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::CorruptFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push((path.clone(), Arc::new(mmap)));
        }
        Ok(Self { files, index })
    }

    /// The file holding `name` and the tensor's view in it.
    fn view<'a>(
        &'a self,
        name: &str,
    ) -> Result<Option<(&'a PathBuf, safetensors::tensor::TensorView<'a>)>> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let (path, mmap) = &self.files[i];
        let corrupt = |e: safetensors::SafeTensorError| Error::CorruptFile {
            path: path.clone(),
            reason: e.to_string(),
        };
        let st = SafeTensors::deserialize(mmap).map_err(corrupt)?;
        Ok(Some((path, st.tensor(name).map_err(corrupt)?)))
    }
}

impl WeightSource for SafetensorsSource {
    fn read(&mut self, name: &str) -> Result<Option<RawTensor>> {
        let Some((path, view)) = self.view(name)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| Error::CorruptFile {
            path: path.clone(),
            reason,
        };
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(corrupt(format!(
                    "tensor `{name}` has unsupported dtype {other:?}"
                )));
            }
        };
        Ok(Some(RawTensor {
            shape: view.shape().to_vec(),
            data,
        }))
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort();
        names
    }

    fn origin(&self) -> PathBuf {
        self.files.first().map(|f| f.0.clone()).unwrap_or_default()
    }

    fn stored(&self, name: &str) -> Result<Option<StoredMatrix>> {
        let Some((_, view)) = self.view(name)? else {
            return Ok(None);
        };
        let ty = match view.dtype() {
            Dtype::BF16 => GgmlType::BF16,
            Dtype::F16 => GgmlType::F16,
            _ => return Ok(None),
        };
        let &[rows, cols] = view.shape() else {
            return Ok(None);
        };
        let map = &self.files[self.index[name]].1;
        // The view's bytes lie inside the mapping: their offset from its start.
        let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
        let bytes = MappedBytes::new(map.clone(), start..start + view.data().len());
        Ok(StoredMatrix::new(bytes, ty, [rows, cols]))
    }

    fn f32_bytes(&self) -> u64 {
        let mut total = 0u64;
        for (_, mmap) in &self.files {
            if let Ok(st) = SafeTensors::deserialize(mmap) {
                for (_, view) in st.tensors() {
                    total += 4 * view.shape().iter().product::<usize>() as u64;
                }
            }
        }
        total
    }
}

/// Maps a weight file read-only; a missing file is [`Error::MissingFile`] with `hint` saying
/// what it should have been.
pub(crate) fn map_weight_file(path: &Path, hint: &str) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
            hint: hint.into(),
        },
        _ => Error::io(path, e),
    })?;
    // SAFETY: the file is opened read-only and not modified while mapped.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The shard files listed by a sharded checkpoint's index (`weight_map` values), in the index's
/// directory. A shard name must be a plain file name.
pub fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let corrupt = |reason: String| Error::CorruptFile {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: index.to_path_buf(),
            hint: "the model weights (model.safetensors, pytorch_model.bin, or their sharded \
                   .index.json)"
                .into(),
        },
        _ => Error::io(index, e),
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| corrupt("no `weight_map` object".into()))?;
    let mut shards = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| corrupt(format!("the shard of `{tensor}` is not a string")))?;
        let plain = Path::new(file).file_name().is_some_and(|n| n == file);
        if !plain || file == ".." {
            return Err(corrupt(format!("shard `{file}` is not a file name")));
        }
        shards.push(file.to_string());
    }
    shards.sort();
    shards.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(shards.iter().map(|s| dir.join(s)).collect())
}

/// Opens the weights of a model directory as transformers looks for them: `model.safetensors`,
/// `model.safetensors.index.json`, `pytorch_model.bin`, `pytorch_model.bin.index.json`.
pub fn open_weights_dir(dir: &Path) -> Result<Box<dyn WeightSource>> {
    let has = |name: &str| dir.join(name).exists();
    if has("model.safetensors") || has("model.safetensors.index.json") {
        Ok(Box::new(SafetensorsSource::open_dir(dir)?))
    } else if has("pytorch_model.bin") || has("pytorch_model.bin.index.json") {
        Ok(Box::new(crate::torch_bin::TorchBinSource::open_dir(dir)?))
    } else {
        Err(Error::MissingFile {
            path: dir.join("model.safetensors"),
            hint: "the model weights (model.safetensors, pytorch_model.bin, or their sharded \
                   .index.json)"
                .into(),
        })
    }
}

/// Typed, shape-checked access to a [`WeightSource`], creating tensors on a device.
///
/// Names are Hugging Face names without the architecture prefix
/// (`h.0.attn.c_attn.weight`, `layers.0.self_attn.q_proj.weight`); the
/// prefixes in `prefixes` (e.g. `transformer.`, `model.`) are tried in turn.
pub struct Weights {
    source: Box<dyn WeightSource>,
    prefixes: Vec<String>,
    device: Device,
    /// [`Self::matrix`] keeps matrices as stored where it can.
    compact: bool,
}

impl Weights {
    /// Wraps `source`, trying each prefix (and no prefix) when resolving names.
    /// Matrices are widened to `f32` at load time ([`WeightStorage::F32`]); see
    /// [`Self::with_storage`].
    pub fn new(source: Box<dyn WeightSource>, prefixes: &[&str], device: &Device) -> Self {
        Self {
            source,
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            device: device.clone(),
            compact: false,
        }
    }

    /// Holds the matrices of [`Self::matrix`] and [`Self::matrix_transposed`] as `storage` says.
    pub fn with_storage(self, storage: WeightStorage) -> Self {
        let compact = storage.compact(self.source.f32_bytes(), &self.device);
        Self { compact, ..self }
    }

    /// Whether matrices are kept as stored where the file allows it.
    pub fn is_compact(&self) -> bool {
        self.compact
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The file the weights come from (the first shard of a sharded checkpoint).
    pub fn origin(&self) -> PathBuf {
        self.source.origin()
    }

    /// Whether a tensor called `name` exists (under any prefix).
    pub fn contains(&self, name: &str) -> bool {
        let names = self.source.names();
        self.candidates(name).iter().any(|c| names.contains(c))
    }

    fn candidates(&self, name: &str) -> Vec<String> {
        let mut c: Vec<String> = self.prefixes.iter().map(|p| format!("{p}{name}")).collect();
        c.push(name.to_string());
        c
    }

    /// Reads `name` as raw data, checking its shape.
    pub fn raw(&mut self, name: &str, shape: &[usize]) -> Result<RawTensor> {
        for cand in self.candidates(name) {
            if let Some(t) = self.source.read(&cand)? {
                // Checked: `shape` comes from config.json and may overflow.
                let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if t.shape != shape && !(Some(t.data.len()) == numel && squeeze_eq(&t.shape, shape))
                {
                    return Err(Error::ShapeMismatch {
                        what: format!("weight `{cand}` in {}", self.source.origin().display()),
                        expected: shape.to_vec(),
                        found: t.shape,
                    });
                }
                return Ok(t);
            }
        }
        Err(Error::CorruptFile {
            path: self.source.origin(),
            reason: format!("missing weight `{name}`"),
        })
    }

    /// Reads a 1-D tensor.
    pub fn tensor1(&mut self, name: &str, n: usize) -> Result<Tensor<1>> {
        let t = self.raw(name, &[n])?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, [n]),
            &self.device,
        ))
    }

    /// Reads a 2-D tensor stored `[rows, cols]`.
    pub fn tensor2(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>> {
        let t = self.raw(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, shape),
            &self.device,
        ))
    }

    /// Reads a 2-D tensor stored `[out, in]` and returns it transposed, `[in, out]`
    /// (`dims` is `[out, in]`). The transpose is done on the host so the device copy is contiguous.
    pub fn tensor2_transposed(&mut self, name: &str, dims: [usize; 2]) -> Result<Tensor<2>> {
        let [out, inp] = dims;
        let t = self.raw(name, &[out, inp])?;
        Ok(Tensor::from_data(
            TensorData::new(transpose(&t.data, [out, inp]), [inp, out]),
            &self.device,
        ))
    }
}

/// The `[cols, rows]` transpose of a row-major `[rows, cols]` matrix, in tiles that stay in
/// cache, bands of output rows side by side on rayon's threads.
fn transpose(data: &[f32], [rows, cols]: [usize; 2]) -> Vec<f32> {
    use rayon::prelude::*;
    const TILE: usize = 32;
    let mut out = vec![0f32; rows * cols];
    if rows == 0 {
        return out;
    }
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, dst)| {
            let c0 = band * TILE;
            let width = dst.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    let src = &data[r * cols + c0..r * cols + c0 + width];
                    for (c, &v) in src.iter().enumerate() {
                        dst[c * rows + r] = v;
                    }
                }
            }
        });
    out
}

impl Weights {
    /// A 2-D tensor stored `[rows, cols]`: kept as stored when compact (see [`Self::with_storage`]),
    /// else [`Self::tensor2`].
    pub fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Matrix> {
        match self.stored(name, shape)? {
            Some(s) => Ok(Matrix::Stored(Arc::new(s), self.device.clone())),
            None => Ok(self.tensor2(name, shape)?.into()),
        }
    }

    /// A 2-D tensor stored `[out, in]`, transposed to `[in, out]` (`dims` is `[out, in]`): kept as
    /// stored when compact, else [`Self::tensor2_transposed`].
    pub fn matrix_transposed(&mut self, name: &str, dims: [usize; 2]) -> Result<Matrix> {
        match self.stored(name, dims)? {
            Some(s) => Ok(Matrix::Stored(
                Arc::new(s.transposed()),
                self.device.clone(),
            )),
            None => Ok(self.tensor2_transposed(name, dims)?.into()),
        }
    }

    /// The stored form of `name` when compact and the source has it with exactly `shape`.
    fn stored(&self, name: &str, shape: [usize; 2]) -> Result<Option<StoredMatrix>> {
        if !self.compact {
            return Ok(None);
        }
        for cand in self.candidates(name) {
            if let Some(s) = self.source.stored(&cand)? {
                return Ok((s.shape() == shape).then_some(s));
            }
        }
        Ok(None)
    }
}

fn squeeze_eq(a: &[usize], b: &[usize]) -> bool {
    let f = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    f(a) == f(b)
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_in_tiles_equals_the_plain_one() {
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], [2, 3]),
            [1., 4., 2., 5., 3., 6.]
        );
        for (rows, cols) in [(0, 3), (3, 0), (33, 70), (64, 31), (1, 100)] {
            let data: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let want: Vec<f32> = (0..cols)
                .flat_map(|c| (0..rows).map(move |r| (r * cols + c) as f32))
                .collect();
            assert_eq!(transpose(&data, [rows, cols]), want, "{rows}x{cols}");
        }
    }
}
