//! Aggregators on known inputs and properties.

use inseq_aggregate::*;
use inseq_core::{Array, SequenceAttribution, TokenWithId};
use inseq_fixtures::tolerance::{f32_sum, probability_sum};
use proptest::prelude::*;

fn toks(s: &[&str]) -> Vec<TokenWithId> {
    s.iter()
        .enumerate()
        .map(|(i, t)| TokenWithId::new(*t, i as i64))
        .collect()
}

fn names(t: &[TokenWithId]) -> Vec<&str> {
    t.iter().map(|t| t.token.as_str()).collect()
}

/// Decoder-only: 2 prompt tokens + 3 generated, 2-D scores with NaN for future tokens.
fn dec_only() -> SequenceAttribution {
    let target = toks(&["Hel", "lo", "Ġla", "dies", "!"]);
    let mut a = Array::full(vec![5, 3], f32::NAN);
    for r in 0..5 {
        for c in 0..3 {
            if r < 2 + c {
                a.set(&[r, c], (r * 3 + c) as f32 + 1.0);
            }
        }
    }
    SequenceAttribution {
        source: None,
        target,
        source_attributions: None,
        target_attributions: Some(a),
        step_scores: [
            ("probability".to_string(), vec![0.5, 0.5, 0.25]),
            ("entropy".to_string(), vec![1.0, 2.0, 3.0]),
        ]
        .into_iter()
        .collect(),
        sequence_scores: Default::default(),
        attr_pos_start: 2,
        attr_pos_end: 5,
        aggregations: vec![],
    }
}

#[test]
fn spans_on_known_input() {
    let seq = dec_only();
    // Merge "Ġla dies" (generated tokens 0 and 1).
    let out = Aggregator::spans(vec![], vec![(2, 4)]).apply(&seq).unwrap();
    assert_eq!(names(&out.target), ["Hel", "lo", "Ġladies", "!"]);
    assert_eq!(out.target[2].id, -1);
    assert_eq!((out.attr_pos_start, out.attr_pos_end), (2, 4));
    let t = out.target_attributions.unwrap();
    assert_eq!(t.shape(), &[4, 2]);
    // Column 0 = absmax over generated steps 0,1 of each row; row 2 = absmax of rows 2,3.
    assert_eq!(t.get(&[0, 0]), 2.0); // row 0: [1, 2] -> 2
    assert_eq!(t.get(&[2, 0]), 8.0); // rows 2,3 x steps 0,1: [NaN, 8, NaN, NaN] -> 8 (NaN as 0)
    assert_eq!(t.get(&[0, 1]), 3.0); // step 2 untouched
    assert_eq!(out.step_scores["probability"], vec![0.25, 0.25]); // prod
    assert_eq!(out.step_scores["entropy"], vec![3.0, 3.0]); // sum
    assert_eq!(out.aggregations, ["spans"]);
    // Merging prompt tokens moves attr_pos_start.
    let out = Aggregator::spans(vec![], vec![(0, 2)]).apply(&seq).unwrap();
    assert_eq!(names(&out.target), ["Hello", "Ġla", "dies", "!"]);
    assert_eq!((out.attr_pos_start, out.attr_pos_end), (1, 4));
    assert_eq!(out.target_attributions.unwrap().shape(), &[4, 3]);
    // A span across the prompt/generation boundary.
    let out = Aggregator::spans(vec![], vec![(1, 3)]).apply(&seq).unwrap();
    assert_eq!(names(&out.target), ["Hel", "loĠla", "dies", "!"]);
    assert_eq!((out.attr_pos_start, out.attr_pos_end), (1, 4));
}

#[test]
fn explicit_function_override() {
    let seq = dec_only();
    let out = Aggregator::new(
        SpansAggregator::new(vec![], vec![(0, 2)]).with_function(AggregationFunction::Sum),
    )
    .apply(&seq)
    .unwrap();
    assert_eq!(out.target_attributions.unwrap().get(&[0, 0]), 1.0 + 4.0);
}

