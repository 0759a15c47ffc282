//! A minimal, safe unpickler for the subset `torch.save` writes for a state dict: dicts and
//! `OrderedDict`s of tensors rebuilt by `torch._utils._rebuild_tensor_v2` (or
//! `_rebuild_parameter`) from persistent storages. No code runs: the only globals are the ones
//! listed in [`Global`]; anything else is an error naming it.

use std::collections::HashMap;

/// Why a pickle could not be read (the caller names the file).
pub(crate) type PickleError = String;

/// The globals a torch checkpoint may name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch.<Name>Storage`: the element type.
    Storage(String),
}

/// A storage element type and its width in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DType {
    F32,
    F16,
    BF16,
    F64,
    /// Any other storage (ints, bools...): readable as structure, refused as a weight.
    Other(usize),
}

impl DType {
    fn from_storage(name: &str) -> Self {
        match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::Other(8),
            "IntStorage" => Self::Other(4),
            "ShortStorage" => Self::Other(2),
            _ => Self::Other(1),
        }
    }

    /// Bytes per element.
    pub(crate) fn width(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::F64 => 8,
            Self::Other(w) => w,
        }
    }
}

/// A tensor as the pickle describes it: a view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    /// The storage's key (its file `data/<key>` in the archive).
    pub storage: String,
    pub dtype: DType,
    /// Elements in the storage.
    pub storage_len: usize,
    /// Offset, shape and strides in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

/// A pickled value of the supported subset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage {
        key: String,
        dtype: DType,
        len: usize,
    },
    Tensor(TensorRef),
    Mark,
}

fn as_usize(v: &Value, what: &str) -> Result<usize, PickleError> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} is negative ({i})")),
        other => Err(format!("{what} is not an integer: {other:?}")),
    }
}

fn usize_list(v: &Value, what: &str) -> Result<Vec<usize>, PickleError> {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            items.iter().map(|i| as_usize(i, what)).collect()
        }
        other => Err(format!("{what} is not a tuple: {other:?}")),
    }
}

/// `torch.FloatStorage` etc. from a `GLOBAL module name` pair.
fn global(module: &str, name: &str) -> Result<Global, PickleError> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", s) if s.ends_with("Storage") => Ok(Global::Storage(s.to_string())),
        _ => Err(format!(
            "unsupported pickle global `{module}.{name}` (only tensors, dicts and OrderedDicts are read)"
        )),
    }
}

/// `('storage', torch.XStorage, key, location, numel)` from a persistent id.
fn storage(pid: Value) -> Result<Value, PickleError> {
    let Value::Tuple(items) = pid else {
        return Err(format!("unsupported persistent id {pid:?}"));
    };
    match items.as_slice() {
        [
            Value::Str(tag),
            Value::Global(Global::Storage(kind)),
            Value::Str(key),
            _,
            numel,
        ] if tag == "storage" => Ok(Value::Storage {
            key: key.clone(),
            dtype: DType::from_storage(kind),
            len: as_usize(numel, "storage size")?,
        }),
        _ => Err(format!("unsupported persistent id {items:?}")),
    }
}

/// Calls an allowed global on its arguments.
fn reduce(callable: Value, args: Value) -> Result<Value, PickleError> {
    let Value::Tuple(args) = args else {
        return Err("REDUCE arguments are not a tuple".into());
    };
    match (callable, args.as_slice()) {
        (Value::Global(Global::OrderedDict), []) => Ok(Value::Dict(Vec::new())),
        (Value::Global(Global::RebuildParameter), [tensor @ Value::Tensor(_), ..]) => {
            Ok(tensor.clone())
        }
        (Value::Global(Global::RebuildTensor), [storage, offset, size, stride, ..]) => {
            let Value::Storage { key, dtype, len } = storage else {
                return Err("_rebuild_tensor_v2 without a storage".into());
            };
            let (shape, strides) = (
                usize_list(size, "tensor size")?,
                usize_list(stride, "tensor stride")?,
            );
            if shape.len() != strides.len() {
                return Err(format!(
                    "tensor size {shape:?} and stride {strides:?} differ in rank"
                ));
            }
            Ok(Value::Tensor(TensorRef {
                storage: key.clone(),
                dtype: *dtype,
                storage_len: *len,
                offset: as_usize(offset, "storage offset")?,
                shape,
                strides,
            }))
        }
        (c, a) => Err(format!("unsupported call {c:?} with {} arguments", a.len())),
    }
}

/// Reads a little-endian integer of `N` bytes at `*at`, advancing it.
fn take<'a>(data: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], PickleError> {
    let s = at
        .checked_add(n)
        .and_then(|end| data.get(*at..end))
        .ok_or_else(|| format!("pickle cut short at byte {at}"))?;
    *at += n;
    Ok(s)
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// Pops values down to the last mark.
fn pop_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>, PickleError> {
    let at = stack
        .iter()
        .rposition(|v| *v == Value::Mark)
        .ok_or("pickle MARK missing")?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Ok(items)
}

fn pop(stack: &mut Vec<Value>) -> Result<Value, PickleError> {
    stack
        .pop()
        .ok_or_else(|| "pickle stack underflow".to_string())
}

/// Adds `(key, value)` pairs to the dict on top of the stack.
fn set_items(stack: &mut [Value], items: Vec<Value>) -> Result<(), PickleError> {
    if !items.len().is_multiple_of(2) {
        return Err("SETITEMS with an odd number of values".into());
    }
    let Some(Value::Dict(d)) = stack.last_mut() else {
        return Err("SETITEM(S) on something that is not a dict".into());
    };
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        d.push((k, v));
    }
    Ok(())
}

