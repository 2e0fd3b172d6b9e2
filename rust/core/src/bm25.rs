//! BM25 over a tantivy index, scored exactly as Lucene's `BM25Similarity`.
//!
//! tantivy does the analysis (tokenise, lowercase, English stop words, optional Porter2
//! stemming), the multi-threaded indexing under a memory budget, the compressed store
//! of passages and the memory-mapped files. Scoring is ours, so that `k1` and `b` can
//! be set (tantivy fixes them at 1.2 / 0.75), with MaxScore pruning (see [`top_k`]),
//! and so that a whole batch of queries runs on rayon:
//!
//! `score(d, q) = Σ_t count(t, q) · idf(t) · f / (f + k1 · (1 − b + b · |d| / avgdl))`,
//! `idf(t) = ln(1 + (N − n_t + 0.5) / (n_t + 0.5))`,
//!
//! where `|d|` is the document length after the same lossy one-byte encoding Lucene
//! applies to norms (tantivy's field norms use the same table), and `avgdl` is exact.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tantivy::directory::MmapDirectory;
use tantivy::postings::{Postings, SegmentPostings};
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, StopWordFilter, TextAnalyzer,
};
use tantivy::{DocSet, Index, IndexReader, ReloadPolicy, TantivyDocument, Term, TERMINATED};

use crate::analysis::CachedStemmer;
use crate::corpus::Passage;
use crate::error::IndexError;
use crate::topk::{Scored, TopK};

const TOKENIZER: &str = "searchr1_en";
/// A build leaves at most this many segments.
const MAX_SEGMENTS: usize = 8;

/// Analysis and scoring settings, recorded in the index manifest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bm25Settings {
    /// Term-frequency saturation (pyserini's default 0.9).
    pub k1: f32,
    /// Length normalisation (pyserini's default 0.4).
    pub b: f32,
    /// Porter2 (Snowball English) stemming.
    pub stem: bool,
    /// Drop Lucene's English stop words.
    pub stopwords: bool,
}

impl Default for Bm25Settings {
    fn default() -> Self {
        Bm25Settings {
            k1: 0.9,
            b: 0.4,
            stem: true,
            stopwords: true,
        }
    }
}

impl Bm25Settings {
    pub fn validate(&self) -> Result<(), IndexError> {
        let k1_ok = self.k1.is_finite() && self.k1 >= 0.0;
        if !k1_ok || !(0.0..=1.0).contains(&self.b) {
            return Err(IndexError::Settings(format!(
                "BM25 needs k1 >= 0 and 0 <= b <= 1; got k1 = {}, b = {}",
                self.k1, self.b
            )));
        }
        Ok(())
    }

    /// The analyzer: split on non-alphanumerics, drop tokens over 40 bytes, lowercase,
    /// then stop words and stemming as set.
    pub fn analyzer(&self) -> TextAnalyzer {
        // Each combination is one static chain: a dynamic chain costs a virtual call per
        // layer each time a token is read, which shows at tens of millions of tokens.
        let base = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser);
        let stop = || StopWordFilter::new(Language::English).expect("English stop words");
        match (self.stopwords, self.stem) {
            (true, true) => base.filter(stop()).filter(CachedStemmer).build(),
            (true, false) => base.filter(stop()).build(),
            (false, true) => base.filter(CachedStemmer).build(),
            (false, false) => base.build(),
        }
    }
}

/// What building an index did.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildStats {
    pub passages: u64,
}

/// A passage found by a search.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPassage {
    pub id: String,
    pub score: f32,
    pub contents: String,
}

/// A BM25 index on disk, opened memory-mapped.
pub struct Bm25Index {
    reader: IndexReader,
    contents_field: Field,
    settings: Bm25Settings,
    analyzer: TextAnalyzer,
}

fn schema() -> (Schema, Field, Field) {
    let mut builder = Schema::builder();
    // The passage's row in the index's passage store: hits resolve through it, so the
    // passages are not stored (and compressed) a second time inside tantivy.
    let row = builder.add_u64_field("row", FAST);
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(TOKENIZER)
        .set_index_option(IndexRecordOption::WithFreqs);
    let contents = builder.add_text_field("contents", TextOptions::default().set_indexing_options(indexing));
    (builder.build(), row, contents)
}

