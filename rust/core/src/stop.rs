//! Stop checking on token ids, for many sequences decoded in lockstep.
//!
//! A [`TokenStopChecker`] is built once from the tokenizer's vocabulary (the bytes each
//! token id decodes to) and the stop strings. After each decoding step it is given the
//! new token id of every running sequence and says which must stop. A stop string may
//! span several tokens, and may end inside a token; then it also says how many bytes of
//! that token belong before the end of the stop string.
//!
//! It runs the bytes of each token through a deterministic Aho-Corasick automaton over
//! the stop strings, so a step costs a few nanoseconds per byte and nothing is decoded.

use crate::error::TagError;
use crate::tags::validate_stops;

/// What [`TokenStopChecker::step`] reports for a sequence that has not stopped.
pub const CONTINUE: i32 = -1;

/// A deterministic automaton that finds the first end of any of a few byte strings.
#[derive(Debug, Clone)]
pub struct StopAutomaton {
    /// `next[state * 256 + byte]`: the state after reading `byte`.
    next: Vec<u16>,
    /// For each state, the index of a stop string that ends there, plus one (0: none).
    output: Vec<u16>,
}

impl StopAutomaton {
    /// The automaton for `stops` (each non-empty).
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Result<Self, TagError> {
        validate_stops(stops)?;
        let total: usize = stops.iter().map(|s| s.as_ref().len()).sum();
        if total + 1 > u16::MAX as usize || stops.len() >= u16::MAX as usize {
            return Err(TagError::StopsTooLong { bytes: total });
        }
        // A trie over the stop strings; state 0 is the root.
        const NONE: u16 = u16::MAX;
        let mut goto: Vec<[u16; 256]> = vec![[NONE; 256]];
        let mut output: Vec<u16> = vec![0];
        for (index, stop) in stops.iter().enumerate() {
            let mut state = 0usize;
            for &b in stop.as_ref().as_bytes() {
                if goto[state][b as usize] == NONE {
                    goto.push([NONE; 256]);
                    output.push(0);
                    goto[state][b as usize] = (goto.len() - 1) as u16;
                }
                state = goto[state][b as usize] as usize;
            }
            if output[state] == 0 {
                output[state] = index as u16 + 1;
            }
        }
        // Breadth-first: fill the missing transitions from the failure state, and
        // inherit the output of the failure state (a shorter stop ending here too).
        let states = goto.len();
        let mut next = vec![0u16; states * 256];
        let mut fail = vec![0u16; states];
        let mut queue = std::collections::VecDeque::new();
        for b in 0..256 {
            let child = goto[0][b];
            if child != NONE {
                next[b] = child;
                fail[child as usize] = 0;
                queue.push_back(child as usize);
            }
        }
        while let Some(state) = queue.pop_front() {
            let f = fail[state] as usize;
            if output[state] == 0 {
                output[state] = output[f];
            }
            for b in 0..256 {
                let child = goto[state][b];
                if child != NONE {
                    next[state * 256 + b] = child;
                    fail[child as usize] = next[f * 256 + b];
                    queue.push_back(child as usize);
                } else {
                    next[state * 256 + b] = next[f * 256 + b];
                }
            }
        }
        Ok(StopAutomaton { next, output })
    }

    /// The state after reading `byte` in `state`.
    #[inline(always)]
    pub fn step(&self, state: u16, byte: u8) -> u16 {
        self.next[((state as usize) << 8) | byte as usize]
    }

    /// The stop string that ends in `state`, if any.
    #[inline(always)]
    pub fn matched(&self, state: u16) -> Option<usize> {
        match self.output[state as usize] {
            0 => None,
            k => Some(k as usize - 1),
        }
    }

    /// Runs `bytes` from `state`: the state reached, or where a stop ends and which.
    #[inline]
    pub fn run(&self, mut state: u16, bytes: &[u8]) -> Result<u16, (usize, usize)> {
        for (i, &b) in bytes.iter().enumerate() {
            state = self.step(state, b);
            if let Some(which) = self.matched(state) {
                return Err((i + 1, which));
            }
        }
        Ok(state)
    }
}

/// Token-level stop checking for a batch of sequences.
#[derive(Debug, Clone)]
pub struct TokenStopChecker {
    automaton: StopAutomaton,
    /// Token bytes, concatenated; token `t` is `bytes[offsets[t]..offsets[t + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    /// Per sequence: its automaton state, or where it stopped.
    states: Vec<u16>,
    stopped: Vec<Option<u16>>,
}

