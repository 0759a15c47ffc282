//! Reading and writing the files Python Inseq 0.7.1 saves with
//! `FeatureAttributionOutput.save(...)` and loads with `inseq.load_attributions(...)`.
//!
//! The layout is JSON of the form
//! `{"__instance_type__": ["inseq.data.attribution", "FeatureAttributionOutput"], "attributes": {...}}`
//! where every tensor (attributions, step scores, sequence scores) is stored as
//! a base64 string of a safetensors buffer holding one tensor named
//! `attribution` (`F32`, or `F16`/`F8_E4M3` when saved with a lower
//! `scores_precision`), and the whole file may be gzip-compressed.
//!
//! Differences in representation with this project's [`AttributionOutput`]:
//!
//! * Python Inseq stores the prompt as `source` for decoder-only models; here
//!   `source` is `None` for them. On load, `source` becomes `None` when the
//!   sequence has no source attributions and its source tokens are a prefix of
//!   the target; on save, a `None` source is written as `target[..attr_pos_start]`.
//! * The Python class of each sequence (`GranularFeatureAttributionSequenceOutput`,
//!   `CoarseFeatureAttributionSequenceOutput`, ...) is not kept: it follows from
//!   the rank of the attribution arrays (see [`inseq_sequence_class`]), which is
//!   how it is chosen when writing.
//! * `step_attributions` (only present with `output_step_attributions=True`) are ignored.
//!
//! ```
//! use inseq_core::{Array, AttributionOutput, SequenceAttribution, TokenWithId};
//! use inseq_core::inseq_format::{from_inseq_json, to_inseq_json, ScorePrecision};
//! let seq = SequenceAttribution {
//!     source: None,
//!     target: vec![TokenWithId::new("Hello", 1), TokenWithId::new("Ġworld", 2)],
//!     source_attributions: None,
//!     target_attributions: Some(Array::new(vec![2, 1, 2], vec![0.5, -1.0, f32::NAN, f32::NAN]).unwrap()),
//!     step_scores: [("probability".to_string(), vec![0.25])].into_iter().collect(),
//!     sequence_scores: Default::default(),
//!     attr_pos_start: 1,
//!     attr_pos_end: 2,
//!     aggregations: vec![],
//! };
//! let out = AttributionOutput { sequence_attributions: vec![seq], info: Default::default() };
//! let text = to_inseq_json(&out, ScorePrecision::Float32).unwrap();
//! assert!(text.contains("GranularFeatureAttributionSequenceOutput"));
//! // (compared through JSON because NaN != NaN)
//! assert_eq!(from_inseq_json(&text).unwrap().to_json().unwrap(), out.to_json().unwrap());
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};

use crate::{
    Array, AttributionOutput, Error, Result, SequenceAttribution, TokenWithId, write_atomic,
};

const MODULE_ATTRIBUTION: &str = "inseq.data.attribution";
const MODULE_TYPING: &str = "inseq.utils.typing";
const TENSOR_NAME: &str = "attribution";

/// Numeric precision of the scores written to an Inseq file
/// (Python Inseq's `scores_precision` argument of `save`).
///
/// ```
/// use inseq_core::inseq_format::ScorePrecision;
/// assert_eq!(ScorePrecision::from_id("float16").unwrap(), ScorePrecision::Float16);
/// assert!(ScorePrecision::from_id("float64").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScorePrecision {
    /// 32-bit floats, lossless (the default).
    #[default]
    Float32,
    /// IEEE half precision (about 3 significant decimal digits).
    Float16,
    /// `float8_e4m3fn` as PyTorch stores it (experimental in Inseq; values above 448 become NaN).
    Float8,
}

impl ScorePrecision {
    /// Parses Inseq's ids `float32`, `float16`, `float8`.
    pub fn from_id(id: &str) -> Result<Self> {
        match id {
            "float32" => Ok(Self::Float32),
            "float16" => Ok(Self::Float16),
            "float8" => Ok(Self::Float8),
            _ => Err(Error::UnknownId {
                kind: "score precision",
                id: id.to_string(),
                available: vec!["float32".into(), "float16".into(), "float8".into()],
            }),
        }
    }

    /// The Inseq id of this precision.
    pub fn id(&self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Float16 => "float16",
            Self::Float8 => "float8",
        }
    }
}

