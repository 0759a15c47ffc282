//! Property-based fuzzing of the aggregators: random (consistent or not)
//! sequences with NaN and infinite scores, random pipelines, spans, split
//! patterns and index selections. Nothing may panic; inconsistent inputs are
//! errors; consistent ones keep consistent shapes.

use inseq_aggregate::*;
use inseq_core::{Array, AttributionOutput, SequenceAttribution, TokenWithId};
use proptest::prelude::*;

const TOKENS: [&str; 10] = [
    "Hel", "lo", "Ġla", "dies", "▁and", "##men", "</s>", ",", "Ġ", "",
];

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -10.0f32..10.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
    ]
}

fn tokens(n: usize) -> impl Strategy<Value = Vec<TokenWithId>> {
    prop::collection::vec(0..TOKENS.len(), n).prop_map(|ix| {
        ix.iter()
            .enumerate()
            .map(|(i, &t)| TokenWithId::new(TOKENS[t], i as i64))
            .collect()
    })
}

fn array(shape: Vec<usize>) -> impl Strategy<Value = Array> {
    let n = shape.iter().product::<usize>();
    prop::collection::vec(value(), n).prop_map(move |d| Array::new(shape.clone(), d).unwrap())
}

/// A consistent sequence: `[rows, n_steps, extra...]` arrays, one step score per step.
fn consistent() -> impl Strategy<Value = SequenceAttribution> {
    (
        1usize..6,
        0usize..4,
        prop::collection::vec(1usize..4, 0..3),
        any::<bool>(),
    )
        .prop_flat_map(|(n_target, src_len, extra, enc_dec)| {
            (
                0..=n_target,
                Just(n_target),
                Just(src_len),
                Just(extra),
                Just(enc_dec),
            )
        })
        .prop_flat_map(|(start, n_target, src_len, extra, enc_dec)| {
            let n_steps = n_target - start;
            let shape = |rows: usize| {
                let mut s = vec![rows, n_steps];
                s.extend(&extra);
                s
            };
            (
                tokens(n_target),
                tokens(src_len),
                array(shape(n_target)),
                array(shape(src_len)),
                prop::collection::vec(value(), n_steps),
                Just((start, n_target, enc_dec)),
            )
        })
        .prop_map(
            |(target, source, t_attr, s_attr, probs, (start, end, enc_dec))| SequenceAttribution {
                source: enc_dec.then_some(source),
                target,
                source_attributions: enc_dec.then_some(s_attr),
                target_attributions: Some(t_attr),
                step_scores: [("probability".to_string(), probs)].into_iter().collect(),
                sequence_scores: Default::default(),
                attr_pos_start: start,
                attr_pos_end: end,
                aggregations: vec![],
            },
        )
}

/// Anything: random shapes unrelated to the tokens and positions.
fn arbitrary_seq() -> impl Strategy<Value = SequenceAttribution> {
    (
        0usize..5,
        prop::collection::vec(0usize..4, 0..4),
        prop::collection::vec(0usize..4, 0..4),
        0usize..7,
        0usize..7,
        prop::collection::vec(value(), 0..4),
    )
        .prop_flat_map(|(n, ts, ss, start, end, scores)| {
            (
                tokens(n),
                prop::option::of(tokens(n)),
                prop::option::of(array(ts)),
                prop::option::of(array(ss)),
                Just((start, end, scores)),
            )
        })
        .prop_map(
            |(target, source, t, s, (start, end, scores))| SequenceAttribution {
                source,
                target,
                source_attributions: s,
                target_attributions: t,
                step_scores: [("entropy".to_string(), scores)].into_iter().collect(),
                sequence_scores: Default::default(),
                attr_pos_start: start,
                attr_pos_end: end,
                aggregations: vec![],
            },
        )
}

fn spec() -> impl Strategy<Value = String> {
    let items = [
        "scores",
        "subwords",
        "vnorm",
        "mean",
        "max",
        "min",
        "sum",
        "prod",
        "absmax",
        "subwords:sum",
        "scores:vnorm",
        "spans",
        "split",
        "pair",
        "slices",
        "words",
        "",
        "vnorm:sum",
        "subwords:median",
    ];
    prop::collection::vec(prop::sample::select(items.to_vec()), 0..4).prop_map(|v| v.join(","))
}

fn spans() -> impl Strategy<Value = Vec<Span>> {
    prop::collection::vec((0usize..8, 0usize..8), 0..4)
}