impl TokenStopChecker {
    /// Builds the checker from `vocab[token_id]` = the bytes the token decodes to.
    pub fn new<B: AsRef<[u8]>, S: AsRef<str>>(vocab: &[B], stops: &[S]) -> Result<Self, TagError> {
        let automaton = StopAutomaton::new(stops)?;
        let total: usize = vocab.iter().map(|t| t.as_ref().len()).sum();
        if total > u32::MAX as usize {
            return Err(TagError::VocabTooLarge { bytes: total });
        }
        let mut bytes = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(vocab.len() + 1);
        offsets.push(0u32);
        for token in vocab {
            bytes.extend_from_slice(token.as_ref());
            offsets.push(bytes.len() as u32);
        }
        Ok(TokenStopChecker {
            automaton,
            bytes,
            offsets,
            states: Vec::new(),
            stopped: Vec::new(),
        })
    }

    /// Number of token ids in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of sequences being tracked.
    pub fn batch_size(&self) -> usize {
        self.states.len()
    }

    /// Starts tracking `batch_size` new sequences, forgetting the previous ones.
    pub fn reset(&mut self, batch_size: usize) {
        self.states.clear();
        self.states.resize(batch_size, 0);
        self.stopped.clear();
        self.stopped.resize(batch_size, None);
    }

    /// The bytes of `token_id`; ids past the vocabulary (padded embedding rows that a
    /// model can still sample) decode to nothing.
    #[inline]
    fn token_bytes(&self, token_id: usize) -> &[u8] {
        match self.offsets.get(token_id..token_id + 2) {
            Some(&[start, end]) => &self.bytes[start as usize..end as usize],
            _ => &[],
        }
    }

    /// Advances the sequences `rows` (all, in order, when `None`) by one token each.
    ///
    /// `out[i]` becomes [`CONTINUE`] when sequence `rows[i]` goes on, and otherwise the
    /// number of bytes of `token_ids[i]` up to the end of the stop string: the token's
    /// whole length when the stop ends with it, fewer when it ends inside it, and 0 for
    /// a sequence that had already stopped.
    pub fn step(
        &mut self,
        token_ids: &[i64],
        rows: Option<&[usize]>,
        out: &mut [i32],
    ) -> Result<(), TagError> {
        let n = rows.map_or(self.states.len(), |r| r.len());
        if token_ids.len() != n || out.len() != n {
            return Err(TagError::LengthMismatch {
                what: "token_ids",
                expected: n,
                got: token_ids.len(),
            });
        }
        for i in 0..n {
            let row = match rows {
                Some(r) => r[i],
                None => i,
            };
            if row >= self.states.len() {
                return Err(TagError::RowOutOfRange {
                    row,
                    batch_size: self.states.len(),
                });
            }
            let id = token_ids[i];
            if id < 0 {
                return Err(TagError::NegativeTokenId { position: i, id });
            }
            if self.stopped[row].is_some() {
                out[i] = 0;
                continue;
            }
            let token = self.token_bytes(id as usize);
            match self.automaton.run(self.states[row], token) {
                Ok(state) => {
                    self.states[row] = state;
                    out[i] = CONTINUE;
                }
                Err((keep, which)) => {
                    self.stopped[row] = Some(which as u16);
                    out[i] = keep as i32;
                }
            }
        }
        Ok(())
    }

    /// Which stop string sequence `row` stopped on, if it has.
    pub fn stopped(&self, row: usize) -> Option<usize> {
        self.stopped.get(row).copied().flatten().map(usize::from)
    }

    /// Finds the first stop string in a whole sequence of token ids, leaving the
    /// tracked sequences alone: `(token index, bytes of that token kept, which stop)`.
    ///
    /// This is what [`step`](Self::step) would have reported token by token, for output
    /// that another engine already generated.
    pub fn find(&self, token_ids: &[i64]) -> Result<Option<StopMatch>, TagError> {
        let mut state = 0u16;
        for (position, &id) in token_ids.iter().enumerate() {
            if id < 0 {
                return Err(TagError::NegativeTokenId { position, id });
            }
            match self.automaton.run(state, self.token_bytes(id as usize)) {
                Ok(next) => state = next,
                Err((keep, which)) => {
                    return Ok(Some(StopMatch {
                        token: position,
                        keep,
                        which,
                    }));
                }
            }
        }
        Ok(None)
    }
}

