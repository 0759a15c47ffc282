//! The error type shared by every inseq-rs crate.

use std::path::PathBuf;

/// Every failure an inseq-rs library function can report.
///
/// Each variant names the problem in words a researcher can act on; none of
/// the library entry points panic on bad input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An id (method, step function, aggregator, architecture...) that is not registered.
    #[error("unknown {kind} `{id}`; available: {}", available.join(", "))]
    UnknownId {
        /// What kind of id was looked up ("attribution method", "step function", ...).
        kind: &'static str,
        /// The id that was asked for.
        id: String,
        /// The ids that are registered.
        available: Vec<String>,
    },
    /// An argument outside its valid range or of the wrong type.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// Argument name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Empty or otherwise unusable input text.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An input longer than the model can process.
    #[error("input of {len} tokens is longer than the model's context of {max} tokens")]
    ContextLength {
        /// Number of tokens requested.
        len: usize,
        /// Maximum supported by the model.
        max: usize,
    },
    /// A required model file does not exist.
    #[error("missing model file {}: {hint}", path.display())]
    MissingFile {
        /// The missing path.
        path: PathBuf,
        /// What the file is for.
        hint: String,
    },
    /// A model file exists but cannot be parsed.
    #[error("corrupt or unsupported model file {}: {reason}", path.display())]
    CorruptFile {
        /// The offending path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor whose shape does not match what was expected.
    #[error("shape mismatch for {what}: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// Which tensor.
        what: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// The architecture named by a model's config is not supported.
    #[error("unsupported model architecture `{0}`")]
    UnsupportedArchitecture(String),
    /// Tokenizer failure.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A computation produced NaN or infinite values where finite ones were expected.
    #[error("numerical error: {0}")]
    Numerical(String),
    /// The requested operation is not supported in this configuration.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Work that would need more memory than it may use, found before it starts.
    #[error(
        "not enough memory: {what} needs at least about {:.1} GB, more than the {:.1} GB it may use; {hint}",
        *needed as f64 / 1e9,
        *budget as f64 / 1e9
    )]
    OutOfMemory {
        /// The work.
        what: String,
        /// Its estimated need in bytes (a lower bound).
        needed: u64,
        /// The bytes it may use (free memory, or the budget given).
        budget: u64,
        /// How to proceed.
        hint: String,
    },
    /// Model hub access failure.
    #[error("hub error: {0}")]
    Hub(String),
    /// I/O failure, with the path involved.
    ///
    /// The OS error is part of the message and deliberately not a `source()`, so that
    /// error-chain printers (`anyhow`'s `{:#}`) do not print it twice.
    #[error("i/o error on {}: {error}", path.display())]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// JSON (de)serialization failure.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid_arg(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
}

/// Result alias used across inseq-rs.
pub type Result<T, E = Error> = std::result::Result<T, E>;