/// Number of nodes of a value (what cloning it costs).
fn nodes(v: &Value) -> usize {
    match v {
        Value::Tuple(items) | Value::List(items) => 1 + items.iter().map(nodes).sum::<usize>(),
        Value::Dict(items) => {
            1 + items
                .iter()
                .map(|(k, v)| nodes(k) + nodes(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// Unpickles `data` (protocols 2 to 5, the subset described in the module docs).
///
/// The memo holds copies, not shared references: a memoized container changed afterwards is
/// recalled as it was (torch's state dicts never do that). Copies are budgeted so that a hostile
/// pickle cannot blow up memory by recalling containers into themselves.
pub(crate) fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    let mut at = 0usize;
    let mut copy_budget = 16 * data.len() + 1_000_000;
    let mut spend = |v: &Value| -> Result<(), PickleError> {
        copy_budget = copy_budget
            .checked_sub(nodes(v))
            .ok_or("the pickle recalls more values than a checkpoint holds")?;
        Ok(())
    };
    loop {
        let op = take(data, &mut at, 1)?[0];
        match op {
            0x80 => drop(take(data, &mut at, 1)?), // PROTO
            0x95 => drop(take(data, &mut at, 8)?), // FRAME
            b'.' => return pop(&mut stack),        // STOP
            b'(' => stack.push(Value::Mark),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 | 0x89 => stack.push(Value::Bool(op == 0x88)),
            b'K' => stack.push(Value::Int(le(take(data, &mut at, 1)?) as i64)),
            b'M' => stack.push(Value::Int(le(take(data, &mut at, 2)?) as i64)),
            b'J' => stack.push(Value::Int(i64::from(
                le(take(data, &mut at, 4)?) as u32 as i32
            ))),
            0x8a => {
                // LONG1: a little-endian two's-complement integer of n bytes.
                let n = usize::from(take(data, &mut at, 1)?[0]);
                let bytes = take(data, &mut at, n)?;
                if n > 8 {
                    return Err("integer wider than 64 bits".into());
                }
                let shift = 64 - 8 * n as u32;
                let v = if n == 0 {
                    0
                } else {
                    ((le(bytes) << shift) as i64) >> shift
                };
                stack.push(Value::Int(v));
            }
            b'G' => {
                let b = take(data, &mut at, 8)?;
                stack.push(Value::Float(f64::from_be_bytes(
                    b.try_into().expect("8 bytes"),
                )));
            }
            b'X' | 0x8c | 0x8d | b'B' | b'C' | 0x8e => {
                let width = match op {
                    0x8c | b'C' => 1,
                    0x8d | 0x8e => 8,
                    _ => 4,
                };
                let n = usize::try_from(le(take(data, &mut at, width)?))
                    .map_err(|_| "string length")?;
                let bytes = take(data, &mut at, n)?.to_vec();
                stack.push(if matches!(op, b'B' | b'C' | 0x8e) {
                    Value::Bytes(bytes)
                } else {
                    Value::Str(String::from_utf8(bytes).map_err(|_| "string is not UTF-8")?)
                });
            }
            b'c' => {
                let mut line = || -> Result<String, PickleError> {
                    let rest = data.get(at..).unwrap_or_default();
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or("GLOBAL line cut short")?;
                    at += n + 1;
                    Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
                };
                let (module, name) = (line()?, line()?);
                stack.push(Value::Global(global(&module, &name)?));
            }
            0x93 => {
                let (name, module) = (pop(&mut stack)?, pop(&mut stack)?);
                let (Value::Str(m), Value::Str(n)) = (module, name) else {
                    return Err("STACK_GLOBAL without strings".into());
                };
                stack.push(Value::Global(global(&m, &n)?));
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => le(take(data, &mut at, 1)?),
                    b'r' => le(take(data, &mut at, 4)?),
                    _ => memo.len() as u64,
                };
                let top = stack.last().ok_or("memoizing an empty stack")?;
                spend(top)?;
                memo.insert(key, top.clone());
            }
            b'h' | b'j' => {
                let key = le(take(data, &mut at, if op == b'h' { 1 } else { 4 })?);
                let value = memo
                    .get(&key)
                    .ok_or_else(|| format!("memo key {key} unset"))?;
                spend(value)?;
                stack.push(value.clone());
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let items =
                    stack.split_off(stack.len().checked_sub(n).ok_or("pickle stack underflow")?);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Dict(Vec::new()));
                set_items(&mut stack, items)?;
            }
            b'a' | b'e' => {
                let items = if op == b'a' {
                    vec![pop(&mut stack)?]
                } else {
                    pop_mark(&mut stack)?
                };
                let Some(Value::List(l)) = stack.last_mut() else {
                    return Err("APPEND on something that is not a list".into());
                };
                l.extend(items);
            }
            b's' => {
                let (v, k) = (pop(&mut stack)?, pop(&mut stack)?);
                set_items(&mut stack, vec![k, v])?;
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                set_items(&mut stack, items)?;
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(storage(pid)?);
            }
            b'R' => {
                let (args, callable) = (pop(&mut stack)?, pop(&mut stack)?);
                stack.push(reduce(callable, args)?);
            }
            // BUILD: the state of an OrderedDict (its `_metadata`) is not needed.
            b'b' => drop(pop(&mut stack)?),
            b'0' => drop(pop(&mut stack)?),
            b'1' => drop(pop_mark(&mut stack)?),
            b'2' => {
                let top = stack.last().ok_or("DUP on an empty stack")?;
                spend(top)?;
                stack.push(top.clone());
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}",
                    at - 1
                ));
            }
        }
    }
}
