//! `inseq attribute-dataset`: JSONL / CSV / Parquet inputs, resume after interruption,
//! shards merged equal the unsharded run, malformed rows reported with their number.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::inseq;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inseq-dataset-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const WORDS: [&str; 5] = [
    "Hello",
    "The manager",
    "A developer",
    "Ladies and",
    "Welcome",
];

fn rows() -> Vec<(String, String)> {
    (0..20)
        .map(|i| {
            let input = format!("{} {i}", WORDS[i % WORDS.len()]);
            let target = format!("{input} and more");
            (input, target)
        })
        .collect()
}

fn write_jsonl(path: &Path) {
    let text: String = rows()
        .iter()
        .map(|(i, t)| format!("{}\n", serde_json::json!({"text": i, "target": t, "id": 1})))
        .collect();
    std::fs::write(path, text).unwrap();
}

fn write_csv(path: &Path) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(["text", "target"]).unwrap();
    for (i, t) in rows() {
        w.write_record([i, t]).unwrap();
    }
    w.flush().unwrap();
}

fn write_parquet(path: &Path) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY text (UTF8); REQUIRED BYTE_ARRAY target (UTF8); }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut group = writer.next_row_group().unwrap();
    for col in 0..2 {
        let values: Vec<ByteArray> = rows()
            .iter()
            .map(|(i, t)| ByteArray::from(if col == 0 { i.as_str() } else { t.as_str() }))
            .collect();
        let mut c = group.next_column().unwrap().unwrap();
        c.typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        c.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

fn run_dataset(data: &Path, save: &Path, extra: &[&str]) -> Output {
    let model = common::model_dir("tiny-gpt2");
    let mut args = vec![
        "attribute-dataset",
        "--model",
        &model,
        "--method",
        "saliency",
        "--data",
        data.to_str().unwrap(),
        "--target-field",
        "target",
        "--save",
        save.to_str().unwrap(),
        "--step-scores",
        "probability",
    ];
    args.extend_from_slice(extra);
    inseq(&args)
}

fn stored(save: &Path) -> Vec<(usize, inseq::AttributionOutput)> {
    inseq_cli::dataset::OutputStore::from_path(save)
        .read_all()
        .unwrap()
}

#[test]
fn jsonl_csv_and_parquet_rows_are_all_attributed() {
    let dir = tmp("formats");
    let files = [
        ("data.jsonl", write_jsonl as fn(&Path)),
        ("data.csv", write_csv),
        ("data.parquet", write_parquet),
    ];
    for (name, write) in files {
        let data = dir.join(name);
        write(&data);
        let save = dir.join(format!("{name}.out"));
        let out = run_dataset(&data, &save, &["--batch-size", "4"]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows_out = stored(&save);
        assert_eq!(rows_out.len(), 20, "{name}");
        for ((index, out), (input, target)) in rows_out.iter().zip(rows()) {
            let seq = &out.sequence_attributions[0];
            assert_eq!(out.info["row"], *index);
            assert_eq!(
                out.info["input_texts"][0],
                input.as_str(),
                "{name} row {index}"
            );
            assert!(seq.target_attributions.is_some());
            assert_eq!(seq.step_scores["probability"].len(), seq.n_steps());
            let text: String = seq
                .target
                .iter()
                .map(|t| t.token.replace('Ġ', " "))
                .collect();
            assert_eq!(text, target, "{name} row {index}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn split_slices_rows() {
    let dir = tmp("split");
    let data = dir.join("data.jsonl");
    write_jsonl(&data);
    let save = dir.join("out.jsonl");
    let out = run_dataset(&data, &save, &["--split", "train[5:9]"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let idx: Vec<usize> = stored(&save).iter().map(|r| r.0).collect();
    assert_eq!(idx, vec![5, 6, 7, 8]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn interrupted_run_resumes_to_the_same_files() {
    let dir = tmp("resume");
    let data = dir.join("data.jsonl");
    write_jsonl(&data);
    let slow = ["--method-args", "n_steps=200", "--batch-size", "2"];
    let model = common::model_dir("tiny-gpt2");
    let args = |save: &Path| -> Vec<String> {
        [
            "attribute-dataset",
            "--model",
            &model,
            "--method",
            "integrated_gradients",
            "--data",
            data.to_str().unwrap(),
            "--target-field",
            "target",
            "--save",
            save.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(slow.iter().map(|s| s.to_string()))
        .collect()
    };
    // uninterrupted reference, as a directory and as JSONL
    for save in [dir.join("ref"), dir.join("ref.jsonl")] {
        let out = Command::new(env!("CARGO_BIN_EXE_inseq"))
            .args(args(&save))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for save in [dir.join("run"), dir.join("run.jsonl")] {
        // kill the run part-way, as often as needed until it has stored some but not all rows
        let mut child = Command::new(env!("CARGO_BIN_EXE_inseq"))
            .args(args(&save))
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let n = if save.exists() {
                stored(&save).len()
            } else {
                0
            };
            if n >= 3 || started.elapsed().as_secs() > 120 {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let partial = stored(&save).len();
        if save.extension().is_some() {
            // simulate a kill in the middle of writing a line
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&save)
                .unwrap();
            f.write_all(br#"{"row": 19, "output": {"sequence_attr"#)
                .unwrap();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_inseq"))
            .args(args(&save))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{partial} already done")) || partial == 20,
            "{stderr}"
        );
    }
    assert_eq!(
        dir_files(&dir.join("ref")),
        dir_files(&dir.join("run")),
        "directory outputs differ"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ref.jsonl"))
            .unwrap()
            .lines()
            .count(),
        20
    );
    let sorted = |p: &Path| {
        let mut l: Vec<String> = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        l.sort();
        l
    };
    assert_eq!(
        sorted(&dir.join("ref.jsonl")),
        sorted(&dir.join("run.jsonl")),
        "jsonl outputs differ"
    );
    // no temporary files left behind
    assert!(
        dir_files(&dir.join("run"))
            .iter()
            .all(|(n, _)| n.starts_with("row-") && n.ends_with(".json"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run stopped in the middle of a batch (an odd number of rows stored, batch size 2) resumes to
/// the same bytes: the partly stored batch is computed again with the same rows, not re-formed
/// from the missing rows only (which would pad and multiply different shapes).
#[test]
fn resuming_mid_batch_writes_the_same_bytes() {
    let dir = tmp("mid-batch");
    let data = dir.join("data.jsonl");
    write_jsonl(&data);
    let batch = ["--batch-size", "2"];
    for (reference, resumed) in [("ref", "run"), ("ref.jsonl", "run.jsonl")] {
        let (reference, resumed) = (dir.join(reference), dir.join(resumed));
        let out = run_dataset(&data, &reference, &batch);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // what a run killed after 3 of 20 rows leaves behind
        if reference.is_dir() {
            std::fs::create_dir_all(&resumed).unwrap();
            for (name, bytes) in dir_files(&reference).iter().take(3) {
                std::fs::write(resumed.join(name), bytes).unwrap();
            }
        } else {
            let text = std::fs::read_to_string(&reference).unwrap();
            let first: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
            std::fs::write(&resumed, first).unwrap();
        }
        assert_eq!(stored(&resumed).len(), 3);
        let out = run_dataset(&data, &resumed, &batch);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("17 rows attributed, 3 already done"),
            "{stderr}"
        );
    }
    assert_eq!(
        dir_files(&dir.join("ref")),
        dir_files(&dir.join("run")),
        "directory outputs differ"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ref.jsonl")).unwrap(),
        std::fs::read_to_string(dir.join("run.jsonl")).unwrap(),
        "jsonl outputs differ"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn merged_shards_equal_the_unsharded_run() {
    let dir = tmp("shards");
    let data = dir.join("data.csv");
    write_csv(&data);
    let full = dir.join("full.jsonl");
    assert!(run_dataset(&data, &full, &[]).status.success());
    let mut parts = Vec::new();
    for i in 0..3 {
        let part = dir.join(format!("part{i}.jsonl"));
        let out = run_dataset(&data, &part, &["--shard", &format!("{i}/3")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stored(&part).iter().all(|(r, _)| r % 3 == i));
        parts.push(part);
    }
    let merged = dir.join("merged.jsonl");
    let mut args = vec!["merge".to_string()];
    args.extend(parts.iter().map(|p| p.to_string_lossy().into_owned()));
    args.extend([
        "--output".to_string(),
        merged.to_string_lossy().into_owned(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_inseq"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let canonical = dir.join("full-sorted.jsonl");
    let out = inseq(&[
        "merge",
        full.to_str().unwrap(),
        "--output",
        canonical.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&canonical).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_rows_are_reported_with_their_number() {
    let dir = tmp("malformed");
    let data = dir.join("data.jsonl");
    let mut text = String::new();
    text.push_str("{\"text\": \"Hello there\", \"target\": \"Hello there friend\"}\n");
    text.push_str("{\"other\": \"no text field\"}\n");
    text.push_str("{\"text\": \"   \", \"target\": \"x\"}\n");
    text.push_str("not json at all\n");
    text.push_str("{\"text\": \"Hello again\", \"target\": \"Goodbye\"}\n");
    text.push_str("{\"text\": \"Ladies and\", \"target\": \"Ladies and gentlemen\"}\n");
    std::fs::write(&data, text).unwrap();
    let save = dir.join("out.jsonl");
    let out = run_dataset(&data, &save, &["--batch-size", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("row 1: skipped: missing field `text`"),
        "{stderr}"
    );
    assert!(stderr.contains("row 2: skipped: empty text"), "{stderr}");
    assert!(stderr.contains("row 3: skipped: invalid JSON"), "{stderr}");
    assert!(
        stderr.contains("row 4: skipped:") && stderr.contains("must start with the input"),
        "{stderr}"
    );
    let idx: Vec<usize> = stored(&save).iter().map(|r| r.0).collect();
    assert_eq!(idx, vec![0, 5]);
    let out = run_dataset(&data, &dir.join("fail.jsonl"), &["--on-error", "fail"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("row 1: missing field `text`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // invalid UTF-8 in a CSV cell
    let csv_path = dir.join("bad.csv");
    std::fs::write(&csv_path, b"text,target\nHello,Hello you\n\xff\xfe,x\n").unwrap();
    let out = run_dataset(&csv_path, &dir.join("csv.jsonl"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("row 1: skipped: invalid UTF-8"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A finished reference store of `data` at `save`, returned as its bytes (JSONL).
fn reference_store(data: &Path, save: &Path) -> Vec<u8> {
    let out = run_dataset(data, save, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(save).unwrap()
}

fn stderr_of(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A corrupt line in the middle of a JSONL store stops the resume with its path and line
/// number; the file is left as it was (no valid row after it is deleted).
#[test]
fn corrupt_store_line_is_refused_and_no_row_is_lost() {
    let dir = tmp("corrupt-store");
    let data = dir.join("data.jsonl");
    write_jsonl(&data);
    let save = dir.join("out.jsonl");
    let text = String::from_utf8(reference_store(&data, &save)).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[4] = "{\"row\": 4, \"output\": garbage";
    let corrupt = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    std::fs::write(&save, &corrupt).unwrap();
    let out = run_dataset(&data, &save, &[]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: line 5: invalid JSON", save.display())),
        "{stderr}"
    );
    assert!(stderr.contains("No row was changed"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&save).unwrap(), corrupt);
    // an empty row file in a directory store is named
    let store = dir.join("rows");
    assert!(run_dataset(&data, &store, &[]).status.success());
    std::fs::write(store.join("row-000003.json"), "").unwrap();
    let out = run_dataset(&data, &store, &[]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{}: empty file",
            store.join("row-000003.json").display()
        )),
        "{stderr}"
    );
    assert_eq!(dir_files(&store).len(), 20);
    let _ = std::fs::remove_dir_all(&dir);
}

/// While one process holds a store, a second one is refused with a clear error and writes
/// nothing; once the lock is released (here: dropped, as on exit or kill) the run goes ahead.
#[test]
fn second_writer_of_a_store_gets_a_lock_error() {
    let dir = tmp("lock");
    let data = dir.join("data.jsonl");
    write_jsonl(&data);
    let save = dir.join("out.jsonl");
    let store = inseq_cli::dataset::OutputStore::from_path(&save);
    let lock = store.lock().unwrap();
    let out = run_dataset(&data, &save, &[]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is being written by another inseq process")
            && stderr.contains("out.jsonl.lock"),
        "{stderr}"
    );
    assert!(!save.exists());
    drop(lock);
    // two processes at once: one wins, the other is refused; no row is stored twice
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_inseq"))
            .args([
                "attribute-dataset",
                "--model",
                &common::model_dir("tiny-gpt2"),
                "--data",
                data.to_str().unwrap(),
                "--target-field",
                "target",
                "--save",
                save.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert!(ok >= 1, "{} {}", stderr_of(&a), stderr_of(&b));
    let lines = std::fs::read_to_string(&save).unwrap();
    assert_eq!(lines.lines().count(), 20, "rows stored twice: {lines}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `merge`: the same store twice is fine (NaN cells compare equal); a missing input or an
/// unreadable row fails, naming every problem, and writes nothing.
#[test]
fn merge_checks_its_inputs() {
    let dir = tmp("merge-checks");
    let data = dir.join("data.jsonl");
    write_jsonl(&data);
    let save = dir.join("out.jsonl");
    let bytes = reference_store(&data, &save);
    let merged = dir.join("merged.jsonl");
    let merge = |inputs: &[&Path]| {
        let mut args = vec!["merge".to_string()];
        args.extend(inputs.iter().map(|p| p.to_string_lossy().into_owned()));
        args.extend(["--output".into(), merged.to_string_lossy().into_owned()]);
        Command::new(env!("CARGO_BIN_EXE_inseq"))
            .args(&args)
            .output()
            .unwrap()
    };
    let out = merge(&[save.as_path(), save.as_path()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(std::fs::read(&merged).unwrap(), bytes);
    std::fs::remove_file(&merged).unwrap();
    let missing = dir.join("missing.jsonl");
    let out = merge(&[save.as_path(), missing.as_path()]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}: no such file", missing.display())),
        "{stderr}"
    );
    let text = String::from_utf8(bytes).unwrap();
    let mut lines: Vec<String> = text.lines().map(|l| format!("{l}\n")).collect();
    lines[2] = "not json\n".into();
    lines[7] = "{\"row\": 7}\n".into();
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, lines.concat()).unwrap();
    let out = merge(&[bad.as_path()]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("line 3: invalid JSON"), "{stderr}");
    assert!(stderr.contains("line 8: no `output`"), "{stderr}");
    assert!(!merged.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Wrong words: a misspelt `--input-field` names the field, the file and its fields; a garbage
/// Parquet file is "not a Parquet dataset file"; an OS error is printed once.
#[test]
fn dataset_errors_say_what_is_wrong() {
    let dir = tmp("words");
    let data = dir.join("data.jsonl");
    write_jsonl(&data);
    let out = run_dataset(&data, &dir.join("o.jsonl"), &["--input-field", "txt"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("no row of {} has the field `txt`", data.display()))
            && stderr.contains("id, target, text"),
        "{stderr}"
    );
    let parquet = dir.join("garbage.parquet");
    std::fs::write(&parquet, b"this is not parquet").unwrap();
    let out = run_dataset(&parquet, &dir.join("o.jsonl"), &[]);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!(
            "not a Parquet dataset file: {}",
            parquet.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("model file"), "{stderr}");
    let folder = dir.join("folder.jsonl");
    std::fs::create_dir_all(&folder).unwrap();
    let out = inseq(&[
        "merge",
        folder.to_str().unwrap(),
        "--output",
        dir.join("m.jsonl").to_str().unwrap(),
    ]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Killed at ten seeded random moments (each run resuming the last), then finished: the JSONL
/// and directory stores are byte-identical to an uninterrupted run.
#[test]
fn killed_ten_times_resumes_to_the_same_bytes() {
    let dir = tmp("kill-ten");
    let data = dir.join("data.jsonl");
    write_jsonl(&data);
    let model = common::model_dir("tiny-gpt2");
    let command = |save: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_inseq"));
        c.args(["attribute-dataset", "--model", &model, "--data"])
            .arg(&data)
            .args(["--target-field", "target", "--batch-size", "2", "--save"])
            .arg(save)
            .stderr(std::process::Stdio::null());
        c
    };
    let mut seed: u64 = 19;
    for (reference, resumed) in [("ref.jsonl", "run.jsonl"), ("ref", "run")] {
        let (reference, resumed) = (dir.join(reference), dir.join(resumed));
        let started = std::time::Instant::now();
        assert!(command(&reference).status().unwrap().success());
        let full_ms = started.elapsed().as_millis() as u64;
        for _ in 0..10 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let delay = (seed >> 33) % full_ms.max(1);
            let mut child = command(&resumed).spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(delay));
            let _ = child.kill();
            child.wait().unwrap();
        }
        let out = command(&resumed).status().unwrap();
        assert!(out.success());
        if reference.is_dir() {
            assert_eq!(dir_files(&reference), dir_files(&resumed));
        } else {
            assert_eq!(
                std::fs::read(&reference).unwrap(),
                std::fs::read(&resumed).unwrap()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