fn tantivy_err(e: tantivy::TantivyError) -> IndexError {
    IndexError::Tantivy(e.to_string())
}

impl Bm25Index {
    /// Builds an index in `dir` (which must be empty or absent) from `passages`.
    ///
    /// `threads` indexing threads share `memory_budget` bytes; `on_passage` is called
    /// after each passage is queued (for progress), and an error from it stops the
    /// build (a cancel). More than a few segments are merged into one.
    pub fn build<E>(
        dir: &Path,
        passages: impl Iterator<Item = Result<Passage, E>>,
        settings: Bm25Settings,
        threads: usize,
        memory_budget: usize,
        mut on_passage: impl FnMut(u64) -> Result<(), E>,
    ) -> Result<BuildStats, E>
    where
        E: From<IndexError>,
    {
        settings.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let (schema, row_field, contents_field) = schema();
        let directory = MmapDirectory::open(dir).map_err(|e| IndexError::Tantivy(e.to_string()))?;
        let index = Index::create(directory, schema, Default::default()).map_err(tantivy_err)?;
        index.tokenizers().register(TOKENIZER, settings.analyzer());
        let threads = threads.clamp(1, 8);
        // tantivy wants at least 15 MB per thread.
        let budget = memory_budget.max(threads * (16 << 20));
        let mut writer = index
            .writer_with_num_threads::<TantivyDocument>(threads, budget)
            .map_err(tantivy_err)?;
        let mut stats = BuildStats::default();
        for passage in passages {
            let passage = passage?;
            let mut doc = TantivyDocument::default();
            doc.add_u64(row_field, stats.passages);
            doc.add_text(contents_field, &passage.contents);
            writer.add_document(doc).map_err(tantivy_err)?;
            stats.passages += 1;
            // An error drops the writer, whose threads then stop without writing the
            // segments they hold.
            on_passage(stats.passages)?;
        }
        writer.commit().map_err(tantivy_err)?;
        // A few segments (one per indexing thread, typically) search as fast as one, and
        // merging them would take a quarter of the build; merge only a long tail.
        let segments = index.searchable_segment_ids().map_err(tantivy_err)?;
        if segments.len() > MAX_SEGMENTS {
            writer.merge(&segments).wait().map_err(tantivy_err)?;
        }
        writer.wait_merging_threads().map_err(tantivy_err)?;
        Ok(stats)
    }

    /// Opens the index in `dir`, built with `settings`.
    pub fn open(dir: &Path, settings: Bm25Settings) -> Result<Self, IndexError> {
        settings.validate()?;
        let directory = MmapDirectory::open(dir).map_err(|e| IndexError::Tantivy(e.to_string()))?;
        let index = Index::open(directory).map_err(tantivy_err)?;
        let schema = index.schema();
        let contents_field = match (schema.get_field("row"), schema.get_field("contents")) {
            (Ok(_), Ok(contents)) => contents,
            _ => {
                return Err(IndexError::Corrupt(format!(
                    "{}: the BM25 index lacks the row or contents field",
                    dir.display()
                )))
            }
        };
        index.tokenizers().register(TOKENIZER, settings.analyzer());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy_err)?;
        Ok(Bm25Index {
            reader,
            contents_field,
            settings,
            analyzer: settings.analyzer(),
        })
    }

    /// Number of passages in the index.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether the index holds no passage.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The settings the index was opened with.
    pub fn settings(&self) -> Bm25Settings {
        self.settings
    }

    /// The terms `text` is indexed (or searched) as, in order.
    pub fn analyze(&self, text: &str) -> Vec<String> {
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }

    /// The top `k` passages of each query as (row in the passage store, score), best
    /// first, in parallel over queries.
    pub fn search(&self, queries: &[String], k: usize) -> Result<Vec<Vec<(usize, f32)>>, IndexError> {
        let searcher = self.reader.searcher();
        let stats = CorpusStats::of(&searcher, self.contents_field)?;
        let norm_tables = NormTable::new(&self.settings, stats.avgdl);
        queries
            .par_iter()
            .map_init(
                || self.analyzer.clone(),
                |analyzer, query| {
                    let terms = self.query_terms(analyzer, query, &searcher, &stats)?;
                    top_k(&searcher, self.contents_field, &terms, &norm_tables, k)
                },
            )
            .collect()
    }

    /// The distinct terms of `query` with their weights `count · idf`.
    fn query_terms(
        &self,
        analyzer: &mut TextAnalyzer,
        query: &str,
        searcher: &tantivy::Searcher,
        stats: &CorpusStats,
    ) -> Result<Vec<(Term, f32)>, IndexError> {
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut order = Vec::new();
        let mut stream = analyzer.token_stream(query);
        while stream.advance() {
            let text = &stream.token().text;
            let count = counts.entry(text.clone()).or_insert(0);
            if *count == 0 {
                order.push(text.clone());
            }
            *count += 1;
        }
        let mut terms = Vec::with_capacity(order.len());
        for text in order {
            let term = Term::from_field_text(self.contents_field, &text);
            let df = searcher.doc_freq(&term).map_err(tantivy_err)?;
            if df == 0 {
                continue;
            }
            let n = stats.docs as f64;
            let idf = (1.0 + (n - df as f64 + 0.5) / (df as f64 + 0.5)).ln() as f32;
            terms.push((term, counts[&text] as f32 * idf));
        }
        Ok(terms)
    }
}

