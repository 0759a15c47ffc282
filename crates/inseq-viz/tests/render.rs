//! Terminal and SVG rendering.

use inseq_core::{Array, SequenceAttribution, TokenWithId};
use inseq_viz::{TerminalOptions, render_svg, render_terminal};

pub fn enc_dec(steps: usize) -> SequenceAttribution {
    let source: Vec<TokenWithId> = ["▁Le", "▁chat", "</s>"]
        .iter()
        .enumerate()
        .map(|(i, t)| TokenWithId::new(*t, i as i64))
        .collect();
    let target: Vec<TokenWithId> = std::iter::once(TokenWithId::new("</s>", 2))
        .chain((0..steps).map(|i| TokenWithId::new(format!("▁tok{i}"), 10 + i as i64)))
        .collect();
    let src: Vec<f32> = (0..3 * steps).map(|i| ((i as f32) * 0.37).sin()).collect();
    let mut tgt = Array::full(vec![steps + 1, steps], f32::NAN);
    for r in 0..=steps {
        for c in 0..steps {
            if r <= c {
                tgt.set(&[r, c], -0.1 * (r + c) as f32);
            }
        }
    }
    SequenceAttribution {
        source: Some(source),
        target,
        source_attributions: Some(Array::new(vec![3, steps], src).unwrap()),
        target_attributions: Some(tgt),
        step_scores: [(
            "probability".to_string(),
            (0..steps).map(|i| 1.0 / (i + 2) as f32).collect(),
        )]
        .into_iter()
        .collect(),
        sequence_scores: Default::default(),
        attr_pos_start: 1,
        attr_pos_end: steps + 1,
        aggregations: vec![],
    }
}

#[test]
fn plain_terminal_has_tokens_values_and_no_escapes() {
    let seq = enc_dec(3);
    let text = render_terminal(
        &seq,
        &TerminalOptions {
            color: false,
            width: 120,
            ..Default::default()
        },
    );
    assert!(!text.contains('\x1b'));
    for needle in [
        "Source:",
        "Target:",
        "Step scores:",
        "chat",
        "tok0",
        "tok2",
        "probability",
        "0.50",
        "-0.10",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // NaN cells are blank, not "NaN".
    assert!(!text.contains("NaN"));
}

#[test]
fn colour_terminal_uses_red_and_blue() {
    let seq = enc_dec(3);
    let text = render_terminal(
        &seq,
        &TerminalOptions {
            color: true,
            width: 120,
            ..Default::default()
        },
    );
    assert!(text.contains("\x1b[48;2;"));
    assert!(text.contains("\x1b[0m"));
    // Positive scores are red (r > b), negative blue (b > r).
    let bgs: Vec<(u8, u8, u8)> = text
        .split("\x1b[48;2;")
        .skip(1)
        .map(|s| {
            let p: Vec<u8> = s
                .split('m')
                .next()
                .unwrap()
                .split(';')
                .map(|x| x.parse().unwrap())
                .collect();
            (p[0], p[1], p[2])
        })
        .collect();
    assert!(bgs.iter().any(|(r, _, b)| r > b));
    assert!(bgs.iter().any(|(r, _, b)| b > r));
}

#[test]
fn long_sequences_wrap_to_width() {
    let seq = enc_dec(40);
    for width in [40, 80, 100] {
        let text = render_terminal(
            &seq,
            &TerminalOptions {
                color: false,
                width,
                ..Default::default()
            },
        );
        for line in text.lines() {
            assert!(
                line.chars().count() <= width,
                "line wider than {width}: {line:?}"
            );
        }
        assert!(text.contains("[generated tokens 1-"), "{text}");
        // Every generated token appears in some block header.
        assert!(text.contains("tok39"));
    }
    // With colours the visible width is the same.
    let text = render_terminal(
        &seq,
        &TerminalOptions {
            color: true,
            width: 60,
            ..Default::default()
        },
    );
    for line in text.lines() {
        let visible: String = strip_ansi(line);
        assert!(visible.chars().count() <= 60, "{visible:?}");
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        if c == '\x1b' {
            esc = true;
        } else if esc {
            if c == 'm' {
                esc = false;
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn granular_and_degenerate_inputs_do_not_panic() {
    let mut seq = enc_dec(2);
    seq.source_attributions = Some(Array::full(vec![3, 2, 4], 0.5));
    seq.target_attributions = Some(Array::full(vec![3, 2, 4], 0.25));
    let text = render_terminal(
        &seq,
        &TerminalOptions {
            color: false,
            ..Default::default()
        },
    );
    assert!(text.contains("aggregated with vnorm"), "{text}");
    let empty = SequenceAttribution {
        source: None,
        target: vec![],
        source_attributions: None,
        target_attributions: None,
        step_scores: Default::default(),
        sequence_scores: Default::default(),
        attr_pos_start: 0,
        attr_pos_end: 0,
        aggregations: vec![],
    };
    assert!(
        render_terminal(
            &empty,
            &TerminalOptions {
                width: 0,
                ..Default::default()
            }
        )
        .contains("no generated tokens")
    );
    assert!(render_svg(&empty).starts_with("<svg"));
    let html = inseq_viz::render_html(&[empty]);
    assert!(html.contains("<table"));
    // Inconsistent shapes are shown as notes rather than panicking.
    let mut odd = enc_dec(2);
    odd.source_attributions = Some(Array::full(vec![3], 1.0));
    let _ = render_terminal(&odd, &TerminalOptions::default());
    let _ = render_svg(&odd);
}

#[test]
fn svg_structure() {
    let mut seq = enc_dec(3);
    seq.target[1].token = "<&\"x".into();
    let svg = render_svg(&seq);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("&lt;&amp;&quot;x"));
    assert!(!svg.contains("<&"));
    // 3 source rows + 4 target rows + 1 step row, 3 columns each (NaN cells included).
    assert_eq!(svg.matches("<rect ").count(), 1 + 8 * 3);
    assert_eq!(svg.matches("<title>").count(), 3 * 3 + 6 + 3);
    let path = std::env::temp_dir().join(format!("inseq-viz-test-{}.svg", std::process::id()));
    inseq_viz::save_svg(&path, &seq).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), svg);
    std::fs::remove_file(&path).ok();
}
