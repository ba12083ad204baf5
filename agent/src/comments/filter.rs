//! The blocklist: multi-pattern matching (Aho–Corasick) over a normalised
//! form of the text, so full-width letters, case, accents, look-alike
//! letters and separators slipped between letters do not get a blocked word
//! through.
//!
//! # Normalisation (text and patterns alike)
//!
//! 1. Unicode compatibility decomposition (NFKD): full-width and half-width
//!    forms, ligatures, circled and styled letters (`ｂａｄ`, `ﬁ`, `𝐛𝐚𝐝`)
//!    become their plain letters, accented letters letter + mark;
//! 2. combining marks are dropped (`bäd` → `bad`), and so are invisible
//!    characters (zero-width space/joiners, word joiner, BOM, soft hyphen,
//!    variation selectors, bidi controls);
//! 3. lower case (full Unicode lower-casing);
//! 4. confusables: Cyrillic and Greek letters that look like Latin ones
//!    (`а е о р с у х і ј ѕ ԁ һ ո`, `α β ε ι κ ν ο ρ τ υ χ`) and common
//!    digit/symbol substitutions (`0→o 1→i 3→e 4→a 5→s 7→t 8→b 9→g @→a $→s`)
//!    map to the Latin letter ([`confusable`]);
//! 5. every run of other characters (spaces, punctuation, symbols) becomes
//!    one space.
//!
//! # Matching
//!
//! * A plain pattern (`bad word`) matches whole words of the normalised
//!   text: `bad word!` and `BAD  W0RD` match, `badwording` does not.
//! * A pattern in stars (`*bad*`) matches anywhere, also across removed
//!   separators: `b.a.d`, `b a d` and `xbadx` all match.
//! * `bad*` matches words starting with `bad`, `*bad` words ending with it.
//!
//! Not covered: transliteration between scripts (a word written in another
//! alphabet by sound), images of text, and meaning (a filter of words, not a
//! classifier). Letters outside the confusables table are compared as they
//! are after steps 1–3.

use aho_corasick::{AhoCorasick, MatchKind};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Longest pattern (bytes) and most patterns accepted from the scheduler.
pub const MAX_PATTERN_BYTES: usize = 256;
pub const MAX_PATTERNS: usize = 100_000;

/// The Latin letter a look-alike stands for, if it is one.
pub fn confusable(c: char) -> Option<char> {
    Some(match c {
        // Cyrillic
        'а' => 'a',
        'в' => 'b',
        'е' | 'ё' | 'є' => 'e',
        'һ' => 'h',
        'і' | 'ї' | 'ӏ' => 'i',
        'ј' => 'j',
        'к' => 'k',
        'м' => 'm',
        'н' => 'h',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'т' => 't',
        'у' | 'ү' => 'y',
        'х' => 'x',
        'ѕ' => 's',
        'ԁ' => 'd',
        'ո' => 'n',
        'ԛ' => 'q',
        'ԝ' => 'w',
        // Greek
        'α' => 'a',
        'β' => 'b',
        'ε' => 'e',
        'η' => 'n',
        'ι' => 'i',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        'ω' => 'w',
        // Digits and symbols used for letters
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        '8' => 'b',
        '9' => 'g',
        _ => return None,
    })
}

/// Invisible characters used to split words without showing it.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{E0000}'..='\u{E0FFF}')
}

/// The normalised form of `text` (steps 1–5 above): lower-case letters and
/// digits of the skeleton, single spaces between words, no space at either
/// end.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.nfkd() {
        if is_combining_mark(c) || invisible(c) {
            continue;
        }
        for l in c.to_lowercase() {
            let l = confusable(l).unwrap_or(l);
            if l.is_alphanumeric() {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.push(l);
            } else {
                space = true;
            }
        }
    }
    out
}

/// How a pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Whole words.
    Words,
    /// Words starting with it.
    Prefix,
    /// Words ending with it.
    Suffix,
}

/// A compiled blocklist.
#[derive(Debug, Clone, Default)]
pub struct Blocklist {
    /// Patterns matched on the spaced form (words, prefixes, suffixes).
    words: Option<AhoCorasick>,
    word_kinds: Vec<Kind>,
    /// Patterns matched on the form without spaces.
    anywhere: Option<AhoCorasick>,
    len: usize,
}

