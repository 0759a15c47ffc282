//! Building blocks shared by the architectures: linear layers, norms,
//! embeddings and scaled dot-product attention, written against burn's
//! backend-agnostic `Tensor` API.

use burn::tensor::{Device, Int, Tensor, TensorData, activation};

use crate::compact::Matrix;
use crate::weights::Weights;
use inseq_core::{Error, Result};

/// Blocks a one-row product is split into ([`Linear::forward`], [`LmHead`]), so that it runs on
/// every core where a one-row product (each token of greedy decoding) is a single-threaded
/// matrix-vector product.
pub const ONE_ROW_BLOCKS: usize = 4;

/// Multiply-adds from which a one-row [`Linear::forward`] is split into blocks on a CPU backend.
/// Measured here, `[1, 576] x [576, 576]` (SmolLM2's smallest such weight): 0.105 ms as one
/// product, 0.088 ms in 4 blocks; `[1, 768] x [768, 2304]` (GPT-2's `c_attn`): 0.582 and 0.378 ms.
const ONE_ROW_BLOCKED_MIN: usize = 1 << 18;

/// Whether tensors on `device` are computed by this process's CPU cores (burn-flex, burn-ndarray),
/// which [`Linear::forward`] and [`crate::SharedForward::backward_each`] can keep busy by running
/// independent work on rayon's threads.
/// Other backends queue work to a device, where more, smaller products only add launches.
pub(crate) fn computed_on_host_cores(device: &Device) -> bool {
    let name = format!("{:?}", device.as_dispatch());
    name.starts_with("Flex") || name.starts_with("NdArray")
}

/// A dense layer `y = x W + b`, with `W` stored `[in, out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[in, out]` weight (compact ones are widened per use, [`Matrix::dense`]).
    pub weight: Matrix,
    /// Optional `[out]` bias.
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    /// Loads a PyTorch `nn.Linear` (`weight` stored `[out, in]`).
    pub fn load_torch(w: &mut Weights, prefix: &str, bias: bool, dims: [usize; 2]) -> Result<Self> {
        let weight = w.matrix_transposed(&format!("{prefix}.weight"), dims)?;
        let bias = if bias {
            Some(w.tensor1(&format!("{prefix}.bias"), dims[0])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Loads a GPT-2 style `Conv1D` (`weight` stored `[in, out]`).
    pub fn load_conv1d(w: &mut Weights, prefix: &str, dims: [usize; 2]) -> Result<Self> {
        let weight = w.matrix(&format!("{prefix}.weight"), [dims[1], dims[0]])?;
        let bias = Some(w.tensor1(&format!("{prefix}.bias"), dims[0])?);
        Ok(Self { weight, bias })
    }

    /// Applies the layer to `[batch, seq, in]`.
    ///
    /// On a CPU backend, a single row (one token of greedy decoding) against a large weight is
    /// computed as [`ONE_ROW_BLOCKS`] products over blocks of the input dimension (views of the
    /// weight, no copy) run on rayon's threads, then summed in block order (so the result does
    /// not depend on thread timing): a one-row product is a single-threaded matrix-vector product,
    /// bound by how fast one core reads the weight. Autodiff inputs and other backends take the
    /// plain product.
    ///
    /// ```
    /// use burn::tensor::{Device, Distribution, Tensor};
    /// use inseq_models::nn::Linear;
    /// let device = Device::flex();
    /// let weight = Tensor::<2>::random([1024, 2048], Distribution::Default, &device);
    /// let layer = Linear { weight: weight.clone().into(), bias: None };
    /// let x = Tensor::<3>::random([1, 1, 1024], Distribution::Default, &device);
    /// let blocked = layer.forward(x.clone()).reshape([1, 2048]);
    /// let plain = x.reshape([1, 1024]).matmul(weight);
    /// let scale = plain.clone().abs().max().into_scalar::<f32>();
    /// let diff = (blocked - plain).abs().max().into_scalar::<f32>() / scale;
    /// assert!(diff < 1e-5, "{diff}");
    /// ```
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, i] = x.dims();
        let out = self.weight.dims()[1];
        let x = x.reshape([b * s, i]);
        let blocked = b * s == 1 && i >= ONE_ROW_BLOCKS && i * out >= ONE_ROW_BLOCKED_MIN && {
            let device = x.device();
            !device.is_autodiff() && computed_on_host_cores(&device)
        };
        let weight = self.weight.dense();
        let y = if blocked {
            one_row_in_blocks(x, weight)
        } else {
            x.matmul(weight)
        };
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([b, s, out])
    }
}

