//! Finding the spans of tokens to merge: word boundaries (subwords) and regex splits.

use inseq_core::{Error, Result, TokenWithId};

use crate::nd::Span;

/// How a tokenizer marks word boundaries in its token strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubwordScheme {
    /// Byte-level BPE (GPT-2, Llama 3, ...): `Ġ` (a space) starts a word, `Ċ` is a newline.
    ByteLevelBpe,
    /// SentencePiece (Llama 2, T5, Marian, ...): `▁` starts a word.
    SentencePiece,
    /// WordPiece (BERT): `##` marks a continuation of the previous token.
    WordPiece,
}

/// Guesses the scheme from the markers present in `tokens` (`##` prefixes,
/// then `▁`, then `Ġ`/`Ċ`); `None` when there are none.
///
/// ```
/// use inseq_aggregate::{detect_subword_scheme, SubwordScheme};
/// use inseq_core::TokenWithId;
/// let toks: Vec<_> = ["▁Hel", "lo", "▁world"].iter().map(|t| TokenWithId::new(*t, 0)).collect();
/// assert_eq!(detect_subword_scheme(&toks), Some(SubwordScheme::SentencePiece));
/// ```
pub fn detect_subword_scheme(tokens: &[TokenWithId]) -> Option<SubwordScheme> {
    if tokens
        .iter()
        .any(|t| t.token.len() > 2 && t.token.starts_with("##"))
    {
        Some(SubwordScheme::WordPiece)
    } else if tokens.iter().any(|t| t.token.contains('▁')) {
        Some(SubwordScheme::SentencePiece)
    } else if tokens
        .iter()
        .any(|t| t.token.contains('Ġ') || t.token.contains('Ċ'))
    {
        Some(SubwordScheme::ByteLevelBpe)
    } else {
        None
    }
}

/// Whether `token` looks like a special token (`<s>`, `</s>`, `<|endoftext|>`, `[CLS]`...).
pub fn is_special_token(token: &str) -> bool {
    let t = token.trim();
    let angle = t.len() > 2
        && t.starts_with('<')
        && t.ends_with('>')
        && !t[1..t.len() - 1].contains(['<', '>']);
    let square = t.len() > 2
        && t.starts_with('[')
        && t.ends_with(']')
        && t[1..t.len() - 1]
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_');
    angle || square
}

/// Infers word ids (as a tokenizer's `word_ids()` gives them) from subword
/// markers: tokens with the same id belong to one word; special tokens get
/// `None`. Without any marker every token is its own word.
///
/// ```
/// use inseq_aggregate::infer_word_ids;
/// use inseq_core::TokenWithId;
/// let t = |s: &[&str]| s.iter().map(|t| TokenWithId::new(*t, 0)).collect::<Vec<_>>();
/// // byte-level BPE
/// assert_eq!(infer_word_ids(&t(&["Hel", "lo", "Ġla", "dies"])), vec![Some(0), Some(0), Some(1), Some(1)]);
/// // SentencePiece with a special token
/// assert_eq!(infer_word_ids(&t(&["▁phen", "omen", "al", "</s>"])), vec![Some(0), Some(0), Some(0), None]);
/// // WordPiece
/// assert_eq!(infer_word_ids(&t(&["[CLS]", "phen", "##omen", "##al"])), vec![None, Some(0), Some(0), Some(0)]);
/// ```
pub fn infer_word_ids(tokens: &[TokenWithId]) -> Vec<Option<usize>> {
    let scheme = detect_subword_scheme(tokens);
    let mut ids = Vec::with_capacity(tokens.len());
    let mut next = 0usize;
    let mut prev: Option<usize> = None;
    let mut prev_breaks = true; // the previous token forces the next one to start a word
    for tok in tokens {
        let t = tok.token.as_str();
        if is_special_token(t) {
            ids.push(None);
            prev = None;
            prev_breaks = true;
            continue;
        }
        let (starts_word, breaks_after) = match scheme {
            None => (true, true),
            Some(SubwordScheme::WordPiece) => (!t.starts_with("##"), false),
            Some(SubwordScheme::SentencePiece) => (t.starts_with('▁'), false),
            Some(SubwordScheme::ByteLevelBpe) => {
                let newline_only = !t.is_empty() && t.chars().all(|c| c == 'Ċ' || c == 'ĉ');
                (t.starts_with(['Ġ', 'Ċ', 'ĉ']), newline_only)
            }
        };
        let id = match prev {
            Some(p) if !starts_word && !prev_breaks => p,
            _ => {
                next += 1;
                next - 1
            }
        };
        ids.push(Some(id));
        prev = Some(id);
        prev_breaks = breaks_after;
    }
    ids
}

