//! ALiBi position biases as transformers' Falcon builds them (`build_alibi_tensor`, falcon-rw):
//! per head a slope, per key its position among the row's real tokens; the bias `slope ·
//! position`, rounded to bfloat16 twice (the slopes, then their products) as transformers does,
//! is added to `q kᵀ` before the score scale. It is constant, so it changes only the forward
//! scores (the backward pass recomputes the weights with it and differentiates as without).

use burn::tensor::{Device, Tensor, TensorData};

/// The slopes of ALiBi and the score scale they are multiplied by.
#[derive(Debug, Clone, PartialEq)]
pub struct Alibi {
    /// Per head, rounded to bfloat16.
    slopes: Vec<f32>,
    /// The score scale (`head_dim^-½`).
    scale: f32,
}

/// `x` rounded to the nearest bfloat16 (ties to even), as an `f32`.
fn bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

impl Alibi {
    /// The slopes of `heads` heads (the geometric sequence of the nearest power of two below,
    /// then every other slope of the next power's sequence), for scores scaled by `scale`.
    pub fn new(heads: usize, scale: f64) -> Self {
        let closest = 1usize << heads.max(1).ilog2();
        let base = |n: usize| (2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))))) as f32;
        let mut slopes: Vec<f32> = (1..=closest as i32)
            .map(|p| base(closest).powi(p))
            .collect();
        let extra = (heads - closest).min(closest);
        let extra_base = base(2 * closest);
        slopes.extend((0..extra).map(|i| extra_base.powi(2 * i as i32 + 1)));
        Self {
            slopes: slopes.into_iter().map(bf16).collect(),
            scale: scale as f32,
        }
    }

    /// `[rows, heads, 1, keys]`: the scaled bias of the first `keys` keys of each row of
    /// `key_mask`, a key's position being the number of real keys before it (0 for padding).
    pub fn bias(&self, key_mask: &[Vec<bool>], keys: usize, device: &Device) -> Tensor<4> {
        let heads = self.slopes.len();
        let mut data = Vec::with_capacity(key_mask.len() * heads * keys);
        for row in key_mask {
            let mut seen = 0usize;
            let positions: Vec<f32> = row[..keys]
                .iter()
                .map(|&real| {
                    seen += usize::from(real);
                    if real { (seen - 1) as f32 } else { 0.0 }
                })
                .collect();
            for &slope in &self.slopes {
                data.extend(positions.iter().map(|&p| bf16(slope * p) * self.scale));
            }
        }
        let shape = [key_mask.len(), heads, 1, keys];
        Tensor::from_data(TensorData::new(data, shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_follow_transformers() {
        // transformers' build_alibi_tensor: 8 heads -> 2^-1 .. 2^-8; 12 heads -> those of 8, then
        // 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 (every other slope of 16 heads), in bfloat16.
        let a = Alibi::new(8, 1.0);
        let want: Vec<f32> = (1..=8).map(|p| 2f32.powi(-p)).collect();
        assert_eq!(a.slopes, want);
        let b = Alibi::new(12, 1.0);
        assert_eq!(&b.slopes[..8], &want[..]);
        let extra: Vec<f32> = [0.5f32, 1.5, 2.5, 3.5]
            .iter()
            .map(|e| bf16(2f32.powf(-e)))
            .collect();
        assert_eq!(&b.slopes[8..], &extra[..]);
    }

    #[test]
    fn positions_count_real_keys() {
        // One head: slope 2^-8; the padded key and the first real one at position 0.
        let a = Alibi::new(1, 2.0);
        let bias = a.bias(&[vec![false, true, true, true]], 4, &Device::flex());
        let v = bias.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v, [0.0, 0.0, 2.0 / 256.0, 4.0 / 256.0]);
    }
}
