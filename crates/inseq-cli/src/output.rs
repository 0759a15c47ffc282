//! Writing results: checks of output paths before any model work, the `--viz` files, and the
//! terminal heatmaps.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use inseq::SequenceAttribution;

/// `out.svg` -> `out-2.svg` for the i-th (0-based) sequence.
fn numbered(path: &str, i: usize) -> String {
    let p = Path::new(path);
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = p.extension().and_then(|s| s.to_str()).unwrap_or("svg");
    p.with_file_name(format!("{stem}-{}.{ext}", i + 1))
        .to_string_lossy()
        .into_owned()
}

/// A `--viz KIND:PATH` output, checked before any model work.
pub(crate) struct VizOutput {
    /// `html` or `svg`.
    kind: &'static str,
    path: String,
}

impl VizOutput {
    /// Reads `html:PATH` or `svg:PATH`, failing unless `PATH` can be written.
    pub(crate) fn parse(spec: &str) -> Result<Self> {
        let (kind, path) = spec
            .split_once(':')
            .with_context(|| format!("--viz `{spec}`: expected html:PATH or svg:PATH"))?;
        let kind = match kind {
            "html" => "html",
            "svg" => "svg",
            other => bail!("--viz `{spec}`: unknown kind `{other}` (expected html or svg)"),
        };
        check_output_file("--viz", Path::new(path))?;
        Ok(Self {
            kind,
            path: path.to_string(),
        })
    }

    /// The file written (the first one, for several SVGs).
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Writes `seqs` as one HTML page, or one SVG per sequence (`out-1.svg`, `out-2.svg`, ...
    /// when there are several).
    pub(crate) fn write(&self, seqs: &[SequenceAttribution]) -> Result<()> {
        if self.kind == "html" {
            return Ok(inseq::viz::save_html(&self.path, seqs)?);
        }
        for (i, seq) in seqs.iter().enumerate() {
            let p = if seqs.len() == 1 {
                self.path.clone()
            } else {
                numbered(&self.path, i)
            };
            inseq::viz::save_svg(&p, seq)?;
        }
        Ok(())
    }
}

/// Fails unless the folder `path` goes in exists.
pub(crate) fn check_output_folder(flag: &str, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Fails unless `path` can be written as a file: its folder exists and it is not a folder.
pub(crate) fn check_output_file(flag: &str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        bail!("{flag}: the file path is empty");
    }
    check_output_folder(flag, path)?;
    if path.is_dir() {
        bail!(
            "{flag} {}: is a folder, expected a file path",
            path.display()
        );
    }
    Ok(())
}

/// Whether to colour the terminal output: not with `--no-color`, `NO_COLOR` or when stdout is not
/// a terminal.
pub(crate) fn use_color(no_color: bool) -> bool {
    !no_color && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Prints each sequence's heatmap on stdout, as wide as `COLUMNS` says (120 by default).
pub(crate) fn print_heatmaps(seqs: &[SequenceAttribution], color: bool) {
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(120);
    let opts = inseq::viz::TerminalOptions {
        color,
        width,
        ..Default::default()
    };
    for seq in seqs {
        println!("{}", inseq::viz::render_terminal(seq, &opts));
    }
}