/// Options of [`to_inseq_bytes`] / [`AttributionOutput::save_inseq`], mirroring
/// the arguments of Python Inseq's `FeatureAttributionOutput.save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InseqSaveOptions {
    /// Gzip the whole file (Python's `compress=True`; load it there with `decompress=True`).
    pub compress: bool,
    /// Precision of the stored scores.
    pub scores_precision: ScorePrecision,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidInput(format!("Inseq attribution file: {}", msg.into()))
}

// ---------------------------------------------------------------- floats

fn f32_to_f16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let mant = x & 0x007f_ffff;
    if exp == 0xff {
        // inf or NaN
        return sign | 0x7c00 | if mant != 0 { 0x0200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut out = (m >> shift) as u16;
        if rest > half || (rest == half && (out & 1) == 1) {
            out += 1;
        }
        return sign | out;
    }
    let mut out = ((e as u32) << 10 | (mant >> 13)) as u16;
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && (out & 1) == 1) {
        out += 1; // may carry into the exponent, which is correct rounding
    }
    sign | out
}

fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as f32;
    match exp {
        0 => sign * mant * 2f32.powi(-24),
        0x1f => {
            if mant == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        _ => sign * (1.0 + mant / 1024.0) * 2f32.powi(exp - 15),
    }
}

fn f8e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let mant = (b & 0x07) as f32;
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * mant / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + mant / 8.0) * 2f32.powi(exp - 7)
    }
}

fn f32_to_f8e4m3(v: f32) -> u8 {
    if v.is_nan() {
        return 0x7f;
    }
    let sign = if v.is_sign_negative() { 0x80u8 } else { 0 };
    let a = v.abs();
    if a >= 464.0 {
        return sign | 0x7f; // PyTorch's conversion is non-saturating: overflow is NaN
    }
    // Nearest of the 127 non-negative finite codes, ties to the even code.
    let mut best = 0u8;
    let mut best_err = f32::INFINITY;
    for code in 0u8..0x7f {
        let err = (f8e4m3_to_f32(code) - a).abs();
        if err < best_err || (err == best_err && code % 2 == 0) {
            best = code;
            best_err = err;
        }
    }
    sign | best
}

// ---------------------------------------------------------------- tensors

/// Encodes an array as Inseq does: a safetensors buffer with one tensor named
/// `attribution`, base64-encoded.
fn encode_tensor(shape: &[usize], data: &[f32], precision: ScorePrecision) -> Result<String> {
    use safetensors::tensor::{Dtype, TensorView};
    let (dtype, bytes): (Dtype, Vec<u8>) = match precision {
        ScorePrecision::Float32 => (
            Dtype::F32,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        ScorePrecision::Float16 => (
            Dtype::F16,
            data.iter()
                .flat_map(|v| f32_to_f16_bits(*v).to_le_bytes())
                .collect(),
        ),
        ScorePrecision::Float8 => (
            Dtype::F8_E4M3,
            data.iter().map(|v| f32_to_f8e4m3(*v)).collect(),
        ),
    };
    let view = TensorView::new(dtype, shape.to_vec(), &bytes)
        .map_err(|e| Error::Numerical(format!("cannot build safetensors view: {e}")))?;
    let buf = safetensors::serialize([(TENSOR_NAME, view)], None)
        .map_err(|e| Error::Numerical(format!("cannot serialize safetensors: {e}")))?;
    Ok(B64.encode(buf))
}

fn decode_safetensors(bytes: &[u8], what: &str) -> Result<Array> {
    use safetensors::tensor::Dtype;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| invalid(format!("{what}: invalid safetensors buffer: {e}")))?;
    let view = match st.tensor(TENSOR_NAME) {
        Ok(v) => v,
        Err(_) => {
            let names = st.names();
            if names.len() != 1 {
                return Err(invalid(format!(
                    "{what}: expected one tensor named `attribution`, found {names:?}"
                )));
            }
            st.tensor(names[0])
                .map_err(|e| invalid(format!("{what}: {e}")))?
        }
    };
    let raw = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        Dtype::F8_E4M3 => raw.iter().map(|b| f8e4m3_to_f32(*b)).collect(),
        other => {
            return Err(invalid(format!(
                "{what}: unsupported tensor dtype {other:?}"
            )));
        }
    };
    Array::new(view.shape().to_vec(), data)
}

