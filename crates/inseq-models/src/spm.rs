//! A small reader of SentencePiece model files (`*.spm`, `spiece.model`): the `ModelProto`
//! protobuf fields a tokenizer needs (pieces, model type, unknown id, byte fallback, the
//! normaliser settings), parsed by hand from the wire format.

use std::path::Path;

use inseq_core::{Error, Result};

/// SentencePiece piece types (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// A normal piece.
    Normal,
    /// The unknown piece.
    Unknown,
    /// A control symbol (`<s>`, `</s>`): never matched in text.
    Control,
    /// A user-defined symbol: always emitted whole.
    UserDefined,
    /// An unused piece.
    Unused,
    /// A byte-fallback piece (`<0x41>`).
    Byte,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Its text (`▁` for spaces).
    pub piece: String,
    /// Its log-probability (unigram) or merge rank (BPE).
    pub score: f32,
    /// Its type.
    pub kind: PieceType,
}

/// The parts of a SentencePiece model a tokenizer is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    /// Pieces in id order.
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    /// `TrainerSpec.unk_id`.
    pub unk_id: usize,
    /// `TrainerSpec.byte_fallback`.
    pub byte_fallback: bool,
    /// `NormalizerSpec.precompiled_charsmap` (empty: no normalisation table).
    pub precompiled_charsmap: Vec<u8>,
    /// `NormalizerSpec.add_dummy_prefix`.
    pub add_dummy_prefix: bool,
    /// `NormalizerSpec.remove_extra_whitespaces`.
    pub remove_extra_whitespaces: bool,
    /// `NormalizerSpec.escape_whitespaces`.
    pub escape_whitespaces: bool,
}

/// A protobuf field: number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64,
}

/// Iterates over the fields of one protobuf message.
struct Fields<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.at).ok_or("protobuf varint cut short")?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("protobuf varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let s = self
            .at
            .checked_add(n)
            .and_then(|end| self.data.get(self.at..end))
            .ok_or("protobuf field cut short")?;
        self.at += n;
        Ok(s)
    }

    fn next_field(&mut self) -> Option<std::result::Result<(u64, Field<'a>), String>> {
        if self.at >= self.data.len() {
            return None;
        }
        Some((|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Field::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Field::Fixed64
                }
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
                    Field::Bytes(self.take(n)?)
                }
                5 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4"))),
                w => return Err(format!("unsupported protobuf wire type {w}")),
            };
            Ok((key >> 3, value))
        })())
    }
}

fn piece(data: &[u8]) -> std::result::Result<Piece, String> {
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut fields = Fields::new(data);
    while let Some(f) = fields.next_field() {
        match f? {
            (1, Field::Bytes(b)) => {
                p.piece = String::from_utf8(b.to_vec()).map_err(|_| "piece is not UTF-8")?;
            }
            (2, Field::Fixed32(bits)) => p.score = f32::from_bits(bits),
            (3, Field::Varint(t)) => {
                p.kind = match t {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    other => return Err(format!("unknown piece type {other}")),
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

impl SpmModel {
    /// Parses a serialised `ModelProto`.
    pub fn parse(data: &[u8]) -> std::result::Result<Self, String> {
        let mut m = SpmModel {
            pieces: Vec::new(),
            model_type: 1,
            unk_id: 0,
            byte_fallback: false,
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        let mut fields = Fields::new(data);
        while let Some(f) = fields.next_field() {
            match f? {
                (1, Field::Bytes(b)) => m.pieces.push(piece(b)?),
                (2, Field::Bytes(b)) => m.trainer_spec(b)?,
                (3, Field::Bytes(b)) => m.normalizer_spec(b)?,
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err("no pieces (not a SentencePiece model)".into());
        }
        Ok(m)
    }

    fn trainer_spec(&mut self, data: &[u8]) -> std::result::Result<(), String> {
        let mut fields = Fields::new(data);
        while let Some(f) = fields.next_field() {
            match f? {
                (3, Field::Varint(t)) => self.model_type = t,
                (35, Field::Varint(b)) => self.byte_fallback = b != 0,
                (40, Field::Varint(id)) => {
                    self.unk_id = usize::try_from(id).map_err(|_| "unk_id overflows")?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn normalizer_spec(&mut self, data: &[u8]) -> std::result::Result<(), String> {
        let mut fields = Fields::new(data);
        while let Some(f) = fields.next_field() {
            match f? {
                (2, Field::Bytes(b)) => self.precompiled_charsmap = b.to_vec(),
                (3, Field::Varint(b)) => self.add_dummy_prefix = b != 0,
                (4, Field::Varint(b)) => self.remove_extra_whitespaces = b != 0,
                (5, Field::Varint(b)) => self.escape_whitespaces = b != 0,
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads and parses `path`; errors name the file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile {
                path: path.to_path_buf(),
                hint: "a SentencePiece model".into(),
            },
            _ => Error::io(path, e),
        })?;
        Self::parse(&bytes).map_err(|reason| Error::CorruptFile {
            path: path.to_path_buf(),
            reason,
        })
    }
}

/// Standard base64 (the encoding `tokenizer.json` gives the precompiled charsmap).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
