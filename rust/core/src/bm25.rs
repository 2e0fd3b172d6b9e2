//! BM25 over a tantivy index, scored exactly as Lucene's `BM25Similarity`.
//!
//! tantivy does the analysis (tokenise, lowercase, English stop words, optional Porter2
//! stemming), the multi-threaded indexing under a memory budget, the compressed store
//! of passages and the memory-mapped files. Scoring is ours, so that `k1` and `b` can
//! be set (tantivy fixes them at 1.2 / 0.75) and so that a whole batch of queries runs
//! on rayon with one accumulator per thread:
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
use tantivy::postings::BlockSegmentPostings;
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, StopWordFilter, TextAnalyzer,
};
use tantivy::{DocId, Index, IndexReader, ReloadPolicy, TantivyDocument, Term, TERMINATED};

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
    /// after each passage is queued (for progress). More than a few segments are merged
    /// into one.
    pub fn build<E>(
        dir: &Path,
        passages: impl Iterator<Item = Result<Passage, E>>,
        settings: Bm25Settings,
        threads: usize,
        memory_budget: usize,
        mut on_passage: impl FnMut(u64),
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
            on_passage(stats.passages);
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
                    let top = SCRATCH.with_borrow_mut(|scratch| {
                        top_k(&searcher, self.contents_field, &terms, &norm_tables, k, scratch)
                    })?;
                    top.into_iter()
                        .map(|(score, segment, doc)| Ok((row_of(&searcher, segment, doc)?, score)))
                        .collect()
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

/// The passage-store row of a document, from its fast field.
fn row_of(searcher: &tantivy::Searcher, segment: u32, doc: DocId) -> Result<usize, IndexError> {
    let column = searcher
        .segment_reader(segment)
        .fast_fields()
        .u64("row")
        .map_err(tantivy_err)?;
    column
        .first(doc)
        .map(|row| row as usize)
        .ok_or_else(|| IndexError::Corrupt(format!("document {doc} of segment {segment} has no row")))
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

/// A score accumulator over the docs of a segment. All zeros between queries: a query
/// zeroes exactly the slots it touched.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    touched: Vec<DocId>,
}

thread_local! {
    /// One accumulator per thread, kept across searches: for a corpus of 21M passages it
    /// is 84 MB, too much to allocate per batch.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Term-at-a-time scoring of every segment; the best `k` as (score, segment, doc).
fn top_k(
    searcher: &tantivy::Searcher,
    field: Field,
    terms: &[(Term, f32)],
    norms: &NormTable,
    k: usize,
    scratch: &mut Scratch,
) -> Result<Vec<(f32, u32, DocId)>, IndexError> {
    // A query that failed part-way may have left scores behind.
    for &doc in &scratch.touched {
        scratch.scores[doc as usize] = 0.0;
    }
    scratch.touched.clear();
    let mut best = TopK::new(k);
    if k == 0 || terms.is_empty() {
        return Ok(Vec::new());
    }
    for (ord, segment) in searcher.segment_readers().iter().enumerate() {
        let inverted = segment.inverted_index(field).map_err(tantivy_err)?;
        let fieldnorms = segment.get_fieldnorms_reader(field).map_err(tantivy_err)?;
        if scratch.scores.len() < segment.max_doc() as usize {
            scratch.scores.resize(segment.max_doc() as usize, 0.0);
        }
        let alive = segment.alive_bitset();
        for (term, weight) in terms {
            let Some(mut postings): Option<BlockSegmentPostings> = inverted
                .read_block_postings(term, IndexRecordOption::WithFreqs)
                .map_err(|e| IndexError::Tantivy(e.to_string()))?
            else {
                continue;
            };
            loop {
                let docs = postings.docs();
                if docs.is_empty() {
                    break;
                }
                for (&doc, &freq) in docs.iter().zip(postings.freqs()) {
                    if doc == TERMINATED {
                        break;
                    }
                    let norm = norms.0[fieldnorms.fieldnorm_id(doc) as usize];
                    let f = freq as f32;
                    let slot = &mut scratch.scores[doc as usize];
                    if *slot == 0.0 {
                        scratch.touched.push(doc);
                    }
                    *slot += weight * (f / (f + norm));
                }
                postings.advance();
            }
        }
        for &doc in &scratch.touched {
            let score = std::mem::take(&mut scratch.scores[doc as usize]);
            if alive.is_some_and(|a| !a.is_alive(doc)) {
                continue;
            }
            best.push(Scored {
                score,
                key: ((ord as u64) << 32) | doc as u64,
            });
        }
        scratch.touched.clear();
    }
    Ok(best
        .into_sorted()
        .into_iter()
        .map(|c| (c.score, (c.key >> 32) as u32, c.key as u32))
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
    fn scores_by_hand() {
        let dir = tmp("hand");
        let settings = Bm25Settings {
            stem: false,
            ..Default::default()
        };
        let docs = ["apple banana", "Apple apple cherry", "banana", "the"];
        Bm25Index::build(&dir, passages(&docs), settings, 1, 0, |_| {}).unwrap();
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
    fn rejects_bad_settings() {
        let bad = Bm25Settings {
            b: 1.5,
            ..Default::default()
        };
        assert!(matches!(bad.validate(), Err(IndexError::Settings(_))));
    }
}