/// Decodes a numpy array as json-tricks' `ndarray_encode` writes it
/// (`{"__ndarray__": ..., "dtype": ..., "shape": ...}`).
fn decode_ndarray(obj: &Map<String, Value>, what: &str) -> Result<Array> {
    let shape = ndarray_shape(obj, what)?;
    let dtype = obj
        .get("dtype")
        .and_then(Value::as_str)
        .unwrap_or("float32");
    match obj.get("__ndarray__") {
        Some(Value::String(s)) => {
            let bytes = ndarray_buffer_bytes(s, what)?;
            Array::new(shape, ndarray_values(&bytes, dtype, what)?)
        }
        Some(v @ Value::Array(_)) => {
            let a = Array::from_nested_json(v)?;
            Array::new(shape, a.into_data())
        }
        Some(v) if shape.is_empty() => {
            Ok(Array::full(vec![], v.as_f64().unwrap_or(f64::NAN) as f32))
        }
        _ => Err(invalid(format!("{what}: bad ndarray"))),
    }
}

/// The `shape` of a json-tricks ndarray; a missing shape means a scalar (`[]`).
fn ndarray_shape(obj: &Map<String, Value>, what: &str) -> Result<Vec<usize>> {
    obj.get("shape")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or(Some(vec![]))
        .ok_or_else(|| invalid(format!("{what}: bad ndarray shape")))
}

/// The raw bytes of a json-tricks buffer string: `b64:` then base64, or
/// `b64.gz:` then base64 of gzipped bytes.
fn ndarray_buffer_bytes(s: &str, what: &str) -> Result<Vec<u8>> {
    let (gz, body) = if let Some(b) = s.strip_prefix("b64.gz:") {
        (true, b)
    } else if let Some(b) = s.strip_prefix("b64:") {
        (false, b)
    } else {
        return Err(invalid(format!("{what}: unknown ndarray buffer header")));
    };
    let bytes = B64
        .decode(body)
        .map_err(|e| invalid(format!("{what}: bad base64: {e}")))?;
    if gz {
        gunzip(&bytes).map_err(|e| invalid(format!("{what}: bad gzip data: {e}")))
    } else {
        Ok(bytes)
    }
}

/// Little-endian values of the numpy `dtype` in `bytes`, as `f32`.
fn ndarray_values(bytes: &[u8], dtype: &str, what: &str) -> Result<Vec<f32>> {
    Ok(match dtype {
        "float32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "float64" => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        "float16" => bytes
            .chunks_exact(2)
            .map(|c| f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        "int64" => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        "int32" => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        other => {
            return Err(invalid(format!(
                "{what}: unsupported ndarray dtype {other}"
            )));
        }
    })
}

fn decode_tensor(v: &Value, what: &str) -> Result<Option<Array>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => {
            let bytes = B64
                .decode(s.trim())
                .map_err(|e| invalid(format!("{what}: bad base64: {e}")))?;
            decode_safetensors(&bytes, what).map(Some)
        }
        Value::Object(o) if o.contains_key("__ndarray__") => decode_ndarray(o, what).map(Some),
        Value::Array(_) => Array::from_nested_json(v).map(Some),
        _ => Err(invalid(format!(
            "{what}: expected a base64 safetensors string"
        ))),
    }
}

/// Replaces numpy arrays encoded by json-tricks inside free-form values (the
/// `info` dictionary) with nested lists.
fn plain_value(v: &Value) -> Value {
    match v {
        Value::Object(o) if o.contains_key("__ndarray__") => match decode_ndarray(o, "info") {
            Ok(a) if a.ndim() > 0 => a.to_nested_json(),
            Ok(a) => a
                .data()
                .first()
                .map(|x| Value::from(*x as f64))
                .unwrap_or(Value::Null),
            Err(_) => v.clone(),
        },
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), plain_value(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(plain_value).collect()),
        _ => v.clone(),
    }
}

// ---------------------------------------------------------------- json text

