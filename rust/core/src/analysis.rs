//! Text analysis pieces tantivy lacks.

use std::borrow::Cow;
use std::cell::RefCell;

use rust_stemmers::{Algorithm, Stemmer};
use tantivy::tokenizer::{Token, TokenFilter, TokenStream, Tokenizer};

/// Slots of a thread's stem cache (64 bytes each: 2 MiB).
const SLOTS: usize = 1 << 15;
/// The longest word (and stem), in bytes, a slot holds; longer words are stemmed each time.
const WIDTH: usize = 31;

/// One remembered word and its stem, in one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Slot {
    word_len: u8,
    stem_len: u8,
    word: [u8; WIDTH],
    stem: [u8; WIDTH],
}

const EMPTY: Slot = Slot {
    word_len: 0,
    stem_len: 0,
    word: [0; WIDTH],
    stem: [0; WIDTH],
};

/// The slot of a word: the multiply-rotate of rustc's FxHasher over its bytes (the
/// cache is private, so hash flooding is not a concern), high bits.
#[inline]
fn slot_of(word: &[u8]) -> usize {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut h = 0u64;
    for chunk in word.chunks(8) {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(bytes)).wrapping_mul(K);
    }
    (h >> (64 - SLOTS.trailing_zeros())) as usize
}

thread_local! {
    /// Word -> stem, per thread, direct-mapped: a word evicts whatever shared its slot.
    /// Indexing threads live for the whole build, and a thread-local cache survives
    /// however often the analyzer is cloned. A lookup reads one cache line, where a
    /// map of `String`s chased two pointers into the heap (and cost 18% of a build).
    static STEMS: RefCell<Vec<Slot>> = RefCell::new(vec![EMPTY; SLOTS]);
}

/// English (Porter2) stemming that remembers the stems of the words it has seen.
///
/// Natural text repeats a small vocabulary, so almost every token is a lookup instead
/// of a run of the Snowball algorithm. Gives exactly the stems of tantivy's `Stemmer`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CachedStemmer;

impl TokenFilter for CachedStemmer {
    type Tokenizer<T: Tokenizer> = CachedStemmerFilter<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> CachedStemmerFilter<T> {
        CachedStemmerFilter { inner: tokenizer }
    }
}

#[derive(Clone)]
pub struct CachedStemmerFilter<T> {
    inner: T,
}

impl<T: Tokenizer> Tokenizer for CachedStemmerFilter<T> {
    type TokenStream<'a> = CachedStemmerStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        CachedStemmerStream {
            tail: self.inner.token_stream(text),
            stemmer: Stemmer::create(Algorithm::English),
        }
    }
}

pub struct CachedStemmerStream<T> {
    tail: T,
    stemmer: Stemmer,
}

impl<T: TokenStream> TokenStream for CachedStemmerStream<T> {
    fn advance(&mut self) -> bool {
        if !self.tail.advance() {
            return false;
        }
        let token = self.tail.token_mut();
        let len = token.text.len();
        if len == 0 || len > WIDTH {
            if let Cow::Owned(stem) = self.stemmer.stem(&token.text) {
                token.text = stem;
            }
            return true;
        }
        let stemmer = &self.stemmer;
        STEMS.with_borrow_mut(|slots| {
            let slot = &mut slots[slot_of(token.text.as_bytes())];
            if usize::from(slot.word_len) == len && slot.word[..len] == *token.text.as_bytes() {
                let stem = std::str::from_utf8(&slot.stem[..usize::from(slot.stem_len)])
                    .expect("a slot holds the bytes of a str");
                token.text.clear();
                token.text.push_str(stem);
                return;
            }
            let stem = stemmer.stem(&token.text);
            if stem.len() <= WIDTH {
                slot.word_len = len as u8;
                slot.word[..len].copy_from_slice(token.text.as_bytes());
                slot.stem_len = stem.len() as u8;
                slot.stem[..stem.len()].copy_from_slice(stem.as_bytes());
            }
            if let Cow::Owned(stem) = stem {
                token.text = stem;
            }
        });
        true
    }

    fn token(&self) -> &Token {
        self.tail.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.tail.token_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::tokenizer::{LowerCaser, SimpleTokenizer, Stemmer as TantivyStemmer, TextAnalyzer};

    fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }

    /// The terms of `text` through our cached stemmer and through tantivy's, twice
    /// through ours (the second pass hits the cache).
    fn cached_and_plain(text: &str) -> ([Vec<String>; 2], Vec<String>) {
        let mut cached = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(CachedStemmer)
            .build();
        let mut plain = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(TantivyStemmer::default())
            .build();
        let ours = [terms(&mut cached, text), terms(&mut cached, text)];
        (ours, terms(&mut plain, text))
    }

    #[test]
    fn same_stems_as_tantivy() {
        let text = "Running runners ran; the generously generous generations RUN running again";
        let (ours, want) = cached_and_plain(text);
        assert_eq!(ours, [want.clone(), want]);
    }

    #[test]
    fn same_stems_when_words_evict_each_other_or_are_too_long() {
        // Four times as many words as slots, so slots are shared and overwritten, and
        // words longer than a slot holds.
        let mut text = String::new();
        for i in 0..4 * SLOTS {
            text.push_str(&format!("running{i}s generously{i} "));
        }
        text.push_str("internationalizationsinternationalizations antidisestablishmentarianisms");
        let (ours, want) = cached_and_plain(&text);
        assert!(want.iter().any(|w| w.len() > WIDTH));
        assert_eq!(ours, [want.clone(), want]);
    }
}