impl Blocklist {
    /// Compiles `patterns` (see the module docs). Empty patterns, patterns
    /// that normalise to nothing and patterns over [`MAX_PATTERN_BYTES`] are
    /// skipped; the number skipped is returned with the list.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> (Blocklist, usize) {
        let mut words = Vec::new();
        let mut kinds = Vec::new();
        let mut anywhere = Vec::new();
        let mut skipped = 0;
        for raw in patterns.into_iter().take(MAX_PATTERNS) {
            let p = raw.trim();
            let starts = p.starts_with('*');
            let ends = p.len() > 1 && p.ends_with('*');
            let inner = p.trim_matches('*');
            let n = normalise(inner);
            if p.len() > MAX_PATTERN_BYTES || n.is_empty() {
                skipped += 1;
                continue;
            }
            match (starts, ends) {
                (true, true) => anywhere.push(n.replace(' ', "")),
                (false, true) => {
                    words.push(n);
                    kinds.push(Kind::Prefix);
                }
                (true, false) => {
                    words.push(n);
                    kinds.push(Kind::Suffix);
                }
                (false, false) => {
                    words.push(n);
                    kinds.push(Kind::Words);
                }
            }
        }
        let len = words.len() + anywhere.len();
        let build = |pats: &[String]| {
            if pats.is_empty() {
                return None;
            }
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(pats)
                .ok()
        };
        (
            Blocklist {
                words: build(&words),
                word_kinds: kinds,
                anywhere: build(&anywhere),
                len,
            },
            skipped,
        )
    }

    /// Patterns in force.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `text` contains a blocked pattern.
    pub fn blocks(&self, text: &str) -> bool {
        if self.len == 0 {
            return false;
        }
        let n = normalise(text);
        if let Some(ac) = &self.anywhere {
            let compact: String = n.chars().filter(|c| *c != ' ').collect();
            if ac.is_match(&compact) {
                return true;
            }
        }
        let Some(ac) = &self.words else {
            return false;
        };
        let bytes = n.as_bytes();
        let boundary_before = |i: usize| i == 0 || bytes[i - 1] == b' ';
        let boundary_after = |i: usize| i == bytes.len() || bytes[i] == b' ';
        // Overlapping matches: a word may hide behind a longer pattern
        // that does not match at word boundaries.
        ac.find_overlapping_iter(&n).any(|m| {
            let kind = self
                .word_kinds
                .get(m.pattern().as_usize())
                .copied()
                .unwrap_or(Kind::Words);
            match kind {
                Kind::Words => boundary_before(m.start()) && boundary_after(m.end()),
                Kind::Prefix => boundary_before(m.start()),
                Kind::Suffix => boundary_after(m.end()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_width_case_accents_confusables_and_separators() {
        assert_eq!(normalise("ＢＡＤ  Wörd!!"), "bad word");
        assert_eq!(normalise("bаd"), "bad"); // Cyrillic а
        assert_eq!(normalise("B\u{200B}A\u{00AD}D"), "bad");
        assert_eq!(normalise("𝐛𝐚𝐝 ｗｏｒｄ"), "bad word");
        assert_eq!(normalise("  ...b4d  "), "bad");
        assert_eq!(normalise("ΒΑΔ"), "baδ"); // Greek capitals lower-cased, β and α mapped
        assert_eq!(normalise(""), "");
    }

    #[test]
    fn words_prefixes_suffixes_and_anywhere() {
        let (b, skipped) =
            Blocklist::new(["bad word", "spam*", "*scam", "*evil*", "", "  ", "***"]);
        assert_eq!((b.len(), skipped), (4, 3));
        assert!(b.blocks("what a BAD WORD"));
        assert!(b.blocks("bad-w0rd"));
        assert!(b.blocks("ＢＡＤ ｗｏｒｄ"));
        assert!(!b.blocks("badwording is fine"));
        assert!(!b.blocks("a bad wordsmith"));
        assert!(b.blocks("spammer here"));
        // "anti-spam" normalises to "anti spam": a word starting with "spam".
        assert!(b.blocks("anti-spam"));
        assert!(!b.blocks("antispam"));
        assert!(b.blocks("a crypto-scam"));
        assert!(!b.blocks("scamper away"));
        assert!(b.blocks("e.v.i.l plans"));
        assert!(b.blocks("deevilish"));
        assert!(b.blocks("Е\u{200B}VIL")); // Cyrillic Е, zero-width space
        assert!(!b.blocks("a lovely day"));
    }

    #[test]
    fn overlapping_patterns_still_match_whole_words() {
        let (b, _) = Blocklist::new(["ab", "abc d", "c"]);
        // "abc d" does not match "abc de", but "c" as a word does not either;
        // "ab" is not a word of "abc de".
        assert!(!b.blocks("abc de"));
        assert!(b.blocks("xx c yy"));
        assert!(b.blocks("ab"));
    }

    #[test]
    fn empty_list_blocks_nothing() {
        let b = Blocklist::default();
        assert!(b.is_empty());
        assert!(!b.blocks("anything"));
    }
}