/// Python's `json` writes `NaN`, `Infinity` and `-Infinity` (not JSON):
/// replace them with `null` outside strings.
fn sanitize_python_json(text: &str) -> Cow<'_, str> {
    if !(text.contains("NaN") || text.contains("Infinity")) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        } else if let Some(tok) = ["-Infinity", "Infinity", "NaN"]
            .iter()
            .find(|t| rest.starts_with(**t))
        {
            out.push_str("null");
            rest = &rest[tok.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// A pretty formatter with 4-space indents that escapes non-ASCII characters,
/// producing the same text as Python's `json.dumps(..., indent=4)`.
struct PyFormatter(serde_json::ser::PrettyFormatter<'static>);

impl serde_json::ser::Formatter for PyFormatter {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
}

/// Rebuilds objects with their keys in sorted order (Python's `sort_keys=True`),
/// whatever `serde_json` map implementation is compiled in.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(o) => {
            let b: BTreeMap<String, Value> = o.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(b.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn instance(module: &str, class: &str, attributes: Value) -> Value {
    let mut m = Map::new();
    m.insert(
        "__instance_type__".into(),
        Value::Array(vec![module.into(), class.into()]),
    );
    m.insert("attributes".into(), attributes);
    Value::Object(m)
}

fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------- writing

/// The Python class Inseq uses for a sequence with these attributions:
/// `FeatureAttributionSequenceOutput` without attribution arrays (step scores
/// only), `CoarseFeatureAttributionSequenceOutput` for 2-D arrays (occlusion,
/// LIME, aggregated scores), `GranularFeatureAttributionSequenceOutput` for 3-D
/// arrays (gradient methods, one score per hidden unit) and
/// `MultiDimensionalFeatureAttributionSequenceOutput` for 4-D and larger ones
/// (attention: layers × heads).
///
/// ```
/// use inseq_core::{Array, SequenceAttribution};
/// use inseq_core::inseq_format::inseq_sequence_class;
/// let seq = SequenceAttribution {
///     source: None, target: vec![], source_attributions: None,
///     target_attributions: Some(Array::full(vec![0, 0, 4], 0.0)),
///     step_scores: Default::default(), sequence_scores: Default::default(),
///     attr_pos_start: 0, attr_pos_end: 0, aggregations: vec![],
/// };
/// assert_eq!(inseq_sequence_class(&seq), "GranularFeatureAttributionSequenceOutput");
/// ```
pub fn inseq_sequence_class(seq: &SequenceAttribution) -> &'static str {
    let ndim = seq
        .source_attributions
        .as_ref()
        .or(seq.target_attributions.as_ref())
        .map(Array::ndim);
    match ndim {
        None => "FeatureAttributionSequenceOutput",
        Some(0..=2) => "CoarseFeatureAttributionSequenceOutput",
        Some(3) => "GranularFeatureAttributionSequenceOutput",
        Some(_) => "MultiDimensionalFeatureAttributionSequenceOutput",
    }
}

fn tokens_value(tokens: &[TokenWithId]) -> Value {
    Value::Array(
        tokens
            .iter()
            .map(|t| {
                let mut a = Map::new();
                a.insert("id".into(), Value::from(t.id));
                a.insert("token".into(), Value::from(t.token.clone()));
                instance(MODULE_TYPING, "TokenWithId", Value::Object(a))
            })
            .collect(),
    )
}

fn sequence_value(seq: &SequenceAttribution, precision: ScorePrecision) -> Result<Value> {
    if seq.attr_pos_start > seq.attr_pos_end || seq.attr_pos_end > seq.target.len() {
        return Err(Error::invalid_arg(
            "attr_pos_start/attr_pos_end",
            format!(
                "[{}, {}) is not a range of the {} target tokens",
                seq.attr_pos_start,
                seq.attr_pos_end,
                seq.target.len()
            ),
        ));
    }
    let tensor = |a: &Option<Array>| -> Result<Value> {
        match a {
            None => Ok(Value::Null),
            Some(a) => Ok(Value::String(encode_tensor(
                a.shape(),
                a.data(),
                precision,
            )?)),
        }
    };
    let mut attrs = Map::new();
    attrs.insert("attr_pos_end".into(), Value::from(seq.attr_pos_end));
    attrs.insert("attr_pos_start".into(), Value::from(seq.attr_pos_start));
    let mut seq_scores = Map::new();
    for (k, v) in &seq.sequence_scores {
        seq_scores.insert(
            k.clone(),
            Value::String(encode_tensor(v.shape(), v.data(), precision)?),
        );
    }
    attrs.insert("sequence_scores".into(), Value::Object(seq_scores));
    let source = match &seq.source {
        Some(s) => s.as_slice(),
        None => &seq.target[..seq.attr_pos_start],
    };
    attrs.insert("source".into(), tokens_value(source));
    attrs.insert(
        "source_attributions".into(),
        tensor(&seq.source_attributions)?,
    );
    let mut step = Map::new();
    for (k, v) in &seq.step_scores {
        step.insert(
            k.clone(),
            Value::String(encode_tensor(&[v.len()], v, precision)?),
        );
    }
    attrs.insert("step_scores".into(), Value::Object(step));
    attrs.insert("target".into(), tokens_value(&seq.target));
    attrs.insert(
        "target_attributions".into(),
        tensor(&seq.target_attributions)?,
    );
    Ok(instance(
        MODULE_ATTRIBUTION,
        inseq_sequence_class(seq),
        Value::Object(attrs),
    ))
}

/// Serializes `out` to the JSON text Python Inseq's `save` writes (4-space
/// indent, sorted keys, ASCII-escaped strings, tensors as base64 safetensors).
pub fn to_inseq_json(out: &AttributionOutput, precision: ScorePrecision) -> Result<String> {
    let seqs = out
        .sequence_attributions
        .iter()
        .map(|s| sequence_value(s, precision))
        .collect::<Result<Vec<_>>>()?;
    let mut attrs = Map::new();
    attrs.insert(
        "info".into(),
        Value::Object(
            out.info
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
    );
    attrs.insert("sequence_attributions".into(), Value::Array(seqs));
    attrs.insert("step_attributions".into(), Value::Null);
    let root = sorted(instance(
        MODULE_ATTRIBUTION,
        "FeatureAttributionOutput",
        Value::Object(attrs),
    ));
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut buf,
        PyFormatter(serde_json::ser::PrettyFormatter::with_indent(b"    ")),
    );
    serde::Serialize::serialize(&root, &mut ser)?;
    String::from_utf8(buf).map_err(|e| Error::InvalidInput(format!("non-UTF-8 JSON output: {e}")))
}

/// Serializes `out` to the bytes of an Inseq file: the JSON of
/// [`to_inseq_json`], gzip-compressed (level 5, no timestamp, as Inseq does)
/// when `opts.compress` is set.
pub fn to_inseq_bytes(out: &AttributionOutput, opts: &InseqSaveOptions) -> Result<Vec<u8>> {
    let text = to_inseq_json(out, opts.scores_precision)?;
    if !opts.compress {
        return Ok(text.into_bytes());
    }
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(5));
    enc.write_all(text.as_bytes())
        .and_then(|_| enc.finish())
        .map_err(|e| Error::InvalidInput(format!("gzip compression failed: {e}")))
}

// ---------------------------------------------------------------- reading

fn class_name(v: &Value) -> Option<&str> {
    v.get("__instance_type__")?.as_array()?.get(1)?.as_str()
}

fn attributes(v: &Value) -> &Value {
    v.get("attributes").unwrap_or(v)
}

fn parse_tokens(v: Option<&Value>, what: &str) -> Result<Option<Vec<TokenWithId>>> {
    let items = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid(format!("{what} must be a list of tokens"))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let a = attributes(t);
            let token = a.get("token").and_then(Value::as_str);
            let id = a.get("id").and_then(Value::as_i64);
            match (token, id) {
                (Some(token), Some(id)) => Ok(TokenWithId::new(token, id)),
                _ => Err(invalid(format!("{what}[{i}] is not a TokenWithId"))),
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn parse_usize(v: Option<&Value>, what: &str) -> Result<Option<usize>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| invalid(format!("{what} must be a non-negative integer"))),
    }
}

/// `sequence_attributions[index].field`, how errors name a field of sequence `index`.
fn sequence_field(index: usize, field: &str) -> String {
    format!("sequence_attributions[{index}].{field}")
}

/// The attributes of sequence `index`, checked to be an object of the expected class.
fn sequence_attributes(v: &Value, index: usize) -> Result<&Value> {
    let here = sequence_field(index, "");
    if let Some(name) = class_name(v)
        && !name.ends_with("FeatureAttributionSequenceOutput")
    {
        return Err(invalid(format!("{here} has unexpected type {name}")));
    }
    let a = attributes(v);
    if !a.is_object() {
        return Err(invalid(format!("{here} is not an object")));
    }
    Ok(a)
}

/// The tensors of the object `a[key]` (if any) by name, each checked by
/// `check` as it is read; `null` ones are skipped.
fn named_tensors<T>(
    a: &Value,
    key: &str,
    index: usize,
    check: impl Fn(&str, Array) -> Result<T>,
) -> Result<BTreeMap<String, T>> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(m)) = a.get(key) {
        for (k, v) in m {
            let what = sequence_field(index, &format!("{key}.{k}"));
            if let Some(t) = decode_tensor(v, &what)? {
                out.insert(k.clone(), check(&what, t)?);
            }
        }
    }
    Ok(out)
}

