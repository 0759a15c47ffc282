//! Small n-dimensional helpers over [`Array`] (axis reductions, gathers,
//! contiguous-span aggregation).

use inseq_core::{Array, Error, Result};

use crate::Reduce;

/// A half-open `[start, end)` range of token positions.
pub type Span = (usize, usize);

fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let n = shape[axis];
    let inner = shape[axis + 1..].iter().product();
    (outer, n, inner)
}

fn check_axis(a: &Array, axis: usize, what: &str) -> Result<()> {
    if axis >= a.ndim() {
        return Err(Error::invalid_arg(
            what,
            format!(
                "cannot use axis {axis} of an array of shape {:?}",
                a.shape()
            ),
        ));
    }
    Ok(())
}

/// Reduces `axis` of `a` with `f` (which receives the values along the axis).
pub(crate) fn reduce_axis(a: &Array, axis: usize, f: &dyn Fn(&[f32]) -> f32) -> Result<Array> {
    check_axis(a, axis, "axis")?;
    let (outer, n, inner) = split_at_axis(a.shape(), axis);
    let mut shape = a.shape().to_vec();
    shape.remove(axis);
    let data = a.data();
    let mut out = Vec::with_capacity(outer * inner);
    let mut buf = Vec::with_capacity(n);
    for o in 0..outer {
        for i in 0..inner {
            buf.clear();
            buf.extend((0..n).map(|k| data[(o * n + k) * inner + i]));
            out.push(f(&buf));
        }
    }
    Array::new(shape, out)
}

/// Gathers `indices` along `axis` (keeping the axis).
pub(crate) fn select_axis(a: &Array, axis: usize, indices: &[usize]) -> Result<Array> {
    check_axis(a, axis, "axis")?;
    let (outer, n, inner) = split_at_axis(a.shape(), axis);
    if let Some(bad) = indices.iter().find(|&&k| k >= n) {
        return Err(Error::invalid_arg(
            "indices",
            format!("index {bad} out of range for a dimension of size {n}"),
        ));
    }
    let mut shape = a.shape().to_vec();
    shape[axis] = indices.len();
    let data = a.data();
    let mut out = Vec::with_capacity(outer * indices.len() * inner);
    for o in 0..outer {
        for &k in indices {
            out.extend_from_slice(&data[(o * n + k) * inner..(o * n + k + 1) * inner]);
        }
    }
    Array::new(shape, out)
}

/// Removes a size-1 `axis`.
pub(crate) fn squeeze_axis(a: Array, axis: usize) -> Result<Array> {
    check_axis(&a, axis, "axis")?;
    let mut shape = a.shape().to_vec();
    shape.remove(axis);
    Array::new(shape, a.into_data())
}

/// Python Inseq's `aggregate_contiguous`: every span of `spans` along `axis` is
/// replaced by `f` over it; positions outside spans are copied unchanged.
/// `spans` must be sorted and non-overlapping; no spans returns `a` unchanged.
pub fn aggregate_contiguous(
    a: &Array,
    spans: &[Span],
    f: &dyn Reduce,
    axis: usize,
) -> Result<Array> {
    if spans.is_empty() {
        return Ok(a.clone());
    }
    check_axis(a, axis, "aggregate axis")?;
    let (outer, n, inner) = split_at_axis(a.shape(), axis);
    // Groups along the axis: (start, end, aggregate?)
    let mut groups: Vec<(usize, usize, bool)> = Vec::new();
    let mut base = 0;
    for &(s, e) in spans {
        if s < base || e <= s || e > n {
            return Err(Error::invalid_arg(
                "spans",
                format!(
                    "span ({s}, {e}) is empty, out of order or beyond the dimension of size {n}"
                ),
            ));
        }
        groups.extend((base..s).map(|k| (k, k + 1, false)));
        groups.push((s, e, true));
        base = e;
    }
    groups.extend((base..n).map(|k| (k, k + 1, false)));
    let mut shape = a.shape().to_vec();
    shape[axis] = groups.len();
    let data = a.data();
    let mut out = vec![0f32; outer * groups.len() * inner];
    let mut buf = Vec::new();
    for o in 0..outer {
        for (g, &(s, e, agg)) in groups.iter().enumerate() {
            for i in 0..inner {
                let v = if agg {
                    buf.clear();
                    buf.extend((s..e).map(|k| data[(o * n + k) * inner + i]));
                    f.reduce(&buf)
                } else {
                    data[(o * n + s) * inner + i]
                };
                out[(o * groups.len() + g) * inner + i] = v;
            }
        }
    }
    Array::new(shape, out)
}

/// Elementwise `f(a, b)` of two arrays of the same shape.
pub(crate) fn zip_with(
    a: &Array,
    b: &Array,
    what: &str,
    f: impl Fn(f32, f32) -> f32,
) -> Result<Array> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch {
            what: what.to_string(),
            expected: a.shape().to_vec(),
            found: b.shape().to_vec(),
        });
    }
    Array::new(
        a.shape().to_vec(),
        a.data()
            .iter()
            .zip(b.data())
            .map(|(x, y)| f(*x, *y))
            .collect(),
    )
}

/// Concatenates arrays along axis 0 (they must agree on the other dimensions).
pub(crate) fn concat0(parts: &[Array], what: &str) -> Result<Array> {
    let Some(first) = parts.first() else {
        return Err(Error::invalid_arg(what, "nothing to concatenate"));
    };
    let rest = &first.shape()[1..];
    let mut rows = 0;
    let mut data = Vec::new();
    for p in parts {
        if p.ndim() == 0 || &p.shape()[1..] != rest {
            return Err(Error::ShapeMismatch {
                what: what.to_string(),
                expected: first.shape().to_vec(),
                found: p.shape().to_vec(),
            });
        }
        rows += p.shape()[0];
        data.extend_from_slice(p.data());
    }
    let mut shape = first.shape().to_vec();
    shape[0] = rows;
    Array::new(shape, data)
}

/// Rows `start..end` (axis 0) of `a`.
pub(crate) fn rows(a: &Array, start: usize, end: usize) -> Result<Array> {
    select_axis(a, 0, &(start..end).collect::<Vec<_>>())
}