/// `[1, in] x [in, out]` as [`ONE_ROW_BLOCKS`] products over blocks of `in`, in parallel.
fn one_row_in_blocks(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    use rayon::prelude::*;
    let [_, i] = x.dims();
    let out = weight.dims()[1];
    let bounds = |block: usize| block * i / ONE_ROW_BLOCKS;
    let partial: Vec<Tensor<2>> = (0..ONE_ROW_BLOCKS)
        .into_par_iter()
        .map(|block| {
            let rows = bounds(block)..bounds(block + 1);
            x.clone()
                .slice([0..1, rows.clone()])
                .matmul(weight.clone().slice([rows, 0..out]))
        })
        .collect();
    partial
        .into_iter()
        .reduce(|sum, block| sum + block)
        .expect("ONE_ROW_BLOCKS > 0")
}

/// Layer normalisation over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale.
    pub gamma: Tensor<1>,
    /// Shift.
    pub beta: Option<Tensor<1>>,
    /// Variance epsilon.
    pub eps: f64,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` / `{prefix}.bias`.
    pub fn load(w: &mut Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: w.tensor1(&format!("{prefix}.weight"), dim)?,
            beta: Some(w.tensor1(&format!("{prefix}.bias"), dim)?),
            eps,
        })
    }

    /// Normalises `[batch, seq, dim]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mean = x.clone().mean_dim(2);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(2);
        let y = centered / (var + self.eps).sqrt();
        let y = y * self.gamma.clone().unsqueeze::<3>();
        match &self.beta {
            Some(b) => y + b.clone().unsqueeze::<3>(),
            None => y,
        }
    }
}

/// Root-mean-square normalisation (Llama, T5).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// Scale.
    pub gamma: Tensor<1>,
    /// Epsilon added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// Loads `{prefix}.weight`.
    pub fn load(w: &mut Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: w.tensor1(&format!("{prefix}.weight"), dim)?,
            eps,
        })
    }

    /// Normalises `[batch, seq, dim]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let ms = x.clone().square().mean_dim(2);
        x / (ms + self.eps).sqrt() * self.gamma.clone().unsqueeze::<3>()
    }
}

/// A lookup table `[vocab, dim]`.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[vocab, dim]` table (a compact one widens only the rows looked up).
    pub table: Matrix,
}

impl Embedding {
    /// Looks up `[batch, seq]` ids, returning `[batch, seq, dim]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = ids.dims();
        let d = self.table.dims()[1];
        self.table
            .select_rows(ids.reshape([b * s]))
            .reshape([b, s, d])
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.table.dims()[0]
    }
}

/// The output projection (LM head) `[hidden] -> [vocab]`, from a `[vocab, hidden]` table (tied
/// token embeddings or Hugging Face's `lm_head.weight`), kept as [`ONE_ROW_BLOCKS`] column blocks
/// of that table (views, no copy) plus the remaining `vocab mod ONE_ROW_BLOCKS` columns.
///
/// ```
/// use burn::tensor::{Device, Tensor, TensorData};
/// use inseq_models::nn::LmHead;
/// let device = Device::flex();
/// let table = Tensor::<2>::from_data(TensorData::new((0..18).map(|v| v as f32).collect::<Vec<_>>(), [9, 2]), &device);
/// let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -1.0], [1, 2]), &device);
/// let logits = LmHead::from_table(table.clone()).forward(x.clone());
/// let plain = x.matmul(table.transpose());
/// assert_eq!(logits.try_to_vec_as::<f32>().unwrap(), plain.try_to_vec_as::<f32>().unwrap());
/// ```
// One per model: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LmHead {
    /// Blocks of an `f32` table.
    Dense(DenseHead),
    /// A compact table, widened into a [`DenseHead`] on each use.
    Stored(Matrix),
}

