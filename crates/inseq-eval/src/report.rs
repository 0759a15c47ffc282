//! Per-method summaries of an evaluation: the mean of each metric over examples with a
//! bootstrap 95 % interval, the mean curves, a ranking, as JSON and as a table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::EvalConfig;
use crate::evaluator::StepResult;
use crate::stats::{bootstrap_ci, mean};

/// The id under which the model-randomisation check is reported next to the metrics.
pub const RANDOMISATION: &str = "model_randomisation";

/// One example's metrics: the mean over its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleScores {
    /// Row number of the example.
    pub index: usize,
    /// Mean value of each metric over the example's steps (`NaN`: undefined on every step).
    pub metrics: BTreeMap<String, f64>,
    /// Mean curve of each metric that has one.
    pub curves: BTreeMap<String, Vec<(f64, f64)>>,
}

/// The mean over steps of each metric, and the pointwise mean of the curves.
pub fn example_scores(index: usize, steps: &[StepResult]) -> ExampleScores {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut curves: BTreeMap<String, Vec<Vec<(f64, f64)>>> = BTreeMap::new();
    for step in steps {
        for (id, v) in &step.metrics {
            values.entry(id.clone()).or_default().push(v.value);
            if let Some(c) = &v.curve {
                curves.entry(id.clone()).or_default().push(c.clone());
            }
        }
    }
    ExampleScores {
        index,
        metrics: values.into_iter().map(|(k, v)| (k, mean(&v))).collect(),
        curves: curves
            .into_iter()
            .map(|(k, c)| (k, mean_curve(&c)))
            .collect(),
    }
}

/// Pointwise mean of curves sampled at the same x (finite values only).
pub fn mean_curve(curves: &[Vec<(f64, f64)>]) -> Vec<(f64, f64)> {
    let Some(first) = curves.first() else {
        return vec![];
    };
    (0..first.len())
        .map(|i| {
            let ys: Vec<f64> = curves
                .iter()
                .filter_map(|c| c.get(i).map(|p| p.1))
                .collect();
            (first[i].0, mean(&ys))
        })
        .collect()
}

/// A metric's summary over examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Mean over the examples where it is defined.
    pub mean: f64,
    /// Lower end of the bootstrap 95 % interval of the mean.
    pub ci_low: f64,
    /// Upper end.
    pub ci_high: f64,
    /// Examples where it is defined.
    pub n: usize,
}

/// What a metric is, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricInfo {
    /// One-line description.
    pub description: String,
    /// Whether higher values are better.
    pub higher_is_better: bool,
}

/// One method's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodReport {
    /// Method id.
    pub method: String,
    /// Its arguments as given.
    pub method_args: String,
    /// Seconds spent attributing and evaluating.
    pub seconds: f64,
    /// Summary of each metric.
    pub metrics: BTreeMap<String, MetricSummary>,
    /// Mean curve of each metric that has one.
    pub curves: BTreeMap<String, Vec<(f64, f64)>>,
    /// Per example.
    pub examples: Vec<ExampleScores>,
}

impl MethodReport {
    /// Summarises `examples` (bootstrap seeded by `config.seed`).
    pub fn new(
        method: &str,
        method_args: &str,
        examples: Vec<ExampleScores>,
        config: &EvalConfig,
    ) -> Self {
        let ids: std::collections::BTreeSet<&String> =
            examples.iter().flat_map(|e| e.metrics.keys()).collect();
        let metrics = ids
            .into_iter()
            .map(|id| {
                let v: Vec<f64> = examples
                    .iter()
                    .filter_map(|e| e.metrics.get(id).copied())
                    .collect();
                let (ci_low, ci_high) =
                    bootstrap_ci(&v, 0.95, config.bootstrap_resamples, config.seed);
                let summary = MetricSummary {
                    mean: mean(&v),
                    ci_low,
                    ci_high,
                    n: v.iter().filter(|x| x.is_finite()).count(),
                };
                (id.clone(), summary)
            })
            .collect();
        let mut curves: BTreeMap<String, Vec<Vec<(f64, f64)>>> = BTreeMap::new();
        for e in &examples {
            for (id, c) in &e.curves {
                curves.entry(id.clone()).or_default().push(c.clone());
            }
        }
        Self {
            method: method.to_string(),
            method_args: method_args.to_string(),
            seconds: 0.0,
            metrics,
            curves: curves
                .into_iter()
                .map(|(k, c)| (k, mean_curve(&c)))
                .collect(),
            examples,
        }
    }
}

