//! Tag scanning over text: the action of a turn and stop strings in streamed text.
//!
//! The action of a turn follows Search-R1 exactly: the first match of the regular
//! expression `<(search|answer)>(.*?)</\1>` with `.` matching newlines, its content
//! stripped of whitespace as Python's `str.strip()` does.

use crate::error::TagError;

/// The two tags a turn may end with.
const OPEN_SEARCH: &str = "<search>";
const CLOSE_SEARCH: &str = "</search>";
const OPEN_ANSWER: &str = "<answer>";
const CLOSE_ANSWER: &str = "</answer>";

/// What the model asked for in one turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// `<search> query </search>`: run a search with the content as the query.
    Search,
    /// `<answer> text </answer>`: the final answer; the trajectory ends.
    Answer,
    /// Neither tag pair was found.
    Invalid,
}

impl ActionKind {
    /// The lowercase name used on the Python side: `"search"`, `"answer"` or `"invalid"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Search => "search",
            ActionKind::Answer => "answer",
            ActionKind::Invalid => "invalid",
        }
    }
}

/// The parsed action of a turn: its kind and its stripped content (`None` when invalid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub kind: ActionKind,
    pub content: Option<String>,
}

/// Whether Python's `str.isspace()` holds for `c`.
///
/// Rust's `char::is_whitespace` follows the Unicode `White_Space` property; Python also
/// counts the information separators U+001C..U+001F as whitespace.
#[inline]
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `text.strip()` with Python's definition of whitespace.
pub fn python_strip(text: &str) -> &str {
    text.trim_matches(is_python_space)
}

/// The first match of `<(search|answer)>(.*?)</\1>` (dot matches newline) in `text`.
///
/// A regex engine reports the leftmost match; for a given opening tag the lazy `.*?`
/// ends at the first matching closing tag after it. An opening tag without a closing
/// tag after it can never match, and neither can any later opening tag of the same
/// kind, so it is enough to look at the first opening tag of each kind.
pub fn parse_action(text: &str) -> Action {
    let candidate = |open: &str, close: &str| -> Option<(usize, usize, usize)> {
        let start = text.find(open)?;
        let body = start + open.len();
        let end = text[body..].find(close)? + body;
        Some((start, body, end))
    };
    let search = candidate(OPEN_SEARCH, CLOSE_SEARCH).map(|m| (m, ActionKind::Search));
    let answer = candidate(OPEN_ANSWER, CLOSE_ANSWER).map(|m| (m, ActionKind::Answer));
    let first = match (search, answer) {
        (Some(s), Some(a)) => Some(if s.0 .0 < a.0 .0 { s } else { a }),
        (s, a) => s.or(a),
    };
    match first {
        Some(((_, body, end), kind)) => Action {
            kind,
            content: Some(python_strip(&text[body..end]).to_owned()),
        },
        None => Action {
            kind: ActionKind::Invalid,
            content: None,
        },
    }
}

/// Checks that stop strings are usable: at least one byte each.
pub(crate) fn validate_stops<S: AsRef<str>>(stops: &[S]) -> Result<(), TagError> {
    match stops.iter().position(|s| s.as_ref().is_empty()) {
        Some(index) => Err(TagError::EmptyStop { index }),
        None => Ok(()),
    }
}

/// Finds the first complete stop string in text that arrives in chunks.
///
/// Offsets are counted in characters (Unicode code points, as Python's `len`) from the
/// start of everything fed. A stop string may span any number of chunks. Once a stop
/// string is found, every later call returns the same offset.
#[derive(Debug, Clone)]
pub struct StopScanner {
    stops: Vec<String>,
    /// The last `longest stop - 1` bytes fed: enough for a stop string that started
    /// in earlier chunks to be completed by the next one.
    tail: Vec<u8>,
    keep: usize,
    chars_fed: usize,
    found: Option<(usize, usize)>,
}

/// Number of characters that start in `bytes` (UTF-8 bytes that are not continuations).
#[inline]
fn count_char_starts(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| (b as i8) >= -0x40).count()
}

impl StopScanner {
    /// A scanner for `stops`; each must be non-empty.
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Result<Self, TagError> {
        validate_stops(stops)?;
        let stops: Vec<String> = stops.iter().map(|s| s.as_ref().to_owned()).collect();
        let keep = stops.iter().map(|s| s.len()).max().unwrap_or(1) - 1;
        Ok(StopScanner {
            stops,
            tail: Vec::with_capacity(keep * 2 + 64),
            keep,
            chars_fed: 0,
            found: None,
        })
    }

    /// Feeds the next chunk; returns the offset just past the first stop string, if any.
    pub fn feed(&mut self, chunk: &str) -> Option<usize> {
        if self.found.is_some() || self.stops.is_empty() {
            return self.found.map(|(offset, _)| offset);
        }
        let chars_before_window = self.chars_fed - count_char_starts(&self.tail);
        self.chars_fed += chunk.chars().count();
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk.as_bytes());
        // The earliest-ending occurrence over all stop strings. For one stop string the
        // first occurrence is also the earliest-ending one, since all have one length.
        let hit = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, stop)| find_bytes(&window, stop.as_bytes()).map(|s| (s + stop.len(), i)))
            .min();
        if let Some((end, which)) = hit {
            let offset = chars_before_window + count_char_starts(&window[..end]);
            self.found = Some((offset, which));
        } else {
            let cut = window.len().saturating_sub(self.keep);
            window.drain(..cut);
            self.tail = window;
        }
        self.found.map(|(offset, _)| offset)
    }

    /// The index (into the stop strings given at construction) of the stop string found.
    pub fn matched(&self) -> Option<usize> {
        self.found.map(|(_, which)| which)
    }

    /// The stop strings this scanner looks for.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }
}