/// Collection statistics over all segments.
struct CorpusStats {
    docs: u64,
    avgdl: f32,
}

impl CorpusStats {
    fn of(searcher: &tantivy::Searcher, field: Field) -> Result<Self, IndexError> {
        let mut tokens = 0u64;
        for segment in searcher.segment_readers() {
            tokens += segment
                .inverted_index(field)
                .map_err(tantivy_err)?
                .total_num_tokens();
        }
        let docs = searcher.num_docs();
        let avgdl = if docs == 0 {
            1.0
        } else {
            (tokens as f64 / docs as f64) as f32
        };
        Ok(CorpusStats { docs, avgdl })
    }
}

/// `k1 · (1 − b + b · |d| / avgdl)` for each of the 256 encoded lengths.
struct NormTable([f32; 256]);

impl NormTable {
    fn new(settings: &Bm25Settings, avgdl: f32) -> Self {
        let mut table = [0f32; 256];
        for (id, slot) in table.iter_mut().enumerate() {
            let len = tantivy::fieldnorm::FieldNormReader::id_to_fieldnorm(id as u8) as f32;
            *slot = settings.k1 * ((1.0 - settings.b) + settings.b * len / avgdl);
        }
        NormTable(table)
    }
}

/// A query term's postings in one segment, positioned on a document.
struct Cursor {
    postings: SegmentPostings,
    /// `count · idf`: more than the term can add to any score (`f / (f + norm) < 1`).
    weight: f32,
    /// The term's place in the query; a document's score sums its terms in this order.
    slot: usize,
}

/// Whether a document whose score is at most `bound` cannot enter a top-k whose entry
/// score is `threshold`. The margin covers the rounding of bounds summed in another
/// order than scores.
#[inline]
fn cannot_enter(bound: f32, threshold: f32) -> bool {
    bound < threshold - threshold.abs() * 1e-5
}

