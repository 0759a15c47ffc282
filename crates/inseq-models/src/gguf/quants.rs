//! ggml element types and dequantization to `f32` (block layouts as in
//! llama.cpp's `ggml-quants.c` and gguf-py's `gguf/quants.py`).

use half::{bf16, f16};

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// A ggml tensor element type (the ids GGUF stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 4-bit, 32-element blocks with an `f16` scale.
    Q4_0,
    /// 4-bit, 32-element blocks with an `f16` scale and minimum.
    Q4_1,
    /// 5-bit, 32-element blocks with an `f16` scale.
    Q5_0,
    /// 5-bit, 32-element blocks with an `f16` scale and minimum.
    Q5_1,
    /// 8-bit, 32-element blocks with an `f16` scale.
    Q8_0,
    /// 8-bit, 32-element blocks with an `f16` scale and sum (not dequantizable here).
    Q8_1,
    /// 2-bit K-quant (not dequantizable here).
    Q2K,
    /// 3-bit K-quant (not dequantizable here).
    Q3K,
    /// 4-bit K-quant, 256-element super-blocks.
    Q4K,
    /// 5-bit K-quant, 256-element super-blocks.
    Q5K,
    /// 6-bit K-quant, 256-element super-blocks.
    Q6K,
    /// 8-bit K-quant (not dequantizable here).
    Q8K,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// bfloat16.
    BF16,
}

impl GgmlType {
    /// The type with ggml id `id`, if known.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            24 => Self::I8,
            25 => Self::I16,
            26 => Self::I32,
            27 => Self::I64,
            28 => Self::F64,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 | Self::I32 => (1, 4),
            Self::F16 | Self::BF16 | Self::I16 => (1, 2),
            Self::I8 => (1, 1),
            Self::I64 | Self::F64 => (1, 8),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (QK_K, 84),
            Self::Q3K => (QK_K, 110),
            Self::Q4K => (QK_K, 144),
            Self::Q5K => (QK_K, 176),
            Self::Q6K => (QK_K, 210),
            Self::Q8K => (QK_K, 292),
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `numel` elements of type `ty` from `bytes` to `f32`.
///
/// Errors (never panics) when `bytes` does not hold exactly `numel` elements
/// or the type cannot be dequantized.
pub fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    let (block_elems, block_bytes) = ty.block();
    if !numel.is_multiple_of(block_elems) {
        return Err(format!(
            "{numel} elements is not a multiple of the {ty:?} block size {block_elems}"
        ));
    }
    let blocks = numel / block_elems;
    if blocks.checked_mul(block_bytes) != Some(bytes.len()) {
        return Err(format!(
            "{} bytes cannot hold {numel} elements of type {ty:?}",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(numel);
    let chunks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(chunks.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(chunks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::F64 => {
            out.extend(chunks.map(|c| {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            }))
        }
        GgmlType::I8 => out.extend(chunks.map(|c| c[0] as i8 as f32)),
        GgmlType::I16 => out.extend(chunks.map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)),
        GgmlType::I32 => {
            out.extend(chunks.map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32))
        }
        GgmlType::Q8_0 => chunks.for_each(|b| {
            let d = f16_at(b, 0);
            out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
        }),
        GgmlType::Q4_0 => chunks.for_each(|b| {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
            out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
        }),
        GgmlType::Q4_1 => chunks.for_each(|b| {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qs = &b[4..20];
            out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
            out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
        }),
        GgmlType::Q5_0 => chunks.for_each(|b| {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for half_ in 0..2 {
                for (j, &q) in qs.iter().enumerate() {
                    let lo = if half_ == 0 { q & 0x0F } else { q >> 4 };
                    let hi = ((qh >> (j + 16 * half_)) & 1) as u8;
                    out.push(((lo | (hi << 4)) as i32 - 16) as f32 * d);
                }
            }
        }),
        GgmlType::Q5_1 => chunks.for_each(|b| {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for half_ in 0..2 {
                for (j, &q) in qs.iter().enumerate() {
                    let lo = if half_ == 0 { q & 0x0F } else { q >> 4 };
                    let hi = ((qh >> (j + 16 * half_)) & 1) as u8;
                    out.push((lo | (hi << 4)) as f32 * d + m);
                }
            }
        }),
        GgmlType::Q4K => chunks.for_each(|b| {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qs = &b[16..144];
            for (j, q) in qs.chunks_exact(32).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * j, scales);
                let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                out.extend(q.iter().map(|&x| d1 * (x & 0x0F) as f32 - m1));
                out.extend(q.iter().map(|&x| d2 * (x >> 4) as f32 - m2));
            }
        }),
        GgmlType::Q5K => chunks.for_each(|b| {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for (j, ql) in qs.chunks_exact(32).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * j, scales);
                let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                out.extend(ql.iter().zip(qh).map(|(&x, &h)| {
                    let hi = if h & u1 != 0 { 16 } else { 0 };
                    d1 * ((x & 0x0F) + hi) as f32 - m1
                }));
                out.extend(ql.iter().zip(qh).map(|(&x, &h)| {
                    let hi = if h & u2 != 0 { 16 } else { 0 };
                    d2 * ((x >> 4) + hi) as f32 - m2
                }));
            }
        }),
        GgmlType::Q6K => chunks.for_each(|b| {
            let ql_all = &b[0..128];
            let qh_all = &b[128..192];
            let sc_all = &b[192..208];
            let d = f16_at(b, 208);
            for n in 0..2 {
                let ql = &ql_all[64 * n..64 * n + 64];
                let qh = &qh_all[32 * n..32 * n + 32];
                let sc = &sc_all[8 * n..8 * n + 8];
                let mut y = [0f32; 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let s = |k: usize| d * (sc[is + k] as i8) as f32;
                    y[l] = s(0) * q1 as f32;
                    y[l + 32] = s(2) * q2 as f32;
                    y[l + 64] = s(4) * q3 as f32;
                    y[l + 96] = s(6) * q4 as f32;
                }
                out.extend_from_slice(&y);
            }
        }),
        GgmlType::I64 | GgmlType::Q8_1 | GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q8K => {
            return Err(format!(
                "ggml type {ty:?} is not supported (supported: F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
            ));
        }
    }
    debug_assert_eq!(out.len(), numel);
    Ok(out)
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K super-block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