/// Where a stop string ends in a sequence of tokens (see [`TokenStopChecker::find`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopMatch {
    /// Index of the token in which the stop string ends.
    pub token: usize,
    /// How many bytes of that token lie up to the end of the stop string.
    pub keep: usize,
    /// Which stop string matched.
    pub which: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vocab() -> Vec<Vec<u8>> {
        [
            "</",
            "search",
            ">",
            "</search>",
            ">\n\n",
            "a",
            " ",
            "<",
            "answer",
            "é",
            "\u{e9}>",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    #[test]
    fn split_and_inside_token() {
        let mut c = TokenStopChecker::new(&vocab(), &["</search>", "</answer>"]).unwrap();
        c.reset(3);
        let mut out = vec![0; 3];
        c.step(&[0, 3, 5], None, &mut out).unwrap();
        assert_eq!(out, [CONTINUE, 9, CONTINUE]);
        c.step(&[1, 0, 0], None, &mut out).unwrap();
        assert_eq!(out, [CONTINUE, 0, CONTINUE]);
        c.step(&[4, 0, 8], None, &mut out).unwrap();
        // "</" "search" ">\n\n": the stop ends after the first byte of the last token.
        assert_eq!(out, [1, 0, CONTINUE]);
        c.step(&[0, 0, 2], None, &mut out).unwrap();
        assert_eq!(out, [0, 0, 1]);
        assert_eq!(c.stopped(0), Some(0));
        assert_eq!(c.stopped(2), Some(1));
    }

    #[test]
    fn rows_subset_and_errors() {
        let mut c = TokenStopChecker::new(&vocab(), &["</search>"]).unwrap();
        c.reset(4);
        let mut out = vec![0; 2];
        c.step(&[3, 5], Some(&[2, 0]), &mut out).unwrap();
        assert_eq!(out, [9, CONTINUE]);
        assert_eq!(c.stopped(2), Some(0));
        assert_eq!(c.stopped(0), None);
        assert!(matches!(
            c.step(&[1, 1], Some(&[9, 0]), &mut out),
            Err(TagError::RowOutOfRange { row: 9, .. })
        ));
        assert!(matches!(
            c.step(&[-3, 1], Some(&[1, 0]), &mut out),
            Err(TagError::NegativeTokenId { id: -3, .. })
        ));
        // An id past the vocabulary decodes to nothing.
        let mut one = vec![0; 1];
        c.step(&[1_000_000], Some(&[1]), &mut one).unwrap();
        assert_eq!(one, [CONTINUE]);
    }

    #[test]
    fn overlapping_stops() {
        // "ab" ends inside "xabc" before "abc" would.
        let a = StopAutomaton::new(&["abc", "b"]).unwrap();
        assert_eq!(a.run(0, b"xabc"), Err((3, 1)));
        let a = StopAutomaton::new(&["aab"]).unwrap();
        assert_eq!(a.run(0, b"aaab"), Err((4, 0)));
    }

    proptest! {
        /// The checker agrees with searching the concatenated bytes.
        #[test]
        fn agrees_with_naive(ids in proptest::collection::vec(0usize..11, 0..40)) {
            let vocab = vocab();
            let stops = ["</search>", "é>", "\n\n"];
            let mut c = TokenStopChecker::new(&vocab, &stops).unwrap();
            c.reset(1);
            let mut text: Vec<u8> = Vec::new();
            let mut got = None;
            let mut out = [0i32];
            for (step, &id) in ids.iter().enumerate() {
                c.step(&[id as i64], None, &mut out).unwrap();
                if out[0] != CONTINUE {
                    got = Some(text.len() + out[0] as usize);
                    prop_assert!(out[0] >= 1 && out[0] as usize <= vocab[id].len(), "step {}", step);
                    break;
                }
                text.extend_from_slice(&vocab[id]);
            }
            let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            let found = c.find(&ids64).unwrap();
            let from_find = found.map(|m| {
                ids[..m.token].iter().map(|&i| vocab[i].len()).sum::<usize>() + m.keep
            });
            prop_assert_eq!(got, from_find);
            if let Some(m) = found {
                prop_assert_eq!(c.stopped(0), Some(m.which));
            }
            let all: Vec<u8> = ids.iter().flat_map(|&i| vocab[i].clone()).collect();
            let naive = stops
                .iter()
                .filter_map(|s| crate::tags::find_bytes(&all, s.as_bytes()).map(|p| p + s.len()))
                .min();
            prop_assert_eq!(got, naive);
        }
    }
}