/// The best `k` of every segment as (row, score), best first, by MaxScore; equal scores
/// go to the earlier row (corpus order), so the hits do not depend on how the build's
/// threads cut the corpus into segments.
///
/// Terms are ordered by weight; the lightest ones whose weights together cannot reach
/// the current k-th score are "non-essential": only documents of the other terms'
/// postings are visited, and the non-essential postings are skipped to them (through
/// tantivy's skip lists) only while the document can still enter. Frequent words have
/// low idf, so their long postings are mostly skipped. The result is exactly that of
/// scoring every posting: scores are summed in query-term order, and a document is
/// dropped only when its upper bound cannot beat the k-th score.
fn top_k(
    searcher: &tantivy::Searcher,
    field: Field,
    terms: &[(Term, f32)],
    norms: &NormTable,
    k: usize,
) -> Result<Vec<(usize, f32)>, IndexError> {
    let mut best = TopK::new(k);
    if k == 0 || terms.is_empty() {
        return Ok(Vec::new());
    }
    let mut parts = vec![0f32; terms.len()];
    for (ord, segment) in searcher.segment_readers().iter().enumerate() {
        let inverted = segment.inverted_index(field).map_err(tantivy_err)?;
        let fieldnorms = segment.get_fieldnorms_reader(field).map_err(tantivy_err)?;
        let alive = segment.alive_bitset();
        let rows = segment.fast_fields().u64("row").map_err(tantivy_err)?;
        let mut cursors = Vec::with_capacity(terms.len());
        for (slot, (term, weight)) in terms.iter().enumerate() {
            let postings = inverted
                .read_postings(term, IndexRecordOption::WithFreqs)
                .map_err(|e| IndexError::Tantivy(e.to_string()))?;
            if let Some(postings) = postings {
                cursors.push(Cursor {
                    postings,
                    weight: *weight,
                    slot,
                });
            }
        }
        cursors.sort_by(|a, b| a.weight.total_cmp(&b.weight));
        // bounds[i]: the most that cursors 0..=i can add to a score together.
        let bounds: Vec<f32> = cursors
            .iter()
            .scan(0f32, |sum, c| {
                *sum += c.weight;
                Some(*sum)
            })
            .collect();
        // cursors[essential..] are the ones whose documents are visited.
        let mut essential = 0;
        loop {
            let threshold = best.threshold();
            while essential < cursors.len() && cannot_enter(bounds[essential], threshold) {
                essential += 1;
            }
            let Some(doc) = cursors[essential..].iter().map(|c| c.postings.doc()).min() else {
                break;
            };
            if doc == TERMINATED {
                break;
            }
            let norm = norms.0[fieldnorms.fieldnorm_id(doc) as usize];
            let mut partial = 0f32;
            for c in &mut cursors[essential..] {
                if c.postings.doc() == doc {
                    let f = c.postings.term_freq() as f32;
                    parts[c.slot] = c.weight * (f / (f + norm));
                    partial += parts[c.slot];
                    c.postings.advance();
                }
            }
            let mut dropped = false;
            for i in (0..essential).rev() {
                if cannot_enter(partial + bounds[i], threshold) {
                    dropped = true;
                    break;
                }
                let c = &mut cursors[i];
                if c.postings.doc() < doc {
                    c.postings.seek(doc);
                }
                if c.postings.doc() == doc {
                    let f = c.postings.term_freq() as f32;
                    parts[c.slot] = c.weight * (f / (f + norm));
                    partial += parts[c.slot];
                }
            }
            if !dropped && alive.is_none_or(|a| a.is_alive(doc)) {
                // In query-term order from zero, as a pass term by term would add them.
                let score = parts.iter().fold(0f32, |sum, &p| sum + p);
                // The row is looked up only for a document that can enter.
                if score >= best.threshold() {
                    let row = rows.first(doc).ok_or_else(|| {
                        IndexError::Corrupt(format!("document {doc} of segment {ord} has no row"))
                    })?;
                    best.push(Scored { score, key: row });
                }
            }
            parts.fill(0.0);
        }
    }
    Ok(best
        .into_sorted()
        .into_iter()
        .map(|c| (c.key as usize, c.score))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("searchr1-bm25-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn passages(texts: &[&str]) -> impl Iterator<Item = Result<Passage, IndexError>> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Ok(Passage {
                    id: format!("d{i}"),
                    contents: t.to_string(),
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn pruning_returns_exactly_what_scoring_every_posting_does() {
        // Zipf-like words (w0 in most passages, w299 in few), some repeated.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let word = |next: &mut dyn FnMut(u64) -> u64| format!("w{}", next(300) * next(300) / 300);
        let texts: Vec<String> = (0..3000)
            .map(|_| {
                let len = 5 + next(40);
                (0..len).map(|_| word(&mut next)).collect::<Vec<_>>().join(" ")
            })
            .collect();
        let queries: Vec<String> = (0..200)
            .map(|_| {
                let len = 1 + next(7);
                (0..len).map(|_| word(&mut next)).collect::<Vec<_>>().join(" ")
            })
            .collect();
        let dir = tmp("pruning");
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        // A small budget and 2 threads: several segments.
        Bm25Index::build(
            &dir,
            passages(&refs),
            Bm25Settings::default(),
            2,
            15_000_000,
            |_| Ok(()),
        )
        .unwrap();
        let index = Bm25Index::open(&dir, Bm25Settings::default()).unwrap();
        // With k >= the corpus nothing can be pruned: every posting is scored.
        let every = index.search(&queries, texts.len()).unwrap();
        for k in [1, 3, 10] {
            let pruned = index.search(&queries, k).unwrap();
            for (q, (got, all)) in pruned.iter().zip(&every).enumerate() {
                let want = &all[..k.min(all.len())];
                assert_eq!(got, want, "query {q} {:?}, k = {k}", queries[q]);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scores_by_hand() {
        let dir = tmp("hand");
        let settings = Bm25Settings {
            stem: false,
            ..Default::default()
        };
        let docs = ["apple banana", "Apple apple cherry", "banana", "the"];
        Bm25Index::build(&dir, passages(&docs), settings, 1, 0, |_| Ok(())).unwrap();
        let index = Bm25Index::open(&dir, settings).unwrap();
        assert_eq!(index.len(), 4);
        assert_eq!(index.analyze("The Apples, the CHERRY!"), ["apples", "cherry"]);
        let hits = index
            .search(&["apple".into(), "the".into(), "apple apple".into()], 5)
            .unwrap();
        // N = 4, df(apple) = 2; lengths 2, 3, 1, 0 (stop words do not count): avgdl 1.5.
        let idf = (1.0f32 + (4.0 - 2.0 + 0.5) / (2.0 + 0.5)).ln();
        let norm = |len: f32| 0.9 * (0.6 + 0.4 * len / 1.5);
        let expected = [(1, idf * 2.0 / (2.0 + norm(3.0))), (0, idf / (1.0 + norm(2.0)))];
        assert_eq!(hits[0].len(), 2);
        for (&(row, score), (want_row, want)) in hits[0].iter().zip(expected) {
            assert_eq!(row, want_row);
            assert!((score - want).abs() < 1e-6, "{score} vs {want}");
        }
        assert!(hits[1].is_empty(), "a query of stop words finds nothing");
        // A repeated query term weighs twice, as in pyserini's bag-of-words queries.
        assert!((hits[2][0].1 - 2.0 * hits[0][0].1).abs() < 1e-6);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ties_go_to_the_earlier_row_whatever_the_segments() {
        // Identical passages among others, on 1 and 4 threads with a small budget (so
        // several segments): equal scores come back in corpus order.
        let texts: Vec<String> = (0..6000)
            .map(|i| {
                if i % 7 == 3 {
                    "apple banana cherry".to_string()
                } else {
                    format!("filler w{} w{}", i % 101, i % 37)
                }
            })
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let want: Vec<usize> = (0..texts.len()).filter(|i| i % 7 == 3).take(20).collect();
        for threads in [1, 4] {
            let dir = tmp(&format!("ties{threads}"));
            Bm25Index::build(&dir, passages(&refs), Bm25Settings::default(), threads, 0, |_| {
                Ok(())
            })
            .unwrap();
            let index = Bm25Index::open(&dir, Bm25Settings::default()).unwrap();
            let hits = index.search(&["banana".into()], 20).unwrap();
            let rows: Vec<usize> = hits[0].iter().map(|h| h.0).collect();
            assert_eq!(rows, want, "{threads} threads");
            assert!(hits[0].iter().all(|h| h.1 == hits[0][0].1));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn an_error_from_on_passage_stops_the_build() {
        let dir = tmp("stop");
        let docs: Vec<String> = (0..500).map(|i| format!("w{i}")).collect();
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let mut seen = 0;
        let err = Bm25Index::build(&dir, passages(&refs), Bm25Settings::default(), 2, 0, |n| {
            seen = n;
            if n == 100 {
                Err(IndexError::Cancelled)
            } else {
                Ok(())
            }
        })
        .err()
        .unwrap();
        assert!(matches!(err, IndexError::Cancelled));
        assert_eq!(seen, 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_bad_settings() {
        let bad = Bm25Settings {
            b: 1.5,
            ..Default::default()
        };
        assert!(matches!(bad.validate(), Err(IndexError::Settings(_))));
    }
}