/// Spans of two or more consecutive tokens sharing a word id (the spans to
/// merge to get word-level attributions).
///
/// ```
/// use inseq_aggregate::word_spans;
/// assert_eq!(word_spans(&[None, Some(0), Some(0), Some(1), Some(2), Some(2), Some(2)]), vec![(1, 3), (4, 7)]);
/// ```
pub fn word_spans(word_ids: &[Option<usize>]) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut start = 0;
    for i in 1..=word_ids.len() {
        let same = i < word_ids.len() && word_ids[i].is_some() && word_ids[i] == word_ids[i - 1];
        if !same {
            if i - start > 1 {
                spans.push((start, i));
            }
            start = i;
        }
    }
    spans
}

/// Python Inseq's `SubwordAggregator.get_spans`: with `is_suffix_symbol =
/// false`, tokens starting with one of `special_chars` start a word (`▁phen
/// omen al`); with `true`, tokens starting with one of them continue the
/// previous one. Reproduces Inseq 0.7.1 exactly, including that a subword
/// span ending with the last token leaves that token out.
///
/// ```
/// use inseq_aggregate::marker_spans;
/// use inseq_core::TokenWithId;
/// let toks: Vec<_> = ["▁Hel", "lo", "▁wor", "ld", "▁!"].iter().map(|t| TokenWithId::new(*t, 0)).collect();
/// assert_eq!(marker_spans(&toks, &["▁"], false), vec![(0, 2), (2, 4)]);
/// ```
pub fn marker_spans(
    tokens: &[TokenWithId],
    special_chars: &[&str],
    is_suffix_symbol: bool,
) -> Vec<Span> {
    let has_special = tokens.iter().any(|t| {
        special_chars
            .iter()
            .any(|s| !s.is_empty() && t.token.contains(s))
    });
    if !has_special {
        return vec![];
    }
    let mut spans = Vec::new();
    let mut last_prefix = 0;
    for (i, tok) in tokens.iter().enumerate() {
        let starts = special_chars
            .iter()
            .any(|s| !s.is_empty() && tok.token.starts_with(s));
        if starts == is_suffix_symbol {
            if i == tokens.len() - 1 && i - last_prefix > 1 {
                spans.push((last_prefix, i));
            }
            continue;
        }
        if i - last_prefix > 1 {
            spans.push((last_prefix, i));
        }
        last_prefix = i;
    }
    spans
}

/// How [`split_spans`] treats the tokens matching the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitMode {
    /// Matches are kept as spans of their own (`single`).
    #[default]
    Single,
    /// Matches are joined to the tokens that follow them (`start`).
    Start,
    /// Matches are joined to the tokens that precede them (`end`).
    End,
}

impl SplitMode {
    /// Parses `single`, `start` or `end`.
    pub fn from_id(id: &str) -> Result<Self> {
        match id {
            "single" => Ok(Self::Single),
            "start" => Ok(Self::Start),
            "end" => Ok(Self::End),
            _ => Err(Error::UnknownId {
                kind: "split mode",
                id: id.into(),
                available: vec!["single".into(), "start".into(), "end".into()],
            }),
        }
    }
}

/// Python Inseq's `StringSplitAggregator.get_spans`: the tokens are joined into
/// one string, `pattern` (a regular expression) is searched in it, and the
/// token spans covering the matches and the text between them are returned
/// (empty when nothing matches).
///
/// ```
/// use inseq_aggregate::{split_spans, SplitMode};
/// use inseq_core::TokenWithId;
/// let toks: Vec<_> = ["Hel", "lo", ",", "Ġwor", "ld", "."].iter().map(|t| TokenWithId::new(*t, 0)).collect();
/// assert_eq!(split_spans(&toks, "[,.]", SplitMode::Single).unwrap(), vec![(0, 2), (2, 3), (3, 5), (5, 6)]);
/// assert_eq!(split_spans(&toks, "[,.]", SplitMode::End).unwrap(), vec![(0, 3), (3, 6)]);
/// ```
pub fn split_spans(tokens: &[TokenWithId], pattern: &str, mode: SplitMode) -> Result<Vec<Span>> {
    let re = regex::Regex::new(pattern)
        .map_err(|e| Error::invalid_arg("split_pattern", e.to_string()))?;
    let matches = without_overlaps(&matched_token_spans(tokens, &re));
    if matches.is_empty() {
        return Ok(vec![]);
    }
    let spans = with_gaps(&matches, tokens.len());
    Ok(match mode {
        SplitMode::Single => spans.into_iter().map(|(s, _)| s).collect(),
        SplitMode::Start | SplitMode::End => joined_to_matches(&spans, mode),
    })
}

