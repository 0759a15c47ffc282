//! An aggregator and an aggregation function defined outside the crate,
//! registered and used by id in pipeline specs.

use inseq_aggregate::{
    Aggregate, AggregationContext, AggregationRegistry, Aggregator, Pipeline, Reduce,
    check_sequence,
};
use inseq_core::{Array, Error, Result, SequenceAttribution, TokenWithId};

/// `max - min`; NaN if any value is NaN or there are none.
#[derive(Debug)]
struct Range;

impl Reduce for Range {
    fn id(&self) -> &str {
        "range"
    }

    fn reduce(&self, values: &[f32]) -> f32 {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return f32::NAN;
        }
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = values.iter().copied().fold(f32::INFINITY, f32::min);
        max - min
    }
}

/// Squares every attribution score.
#[derive(Debug)]
struct Square;

impl Aggregate for Square {
    fn id(&self) -> &str {
        "square"
    }

    fn apply(
        &self,
        seq: &SequenceAttribution,
        _: &AggregationContext,
    ) -> Result<SequenceAttribution> {
        check_sequence(seq)?;
        let mut out = seq.clone();
        for a in [&mut out.source_attributions, &mut out.target_attributions]
            .into_iter()
            .flatten()
        {
            a.data_mut().iter_mut().for_each(|v| *v *= *v);
        }
        out.aggregations.push(self.id().into());
        Ok(out)
    }
}

fn registry() -> AggregationRegistry {
    let mut reg = AggregationRegistry::with_defaults();
    reg.register_function(Range);
    reg.register_aggregator("square", "Square every attribution score.", |args| {
        if args.function.is_some() {
            return Err(Error::invalid_arg("square", "takes no function"));
        }
        Ok(Aggregator::new(Square))
    });
    reg
}

/// "Hel lo Ġwor ld": 2 prompt tokens, 2 generated, hidden size 2.
fn sequence() -> SequenceAttribution {
    let nan = f32::NAN;
    #[rustfmt::skip]
    let scores = vec![
        // step 0    step 1
        1.0, 3.0,    0.0, 1.0, // Hel
        2.0, 4.0,    1.0, 4.0, // lo
        nan, nan,    0.0, 4.0, // Ġwor
        nan, nan,    nan, nan, // ld
    ];
    SequenceAttribution {
        source: None,
        target: ["Hel", "lo", "Ġwor", "ld"]
            .iter()
            .enumerate()
            .map(|(i, t)| TokenWithId::new(*t, i as i64))
            .collect(),
        source_attributions: None,
        target_attributions: Some(Array::new(vec![4, 2, 2], scores).unwrap()),
        step_scores: [("probability".to_string(), vec![0.5, 0.25])]
            .into_iter()
            .collect(),
        sequence_scores: Default::default(),
        attr_pos_start: 2,
        attr_pos_end: 4,
        aggregations: vec![],
    }
}

fn column(a: &Array, c: usize) -> Vec<f32> {
    (0..a.shape()[0]).map(|r| a.get(&[r, c])).collect()
}

fn assert_same(found: &[f32], expected: &[f32]) {
    assert_eq!(found.len(), expected.len(), "{found:?} vs {expected:?}");
    for (f, e) in found.iter().zip(expected) {
        assert!(
            (f.is_nan() && e.is_nan()) || (f - e).abs() < 1e-6,
            "{found:?} vs {expected:?}"
        );
    }
}

#[test]
fn custom_function_as_scores_aggregator() {
    let out = Pipeline::parse_with("range", &registry())
        .unwrap()
        .apply(&sequence())
        .unwrap();
    let t = out.target_attributions.unwrap();
    assert_eq!(t.shape(), &[4, 2]);
    // Ranges over the hidden size: step 0 [2, 2, NaN, NaN], step 1 [1, 3, 4, NaN];
    // normalised by the column totals 4 and 8.
    assert_same(&column(&t, 0), &[0.5, 0.5, f32::NAN, f32::NAN]);
    assert_same(&column(&t, 1), &[0.125, 0.375, 0.5, f32::NAN]);
    assert_eq!(out.aggregations, ["range", "normalize"]);
}

#[test]
fn custom_aggregator_and_function_in_a_pipeline() {
    let spec = "range, square, subwords:range";
    let out = Pipeline::parse_with(spec, &registry())
        .unwrap()
        .apply(&sequence())
        .unwrap();
    // After `range` and `square`: step 0 [0.25, 0.25, NaN, NaN], step 1
    // [0.015625, 0.140625, 0.25, NaN]. `subwords:range` merges the generated
    // word "Ġworld" (both steps) and the prompt word "Hello" (rows 0-1):
    // steps → [0.234375, 0.109375, NaN, NaN]; rows → [0.125, NaN].
    let t = out.target_attributions.unwrap();
    assert_eq!(t.shape(), &[2, 1]);
    assert_same(t.data(), &[0.125, f32::NAN]);
    let tokens: Vec<&str> = out.target.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(tokens, ["Hello", "Ġworld"]);
    // The override merges step scores too: 0.5 - 0.25.
    assert_same(&out.step_scores["probability"], &[0.25]);
    assert_eq!((out.attr_pos_start, out.attr_pos_end), (1, 2));
    assert_eq!(
        out.aggregations,
        ["range", "normalize", "square", "subwords"]
    );
}

#[test]
fn registered_ids_only_resolve_in_their_registry() {
    let reg = registry();
    assert!(Pipeline::parse("range").is_err());
    assert!(Pipeline::parse("square").is_err());
    assert!(Pipeline::parse_with("square:sum", &reg).is_err());
    assert!(Pipeline::parse_with("range:sum", &reg).is_err());
    let err = Pipeline::parse_with("cube", &reg).unwrap_err().to_string();
    assert!(err.contains("square") && err.contains("range"), "{err}");
    assert!(reg.aggregator_ids().contains(&"square".to_string()));
    assert!(reg.function_ids().contains(&"range".to_string()));
    assert_eq!(reg.function("range").unwrap().reduce(&[3.0, -1.0]), 4.0);
}

#[test]
fn context_word_ids_replace_markers() {
    let seq = Pipeline::parse("vnorm")
        .unwrap()
        .apply(&sequence())
        .unwrap();
    let words = Pipeline::parse("subwords").unwrap();
    let by_markers = words.apply(&seq).unwrap();
    assert_eq!(by_markers.target.len(), 2);
    let ctx = AggregationContext {
        target_word_ids: Some(vec![Some(0), Some(1), Some(1), Some(1)]),
        ..Default::default()
    };
    let by_ids = words.apply_with(&seq, &ctx).unwrap();
    let tokens: Vec<&str> = by_ids.target.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(tokens, ["Hel", "loĠworld"]);
    // Word ids of the wrong length are an error, not a panic.
    let bad = AggregationContext {
        target_word_ids: Some(vec![Some(0)]),
        ..ctx
    };
    assert!(words.apply_with(&seq, &bad).is_err());
}
