//! `attribute-context` on a terminal: asks for the output context when the strategy is `manual`,
//! and shows the intermediate outputs.

use std::io::Write;

use anyhow::{Result, bail};
use inseq::context::ContextCallbacks;

/// `attribute-context` callbacks: asks for the output context on a terminal, shows intermediate outputs.
pub(crate) struct ContextPrompt {
    pub(crate) interactive: bool,
    pub(crate) show_intermediate: bool,
    pub(crate) color: bool,
}

impl ContextPrompt {
    /// Asks `question` on stderr and reads one line of stdin.
    fn ask(&self, question: &str) -> Result<String> {
        eprint!("{question} ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line)? == 0 {
            bail!("no answer (end of input)");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Asks a yes/no question.
    fn confirm(&self, question: &str) -> Result<bool> {
        let answer = self.ask(&format!("{question} [y/n]"))?;
        Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
    }
}

impl ContextCallbacks for ContextPrompt {
    fn output_context(
        &mut self,
        generated: &str,
        candidate: Option<&str>,
    ) -> inseq::Result<String> {
        if !self.interactive {
            return Err(inseq::context::manual_output_context_error(
                generated, candidate,
            ));
        }
        let io = |e: anyhow::Error| {
            inseq::Error::InvalidInput(format!("reading the output context: {e:#}"))
        };
        eprintln!("The model generated: \"{generated}\"");
        if let Some(c) = candidate
            && self
                .confirm(&format!(
                    "Is \"{c}\" the output context you want to attribute?"
                ))
                .map_err(io)?
        {
            return Ok(c.to_string());
        }
        loop {
            let answer = self
                .ask("Enter the start of the generated output that is the output context:")
                .map_err(io)?;
            let answer = answer.trim();
            if answer.is_empty() {
                if self
                    .confirm("The output context is empty. Use an empty output context?")
                    .map_err(io)?
                {
                    return Ok(String::new());
                }
                continue;
            }
            if generated.starts_with(answer) {
                return Ok(answer.to_string());
            }
            eprintln!("\"{answer}\" is not the start of the generated output; try again.");
        }
    }

    fn intermediate(&mut self, stage: &str, out: &inseq::AttributionOutput) {
        if !self.show_intermediate {
            return;
        }
        let opts = inseq::viz::TerminalOptions {
            color: self.color,
            ..Default::default()
        };
        println!("--- {stage} ---");
        for seq in &out.sequence_attributions {
            println!("{}", inseq::viz::render_terminal(seq, &opts));
        }
    }
}
