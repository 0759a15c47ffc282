//! Datasets for `inseq attribute-dataset`: local JSONL, CSV and Parquet files and Hugging Face
//! dataset ids (Parquet files through hf-hub), with `split[start:end]` slicing and `I/N` sharding;
//! resumable per-row stores of the results, and their merge.
//!
//! ```
//! use inseq_cli::dataset::{OutputStore, SplitSpec, read_rows};
//! let dir = std::env::temp_dir().join(format!("inseq-cli-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let data = dir.join("rows.jsonl");
//! std::fs::write(&data, "{\"text\": \"Hello\"}\n{\"text\": \"\"}\n{\"text\": \"Welcome\"}\n").unwrap();
//! let split: SplitSpec = "train[1:]".parse().unwrap();
//! let rows = read_rows(data.to_str().unwrap(), &split, "text", None).unwrap();
//! assert_eq!(rows[0].index, 1);
//! assert!(rows[0].content.is_err()); // empty text: reported, not attributed
//! assert_eq!(rows[1].content, Ok(("Welcome".to_string(), None)));
//! let store = OutputStore::from_path(&dir.join("out.jsonl"));
//! assert!(store.read_all().unwrap().is_empty());
//! std::fs::remove_dir_all(dir).unwrap();
//! ```

mod formats;
mod job;
mod rows;
mod store;

pub use job::{DatasetJob, DatasetReport, OnError, attribute_dataset};
pub use rows::{DatasetRow, Shard, SplitSpec, read_rows};
pub use store::{OutputStore, StoreLock, merge};
