//! Python Inseq's `normalize` and `rescale` post-processing of aggregated scores.

use inseq_core::{Array, Error, Result};

fn joint_trailing(arrays: &[&mut Array]) -> Result<usize> {
    let mut trailing: Option<&[usize]> = None;
    for a in arrays {
        if a.ndim() == 0 {
            return Err(Error::invalid_arg(
                "attributions",
                "cannot normalize a scalar",
            ));
        }
        match trailing {
            None => trailing = Some(&a.shape()[1..]),
            Some(t) if t != &a.shape()[1..] => {
                return Err(Error::ShapeMismatch {
                    what: "source and target attributions (all but the first dimension)".into(),
                    expected: t.to_vec(),
                    found: a.shape()[1..].to_vec(),
                });
            }
            _ => {}
        }
    }
    Ok(trailing.map_or(0, |t| t.iter().product()))
}

/// Python Inseq's `normalize`: source and target scores are joined along the
/// token dimension (0) and divided by their L1 norm along it
/// (`torch.nn.functional.normalize(p=1, dim=0)`, NaN counted as 0 and kept as
/// NaN), so for every generated step the absolute scores sum to 1.
///
/// ```
/// use inseq_aggregate::normalize;
/// use inseq_core::Array;
/// let mut src = Array::new(vec![1, 2], vec![1.0, -2.0]).unwrap();
/// let mut tgt = Array::new(vec![2, 2], vec![3.0, 2.0, f32::NAN, 0.0]).unwrap();
/// normalize(Some(&mut src), Some(&mut tgt)).unwrap();
/// assert_eq!(src.data(), &[0.25, -0.5]);
/// assert_eq!(tgt.get(&[0, 0]), 0.75);
/// assert!(tgt.get(&[1, 0]).is_nan());
/// ```
pub fn normalize(source: Option<&mut Array>, target: Option<&mut Array>) -> Result<()> {
    let mut arrays: Vec<&mut Array> = source.into_iter().chain(target).collect();
    let inner = joint_trailing(&arrays)?;
    let mut norms = vec![0f32; inner];
    for a in arrays.iter() {
        for (i, v) in a.data().iter().enumerate() {
            if !v.is_nan() {
                norms[i % inner.max(1)] += v.abs();
            }
        }
    }
    for a in arrays.iter_mut() {
        for (i, v) in a.data_mut().iter_mut().enumerate() {
            *v /= norms[i % inner.max(1)].max(1e-12);
        }
    }
    Ok(())
}

/// Python Inseq's `rescale`: divides source and target scores by their largest
/// absolute value (NaN ignored), mapping them to `[-1, 1]`. All-zero scores are
/// left unchanged (Inseq would produce NaN).
///
/// ```
/// use inseq_aggregate::rescale;
/// use inseq_core::Array;
/// let mut tgt = Array::new(vec![2, 1], vec![2.0, -4.0]).unwrap();
/// rescale(None, Some(&mut tgt)).unwrap();
/// assert_eq!(tgt.data(), &[0.5, -1.0]);
/// ```
pub fn rescale(source: Option<&mut Array>, target: Option<&mut Array>) -> Result<()> {
    let mut arrays: Vec<&mut Array> = source.into_iter().chain(target).collect();
    let max = arrays.iter().map(|a| a.max_abs()).fold(0.0f32, f32::max);
    if max > 0.0 {
        for a in arrays.iter_mut() {
            a.data_mut().iter_mut().for_each(|v| *v /= max);
        }
    }
    Ok(())
}