impl LmHead {
    /// The projection onto the rows of a `[vocab, hidden]` table.
    pub fn from_table(table: impl Into<Matrix>) -> Self {
        match table.into() {
            Matrix::Dense(t) => Self::Dense(DenseHead::from_table(t)),
            stored => Self::Stored(stored),
        }
    }

    /// `[rows, hidden]` -> `[rows, vocab]` logits.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Dense(head) => head.forward(x),
            Self::Stored(table) => DenseHead::from_table(table.dense()).forward(x),
        }
    }
}

/// [`LmHead`] of an `f32` table, kept as column blocks of it.
#[derive(Debug, Clone)]
pub struct DenseHead {
    /// `[blocks, hidden, vocab / blocks]`: block `b` holds vocabulary entries `b·n..(b+1)·n`.
    blocks: Option<Tensor<3>>,
    /// `[hidden, vocab mod blocks]`: the last entries.
    rest: Option<Tensor<2>>,
}

impl DenseHead {
    /// The projection onto the rows of a `[vocab, hidden]` table.
    pub fn from_table(table: Tensor<2>) -> Self {
        let [vocab, hidden] = table.dims();
        let per_block = vocab / ONE_ROW_BLOCKS;
        let in_blocks = per_block * ONE_ROW_BLOCKS;
        let blocks = (per_block > 0).then(|| {
            table
                .clone()
                .narrow(0, 0, in_blocks)
                .reshape([ONE_ROW_BLOCKS, per_block, hidden])
                .swap_dims(1, 2)
        });
        let rest =
            (in_blocks < vocab).then(|| table.narrow(0, in_blocks, vocab - in_blocks).transpose());
        Self { blocks, rest }
    }

    /// `[rows, hidden]` -> `[rows, vocab]` logits.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [rows, hidden] = x.dims();
        let blocked = self.blocks.as_ref().map(|blocks| {
            let [n, _, per_block] = blocks.dims();
            x.clone()
                .reshape([1, rows, hidden])
                .matmul(blocks.clone())
                .swap_dims(0, 1)
                .reshape([rows, n * per_block])
        });
        let rest = self.rest.as_ref().map(|rest| x.matmul(rest.clone()));
        match (blocked, rest) {
            (Some(b), Some(r)) => Tensor::cat(vec![b, r], 1),
            (Some(b), None) => b,
            (None, Some(r)) => r,
            (None, None) => unreachable!("a table has at least one row"),
        }
    }
}

/// Splits `[batch, seq, heads*head_dim]` into `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, s, d] = x.dims();
    x.reshape([b, s, heads, d / heads]).swap_dims(1, 2)
}

/// Merges `[batch, heads, seq, head_dim]` into `[batch, seq, heads*head_dim]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, s, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, s, h * d])
}

/// Repeats `[batch, kv_heads, seq, d]` key/value heads `n_rep` times (grouped-query attention).
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, n_rep, s, d])
        .reshape([b, h * n_rep, s, d])
}

/// Scaled dot-product attention with an additive bias `[batch, 1|heads, q, k]`.
/// Returns the context `[batch, heads, q, d]` and the attention weights `[batch, heads, q, k]`.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Option<Tensor<4>>,
    scale: f64,
) -> (Tensor<4>, Tensor<4>) {
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let scores = match bias {
        Some(b) => scores + b,
        None => scores,
    };
    let weights = activation::softmax(scores, 3);
    (weights.clone().matmul(v), weights)
}

/// `2·sqrt(2/π)`: the tanh-approximated GELU's `tanh(u)` is `2σ(2u) - 1`.
const GELU_TANH_SCALE: f64 = 2.0 * 0.797_884_560_802_865_4;

