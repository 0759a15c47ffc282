//! Which target positions are attributed: Inseq 0.7.1's `attr_pos_start`/`attr_pos_end` rules
//! (`check_attribute_positions` and `FeatureAttribution.prepare_and_attribute`).

use inseq_core::{Error, Result};

/// The requested span and what the target holds.
///
/// ```
/// use inseq::AttributedSpan;
/// // A decoder-only target of 8 tokens whose prompt holds 5: by default the generated ones.
/// let span = AttributedSpan { len: 8, prefix_len: 5, decoder_only: true, start: None, end: None, prompt_positions: false };
/// assert_eq!(span.resolve().unwrap(), (5, 8));
/// // A start inside the prompt is clamped to the prompt length, as Inseq does...
/// assert_eq!(AttributedSpan { start: Some(2), ..span }.resolve().unwrap(), (5, 8));
/// // ...unless prompt positions are asked for explicitly; negative positions count from the end.
/// let prompt = AttributedSpan { start: Some(2), end: Some(-1), prompt_positions: true, ..span };
/// assert_eq!(prompt.resolve().unwrap(), (2, 7));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AttributedSpan {
    /// Tokens in the target (decoder-only: prompt included; encoder-decoder: decoder start included).
    pub len: usize,
    /// Tokens before the first one to attribute by default: the prompt (decoder-only) or the
    /// decoder start tokens (encoder-decoder).
    pub prefix_len: usize,
    /// Whether the model is decoder-only (its prompt positions are not attributed by default).
    pub decoder_only: bool,
    /// `attr_pos_start` as given (negative: counted from the end).
    pub start: Option<isize>,
    /// `attr_pos_end` as given (negative: counted from the end; past the end: the end).
    pub end: Option<isize>,
    /// Decoder-only models: attribute a start inside the prompt instead of clamping it to the
    /// prompt length (an extension of Inseq, which always clamps).
    pub prompt_positions: bool,
}

impl AttributedSpan {
    /// The attributed positions `[start, end)`, or an error naming the invalid position.
    ///
    /// Inseq's rules: decoder-only models start at the prompt length at the earliest (a smaller
    /// or negative start is raised to it, unless [`prompt_positions`](Self::prompt_positions));
    /// encoder-decoder models start after the decoder start tokens by default; a negative
    /// position `p` means `len + p` and one below `-len` is an error; an end past the target is
    /// the target's end; an empty span is an error. Position 0 is never attributed: no prefix
    /// predicts it.
    pub fn resolve(&self) -> Result<(usize, usize)> {
        let len = self.len as isize;
        let from_end = |name: &str, p: isize| -> Result<isize> {
            match p {
                p if p < -len => Err(Error::invalid_arg(
                    name,
                    format!(
                        "{p} is before the start of the target ({} tokens)",
                        self.len
                    ),
                )),
                p if p < 0 => Ok(len + p),
                p => Ok(p),
            }
        };
        let prefix = self.prefix_len as isize;
        let start = match self.start {
            None => prefix,
            Some(s) if self.decoder_only && !self.prompt_positions => s.max(prefix),
            Some(s) => from_end("attr_pos_start", s)?,
        };
        let end = match self.end {
            None => len,
            Some(e) => from_end("attr_pos_end", e)?.min(len),
        };
        if start == 0 {
            return Err(Error::invalid_arg(
                "attr_pos_start",
                "position 0 cannot be attributed: no prefix predicts the first token",
            ));
        }
        if start >= end {
            return Err(Error::InvalidInput(format!(
                "nothing to attribute: attr_pos_start {start} >= attr_pos_end {end} (target has {} tokens, {} before the first attributable one)",
                self.len, self.prefix_len
            )));
        }
        Ok((start as usize, end as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(decoder_only: bool, start: Option<isize>, end: Option<isize>) -> AttributedSpan {
        AttributedSpan {
            len: 10,
            prefix_len: if decoder_only { 4 } else { 1 },
            decoder_only,
            start,
            end,
            prompt_positions: false,
        }
    }

    /// Each case against what Inseq 0.7.1's code gives for the same arguments.
    #[test]
    fn matches_inseq_rules() {
        type Case = (bool, Option<isize>, Option<isize>, Option<(usize, usize)>);
        let cases: [Case; 14] = [
            (true, None, None, Some((4, 10))),
            (true, Some(2), None, Some((4, 10))),
            (true, Some(-3), None, Some((4, 10))), // Inseq clamps before resolving negatives
            (true, Some(6), Some(8), Some((6, 8))),
            (true, None, Some(-2), Some((4, 8))),
            (true, None, Some(40), Some((4, 10))),
            (true, Some(10), None, None),
            (true, None, Some(3), None),
            (false, None, None, Some((1, 10))),
            (false, Some(-3), None, Some((7, 10))),
            (false, Some(-11), None, None),
            (false, Some(3), Some(-8), None),
            (false, Some(0), None, None),
            (false, Some(2), Some(-11), None),
        ];
        for (decoder_only, start, end, want) in cases {
            let got = span(decoder_only, start, end).resolve().ok();
            assert_eq!(
                got, want,
                "decoder_only {decoder_only}, start {start:?}, end {end:?}"
            );
        }
    }

    #[test]
    fn prompt_positions_are_an_explicit_option() {
        let s = AttributedSpan {
            prompt_positions: true,
            ..span(true, Some(1), None)
        };
        assert_eq!(s.resolve().unwrap(), (1, 10));
        let s = AttributedSpan {
            prompt_positions: true,
            ..span(true, Some(-3), None)
        };
        assert_eq!(s.resolve().unwrap(), (7, 10));
    }
}