/// The distinct token spans covering the matches of `re` in the joined tokens.
fn matched_token_spans(tokens: &[TokenWithId], re: &regex::Regex) -> Vec<Span> {
    let mut full = String::new();
    let mut token_spans = Vec::with_capacity(tokens.len());
    for t in tokens {
        token_spans.push((full.len(), full.len() + t.token.len()));
        full.push_str(&t.token);
    }
    let mut matches: Vec<Span> = Vec::new();
    for m in re.find_iter(&full) {
        let (start, end) = (m.start(), m.end());
        let ts = token_spans
            .iter()
            .position(|&(s, e)| s <= start && start < e);
        let te = token_spans.iter().position(|&(s, e)| s < end && end <= e);
        if let (Some(ts), Some(te)) = (ts, te) {
            let span = (ts, te + 1);
            if !matches.contains(&span) {
                matches.push(span);
            }
        }
    }
    matches
}

/// Splits overlapping token spans (tokens shared by two matches); empty spans are dropped.
fn without_overlaps(matches: &[Span]) -> Vec<Span> {
    let mut non_overlapping: Vec<Span> = Vec::new();
    for (i, &(start, end)) in matches.iter().enumerate() {
        let (mut cs, mut ce) = (start, end);
        if i + 1 < matches.len() && end > matches[i + 1].0 {
            ce = matches[i + 1].0;
        }
        if let Some(&(_, last_end)) = non_overlapping.last()
            && start < last_end
        {
            cs = last_end;
        }
        non_overlapping.push((cs, ce));
        if ce != end && i + 1 < matches.len() && end < matches[i + 1].1 {
            non_overlapping.push((ce, end));
        }
    }
    non_overlapping.into_iter().filter(|(s, e)| e > s).collect()
}

/// The (non-empty) `matches` and the spans between them up to `len`, each
/// flagged as a match or not.
fn with_gaps(matches: &[Span], len: usize) -> Vec<(Span, bool)> {
    let mut spans: Vec<(Span, bool)> = Vec::new();
    if matches[0].0 != 0 {
        spans.push(((0, matches[0].0), false));
    }
    for w in matches.windows(2) {
        spans.push((w[0], true));
        if w[0].1 < w[1].0 {
            spans.push(((w[0].1, w[1].0), false));
        }
    }
    let last = *matches.last().unwrap_or(&(0, 0));
    spans.push((last, true));
    if last.1 < len {
        spans.push(((last.1, len), false));
    }
    spans
}

/// Joins matches to the tokens that follow (`Start`) or precede (`End`) them.
fn joined_to_matches(spans: &[(Span, bool)], mode: SplitMode) -> Vec<Span> {
    let mut merged = Vec::new();
    let mut cur = 0;
    for &((start, end), is_match) in spans {
        if !is_match {
            continue;
        }
        if mode == SplitMode::Start && start != cur {
            merged.push((cur, start));
            cur = start;
        } else if mode == SplitMode::End {
            merged.push((cur, end));
            cur = end;
        }
    }
    let total = spans.last().map_or(0, |(s, _)| s.1);
    if cur != total {
        merged.push((cur, total));
    }
    merged
}

/// Python Inseq's `aggregate_token_sequence`: each span becomes one token, the
/// concatenation of its tokens, with id `-1`.
///
/// ```
/// use inseq_aggregate::merge_tokens;
/// use inseq_core::TokenWithId;
/// let toks: Vec<_> = ["Hel", "lo", "Ġworld"].iter().enumerate().map(|(i, t)| TokenWithId::new(*t, i as i64)).collect();
/// let merged = merge_tokens(&toks, &[(0, 2)]);
/// assert_eq!(merged, vec![TokenWithId::new("Hello", -1), TokenWithId::new("Ġworld", 2)]);
/// ```
pub fn merge_tokens(tokens: &[TokenWithId], spans: &[Span]) -> Vec<TokenWithId> {
    if spans.is_empty() {
        return tokens.to_vec();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if let Some(&(s, e)) = spans.iter().find(|(s, _)| *s == i) {
            let end = e.min(tokens.len()).max(s + 1);
            out.push(TokenWithId::new(
                tokens[s..end]
                    .iter()
                    .map(|t| t.token.as_str())
                    .collect::<String>(),
                -1,
            ));
            i = end;
        } else {
            out.push(tokens[i].clone());
            i += 1;
        }
    }
    out
}
