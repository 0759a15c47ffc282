//! Byte-level BPE tokens (GPT-2, SmolLM2, Llama 3, Qwen2) shown as the text they encode: the
//! tokenizer stores each byte as one of 256 printable characters (`Ġ` for a space, `Ã©` for the
//! two bytes of `é`), which people should not have to read.

use inseq_core::TokenWithId;

/// The byte each of the 256 characters of GPT-2's `bytes_to_unicode` table stands for.
fn byte_of(c: char) -> Option<u8> {
    let c = c as u32;
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    if printable(c) {
        return Some(c as u8);
    }
    // The other bytes, in increasing order, are characters 256, 257, ...
    let n = c.checked_sub(256)?;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .map(|b| b as u8)
}

/// The text a byte-level token encodes; bytes that do not form UTF-8 (a character split between
/// tokens) are shown as `\xNN`. `None` when a character is outside the byte alphabet.
fn decode(token: &str) -> Option<String> {
    let bytes: Vec<u8> = token.chars().map(byte_of).collect::<Option<_>>()?;
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for b in chunk.invalid() {
            text.push_str(&format!("\\x{b:02x}"));
        }
    }
    Some(text)
}

/// Every token as shown to people (see [`crate::display_token`]); the tokens of a byte-level BPE
/// vocabulary (detected from its `Ġ`/`Ċ` markers) are first decoded to the text they encode.
///
/// ```
/// use inseq_core::TokenWithId;
/// let tok = |t: &str| TokenWithId { token: t.into(), id: 0 };
/// let shown = inseq_viz::display_tokens(&[tok("Le"), tok("Ġcaf"), tok("Ã©"), tok("Ġæ"), tok("Ĺ¥")]);
/// assert_eq!(shown, ["Le", "caf", "é", "\\xe6", "\\x97\\xa5"]);
/// ```
pub fn display_tokens(tokens: &[TokenWithId]) -> Vec<String> {
    let byte_level = matches!(
        inseq_aggregate::detect_subword_scheme(tokens),
        Some(inseq_aggregate::SubwordScheme::ByteLevelBpe)
    );
    tokens
        .iter()
        .map(|t| match byte_level.then(|| decode(&t.token)).flatten() {
            Some(text) => crate::display_token(&text),
            None => crate::display_token(&t.token),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_table_is_a_bijection() {
        let chars: Vec<char> = (0u32..400).filter_map(char::from_u32).collect();
        let mut seen = [false; 256];
        for c in chars {
            if let Some(b) = byte_of(c) {
                assert!(!seen[b as usize], "byte {b} twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_of('Ġ'), Some(b' '));
        assert_eq!(byte_of('Ċ'), Some(b'\n'));
    }

    #[test]
    fn whole_and_split_characters() {
        assert_eq!(decode("ĠZÃ¼rich").as_deref(), Some(" Zürich"));
        assert_eq!(decode("ðŁĮ¸").as_deref(), Some("🌸"));
        assert_eq!(decode("ðŁ").as_deref(), Some("\\xf0\\x9f"));
        assert_eq!(decode("日本"), None);
    }
}