#[test]
fn subwords_for_three_tokenizer_families() {
    let mk = |target: &[&str], prompt: usize| {
        let n = target.len();
        SequenceAttribution {
            source: None,
            target: toks(target),
            source_attributions: None,
            target_attributions: Some(Array::full(vec![n, n - prompt], 1.0)),
            step_scores: Default::default(),
            sequence_scores: Default::default(),
            attr_pos_start: prompt,
            attr_pos_end: n,
            aggregations: vec![],
        }
    };
    let bpe = Aggregator::subwords()
        .apply(&mk(
            &["Hel", "lo", "Ġla", "dies", "Ġand", "Ġgent", "lem", "en"],
            5,
        ))
        .unwrap();
    assert_eq!(
        names(&bpe.target),
        ["Hello", "Ġladies", "Ġand", "Ġgentlemen"]
    );
    assert_eq!((bpe.attr_pos_start, bpe.attr_pos_end), (3, 4));
    assert_eq!(bpe.target_attributions.unwrap().shape(), &[4, 1]);
    let sp = Aggregator::subwords()
        .apply(&mk(&["<s>", "▁phen", "omen", "al", "▁day", "</s>"], 1))
        .unwrap();
    assert_eq!(names(&sp.target), ["<s>", "▁phenomenal", "▁day", "</s>"]);
    let wp = Aggregator::subwords()
        .apply(&mk(&["[CLS]", "phen", "##omen", "##al", "day", "[SEP]"], 1))
        .unwrap();
    assert_eq!(names(&wp.target), ["[CLS]", "phenomenal", "day", "[SEP]"]);
    // Explicit word ids (as from tokenizer.word_ids()): punctuation as its own word.
    let seq = mk(&["Hel", "lo", ",", "Ġworld"], 2);
    let out = Aggregator::words(None, vec![Some(0), Some(0), Some(1), Some(2)])
        .apply(&seq)
        .unwrap();
    assert_eq!(names(&out.target), ["Hello", ",", "Ġworld"]);
    assert!(Aggregator::words(None, vec![Some(0)]).apply(&seq).is_err());
    // Inseq's exact marker rule.
    let m = Aggregator::new(SubwordsAggregator {
        boundaries: WordBoundaries::Markers {
            special_chars: vec!["▁".into()],
            is_suffix_symbol: false,
        },
        aggregate_source: true,
        aggregate_target: true,
        function: None,
    });
    let out = m
        .apply(&mk(&["▁phen", "omen", "al", "▁day", "▁x"], 1))
        .unwrap();
    assert_eq!(names(&out.target), ["▁phenomenal", "▁day", "▁x"]);
}

#[test]
fn encoder_decoder_spans_and_split() {
    let seq = SequenceAttribution {
        source: Some(toks(&["▁Le", "▁dé", "velop", "peur", "▁."])),
        target: toks(&["</s>", "▁The", "▁dev", "eloper", "▁."]),
        source_attributions: Some(
            Array::new(vec![5, 4], (0..20).map(|v| v as f32).collect()).unwrap(),
        ),
        target_attributions: Some(Array::full(vec![5, 4], 0.5)),
        step_scores: [("probability".to_string(), vec![0.5; 4])]
            .into_iter()
            .collect(),
        sequence_scores: Default::default(),
        attr_pos_start: 1,
        attr_pos_end: 5,
        aggregations: vec![],
    };
    let out = Aggregator::subwords().apply(&seq).unwrap();
    assert_eq!(
        names(out.source.as_ref().unwrap()),
        ["▁Le", "▁développeur", "▁."]
    );
    assert_eq!(names(&out.target), ["</s>", "▁The", "▁developer", "▁."]);
    let s = out.source_attributions.unwrap();
    assert_eq!(s.shape(), &[3, 3]);
    // source rows 1..4 and generated columns 1..3 merged with absmax = max (all positive).
    assert_eq!(s.get(&[1, 1]), 14.0);
    assert_eq!(out.step_scores["probability"], vec![0.5, 0.25, 0.5]);
    let split = Aggregator::split("\\.").apply(&seq).unwrap();
    assert_eq!(
        names(split.source.as_ref().unwrap()),
        ["▁Le▁développeur", "▁."]
    );
    assert_eq!(names(&split.target), ["</s>▁The▁developer", "▁."]);
    assert!(Aggregator::split("(").apply(&seq).is_err());
}