/// The exact GELU `½x(1 + erf(x/√2))` (Hugging Face's `gelu`). On a tensor that autodiff tracks
/// it is composed of `erf`, whose backward is exact on every backend: burn 0.22.1's fused `gelu`
/// differentiates as the tanh approximation on every backend but flex (burn's default
/// `gelu_backward`), which put gradients 1e-3 of their maximum off on ndarray.
///
/// ```
/// use burn::tensor::{Device, Tensor, TensorData};
/// let x = Tensor::<1>::from_data(TensorData::new(vec![-3.0f32, 0.5], [2]), &Device::ndarray());
/// let x = x.autodiff().require_grad();
/// let grads = inseq_models::nn::gelu(x.clone()).sum().backward();
/// let d = x.grad(&grads).unwrap().try_to_vec_as::<f32>().unwrap();
/// // Φ(x) + x·φ(x) at -3 and 0.5.
/// assert!((d[0] - -0.011_945_65).abs() < 1e-6 && (d[1] - 0.867_495_1).abs() < 1e-6);
/// ```
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.is_tracked() {
        ((x.clone() * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * x * 0.5
    } else {
        activation::gelu(x)
    }
}

/// The argument `2·sqrt(2/π)·(x + 0.044715·x³)` of the sigmoid in [`gelu_tanh`].
fn gelu_tanh_inner<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    (x.clone() * x.clone() * x.clone() * 0.044715 + x) * GELU_TANH_SCALE
}

/// The tanh-approximated GELU `½x(1 + tanh(sqrt(2/π)(x + 0.044715x³)))` (GPT-2's `gelu_new`,
/// `gelu_pytorch_tanh`), computed as the equal `x·σ(2·sqrt(2/π)(x + 0.044715x³))`: one
/// exponential per element, where burn's `gelu_approximate` calls `powf` and `tanh`.
///
/// ```
/// use burn::tensor::{Device, Tensor, TensorData, activation};
/// let x = Tensor::<1>::from_data(TensorData::new(vec![-3.0f32, -0.5, 0.0, 0.7, 4.0], [5]), &Device::flex());
/// let ours = inseq_models::nn::gelu_tanh(x.clone()).try_to_vec_as::<f32>().unwrap();
/// let burn = activation::gelu_approximate(x).try_to_vec_as::<f32>().unwrap();
/// // Two formulas for one value, each a few roundings of |gelu(x)| <= 4: 16 ε ≈ 1.9e-6.
/// assert!(ours.iter().zip(&burn).all(|(a, b)| (a - b).abs() <= 16.0 * f32::EPSILON));
/// ```
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * activation::sigmoid(gelu_tanh_inner(x))
}

/// [`gelu_tanh`] and its derivative `σ(v) + x·σ(v)(1 - σ(v))·v'` (`v` the sigmoid's argument,
/// `v' = 2·sqrt(2/π)(1 + 3·0.044715x²)`), from one sigmoid.
pub(crate) fn gelu_tanh_taped(x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
    let s = activation::sigmoid(gelu_tanh_inner(x.clone()));
    let act = x.clone() * s.clone();
    let dv = (x.clone().square() * (3.0 * 0.044715) + 1.0) * GELU_TANH_SCALE;
    let grad = s.clone() + act.clone() * (s.neg() + 1.0) * dv;
    (act, grad)
}

/// Large negative value used to mask attention scores (finite, so fully
/// masked rows stay well defined).
pub const MASK_VALUE: f32 = -1.0e9;

