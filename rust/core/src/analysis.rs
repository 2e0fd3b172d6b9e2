//! Text analysis pieces tantivy lacks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rust_stemmers::{Algorithm, Stemmer};
use tantivy::tokenizer::{Token, TokenFilter, TokenStream, Tokenizer};

/// The most distinct words a thread's stem cache holds before starting afresh.
const CACHE_LIMIT: usize = 1 << 20;

/// A fast non-cryptographic hasher for short words (the multiply-rotate of rustc's
/// FxHasher); the cache is private, so hash flooding is not a concern.
#[derive(Default, Clone, Copy)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type StemCache = HashMap<String, String, BuildHasherDefault<WordHasher>>;

thread_local! {
    /// Word -> stem, per thread: indexing threads live for the whole build, and a
    /// thread-local cache survives however often the analyzer is cloned.
    static STEMS: RefCell<StemCache> = RefCell::new(StemCache::default());
}

/// English (Porter2) stemming that remembers the stem of each word it has seen.
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
        STEMS.with_borrow_mut(|cache| match cache.get(&token.text) {
            Some(stem) => {
                token.text.clear();
                token.text.push_str(stem);
            }
            None => {
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                let stem = self.stemmer.stem(&token.text).into_owned();
                cache.insert(std::mem::replace(&mut token.text, stem.clone()), stem);
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

    #[test]
    fn same_stems_as_tantivy() {
        let text = "Running runners ran; the generously generous generations RUN running again";
        let mut cached = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(CachedStemmer)
            .build();
        let mut plain = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(TantivyStemmer::default())
            .build();
        let want = terms(&mut plain, text);
        assert_eq!(terms(&mut cached, text), want);
        assert_eq!(terms(&mut cached, text), want, "a second pass hits the cache");
    }
}
