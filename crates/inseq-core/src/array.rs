//! A small dense n-dimensional `f32` array used to carry attribution scores
//! between crates without depending on a tensor backend.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// A dense row-major `f32` array. `NaN` marks positions that have no score
/// (for example target tokens that were not generated yet at a given step).
///
/// ```
/// use inseq_core::Array;
/// let a = Array::new(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
/// assert_eq!(a.get(&[1, 2]), 6.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Array {
    /// Creates an array, checking that `data` holds `shape.iter().product()` values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        // Checked: shapes read from files may claim products that overflow.
        let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if expected != Some(data.len()) {
            return Err(Error::ShapeMismatch {
                what: "array data".into(),
                expected: shape,
                found: vec![data.len()],
            });
        }
        Ok(Self { shape, data })
    }

    /// An array of the given shape filled with `value`.
    pub fn full(shape: Vec<usize>, value: f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![value; n],
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// The flat row-major data.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable flat data.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the array, returning its flat data.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.shape.len()];
        for i in (0..self.shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.shape[i + 1];
        }
        strides
    }

    fn offset(&self, index: &[usize]) -> usize {
        assert_eq!(index.len(), self.shape.len(), "index rank mismatch");
        self.strides()
            .iter()
            .zip(index)
            .zip(&self.shape)
            .map(|((s, i), d)| {
                assert!(i < d, "index {i} out of bounds for dim of size {d}");
                s * i
            })
            .sum()
    }

    /// The value at `index` (one entry per dimension).
    pub fn get(&self, index: &[usize]) -> f32 {
        self.data[self.offset(index)]
    }

    /// Sets the value at `index`.
    pub fn set(&mut self, index: &[usize], value: f32) {
        let o = self.offset(index);
        self.data[o] = value;
    }

    /// Reduces the last dimension with `f`, returning an array of rank `ndim - 1`.
    pub fn reduce_last(&self, f: impl Fn(&[f32]) -> f32) -> Array {
        let last = *self.shape.last().unwrap_or(&1);
        let shape = self.shape[..self.shape.len().saturating_sub(1)].to_vec();
        let data = if last == 0 {
            vec![f32::NAN; shape.iter().product()]
        } else {
            self.data.chunks(last).map(f).collect()
        };
        Array { shape, data }
    }

    /// Largest absolute finite value (0 when there is none).
    pub fn max_abs(&self) -> f32 {
        self.data
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f32, |m, v| m.max(v.abs()))
    }

    /// Converts to nested JSON lists (NaN written as `null`), the layout Python Inseq uses.
    pub fn to_nested_json(&self) -> serde_json::Value {
        fn rec(shape: &[usize], data: &[f32]) -> serde_json::Value {
            if shape.is_empty() {
                return float_to_json(data[0]);
            }
            let inner: usize = shape[1..].iter().product();
            serde_json::Value::Array(
                (0..shape[0])
                    .map(|i| rec(&shape[1..], &data[i * inner..(i + 1) * inner]))
                    .collect(),
            )
        }
        rec(&self.shape, &self.data)
    }

    /// Parses nested JSON lists of numbers (`null` read as NaN) into an array.
    pub fn from_nested_json(value: &serde_json::Value) -> Result<Self> {
        let mut shape = Vec::new();
        let mut cur = value;
        while let serde_json::Value::Array(items) = cur {
            shape.push(items.len());
            match items.first() {
                Some(first) => cur = first,
                None => break,
            }
        }
        // Not preallocated from `shape`: it is read from the first elements only
        // and a ragged input may claim a product far beyond its real size.
        let mut data = Vec::new();
        fn flatten(
            v: &serde_json::Value,
            depth: usize,
            shape: &[usize],
            out: &mut Vec<f32>,
        ) -> Result<()> {
            match v {
                serde_json::Value::Array(items) => {
                    if depth >= shape.len() || items.len() != shape[depth] {
                        return Err(Error::invalid_arg("array", "ragged nested list"));
                    }
                    items
                        .iter()
                        .try_for_each(|i| flatten(i, depth + 1, shape, out))
                }
                serde_json::Value::Null if depth == shape.len() => {
                    out.push(f32::NAN);
                    Ok(())
                }
                serde_json::Value::Number(n) if depth == shape.len() => {
                    out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
                    Ok(())
                }
                _ => Err(Error::invalid_arg(
                    "array",
                    "expected nested lists of numbers",
                )),
            }
        }
        flatten(value, 0, &shape, &mut data)?;
        Array::new(shape, data)
    }
}

fn float_to_json(v: f32) -> serde_json::Value {
    if v.is_finite() {
        serde_json::Value::from(v as f64)
    } else {
        serde_json::Value::Null
    }
}

#[derive(Serialize, Deserialize)]
struct ArrayRepr {
    shape: Vec<usize>,
    data: Vec<Option<f32>>,
}

impl Serialize for Array {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ArrayRepr {
            shape: self.shape.clone(),
            data: self
                .data
                .iter()
                .map(|v| v.is_finite().then_some(*v))
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Array {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let repr = ArrayRepr::deserialize(d)?;
        let data = repr
            .data
            .into_iter()
            .map(|v| v.unwrap_or(f32::NAN))
            .collect();
        Array::new(repr.shape, data).map_err(serde::de::Error::custom)
    }
}