/// Builds the additive attention bias `[batch, 1, q, k]` from a `[batch, k]`
/// key mask (1 = attend, 0 = padding), optionally causal (query `i` sees keys `<= i + (k - q)`).
pub fn attention_bias(
    key_mask: &[Vec<bool>],
    q_len: usize,
    causal: bool,
    device: &Device,
) -> Tensor<4> {
    let b = key_mask.len();
    let k_len = key_mask.first().map_or(0, Vec::len);
    let offset = k_len.saturating_sub(q_len);
    let mut data = Vec::with_capacity(b * q_len * k_len);
    for row in key_mask {
        for i in 0..q_len {
            for (j, &keep) in row.iter().enumerate() {
                let visible = keep && (!causal || j <= i + offset);
                data.push(if visible { 0.0 } else { MASK_VALUE });
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [b, 1, q_len, k_len]), device)
}

/// Position ids from a key mask: each kept token gets the count of kept tokens before it,
/// so left-padded rows get the same positions as unpadded ones.
pub fn position_ids(mask: &[Vec<bool>]) -> Vec<Vec<usize>> {
    mask.iter()
        .map(|row| {
            let mut n = 0usize;
            row.iter()
                .map(|&keep| {
                    let p = n;
                    if keep {
                        n += 1;
                    }
                    p
                })
                .collect()
        })
        .collect()
}

/// Position ids of the last `new` positions of each row of a key mask (see [`position_ids`]):
/// all of them without a cache, the fed tokens' with [`crate::KvCache`].
pub fn new_positions(mask: &[Vec<bool>], new: usize) -> Vec<Vec<usize>> {
    position_ids(mask)
        .into_iter()
        .map(|row| row[row.len().saturating_sub(new)..].to_vec())
        .collect()
}

/// Uploads `[batch, seq]` integer ids.
pub fn ids_tensor(ids: &[Vec<usize>], device: &Device) -> Tensor<2, Int> {
    let b = ids.len();
    let s = ids.first().map_or(0, Vec::len);
    let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device)
}

/// Applies [`crate::model::McDropout`] to `x` (`[batch, seq, dim]`) for the `slot`-th dropout site
/// of a forward pass; identity when `dropout` is `None`.
pub fn mc_dropout(x: Tensor<3>, dropout: Option<&crate::model::McDropout>, slot: u64) -> Tensor<3> {
    let Some(d) = dropout else {
        return x;
    };
    if d.p <= 0.0 {
        return x;
    }
    let dims = x.dims();
    let n: usize = dims.iter().product();
    // SplitMix64: reproducible masks from (seed, slot).
    let mut state = d.seed ^ slot.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let keep = (1.0 / (1.0 - d.p)) as f32;
    let mask: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 / (1u64 << 53) as f64;
            if u < d.p { 0.0 } else { keep }
        })
        .collect();
    let device = x.device();
    x * Tensor::<3>::from_data(TensorData::new(mask, dims), &device)
}

/// Feed-forward activations by their Hugging Face `ACT2FN` names (the cheap ones; any other
/// name is an error, never a silent fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// Exact (erf) GELU: `gelu`.
    Gelu,
    /// Tanh-approximated GELU: `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`.
    GeluTanh,
    /// `relu`.
    Relu,
    /// `swish` / `silu`.
    Silu,
    /// `tanh`.
    Tanh,
    /// `quick_gelu`: `x·σ(1.702x)`.
    QuickGelu,
}

impl Act {
    /// Parses a Hugging Face activation name.
    pub(crate) fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Act::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Act::GeluTanh,
            "relu" => Act::Relu,
            "swish" | "silu" => Act::Silu,
            "tanh" => Act::Tanh,
            "quick_gelu" => Act::QuickGelu,
            other => {
                return Err(Error::Unsupported(format!(
                    "activation function `{other}` (supported: gelu, gelu_new, gelu_pytorch_tanh, \
                     gelu_fast, quick_gelu, relu, silu, swish, tanh)"
                )));
            }
        })
    }

    /// Applies the activation.
    pub(crate) fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Act::Gelu => gelu(x),
            Act::GeluTanh => crate::nn::gelu_tanh(x),
            Act::Relu => activation::relu(x),
            Act::Silu => activation::silu(x),
            Act::Tanh => x.tanh(),
            Act::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_is_computed_on_host_cores() {
        assert!(computed_on_host_cores(&Device::flex()));
    }
}