/// The first position of `needle` in `haystack`.
#[inline]
pub(crate) fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > haystack.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut from = 0;
    while from <= last_start {
        let at = haystack[from..=last_start].iter().position(|&b| b == first)? + from;
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex::Regex;

    fn reference(text: &str) -> Action {
        // The same pattern as Search-R1, with the regex crate (no backreferences there,
        // so one alternative per tag and the leftmost of the two).
        let search = Regex::new(r"(?s)<search>(.*?)</search>").unwrap();
        let answer = Regex::new(r"(?s)<answer>(.*?)</answer>").unwrap();
        let s = search
            .captures(text)
            .map(|c| (c.get(0).unwrap().start(), c[1].to_owned(), ActionKind::Search));
        let a = answer
            .captures(text)
            .map(|c| (c.get(0).unwrap().start(), c[1].to_owned(), ActionKind::Answer));
        let best = [s, a].into_iter().flatten().min_by_key(|m| m.0);
        match best {
            Some((_, content, kind)) => Action {
                kind,
                content: Some(python_strip(&content).to_owned()),
            },
            None => Action {
                kind: ActionKind::Invalid,
                content: None,
            },
        }
    }

    #[test]
    fn actions() {
        let a = parse_action("<think>hm</think>\n<search> capital of France </search>");
        assert_eq!(a.kind, ActionKind::Search);
        assert_eq!(a.content.as_deref(), Some("capital of France"));
        let a = parse_action("<answer>Paris</answer><search>x</search>");
        assert_eq!(a.kind, ActionKind::Answer);
        assert_eq!(a.content.as_deref(), Some("Paris"));
        let a = parse_action("<search>unclosed <answer> a\nb </answer>");
        assert_eq!(a.kind, ActionKind::Answer);
        assert_eq!(a.content.as_deref(), Some("a\nb"));
        let a = parse_action("<search></search>");
        assert_eq!(a.content.as_deref(), Some(""));
        let a = parse_action("<search>a</answer>");
        assert_eq!(a.kind, ActionKind::Invalid);
        assert_eq!(a.content, None);
        // Lazy: the first closing tag ends the content.
        let a = parse_action("<search>a</search>b</search>");
        assert_eq!(a.content.as_deref(), Some("a"));
        // Nested opening tags stay in the content.
        let a = parse_action("<search><search>x</search>");
        assert_eq!(a.content.as_deref(), Some("<search>x"));
        // Python's strip removes U+001F; Rust's trim would not.
        let a = parse_action("<answer>\u{1f} x \u{3000}</answer>");
        assert_eq!(a.content.as_deref(), Some("x"));
    }

    #[test]
    fn scanner_spans_chunks() {
        let mut s = StopScanner::new(&["</search>", "</answer>"]).unwrap();
        assert_eq!(s.feed("héllo </sea"), None);
        assert_eq!(s.feed("rch"), None);
        assert_eq!(s.feed("> more"), Some(15));
        assert_eq!(s.feed("</answer>"), Some(15));
        assert_eq!(s.matched(), Some(0));
    }

    #[test]
    fn scanner_rejects_empty_stop() {
        assert!(matches!(
            StopScanner::new(&["a", ""]),
            Err(TagError::EmptyStop { index: 1 })
        ));
    }

    fn tag_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<search>".to_owned()),
            Just("</search>".to_owned()),
            Just("<answer>".to_owned()),
            Just("</answer>".to_owned()),
            Just("<".to_owned()),
            Just("</".to_owned()),
            Just(">".to_owned()),
            Just(" \n".to_owned()),
            "[a-zé<>/ \n\u{1f}]{0,6}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn parse_action_matches_regex(text in tag_text()) {
            prop_assert_eq!(parse_action(&text), reference(&text));
        }

        #[test]
        fn any_chunking_gives_the_same_offset(
            text in tag_text(),
            cuts in proptest::collection::vec(0usize..64, 0..8),
        ) {
            let stops = ["</search>", "</answer>", "é>"];
            let mut whole = StopScanner::new(&stops).unwrap();
            let expected = whole.feed(&text);
            // The expected offset, independently: the smallest end over stop strings.
            let naive = stops
                .iter()
                .filter_map(|s| text.find(s).map(|p| text[..p + s.len()].chars().count()))
                .min();
            prop_assert_eq!(expected, naive);

            let chars: Vec<char> = text.chars().collect();
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(chars.len())).collect();
            bounds.push(0);
            bounds.push(chars.len());
            bounds.sort_unstable();
            let mut chunked = StopScanner::new(&stops).unwrap();
            let mut got = None;
            for w in bounds.windows(2) {
                let chunk: String = chars[w[0]..w[1]].iter().collect();
                got = chunked.feed(&chunk);
            }
            prop_assert_eq!(got, expected);
        }
    }
}
