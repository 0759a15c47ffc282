//! `inseq attribute-context`: PECoRe, which output tokens depend on a context and which context
//! tokens they rely on.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Result, bail};
use inseq::GenerationOptions;
use inseq::Registries;
use inseq::context::{ContextArgs, OutputContextStrategy};

use super::context_prompt::ContextPrompt;
use crate::args::ModelArgs;
use crate::output::use_color;

#[derive(clap::Args)]
pub(crate) struct ContextCliArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The context preceding the current input ({context} of the input template).
    #[arg(long)]
    input_context_text: Option<String>,
    /// The current input ({current} of the input template).
    #[arg(long)]
    input_current_text: String,
    /// The output context ({context} of the output template), e.g. a previous sentence or a reasoning
    /// chain; generated with the current output when the output template has {context} and this is absent.
    #[arg(long)]
    output_context_text: Option<String>,
    /// The output to explain ({current} of the output template; generated when absent).
    #[arg(long)]
    output_current_text: Option<String>,
    /// Template of the model input [default: "{context} {current}" with an input context, else "{current}"].
    #[arg(long)]
    input_template: Option<String>,
    /// Template of the model output [default: "{context} {current}" with --output-context-text, else "{current}"].
    #[arg(long)]
    output_template: Option<String>,
    /// Template of the input without context, for the contrastive comparison [default: "{current}"].
    #[arg(long)]
    contextless_input_current_text: Option<String>,
    /// Template of the output without context, for the contrastive comparison [default: "{current}"].
    #[arg(long)]
    contextless_output_current_text: Option<String>,
    /// How a generated output context is split off: manual (ask; needs a terminal), auto (split at the
    /// template's separator) or pre (--output-context-text required).
    #[arg(long, default_value = "manual")]
    handle_output_context_strategy: String,
    /// Special tokens kept in generated texts and token lists, e.g. a <brk> separator.
    #[arg(long, num_args = 1..)]
    special_tokens_to_keep: Vec<String>,
    /// Decoder-only models: what joins input and output.
    #[arg(long, default_value = " ", allow_hyphen_values = true)]
    decoder_input_output_separator: String,
    /// Contrastive metric for context-sensitive token identification.
    #[arg(long, default_value = "kl_divergence")]
    context_sensitivity_metric: String,
    /// k in the CTI threshold mean + k·std.
    #[arg(long, default_value_t = 1.0)]
    context_sensitivity_std_threshold: f64,
    /// Keep at most this many context-sensitive tokens.
    #[arg(long)]
    context_sensitivity_topk: Option<usize>,
    /// Function attributed for contextual cue imputation (Inseq's default probability; PECoRe uses contrast_prob_diff).
    #[arg(long, default_value = "probability")]
    attributed_fn: String,
    /// k in the CCI threshold mean + k·std.
    #[arg(long, default_value_t = 1.0)]
    attribution_std_threshold: f64,
    /// Keep at most this many cues per context and token.
    #[arg(long)]
    attribution_topk: Option<usize>,
    /// Tokens to generate when no output is given.
    #[arg(long, default_value_t = 10)]
    max_new_tokens: usize,
    /// Show the CTI step scores and each CCI attribution as heatmaps.
    #[arg(long)]
    show_intermediate_outputs: bool,
    /// Save the result as JSON (Inseq's AttributeContextOutput layout).
    #[arg(long, short = 'o', alias = "save")]
    save_path: Option<PathBuf>,
    /// Write an HTML report.
    #[arg(long)]
    viz_path: Option<PathBuf>,
    /// Never use colours.
    #[arg(long)]
    no_color: bool,
}

pub(crate) fn run(a: ContextCliArgs, registries: &Registries) -> Result<()> {
    let strategy: OutputContextStrategy = a.handle_output_context_strategy.parse()?;
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if a.needs_split() && strategy == OutputContextStrategy::Manual && !interactive {
        bail!(
            "--handle-output-context-strategy manual asks for the output context, but this run is not \
             interactive (no terminal): pass the output context with --output-context-text, or use \
             --handle-output-context-strategy auto (split the generation at the output template's \
             separator) or pre (with --output-context-text)"
        );
    }
    let model = crate::load_model(&a.model, registries)?;
    let color = use_color(a.no_color);
    let mut prompt = ContextPrompt {
        interactive,
        show_intermediate: a.show_intermediate_outputs,
        color,
    };
    let mut out =
        inseq::context::attribute_context_with(&model, &a.context_args(strategy), &mut prompt)?;
    if let Some(info) = &mut out.info {
        info.model_name_or_path = Some(a.model.model.clone());
    }
    println!("{}", inseq::viz::render_context_terminal(&out, color));
    if let Some(path) = &a.save_path {
        out.save(path)?;
        eprintln!("saved {}", path.display());
    }
    if let Some(path) = &a.viz_path {
        inseq::core::write_atomic(path, inseq::viz::render_context_html(&out).as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

impl ContextCliArgs {
    /// Whether a generated output must be split into output context and current output.
    fn needs_split(&self) -> bool {
        self.output_context_text.is_none()
            && self
                .output_template
                .as_deref()
                .is_some_and(|t| t.contains("{context}"))
    }

    /// The library's arguments.
    fn context_args(&self, strategy: OutputContextStrategy) -> ContextArgs {
        ContextArgs {
            input_context_text: self.input_context_text.clone(),
            input_current_text: self.input_current_text.clone(),
            output_context_text: self.output_context_text.clone(),
            output_current_text: self.output_current_text.clone(),
            input_template: self.input_template.clone(),
            output_template: self.output_template.clone(),
            contextless_input_current_text: self.contextless_input_current_text.clone(),
            contextless_output_current_text: self.contextless_output_current_text.clone(),
            handle_output_context_strategy: strategy,
            special_tokens_to_keep: self.special_tokens_to_keep.clone(),
            decoder_input_output_separator: self.decoder_input_output_separator.clone(),
            context_sensitivity_metric: self.context_sensitivity_metric.clone(),
            context_sensitivity_std_threshold: self.context_sensitivity_std_threshold,
            context_sensitivity_topk: self.context_sensitivity_topk,
            attributed_fn: self.attributed_fn.clone(),
            attribution_std_threshold: self.attribution_std_threshold,
            attribution_topk: self.attribution_topk,
            generation: GenerationOptions {
                max_new_tokens: self.max_new_tokens,
                ..Default::default()
            },
        }
    }
}
