//! Progress on the terminal (stderr): a bar over the attributed steps of one run, and one over the
//! rows of a dataset.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr over the attributed steps, cleared when they are all done.
pub(crate) fn step_progress_bar() -> inseq::Progress {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} attributing [{bar:30}] {pos}/{len} steps ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    inseq::Progress::new(move |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
        }
    })
}

/// A bar over the `total` rows of a dataset (a hidden one when stderr is not a terminal).
pub(crate) fn row_progress_bar(total: usize) -> ProgressBar {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    }
}