/// The step scores of sequence `index`, one value per generated step each.
fn parse_step_scores(
    a: &Value,
    index: usize,
    n_steps: usize,
) -> Result<BTreeMap<String, Vec<f32>>> {
    named_tensors(a, "step_scores", index, |what, t| {
        if t.data().len() != n_steps {
            return Err(invalid(format!(
                "{what} has {} values for {n_steps} generated steps",
                t.data().len()
            )));
        }
        Ok(t.into_data())
    })
}

/// Fails unless `arr` (if any) is at least 2-D with shape `[rows, n_steps, ...]`.
fn check_attribution_shape(
    arr: &Option<Array>,
    rows: usize,
    n_steps: usize,
    what: String,
) -> Result<()> {
    if let Some(arr) = arr
        && (arr.ndim() < 2 || arr.shape()[0] != rows || arr.shape()[1] != n_steps)
    {
        return Err(Error::ShapeMismatch {
            what,
            expected: vec![rows, n_steps],
            found: arr.shape().to_vec(),
        });
    }
    Ok(())
}

/// Decoder-only models: Inseq stores the prompt as source; this project uses `None`.
fn drop_prompt_source(
    source: Option<Vec<TokenWithId>>,
    target: &[TokenWithId],
    has_source_attributions: bool,
) -> Option<Vec<TokenWithId>> {
    match source {
        Some(s)
            if !has_source_attributions
                && s.len() <= target.len()
                && target[..s.len()] == s[..] =>
        {
            None
        }
        other => other,
    }
}

