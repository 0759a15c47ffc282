//! Reading named weight tensors from safetensors files (single or sharded)
//! or any other [`WeightSource`] (GGUF), converting them to `f32` burn tensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use inseq_core::{Error, Result};
use safetensors::{Dtype, SafeTensors};

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
}

/// Memory-mapped safetensors files: one file, or the shards listed by a
/// `model.safetensors.index.json`.
pub struct SafetensorsSource {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    /// Opens `model.safetensors` or `model.safetensors.index.json` in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let sharded = dir.join("model.safetensors.index.json");
        if single.exists() {
            Self::open_files(&[single])
        } else if sharded.exists() {
            let text = std::fs::read_to_string(&sharded).map_err(|e| Error::io(&sharded, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::CorruptFile {
                    path: sharded.clone(),
                    reason: e.to_string(),
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::CorruptFile {
                    path: sharded.clone(),
                    reason: "no `weight_map` object".into(),
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            Self::open_files(&paths)
        } else {
            Err(Error::MissingFile {
                path: single,
                hint: "the model weights (model.safetensors or model.safetensors.index.json)"
                    .into(),
            })
        }
    }

    /// Opens the given safetensors files.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::MissingFile {
                    path: path.clone(),
                    hint: "a safetensors weight file".into(),
                },
                _ => Error::io(path, e),
            })?;
            // SAFETY: the file is opened read-only and not modified while mapped.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::CorruptFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push((path.clone(), mmap));
        }
        Ok(Self { files, index })
    }
}

impl WeightSource for SafetensorsSource {
    fn read(&mut self, name: &str) -> Result<Option<RawTensor>> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let (path, mmap) = &self.files[i];
        let corrupt = |reason: String| Error::CorruptFile {
            path: path.clone(),
            reason,
        };
        let st = SafeTensors::deserialize(mmap).map_err(|e| corrupt(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| corrupt(e.to_string()))?;
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
}

impl Weights {
    /// Wraps `source`, trying each prefix (and no prefix) when resolving names.
    pub fn new(source: Box<dyn WeightSource>, prefixes: &[&str], device: &Device) -> Self {
        Self {
            source,
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            device: device.clone(),
        }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
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
        let mut data = vec![0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                data[i * out + o] = t.data[o * inp + i];
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [inp, out]),
            &self.device,
        ))
    }
}

fn squeeze_eq(a: &[usize], b: &[usize]) -> bool {
    let f = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    f(a) == f(b)
}
