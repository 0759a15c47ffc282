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
    use rayon::prelude::*;
    /// Blocks per piece converted on one of rayon's threads.
    const PIECE_BLOCKS: usize = 1 << 12;
    check_size(ty, bytes, numel)?;
    let (block_elems, block_bytes) = ty.block();
    if numel <= PIECE_BLOCKS * block_elems {
        return dequantize_serial(ty, bytes, numel);
    }
    let mut out = vec![0f32; numel];
    out.par_chunks_mut(PIECE_BLOCKS * block_elems)
        .zip(bytes.par_chunks(PIECE_BLOCKS * block_bytes))
        .try_for_each(|(dst, src)| {
            dst.copy_from_slice(&dequantize_serial(ty, src, dst.len())?);
            Ok::<_, String>(())
        })?;
    Ok(out)
}

/// [`dequantize`] on the calling thread.
fn dequantize_serial(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    check_size(ty, bytes, numel)?;
    let mut out = Vec::with_capacity(numel);
    let chunks = bytes.chunks_exact(ty.block().1);
    let out_ref = &mut out;
    match ty {
        GgmlType::F32 => {
            out_ref.extend(chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        }
        GgmlType::F16 => out_ref.extend(chunks.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => {
            out_ref.extend(chunks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        GgmlType::F64 => {
            out_ref.extend(chunks.map(|c| {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            }))
        }
        GgmlType::I8 => out_ref.extend(chunks.map(|c| c[0] as i8 as f32)),
        GgmlType::I16 => out_ref.extend(chunks.map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)),
        GgmlType::I32 => {
            out_ref.extend(chunks.map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32))
        }
        GgmlType::Q8_0 => chunks.for_each(|b| q8_0_block(b, out_ref)),
        GgmlType::Q4_0 => chunks.for_each(|b| q4_0_block(b, out_ref)),
        GgmlType::Q4_1 => chunks.for_each(|b| q4_1_block(b, out_ref)),
        GgmlType::Q5_0 => chunks.for_each(|b| q5_0_block(b, out_ref)),
        GgmlType::Q5_1 => chunks.for_each(|b| q5_1_block(b, out_ref)),
        GgmlType::Q4K => chunks.for_each(|b| q4_k_block(b, out_ref)),
        GgmlType::Q5K => chunks.for_each(|b| q5_k_block(b, out_ref)),
        GgmlType::Q6K => chunks.for_each(|b| q6_k_block(b, out_ref)),
        GgmlType::I64 | GgmlType::Q8_1 | GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q8K => {
            return Err(format!(
                "ggml type {ty:?} is not supported (supported: F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
            ));
        }
    }
    debug_assert_eq!(out.len(), numel);
    Ok(out)
}

/// Fails unless `bytes` holds exactly `numel` elements of type `ty` in whole blocks.
fn check_size(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<(), String> {
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
    Ok(())
}

/// One Q8_0 block: an `f16` scale and 32 signed bytes.
fn q8_0_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
}

/// One Q4_0 block: an `f16` scale and 32 nibbles offset by 8 (low nibbles first).
fn q4_0_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// One Q4_1 block: an `f16` scale and minimum and 32 nibbles (low nibbles first).
fn q4_1_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

/// The 32 unsigned 5-bit values of a Q5_0/Q5_1 block: nibbles in `qs`, fifth bits in `qh`.
fn q5_values(qh: u32, qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    (0..2).flat_map(move |half_| {
        qs.iter().enumerate().map(move |(j, &q)| {
            let lo = if half_ == 0 { q & 0x0F } else { q >> 4 };
            let hi = ((qh >> (j + 16 * half_)) & 1) as u8;
            lo | (hi << 4)
        })
    })
}

/// One Q5_0 block: an `f16` scale and 32 5-bit values offset by 16.
fn q5_0_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    out.extend(q5_values(qh, &b[6..22]).map(|q| (q as i32 - 16) as f32 * d));
}

/// One Q5_1 block: an `f16` scale and minimum and 32 5-bit values.
fn q5_1_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    out.extend(q5_values(qh, &b[8..24]).map(|q| q as f32 * d + m));
}

/// Scales and minimums of sub-blocks `2j` and `2j + 1` of a Q4_K/Q5_K super-block.
fn k4_sub_scales(d: f32, dmin: f32, scales: &[u8], j: usize) -> [(f32, f32); 2] {
    let (sc1, m1) = scale_min_k4(2 * j, scales);
    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
    [
        (d * sc1 as f32, dmin * m1 as f32),
        (d * sc2 as f32, dmin * m2 as f32),
    ]
}

/// One Q4_K super-block: 8 sub-blocks of 32 nibbles with 6-bit scales and minimums.
fn q4_k_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (j, q) in qs.chunks_exact(32).enumerate() {
        let [(d1, m1), (d2, m2)] = k4_sub_scales(d, dmin, scales, j);
        out.extend(q.iter().map(|&x| d1 * (x & 0x0F) as f32 - m1));
        out.extend(q.iter().map(|&x| d2 * (x >> 4) as f32 - m2));
    }
}

/// One Q5_K super-block: Q4_K's layout with a fifth bit per value in `qh`.
fn q5_k_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (j, ql) in qs.chunks_exact(32).enumerate() {
        let [(d1, m1), (d2, m2)] = k4_sub_scales(d, dmin, scales, j);
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
}

/// One Q6_K super-block: two halves of 128 6-bit values (low 4 bits in `ql`,
/// high 2 in `qh`) with signed 8-bit scales per 16 values.
fn q6_k_block(b: &[u8], out: &mut Vec<f32>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Large tensors are converted in pieces on rayon's threads: the same bits as in one piece,
    /// for a tensor of several pieces and a partial last one.
    #[test]
    fn pieces_equal_one_serial_pass() {
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16] {
            let (elems, bytes) = ty.block();
            let blocks = (1 << 12) * 2 + 77;
            let data: Vec<u8> = (0..blocks * bytes)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8 & 0x3b)
                .collect();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let parallel = dequantize(ty, &data, blocks * elems).unwrap();
            let serial = dequantize_serial(ty, &data, blocks * elems).unwrap();
            assert_eq!(bits(parallel), bits(serial), "{ty:?}");
        }
    }
}