#[test]
fn scores_pair_slices() {
    let mut seq = dec_only();
    seq.target_attributions =
        Some(Array::new(vec![5, 3, 2], (0..30).map(|v| v as f32).collect()).unwrap());
    let out = Pipeline::parse("sum").unwrap().apply(&seq).unwrap();
    let t = out.target_attributions.as_ref().unwrap();
    assert_eq!(t.shape(), &[5, 3]);
    assert_eq!(out.aggregations, ["sum", "normalize"]);
    // 2-D input cannot be aggregated by `scores` again.
    assert!(Pipeline::parse("sum").unwrap().apply(&out).is_err());
    // Rescale / select.
    let r = Aggregator::new(ScoresAggregator {
        function: None,
        post: PostProcess::Rescale,
        select: Some(IndexSelection::One(1)),
    })
    .apply(&seq)
    .unwrap();
    let t = r.target_attributions.unwrap();
    assert_eq!(t.get(&[4, 2]), 1.0);
    assert_eq!(t.get(&[0, 0]), 1.0 / 29.0);
    // Pair: other - self.
    let base = dec_only();
    let mut other = dec_only();
    other.target[4] = TokenWithId::new("?", 9);
    other
        .target_attributions
        .as_mut()
        .unwrap()
        .data_mut()
        .iter_mut()
        .for_each(|v| *v *= 2.0);
    let p = Aggregator::new(PairAggregator { other })
        .apply(&base)
        .unwrap();
    assert_eq!(p.target[4], TokenWithId::new("! → ?", -1));
    assert_eq!(p.target_attributions.as_ref().unwrap().get(&[0, 0]), 1.0);
    assert_eq!(p.step_scores["probability"], vec![0.0, 0.0, 0.0]);
    // Slices: keep the first prompt token only (generated tokens always kept).
    let s = Aggregator::new(SlicesAggregator {
        source_spans: None,
        target_spans: Some(vec![(0, 1)]),
    })
    .apply(&base)
    .unwrap();
    assert_eq!(names(&s.target), ["Hel", "Ġla", "dies", "!"]);
    assert_eq!((s.attr_pos_start, s.attr_pos_end), (1, 4));
    assert_eq!(s.target_attributions.unwrap().shape(), &[4, 3]);
}

#[test]
fn unknown_ids_and_bad_spans_are_typed_errors() {
    use inseq_core::Error;
    assert!(matches!(
        Aggregator::from_id("nope", None),
        Err(Error::UnknownId { .. })
    ));
    assert!(matches!(
        Aggregator::from_id("scores", Some("median")),
        Err(Error::UnknownId { .. })
    ));
    assert!(matches!(
        AggregationFunction::from_id("avg"),
        Err(Error::UnknownId { .. })
    ));
    assert!(Pipeline::parse("subwords, nope").is_err());
    assert!(Aggregator::from_id("spans", None).is_err());
    let seq = dec_only();
    for spans in [vec![(3, 2)], vec![(0, 9)], vec![(0, 3), (2, 4)]] {
        assert!(Aggregator::spans(vec![], spans).apply(&seq).is_err());
    }
    assert!(Aggregator::spans(vec![(0, 1)], vec![]).apply(&seq).is_err());
    let mut bad = dec_only();
    bad.attr_pos_end = 9;
    assert!(Aggregator::subwords().apply(&bad).is_err());
}

fn seq_2d(src_len: usize, steps: usize, vals: Vec<f32>, tvals: Vec<f32>) -> SequenceAttribution {
    SequenceAttribution {
        source: Some(
            (0..src_len)
                .map(|i| TokenWithId::new(format!("s{i}"), i as i64))
                .collect(),
        ),
        target: (0..steps + 1)
            .map(|i| TokenWithId::new(format!("t{i}"), i as i64))
            .collect(),
        source_attributions: Some(Array::new(vec![src_len, steps], vals).unwrap()),
        target_attributions: Some(Array::new(vec![steps + 1, steps], tvals).unwrap()),
        step_scores: Default::default(),
        sequence_scores: Default::default(),
        attr_pos_start: 1,
        attr_pos_end: steps + 1,
        aggregations: vec![],
    }
}

