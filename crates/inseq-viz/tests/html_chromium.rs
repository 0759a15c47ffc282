//! The HTML page renders in headless Chromium: its script runs, every token
//! and heatmap is in the DOM, and a screenshot is produced. Skipped (with a
//! note) when `chromium` is not installed, unless `INSEQ_REQUIRE_CHROMIUM=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use inseq_core::{Array, SequenceAttribution, TokenWithId};

fn chromium() -> Option<PathBuf> {
    let required = std::env::var("INSEQ_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            !required,
            "INSEQ_REQUIRE_CHROMIUM=1 but no chromium found on PATH"
        );
        eprintln!(
            "note: chromium not found; skipping the headless browser test (install it with .ci/deps-viz.sh)"
        );
    }
    found
}

/// Runs chromium headless with `args`, killing it after 90 s; returns stdout.
fn run_chromium(bin: &Path, profile: &Path, args: &[String]) -> String {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("cannot start chromium");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn sequences() -> Vec<SequenceAttribution> {
    let enc_dec = SequenceAttribution {
        source: Some(vec![
            TokenWithId::new("▁Le", 5),
            TokenWithId::new("▁chat", 6),
            TokenWithId::new("</s>", 2),
        ]),
        target: vec![
            TokenWithId::new("</s>", 2),
            TokenWithId::new("▁The", 7),
            TokenWithId::new("▁cat", 8),
        ],
        source_attributions: Some(
            Array::new(vec![3, 2], vec![0.6, 0.1, 0.2, 0.7, 0.05, 0.05]).unwrap(),
        ),
        target_attributions: Some(
            Array::new(
                vec![3, 2],
                vec![0.15, 0.05, f32::NAN, 0.1, f32::NAN, f32::NAN],
            )
            .unwrap(),
        ),
        step_scores: [("probability".to_string(), vec![0.42, 0.87])]
            .into_iter()
            .collect(),
        sequence_scores: Default::default(),
        attr_pos_start: 1,
        attr_pos_end: 3,
        aggregations: vec!["vnorm".into(), "normalize".into()],
    };
    // Decoder-only, granular (3-D) scores, tokens that need escaping.
    let target: Vec<TokenWithId> = ["Hel", "lo", "Ġ<b>&amp;", "Ġworld", "Ġzebra"]
        .iter()
        .enumerate()
        .map(|(i, t)| TokenWithId::new(*t, i as i64))
        .collect();
    let mut a = Array::full(vec![5, 3, 2], f32::NAN);
    for r in 0..5 {
        for c in 0..3 {
            if r < 2 + c {
                a.set(&[r, c, 0], (r as f32 - 1.5) * 0.3);
                a.set(&[r, c, 1], 0.2);
            }
        }
    }
    let dec_only = SequenceAttribution {
        source: None,
        target,
        source_attributions: None,
        target_attributions: Some(a),
        step_scores: Default::default(),
        sequence_scores: Default::default(),
        attr_pos_start: 2,
        attr_pos_end: 5,
        aggregations: vec![],
    };
    vec![enc_dec, dec_only]
}

#[test]
fn html_renders_in_headless_chromium() {
    let html = inseq_viz::render_html(&sequences());
    // Self-contained: nothing fetched at view time.
    for needle in ["src=\"http", "href=\"http", "<link", "@import", "url("] {
        assert!(
            !html.contains(needle),
            "page references an external resource: {needle}"
        );
    }
    assert!(html.contains("&lt;b&gt;&amp;amp;"), "tokens are escaped");
    let Some(bin) = chromium() else { return };
    let dir = std::env::temp_dir().join(format!("inseq-viz-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("attributions.html");
    inseq_viz::save_html(&page, &sequences()).unwrap();
    let url = format!("file://{}", page.display());

    let dom = run_chromium(
        &bin,
        &dir.join("profile-dom"),
        &["--dump-dom".into(), url.clone()],
    );
    assert!(
        dom.contains("data-inseq-ready=\"2\""),
        "the inline script did not run:\n{dom}"
    );
    for token in [
        "Le",
        "chat",
        "The",
        "cat",
        "world",
        "zebra",
        "&lt;b&gt;&amp;amp;",
        "probability",
    ] {
        assert!(
            dom.contains(token),
            "token {token} missing from the rendered DOM"
        );
    }
    assert_eq!(dom.matches("<table class=\"heatmap\"").count(), 2);
    assert!(dom.contains("data-value=\"0.87\""), "hover values present");

    let shot = dir.join("shot.png");
    run_chromium(
        &bin,
        &dir.join("profile-shot"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,900".into(),
            url,
        ],
    );
    let png = std::fs::read(&shot).expect("no screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 5_000,
        "screenshot suspiciously small ({} bytes)",
        png.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}