fn parse_sequence(v: &Value, index: usize) -> Result<SequenceAttribution> {
    let w = |field: &str| sequence_field(index, field);
    let a = sequence_attributes(v, index)?;
    let target = parse_tokens(a.get("target"), &w("target"))?
        .ok_or_else(|| invalid(format!("{} is missing", w("target"))))?;
    let source = parse_tokens(a.get("source"), &w("source"))?;
    let source_attributions = decode_tensor(
        a.get("source_attributions").unwrap_or(&Value::Null),
        &w("source_attributions"),
    )?;
    let target_attributions = decode_tensor(
        a.get("target_attributions").unwrap_or(&Value::Null),
        &w("target_attributions"),
    )?;
    let attr_pos_start = parse_usize(a.get("attr_pos_start"), &w("attr_pos_start"))?.unwrap_or(0);
    let attr_pos_end = parse_usize(a.get("attr_pos_end"), &w("attr_pos_end"))?
        .unwrap_or(target.len())
        .min(target.len());
    if attr_pos_start > attr_pos_end {
        return Err(invalid(format!(
            "{index}: attr_pos_start {attr_pos_start} is after attr_pos_end {attr_pos_end}"
        )));
    }
    let n_steps = attr_pos_end - attr_pos_start;
    let step_scores = parse_step_scores(a, index, n_steps)?;
    let sequence_scores = named_tensors(a, "sequence_scores", index, |_, t| Ok(t))?;
    if source_attributions.is_some() {
        let rows = source.as_ref().map_or(0, Vec::len);
        check_attribution_shape(
            &source_attributions,
            rows,
            n_steps,
            w("source_attributions"),
        )?;
    }
    check_attribution_shape(
        &target_attributions,
        attr_pos_end.min(target.len()),
        n_steps,
        w("target_attributions"),
    )?;
    Ok(SequenceAttribution {
        source: drop_prompt_source(source, &target, source_attributions.is_some()),
        target,
        source_attributions,
        target_attributions,
        step_scores,
        sequence_scores,
        attr_pos_start,
        attr_pos_end,
        aggregations: vec![],
    })
}

/// Parses JSON as Python's `json` module writes it, where `NaN`, `Infinity`
/// and `-Infinity` may appear as bare values; they are read as `null`.
///
/// ```
/// let v = inseq_core::inseq_format::parse_python_json(r#"{"x": [1.5, NaN]}"#).unwrap();
/// assert!(v["x"][1].is_null());
/// ```
pub fn parse_python_json(text: &str) -> Result<Value> {
    Ok(serde_json::from_str(&sanitize_python_json(text))?)
}