proptest! {
    #[test]
    fn normalized_columns_sum_to_one(src_len in 1usize..6, steps in 1usize..5, hidden in 1usize..4, hundredths in proptest::collection::vec(1u32..1000, 200)) {
        // Values in 0.01..10 drawn as integers: proptest 1.12's f32 range sampler can fail its own
        // debug assertion on a range whose low end is not a float (`0.01f32..10.0`).
        let seed: Vec<f32> = hundredths.iter().map(|&h| h as f32 / 100.0).collect();
        let n_src = src_len * steps * hidden;
        let n_tgt = (steps + 1) * steps * hidden;
        let mut seq = seq_2d(src_len, steps, vec![0.0; src_len * steps], vec![0.0; (steps + 1) * steps]);
        seq.source_attributions = Some(Array::new(vec![src_len, steps, hidden], seed.iter().cycle().take(n_src).copied().collect()).unwrap());
        seq.target_attributions = Some(Array::new(vec![steps + 1, steps, hidden], seed.iter().cycle().skip(3).take(n_tgt).map(|v| -v).collect()).unwrap());
        for f in ["vnorm", "sum", "mean", "absmax"] {
            let out = Pipeline::parse(f).unwrap().apply(&seq).unwrap();
            let (s, t) = (out.source_attributions.unwrap(), out.target_attributions.unwrap());
            for c in 0..steps {
                let total: f32 = (0..src_len).map(|r| s.get(&[r, c]).abs()).sum::<f32>()
                    + (0..steps + 1).map(|r| t.get(&[r, c]).abs()).sum::<f32>();
                // A normalization x / Σ|x| of the column's entries, summed again.
                let tol = probability_sum(src_len + steps + 1) as f32;
                prop_assert!((total - 1.0).abs() <= tol, "{f}: column {c} sums to {total}");
            }
        }
    }

    #[test]
    fn sum_over_disjoint_spans_twice_equals_union(a0 in 0usize..3, la in 2usize..4, gap in 0usize..3, lb in 2usize..4, tail in 0usize..3, steps in 1usize..4, vals in proptest::collection::vec(-5f32..5.0, 40)) {
        let a = (a0, a0 + la);
        let b = (a.1 + gap, a.1 + gap + lb);
        let src_len = b.1 + tail;
        let seq = seq_2d(src_len, steps, vals.iter().cycle().take(src_len * steps).copied().collect(), vec![1.0; (steps + 1) * steps]);
        let agg = |s: &SequenceAttribution, spans: Vec<(usize, usize)>| Aggregator::new(SpansAggregator::new(spans, vec![]).with_function(AggregationFunction::Sum)).apply(s).unwrap();
        let once = agg(&seq, vec![a, b]);
        let first = agg(&seq, vec![a]);
        let shift = a.1 - a.0 - 1;
        let twice = agg(&first, vec![(b.0 - shift, b.1 - shift)]);
        prop_assert_eq!(&once.source, &twice.source);
        let (x, y) = (once.source_attributions.unwrap(), twice.source_attributions.unwrap());
        prop_assert_eq!(x.shape(), y.shape());
        // The same f32 sums of at most 4 values |v| < 5, grouped differently: each is off by at
        // most f32_sum(4 * 5, 4) from the exact sum.
        let tol = 2.0 * f32_sum(20.0, 4) as f32;
        for (p, q) in x.data().iter().zip(y.data()) {
            prop_assert!((p - q).abs() <= tol);
        }
        prop_assert_eq!(once.target_attributions, twice.target_attributions);
    }

    #[test]
    fn word_spans_cover_words(ids in proptest::collection::vec(proptest::option::of(0usize..3), 0..12)) {
        // Spans are ascending, non-overlapping and of length >= 2 with one shared id.
        let spans = word_spans(&ids);
        let mut prev = 0;
        for (s, e) in spans {
            prop_assert!(s >= prev && e >= s + 2 && e <= ids.len());
            prop_assert!(ids[s..e].iter().all(|i| i.is_some() && *i == ids[s]));
            prev = e;
        }
    }

    #[test]
    fn infer_word_ids_never_panics(tokens in proptest::collection::vec("[a-zĠ▁#<>\\[\\]A-Z/]{0,5}", 0..10)) {
        let toks: Vec<TokenWithId> = tokens.iter().map(|t| TokenWithId::new(t.clone(), 0)).collect();
        let ids = infer_word_ids(&toks);
        prop_assert_eq!(ids.len(), toks.len());
        let _ = split_spans(&toks, "[#/]", SplitMode::Start).unwrap();
        let _ = split_spans(&toks, "x*", SplitMode::End).unwrap();
    }
}
