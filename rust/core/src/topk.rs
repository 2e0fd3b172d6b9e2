//! Keeping the best `k` of a stream of scored candidates.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A scored candidate; greater is better: a higher score, then a smaller key (the
/// earlier document), so ties resolve the same way every time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: f32,
    pub key: u64,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.key.cmp(&self.key))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The best `k` candidates seen, in a min-heap: most candidates lose to the root.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<Scored>>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// The score a candidate must beat to enter (−inf while there is room).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::INFINITY, |r| r.0.score)
        }
    }

    #[inline]
    pub fn push(&mut self, cand: Scored) {
        if self.heap.len() < self.k {
            self.heap.push(Reverse(cand));
        } else if let Some(mut root) = self.heap.peek_mut() {
            if cand > root.0 {
                *root = Reverse(cand);
            }
        }
    }

    /// Adds every candidate of `other`.
    pub fn merge(&mut self, other: TopK) {
        for Reverse(c) in other.heap {
            self.push(c);
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<Scored> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(c)| c)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn equals_sorting(scores in proptest::collection::vec(-5i32..5, 0..60), k in 0usize..8) {
            let mut top = TopK::new(k);
            let mut all: Vec<Scored> = scores.iter().enumerate()
                .map(|(i, &s)| Scored { score: s as f32, key: i as u64 }).collect();
            for c in &all { top.push(*c); }
            all.sort_by(|a, b| b.cmp(a));
            all.truncate(k);
            prop_assert_eq!(top.into_sorted(), all);
        }
    }
}