fn check_consistent(seq: &SequenceAttribution) {
    assert!(seq.attr_pos_start <= seq.attr_pos_end && seq.attr_pos_end <= seq.target.len());
    let n = seq.n_steps();
    if let Some(a) = &seq.target_attributions {
        assert_eq!(a.shape()[1], n);
        assert!(a.shape()[0] == seq.target.len() || a.shape()[0] == seq.attr_pos_end);
    }
    if let (Some(a), Some(s)) = (&seq.source_attributions, &seq.source) {
        assert_eq!(a.shape()[..2], [s.len(), n]);
    }
    for v in seq.step_scores.values() {
        assert_eq!(v.len(), n);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn pipelines_on_consistent_sequences(seq in consistent(), spec in spec()) {
        match Pipeline::parse(&spec) {
            Ok(p) => {
                if let Ok(out) = p.apply(&seq) {
                    check_consistent(&out);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("unknown") || msg.contains("invalid argument"), "{msg}");
            }
        }
        let d = aggregate_inseq_default(&seq).unwrap();
        check_consistent(&d);
        let d = default_aggregate(&seq);
        check_consistent(&d);
        prop_assert!(d.target_attributions.as_ref().is_some_and(|a| a.ndim() <= 2));
    }

    #[test]
    fn aggregators_on_arbitrary_sequences(seq in arbitrary_seq(), spec in spec()) {
        if let Ok(p) = Pipeline::parse(&spec) {
            let _ = p.apply(&seq);
        }
        let _ = aggregate_inseq_default(&seq);
        let out = AttributionOutput { sequence_attributions: vec![seq.clone()], info: Default::default() };
        let _ = aggregate_output_inseq_default(&out);
    }

    #[test]
    fn span_split_slice_and_pair(
        seq in consistent(),
        other in arbitrary_seq(),
        src in spans(),
        tgt in spans(),
        pattern in prop::sample::select(vec!["Ġ", "[", "(a|b", "\\s+", ".*", "", "dies$"]),
        select in prop::option::of(prop_oneof![
            (0usize..5).prop_map(IndexSelection::One),
            (0usize..5, 0usize..5).prop_map(|(a, b)| IndexSelection::Range(a, b)),
            prop::collection::vec(0usize..5, 0..4).prop_map(IndexSelection::Indices),
        ]),
    ) {
        let aggs = [
            Aggregator::spans(src.clone(), tgt.clone()),
            Aggregator::split(pattern),
            Aggregator::new(SlicesAggregator { source_spans: Some(src), target_spans: Some(tgt) }),
            Aggregator::new(PairAggregator { other }),
            Aggregator::new(PairAggregator { other: seq.clone() }),
            Aggregator::new(ScoresAggregator { function: None, post: PostProcess::Rescale, select }),
        ];
        for a in aggs {
            if let Ok(out) = a.apply(&seq) {
                check_consistent(&out);
            }
        }
    }

    #[test]
    fn functions_on_random_vectors(v in prop::collection::vec(value(), 0..16), ord in prop_oneof![Just(0.0f32), Just(1.0), Just(2.0), Just(f32::INFINITY), -3.0f32..3.0]) {
        for id in AGGREGATION_FUNCTION_IDS {
            let _ = AggregationFunction::from_id(id).unwrap().reduce(&v);
        }
        let _ = AggregationFunction::VNorm { ord }.reduce(&v);
    }
}

#[test]
fn unknown_ids_name_the_alternatives() {
    let err = Pipeline::parse("subwords,words").unwrap_err().to_string();
    assert!(err.contains("unknown aggregator `words`"), "{err}");
    assert!(err.contains("subwords") && err.contains("vnorm"), "{err}");
    let err = Pipeline::parse("scores:median").unwrap_err().to_string();
    assert!(err.contains("median"), "{err}");
}

#[test]
fn inconsistent_shapes_are_errors() {
    let seq = SequenceAttribution {
        source: None,
        target: vec![TokenWithId::new("a", 0), TokenWithId::new("b", 1)],
        source_attributions: None,
        target_attributions: Some(Array::full(vec![2, 3, 4], 1.0)),
        step_scores: Default::default(),
        sequence_scores: Default::default(),
        attr_pos_start: 1,
        attr_pos_end: 2,
        aggregations: vec![],
    };
    let err = Pipeline::parse("vnorm").unwrap().apply(&seq).unwrap_err();
    assert!(err.to_string().contains("shape mismatch"), "{err}");
    let bad = SequenceAttribution {
        attr_pos_end: 5,
        ..seq
    };
    let err = aggregate_inseq_default(&bad).unwrap_err();
    assert!(
        err.to_string().contains("attr_pos_start/attr_pos_end"),
        "{err}"
    );
}