/// Parses the JSON text of an Inseq file (see the module documentation for how
/// fields map onto [`AttributionOutput`]).
pub fn from_inseq_json(text: &str) -> Result<AttributionOutput> {
    let root = parse_python_json(text)?;
    match class_name(&root) {
        Some("FeatureAttributionOutput") => {}
        Some(other) => {
            return Err(invalid(format!(
                "top-level object is a {other}, not a FeatureAttributionOutput"
            )));
        }
        None => {
            return Err(invalid(
                "missing `__instance_type__`: not a file saved by Inseq's FeatureAttributionOutput.save \
                 (files saved with use_primitives=True cannot be loaded)",
            ));
        }
    }
    let a = attributes(&root);
    let seqs = a
        .get("sequence_attributions")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("missing `sequence_attributions` list"))?;
    let sequence_attributions = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| parse_sequence(s, i))
        .collect::<Result<Vec<_>>>()?;
    let info = match a.get("info").map(plain_value) {
        Some(Value::Object(m)) => m.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    Ok(AttributionOutput {
        sequence_attributions,
        info,
    })
}

/// Parses the bytes of an Inseq file, gzip-compressed or not (detected from
/// the gzip magic number, so Python's `decompress=` flag is not needed).
pub fn from_inseq_bytes(bytes: &[u8]) -> Result<AttributionOutput> {
    let owned;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        owned = gunzip(bytes).map_err(|e| invalid(format!("cannot decompress gzip data: {e}")))?;
        &owned[..]
    } else {
        bytes
    };
    let text = std::str::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8 text: {e}")))?;
    from_inseq_json(text)
}

impl AttributionOutput {
    /// Saves in Python Inseq 0.7.1's file format, loadable there with
    /// `inseq.FeatureAttributionOutput.load(path)` (add `decompress=True` when
    /// `opts.compress` is set). The write is atomic, like [`AttributionOutput::save`].
    ///
    /// ```
    /// use inseq_core::AttributionOutput;
    /// use inseq_core::inseq_format::InseqSaveOptions;
    /// let out = AttributionOutput { sequence_attributions: vec![], info: Default::default() };
    /// let path = std::env::temp_dir().join("inseq-core-doc.inseq.json.gz");
    /// out.save_inseq(&path, &InseqSaveOptions { compress: true, ..Default::default() }).unwrap();
    /// assert_eq!(AttributionOutput::load_inseq(&path).unwrap(), out);
    /// ```
    pub fn save_inseq(&self, path: impl AsRef<Path>, opts: &InseqSaveOptions) -> Result<()> {
        write_atomic(path.as_ref(), &to_inseq_bytes(self, opts)?)
    }

    /// Loads a file saved by Python Inseq (`FeatureAttributionOutput.save`) or by
    /// [`AttributionOutput::save_inseq`], compressed or not.
    pub fn load_inseq(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        from_inseq_bytes(&bytes).map_err(|e| match e {
            Error::InvalidInput(msg) => Error::InvalidInput(format!("{}: {msg}", path.display())),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trip_and_rounding() {
        for v in [
            0.0f32,
            1.0,
            -2.5,
            65504.0,
            6.1035156e-5,
            5.9604645e-8,
            0.1,
            1e-3,
        ] {
            let back = f16_bits_to_f32(f32_to_f16_bits(v));
            // Round to nearest: relative 2^-11 ~ 4.9e-4 for normal values, half the subnormal
            // spacing 2^-24 ~ 6e-8 below them.
            assert!((back - v).abs() <= v.abs() * 1e-3 + 6e-8, "{v} -> {back}");
        }
        assert!(f16_bits_to_f32(f32_to_f16_bits(f32::NAN)).is_nan());
        assert_eq!(f16_bits_to_f32(f32_to_f16_bits(1e6)), f32::INFINITY);
    }

    #[test]
    fn f8_codes() {
        assert_eq!(f8e4m3_to_f32(0x7e), 448.0);
        assert_eq!(f32_to_f8e4m3(1.0), 0x38);
        assert!(f8e4m3_to_f32(f32_to_f8e4m3(1000.0)).is_nan());
        assert_eq!(f8e4m3_to_f32(f32_to_f8e4m3(-0.5)), -0.5);
    }

    #[test]
    fn python_nan_literals() {
        let s = sanitize_python_json(r#"{"a": NaN, "b": "NaN", "c": [-Infinity, Infinity]}"#);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["a"], Value::Null);
        assert_eq!(v["b"], "NaN");
        assert_eq!(v["c"][0], Value::Null);
    }
}