/// A method's place in the ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankEntry {
    /// Method id.
    pub method: String,
    /// Rank on each metric (1: best).
    pub ranks: BTreeMap<String, usize>,
    /// Mean of the ranks.
    pub mean_rank: f64,
}

/// The whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Model name or path.
    pub model: String,
    /// The function attributed and evaluated.
    pub attributed_fn: String,
    /// Settings.
    pub config: EvalConfig,
    /// What each metric is.
    pub metric_info: BTreeMap<String, MetricInfo>,
    /// Top layers randomised at each level of the randomisation check (empty: not run).
    pub randomisation_levels: Vec<usize>,
    /// Per method, in the order given.
    pub methods: Vec<MethodReport>,
    /// Methods by mean rank, best first.
    pub ranking: Vec<RankEntry>,
    /// Wall-clock seconds of the whole evaluation.
    pub seconds: f64,
}

impl EvalReport {
    /// Fills [`Self::ranking`]: per metric, methods ordered by mean (in the metric's better
    /// direction; undefined means last), then by the mean of their ranks.
    pub fn rank(&mut self) {
        let mut ranking: Vec<RankEntry> = self
            .methods
            .iter()
            .map(|m| RankEntry {
                method: m.method.clone(),
                ranks: BTreeMap::new(),
                mean_rank: 0.0,
            })
            .collect();
        for (id, info) in &self.metric_info {
            let key = |m: &MethodReport| {
                let v = m.metrics.get(id).map_or(f64::NAN, |s| s.mean);
                let v = if info.higher_is_better { -v } else { v };
                if v.is_nan() { f64::INFINITY } else { v }
            };
            let mut order: Vec<usize> = (0..self.methods.len()).collect();
            order.sort_by(|&a, &b| key(&self.methods[a]).total_cmp(&key(&self.methods[b])));
            for (rank, &i) in order.iter().enumerate() {
                ranking[i].ranks.insert(id.clone(), rank + 1);
            }
        }
        for r in &mut ranking {
            r.mean_rank = r.ranks.values().sum::<usize>() as f64 / r.ranks.len().max(1) as f64;
        }
        ranking.sort_by(|a, b| a.mean_rank.total_cmp(&b.mean_rank));
        self.ranking = ranking;
    }

    /// A Markdown table: per method and metric the mean, its 95 % interval and its rank.
    pub fn table(&self) -> String {
        let ids: Vec<&String> = self.metric_info.keys().collect();
        let arrow = |id: &str| {
            if self.metric_info[id].higher_is_better {
                "↑"
            } else {
                "↓"
            }
        };
        let mut out = String::from("| method |");
        for id in &ids {
            out.push_str(&format!(" {id} {} |", arrow(id)));
        }
        out.push_str(" mean rank |\n|---|");
        out.push_str(&"---|".repeat(ids.len() + 1));
        out.push('\n');
        for entry in &self.ranking {
            let Some(m) = self.methods.iter().find(|m| m.method == entry.method) else {
                continue;
            };
            out.push_str(&format!("| {} |", m.method));
            for id in &ids {
                let cell = m
                    .metrics
                    .get(*id)
                    .map_or("n/a".to_string(), |s| summary_cell(s, entry.ranks[*id]));
                out.push_str(&format!(" {cell} |"));
            }
            out.push_str(&format!(" {:.2} |\n", entry.mean_rank));
        }
        out
    }

    /// The report as pretty JSON (`NaN`s become `null`).
    pub fn to_json(&self) -> inseq::Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| inseq::Error::InvalidInput(format!("serialising the report: {e}")))
    }
}

/// A number with 3 decimals, or 3 significant digits in scientific notation when it is small.
pub fn format_value(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// `mean [low, high] (rank)`.
pub fn summary_cell(s: &MetricSummary, rank: usize) -> String {
    format!(
        "{} [{}, {}] ({rank})",
        format_value(s.mean),
        format_value(s.ci_low),
        format_value(s.ci_high)
    )
}
