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
    /// An integer wider than 64 bits (little-endian two's complement), e.g. the legacy magic.
    BigInt(Vec<u8>),
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
    // The legacy format adds a sixth element, the view metadata (None).
    let items = match items.as_slice() {
        [head @ .., Value::None] if items.len() == 6 => head,
        all => all,
    };
    match items {
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

/// Reads `n` bytes at `*at`, advancing it.
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

/// The unpickler's state: input, position, stack and memo.
///
/// The memo holds copies, not shared references: a memoized container changed afterwards is
/// recalled as it was (torch's state dicts never do that). Copies are budgeted so that a hostile
/// pickle cannot blow up memory by recalling containers into themselves.
struct Machine<'a> {
    data: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    memo: HashMap<u64, Value>,
    copy_budget: usize,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        take(self.data, &mut self.at, n)
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }

    /// Pops values down to the last mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let at = self
            .stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    /// Charges a copy of `n` nodes to the copy budget (before making it).
    fn charge(&mut self, n: usize) -> Result<(), PickleError> {
        self.copy_budget = self
            .copy_budget
            .checked_sub(n)
            .ok_or("the pickle recalls more values than a checkpoint holds")?;
        Ok(())
    }

    /// A copy of the top of the stack, charged to the copy budget.
    fn copy_top(&mut self) -> Result<Value, PickleError> {
        let n = nodes(self.stack.last().ok_or("pickle stack underflow")?);
        self.charge(n)?;
        Ok(self.stack.last().expect("checked above").clone())
    }

    /// The value pushed by a literal opcode (numbers, strings, empty containers), if `op` is one.
    fn literal(&mut self, op: u8) -> Result<Option<Value>, PickleError> {
        Ok(Some(match op {
            b'(' => Value::Mark,
            b'}' => Value::Dict(Vec::new()),
            b']' => Value::List(Vec::new()),
            b')' => Value::Tuple(Vec::new()),
            b'N' => Value::None,
            0x88 | 0x89 => Value::Bool(op == 0x88),
            b'K' => Value::Int(le(self.take(1)?) as i64),
            b'M' => Value::Int(le(self.take(2)?) as i64),
            b'J' => Value::Int(i64::from(le(self.take(4)?) as u32 as i32)),
            0x8a => {
                // LONG1: a little-endian two's-complement integer of n bytes.
                let n = usize::from(self.take(1)?[0]);
                let bytes = self.take(n)?;
                if n > 8 {
                    return Ok(Some(Value::BigInt(bytes.to_vec())));
                }
                let shift = 64 - 8 * n as u32;
                Value::Int(if n == 0 {
                    0
                } else {
                    ((le(bytes) << shift) as i64) >> shift
                })
            }
            b'G' => Value::Float(f64::from_be_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            b'X' | 0x8c | 0x8d | b'B' | b'C' | 0x8e => {
                let width = match op {
                    0x8c | b'C' => 1,
                    0x8d | 0x8e => 8,
                    _ => 4,
                };
                let n = usize::try_from(le(self.take(width)?)).map_err(|_| "string length")?;
                let bytes = self.take(n)?.to_vec();
                if matches!(op, b'B' | b'C' | 0x8e) {
                    Value::Bytes(bytes)
                } else {
                    Value::Str(String::from_utf8(bytes).map_err(|_| "string is not UTF-8")?)
                }
            }
            _ => return Ok(None),
        }))
    }

    /// Adds `(key, value)` pairs to the dict on top of the stack.
    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        let Some(Value::Dict(d)) = self.stack.last_mut() else {
            return Err("SETITEM(S) on something that is not a dict".into());
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    /// Builds or fills a container (tuples, lists, dicts); false if `op` is not such an opcode.
    fn container(&mut self, op: u8) -> Result<bool, PickleError> {
        match op {
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let at = self
                    .stack
                    .len()
                    .checked_sub(n)
                    .ok_or("pickle stack underflow")?;
                let items = self.stack.split_off(at);
                self.stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(items));
            }
            b'd' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Dict(Vec::new()));
                self.set_items(items)?;
            }
            b'a' | b'e' => {
                let items = if op == b'a' {
                    vec![self.pop()?]
                } else {
                    self.pop_mark()?
                };
                let Some(Value::List(l)) = self.stack.last_mut() else {
                    return Err("APPEND on something that is not a list".into());
                };
                l.extend(items);
            }
            b's' => {
                let (v, k) = (self.pop()?, self.pop()?);
                self.set_items(vec![k, v])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Memo and stack-copy opcodes; false if `op` is not one.
    fn memo_op(&mut self, op: u8) -> Result<bool, PickleError> {
        match op {
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => le(self.take(1)?),
                    b'r' => le(self.take(4)?),
                    _ => self.memo.len() as u64,
                };
                let top = self.copy_top()?;
                self.memo.insert(key, top);
            }
            b'h' | b'j' => {
                let key = le(self.take(if op == b'h' { 1 } else { 4 })?);
                let n = nodes(
                    self.memo
                        .get(&key)
                        .ok_or_else(|| format!("memo key {key} unset"))?,
                );
                self.charge(n)?;
                let value = self.memo[&key].clone();
                self.stack.push(value);
            }
            b'2' => {
                let top = self.copy_top()?;
                self.stack.push(top);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// One line of a `GLOBAL` opcode.
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = self.data.get(self.at..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("GLOBAL line cut short")?;
        self.at += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    }

    /// Globals, persistent ids, calls and the remaining stack opcodes.
    fn object_op(&mut self, op: u8) -> Result<(), PickleError> {
        let value = match op {
            b'c' => {
                let (module, name) = (self.line()?, self.line()?);
                Value::Global(global(&module, &name)?)
            }
            0x93 => {
                let (name, module) = (self.pop()?, self.pop()?);
                let (Value::Str(m), Value::Str(n)) = (module, name) else {
                    return Err("STACK_GLOBAL without strings".into());
                };
                Value::Global(global(&m, &n)?)
            }
            b'Q' => {
                let pid = self.pop()?;
                storage(pid)?
            }
            b'R' => {
                let (args, callable) = (self.pop()?, self.pop()?);
                reduce(callable, args)?
            }
            // BUILD: the state of an OrderedDict (its `_metadata`) is not needed.
            b'b' | b'0' => return self.pop().map(drop),
            b'1' => return self.pop_mark().map(drop),
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}",
                    self.at - 1
                ));
            }
        };
        self.stack.push(value);
        Ok(())
    }
}

/// Unpickles `data` (protocols 2 to 5, the subset described in the module docs).
pub(crate) fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    unpickle_at(data, 0).map(|(v, _)| v)
}

/// Unpickles the pickle starting at byte `start` of `data`; returns it and the byte after its
/// `STOP` (where the legacy format's next pickle or raw data begins).
pub(crate) fn unpickle_at(data: &[u8], start: usize) -> Result<(Value, usize), PickleError> {
    let mut m = Machine {
        data,
        at: start,
        stack: Vec::new(),
        memo: HashMap::new(),
        copy_budget: 16 * data.len() + 1_000_000,
    };
    loop {
        let op = m.take(1)?[0];
        match op {
            0x80 => drop(m.take(1)?),            // PROTO
            0x95 => drop(m.take(8)?),            // FRAME
            b'.' => return Ok((m.pop()?, m.at)), // STOP
            _ => {
                if let Some(v) = m.literal(op)? {
                    m.stack.push(v);
                } else if !m.container(op)? && !m.memo_op(op)? {
                    m.object_op(op)?;
                }
            }
        }
    }
}
