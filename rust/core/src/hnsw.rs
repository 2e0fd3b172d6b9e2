//! Approximate dense search: an HNSW graph (Malkov & Yashunin, 2016) over the vectors.
//!
//! The graph is ours, written to `hnsw.graph` beside the flat vectors and opened
//! memory-mapped; keys are row numbers, so hits resolve to passages through the same
//! store. A walk compares the query with the vectors in the graph's dtype: the flat
//! vectors themselves when they are stored alike, else a copy in `hnsw/vectors.bin`
//! (an i8 copy of f32 vectors is a quarter of their size, so a walk touches a quarter
//! of the memory). An i8 walk quantizes the query as the rows are, so each step is an
//! integer product of i8 codes; a quantized walk's efSearch best candidates are then
//! scored again against the flat vectors, so the scores returned are those of exact
//! search.
//!
//! Building inserts rows in parallel (rayon), each node's links behind its own lock,
//! choosing links with the paper's heuristic (a candidate is kept unless it is closer
//! to a link already kept than to the node); an i8 graph scores row against row in
//! integers too. A search walks the upper levels
//! greedily, then keeps the efSearch best at level 0, prefetching the vectors of a
//! node's unvisited neighbours before scoring them.
//!
//! `hnsw.graph`, little-endian: a 64-byte header (`SR1HNSW1`, version, M, level-0
//! links, entry row, top level, rows, nodes above level 0); level 0's links, rows x 2M
//! u32 (u32::MAX pads); the rows above level 0 (sorted), where each one's links start
//! (n + 1 offsets), and those links, M per level from level 1 up.

use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dense::{
    bytemuck_i8, quantize_row, query_count, DType, DenseSettings, DenseWriter, FlatIndex, Probe,
};
use crate::error::IndexError;
use crate::topk::{Scored, TopK};

pub(crate) const GRAPH: &str = "hnsw.graph";
/// The walk's own copy of the vectors, when the graph's dtype is not the flat one's.
pub(crate) const CODES: &str = "hnsw";
/// What searchr1 up to 0.1 wrote (a usearch graph); it cannot be read any more.
const USEARCH_GRAPH: &str = "hnsw.usearch";
const MAGIC: &[u8; 8] = b"SR1HNSW1";
const FORMAT: u32 = 1;
const HEADER: usize = 64;
const EMPTY: u32 = u32::MAX;
const MAX_LEVEL: usize = 16;
/// Rows inserted between two progress reports.
const CHUNK: usize = 2048;

/// How the graph's walk reads vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    F32,
    F16,
    I8,
}

impl Quantization {
    pub fn parse(name: &str) -> Result<Self, IndexError> {
        match name {
            "f32" => Ok(Quantization::F32),
            "f16" => Ok(Quantization::F16),
            "i8" => Ok(Quantization::I8),
            other => Err(IndexError::Settings(format!(
                "unknown HNSW dtype {other:?}; expected \"f32\", \"f16\" or \"i8\""
            ))),
        }
    }

    /// The name [`Quantization::parse`] reads.
    pub fn name(self) -> &'static str {
        self.dtype().name()
    }

    fn dtype(self) -> DType {
        match self {
            Quantization::F32 => DType::F32,
            Quantization::F16 => DType::F16,
            Quantization::I8 => DType::I8,
        }
    }
}

/// Graph settings, recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HnswSettings {
    pub dtype: Quantization,
    /// Links per node above level 0 (M); level 0 has 2M.
    pub connectivity: usize,
    /// Candidates kept while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidates kept while searching (efSearch): higher is slower and more exact.
    pub expansion_search: usize,
}

impl Default for HnswSettings {
    fn default() -> Self {
        HnswSettings {
            // A quarter of the memory to walk through (benches/README.md).
            dtype: Quantization::I8,
            connectivity: 16,
            expansion_add: 128,
            // High enough for recall@10 >= 0.95 on the hard cases measured
            // (benches/README.md); the flat index answers exactly anyway.
            expansion_search: 256,
        }
    }
}

impl HnswSettings {
    pub fn validate(&self) -> Result<(), IndexError> {
        if !(2..=1024).contains(&self.connectivity) || self.expansion_add == 0 || self.expansion_search == 0 {
            return Err(IndexError::Settings(format!(
                "HNSW needs 2 <= connectivity <= 1024 and positive expansions; got {self:?}"
            )));
        }
        Ok(())
    }
}

/// Reading a node's links, in a graph being built or a finished one.
trait Links: Sync {
    /// The links of `node` at `level` into `out` (cleared first).
    fn links(&self, node: u32, level: usize, out: &mut Vec<u32>);
}

/// What one thread reuses from walk to walk: visit marks and link buffers.
#[derive(Default)]
struct Scratch {
    marks: Vec<u16>,
    round: u16,
    links: Vec<u32>,
    fresh: Vec<u32>,
}

impl Scratch {
    /// Forgets every visit (marks one round newer; cleared when the counter wraps).
    fn new_walk(&mut self, rows: usize) {
        if self.marks.len() != rows {
            self.marks = vec![0; rows];
            self.round = 0;
        }
        self.round = self.round.wrapping_add(1);
        if self.round == 0 {
            self.marks.fill(0);
            self.round = 1;
        }
    }

    /// Marks `row` visited; `true` the first time in this walk.
    #[inline]
    fn visit(&mut self, row: u32) -> bool {
        let mark = &mut self.marks[row as usize];
        let first = *mark != self.round;
        *mark = self.round;
        first
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn scored(score: f32, row: u32) -> Scored {
    Scored {
        score,
        key: row as u64,
    }
}

/// From `from`, moves to a better-scoring neighbour at `level` until none is better.
fn greedy(
    graph: &impl Links,
    rows: &FlatIndex,
    q: Probe<'_>,
    mut from: Scored,
    level: usize,
    buf: &mut Vec<u32>,
) -> Scored {
    loop {
        graph.links(from.key as u32, level, buf);
        let mut moved = false;
        for &n in buf.iter() {
            let s = rows.score(q, n as usize);
            if s > from.score {
                from = scored(s, n);
                moved = true;
            }
        }
        if !moved {
            return from;
        }
    }
}

/// The `ef` best rows for `q` found by walking `level` from `entry`, best first.
fn search_level(
    graph: &impl Links,
    rows: &FlatIndex,
    q: Probe<'_>,
    entry: Scored,
    ef: usize,
    level: usize,
    scratch: &mut Scratch,
) -> Vec<Scored> {
    scratch.new_walk(rows.rows());
    scratch.visit(entry.key as u32);
    let mut candidates = BinaryHeap::from([entry]);
    let mut found = TopK::new(ef);
    found.push(entry);
    let mut links = std::mem::take(&mut scratch.links);
    let mut fresh = std::mem::take(&mut scratch.fresh);
    while let Some(c) = candidates.pop() {
        if c.score < found.threshold() {
            break; // nothing left to explore can improve the ef found
        }
        graph.links(c.key as u32, level, &mut links);
        fresh.clear();
        for &n in &links {
            if scratch.visit(n) {
                rows.prefetch(n as usize);
                fresh.push(n);
            }
        }
        for &n in &fresh {
            let s = rows.score(q, n as usize);
            if s > found.threshold() {
                candidates.push(scored(s, n));
                found.push(scored(s, n));
            }
        }
    }
    (scratch.links, scratch.fresh) = (links, fresh);
    found.into_sorted()
}

/// The links HNSW's heuristic keeps of `candidates` (best first, scored against the
/// node they would link from), at most `m`: a candidate closer to a link already kept
/// than to the node is left out, so the links spread in every direction.
fn select(rows: &FlatIndex, candidates: &[Scored], m: usize, buf: &mut Vec<f32>) -> Vec<u32> {
    if candidates.len() <= m {
        return candidates.iter().map(|c| c.key as u32).collect();
    }
    let mut kept: Vec<u32> = Vec::with_capacity(m);
    for c in candidates {
        if kept.len() == m {
            break;
        }
        let row = c.key as usize;
        let v = rows.probe(row, buf);
        if kept.iter().all(|&k| rows.score(v, k as usize) < c.score) {
            kept.push(row as u32);
        }
    }
    kept
}

/// Links of the graph being built: per node, one list per level, behind a lock.
struct Building {
    nodes: Vec<Mutex<Vec<Vec<u32>>>>,
}

impl Links for Building {
    fn links(&self, node: u32, level: usize, out: &mut Vec<u32>) {
        out.clear();
        let node = self.nodes[node as usize]
            .lock()
            .expect("no thread panics holding a node");
        if let Some(links) = node.get(level) {
            out.extend_from_slice(links);
        }
    }
}

/// The level of `row`: P(level >= l) = M^-l, from a hash of the row (so a build is
/// reproducible up to the order in which threads insert).
fn level_of(row: usize, m: usize) -> usize {
    let mut h = (row as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    let unit = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // in (0, 1]
    ((-unit.ln() / (m as f64).ln()) as usize).min(MAX_LEVEL)
}

struct Builder<'a> {
    rows: &'a FlatIndex,
    settings: HnswSettings,
    levels: Vec<u8>,
    graph: Building,
    /// The entry row and the top level.
    entry: RwLock<(u32, usize)>,
}

impl Builder<'_> {
    fn insert(&self, node: u32, scratch: &mut Scratch, bufs: &mut [Vec<f32>; 3]) {
        let [q_buf, v_buf, w_buf] = bufs;
        let q = self.rows.probe(node as usize, q_buf);
        let m = self.settings.connectivity;
        let level = self.levels[node as usize] as usize;
        let (entry, top) = *self.entry.read().expect("no thread panics holding the entry");
        let mut from = scored(self.rows.score(q, entry as usize), entry);
        for l in (level + 1..=top).rev() {
            from = greedy(&self.graph, self.rows, q, from, l, &mut scratch.links);
        }
        for l in (0..=level.min(top)).rev() {
            let found = search_level(
                &self.graph,
                self.rows,
                q,
                from,
                self.settings.expansion_add,
                l,
                scratch,
            );
            // A new node takes as many links as the level holds (2M at level 0, as
            // faiss does; hnswlib takes M): a denser level 0 reaches a recall with a
            // smaller efSearch.
            let cap = if l == 0 { 2 * m } else { m };
            let chosen = select(self.rows, &found, cap, v_buf);
            self.graph.nodes[node as usize]
                .lock()
                .expect("no thread panics holding a node")[l] = chosen.clone();
            for n in chosen {
                self.link(n, node, l, cap, [v_buf, w_buf]);
            }
            from = found[0];
        }
        if level > top {
            let mut entry = self.entry.write().expect("no thread panics holding the entry");
            if level > entry.1 {
                *entry = (node, level);
            }
        }
    }

    /// Adds `node` to the links of `n` at `level`; a full list keeps what the
    /// heuristic chooses among its links and `node`.
    fn link(&self, n: u32, node: u32, level: usize, cap: usize, [v_buf, w_buf]: [&mut Vec<f32>; 2]) {
        let mut lists = self.graph.nodes[n as usize]
            .lock()
            .expect("no thread panics holding a node");
        let list = &mut lists[level];
        if list.len() < cap {
            list.push(node);
            return;
        }
        let v = self.rows.probe(n as usize, v_buf);
        let mut candidates: Vec<Scored> = list
            .iter()
            .chain([&node])
            .map(|&c| scored(self.rows.score(v, c as usize), c))
            .collect();
        candidates.sort_by(|a, b| b.cmp(a));
        *list = select(self.rows, &candidates, cap, w_buf);
    }

    fn write(self, path: &Path) -> Result<(), IndexError> {
        let io = |e| IndexError::io(path, e);
        let m = self.settings.connectivity;
        let (entry, top) = self.entry.into_inner().expect("no thread panicked");
        let nodes: Vec<Vec<Vec<u32>>> = self
            .graph
            .nodes
            .into_iter()
            .map(|n| n.into_inner().expect("no thread panicked"))
            .collect();
        let upper: Vec<u32> = (0..nodes.len() as u32)
            .filter(|&r| nodes[r as usize].len() > 1)
            .collect();
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        for word in [FORMAT, m as u32, 2 * m as u32, entry, top as u32] {
            header.extend_from_slice(&word.to_le_bytes());
        }
        for word in [nodes.len() as u64, upper.len() as u64] {
            header.extend_from_slice(&word.to_le_bytes());
        }
        header.resize(HEADER, 0);
        let tmp = path.with_extension("tmp");
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io)?);
        out.write_all(&header).map_err(io)?;
        let mut put = |words: &mut dyn Iterator<Item = u32>| -> Result<(), IndexError> {
            for w in words {
                out.write_all(&w.to_le_bytes()).map_err(io)?;
            }
            Ok(())
        };
        fn padded(links: &[u32], width: usize) -> impl Iterator<Item = u32> + '_ {
            links.iter().copied().chain(std::iter::repeat(EMPTY)).take(width)
        }
        put(&mut nodes.iter().flat_map(|n| padded(&n[0], 2 * m)))?;
        put(&mut upper.iter().copied())?;
        let mut offset = 0u32;
        put(&mut std::iter::once(0).chain(upper.iter().map(|&r| {
            offset += ((nodes[r as usize].len() - 1) * m) as u32;
            offset
        })))?;
        put(&mut upper
            .iter()
            .flat_map(|&r| nodes[r as usize][1..].iter().flat_map(|l| padded(l, m))))?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// An HNSW graph opened memory-mapped.
pub struct HnswIndex {
    map: Mmap,
    m: usize,
    rows: usize,
    entry: u32,
    top: usize,
    upper: usize,
    /// The walk's vectors when they are not the flat ones.
    codes: Option<FlatIndex>,
    expansion_search: AtomicUsize,
}

impl Links for HnswIndex {
    fn links(&self, node: u32, level: usize, out: &mut Vec<u32>) {
        out.clear();
        let words = self.words();
        let links = if level == 0 {
            let start = node as usize * 2 * self.m;
            &words[start..start + 2 * self.m]
        } else {
            let (rows, offsets, links) = self.upper_parts();
            let Ok(i) = rows.binary_search(&node) else { return };
            let start = offsets[i] as usize + (level - 1) * self.m;
            if start + self.m > offsets[i + 1] as usize {
                return;
            }
            &links[start..start + self.m]
        };
        // A link past the last row (the padding, or a damaged file) ends the list.
        out.extend(links.iter().copied().take_while(|&n| (n as usize) < self.rows));
    }
}

impl HnswIndex {
    /// Builds the graph of every vector of `flat` into `dir`, inserting rows on
    /// `threads` threads; `on_rows` is told how many rows are in after each chunk.
    /// Raising `stop` ends the build early with [`IndexError::Cancelled`] (the files
    /// it wrote are left to the caller).
    pub fn build(
        dir: &Path,
        flat: &FlatIndex,
        settings: HnswSettings,
        threads: usize,
        on_rows: impl Fn(usize) + Sync,
        stop: &AtomicBool,
    ) -> Result<(), IndexError> {
        settings.validate()?;
        let rows = flat.rows();
        if rows >= EMPTY as usize {
            return Err(IndexError::Settings(format!(
                "an HNSW graph holds fewer than 2^32 - 1 rows, not {rows}"
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| IndexError::Settings(format!("cannot start {threads} threads: {e}")))?;
        for stale in [dir.join(USEARCH_GRAPH), dir.join(GRAPH)] {
            let _ = std::fs::remove_file(stale);
        }
        let codes = Self::write_codes(dir, flat, settings.dtype.dtype(), stop)?;
        let walk = codes.as_ref().unwrap_or(flat);
        let levels: Vec<u8> = (0..rows)
            .map(|r| level_of(r, settings.connectivity) as u8)
            .collect();
        let builder = Builder {
            rows: walk,
            settings,
            graph: Building {
                nodes: levels
                    .iter()
                    .map(|&l| Mutex::new(vec![Vec::new(); l as usize + 1]))
                    .collect(),
            },
            entry: RwLock::new((0, levels.first().map_or(0, |&l| l as usize))),
            levels,
        };
        let done = AtomicUsize::new(rows.min(1)); // row 0 is the first entry
        pool.install(|| {
            (0..rows.div_ceil(CHUNK)).into_par_iter().for_each(|c| {
                let chunk = (c * CHUNK).max(1)..((c + 1) * CHUNK).min(rows);
                let count = chunk.len();
                SCRATCH.with_borrow_mut(|scratch| {
                    let mut bufs = [Vec::new(), Vec::new(), Vec::new()];
                    for node in chunk {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        builder.insert(node as u32, scratch, &mut bufs);
                    }
                });
                on_rows(done.fetch_add(count, Ordering::Relaxed) + count);
            })
        });
        if stop.load(Ordering::Relaxed) {
            return Err(IndexError::Cancelled);
        }
        builder.write(&dir.join(GRAPH))
    }

    /// Writes the walk's copy of `flat`'s vectors as `dtype` (none when `flat` is
    /// stored so already) and opens it.
    fn write_codes(
        dir: &Path,
        flat: &FlatIndex,
        dtype: DType,
        stop: &AtomicBool,
    ) -> Result<Option<FlatIndex>, IndexError> {
        let codes_dir = dir.join(CODES);
        if codes_dir.exists() {
            std::fs::remove_dir_all(&codes_dir).map_err(|e| IndexError::io(&codes_dir, e))?;
        }
        if dtype == flat.dtype() {
            return Ok(None);
        }
        let mut writer = DenseWriter::create(&codes_dir, flat.dim(), dtype)?;
        let mut buf = Vec::new();
        for start in (0..flat.rows()).step_by(4096) {
            if stop.load(Ordering::Relaxed) {
                return Err(IndexError::Cancelled);
            }
            writer.add(flat.vectors(start, (start + 4096).min(flat.rows()), &mut buf))?;
        }
        let rows = writer.finish()?;
        Self::open_codes(&codes_dir, flat, dtype, rows).map(Some)
    }

    fn open_codes(
        codes_dir: &Path,
        flat: &FlatIndex,
        dtype: DType,
        rows: u64,
    ) -> Result<FlatIndex, IndexError> {
        let settings = DenseSettings {
            dim: flat.dim(),
            dtype,
            rows,
        };
        FlatIndex::open(codes_dir, settings)
    }

    /// Opens the graph in `dir` over `flat` without reading it into memory.
    pub fn open(dir: &Path, settings: HnswSettings, flat: &FlatIndex) -> Result<Self, IndexError> {
        let path = dir.join(GRAPH);
        if !path.is_file() {
            if dir.join(USEARCH_GRAPH).is_file() {
                return Err(IndexError::Corrupt(format!(
                    "{}: this HNSW graph was built by an older searchr1 (usearch) and cannot be read; \
                     rebuild the index with --hnsw",
                    dir.display()
                )));
            }
            return Err(IndexError::Corrupt(format!("{} is missing", path.display())));
        }
        let file = File::open(&path).map_err(|e| IndexError::io(&path, e))?;
        // SAFETY: index files are written once and never modified while opened.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| IndexError::io(&path, e))?;
        let bad = |what: String| IndexError::Corrupt(format!("{}: {what}", path.display()));
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(bad("not a searchr1 HNSW graph".into()));
        }
        let word = |i: usize| u32::from_le_bytes(map[8 + 4 * i..12 + 4 * i].try_into().unwrap());
        let long = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().unwrap());
        let (format, m, m0, entry, top) = (
            word(0),
            word(1) as usize,
            word(2) as usize,
            word(3),
            word(4) as usize,
        );
        let (rows, upper) = (long(28) as usize, long(36) as usize);
        if format != FORMAT {
            return Err(bad(format!(
                "graph format {format}, but this searchr1 reads {FORMAT}; rebuild the index"
            )));
        }
        if m != settings.connectivity || m0 != 2 * m || rows != flat.rows() || top > MAX_LEVEL {
            return Err(bad(format!(
                "M {m}, {m0} links at level 0, {rows} rows, top level {top}; the manifest says M {} over {} rows",
                settings.connectivity,
                flat.rows()
            )));
        }
        if rows > 0 && entry as usize >= rows {
            return Err(bad(format!("entry row {entry} of {rows}")));
        }
        let fixed = HEADER + 4 * (rows * m0 + 2 * upper + 1);
        if map.len() < fixed || !(map.len() - fixed).is_multiple_of(4 * m) {
            return Err(bad(format!(
                "{} bytes do not hold a graph of {rows} rows",
                map.len()
            )));
        }
        let codes_dir = dir.join(CODES);
        let codes = if settings.dtype.dtype() == flat.dtype() {
            None
        } else {
            Some(Self::open_codes(
                &codes_dir,
                flat,
                settings.dtype.dtype(),
                rows as u64,
            )?)
        };
        let index = HnswIndex {
            map,
            m,
            rows,
            entry,
            top,
            upper,
            codes,
            expansion_search: AtomicUsize::new(settings.expansion_search.max(1)),
        };
        let (upper_rows, offsets, links) = index.upper_parts();
        let sorted =
            upper_rows.windows(2).all(|w| w[0] < w[1]) && upper_rows.iter().all(|&r| (r as usize) < rows);
        let nested = offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[upper] as usize == links.len();
        if !sorted || !nested {
            return Err(bad("its upper levels are damaged".into()));
        }
        Ok(index)
    }

    /// The map after the header, as u32 words.
    fn words(&self) -> &[u32] {
        let bytes = &self.map[HEADER..];
        // SAFETY: the map is page-aligned, HEADER is a multiple of 4, every bit
        // pattern is a u32, and the file is little-endian as is every target we build.
        const { assert!(cfg!(target_endian = "little")) };
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u32>(), bytes.len() / 4) }
    }

    /// The rows above level 0, where their links start, and those links.
    fn upper_parts(&self) -> (&[u32], &[u32], &[u32]) {
        let rest = &self.words()[self.rows * 2 * self.m..];
        let (rows, rest) = rest.split_at(self.upper);
        let (offsets, links) = rest.split_at(self.upper + 1);
        (rows, offsets, links)
    }

    /// Changes how many candidates a search keeps (efSearch).
    pub fn set_expansion_search(&self, n: usize) {
        self.expansion_search.store(n.max(1), Ordering::Relaxed);
    }

    pub fn expansion_search(&self) -> usize {
        self.expansion_search.load(Ordering::Relaxed)
    }

    /// The (approximately) best `k` rows per query (`n × dim`), as (row, inner product)
    /// over the flat vectors, best first.
    pub fn search(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
        flat: &FlatIndex,
    ) -> Result<Vec<Vec<(usize, f32)>>, IndexError> {
        let n = query_count(queries, dim)?;
        if k == 0 || self.rows == 0 {
            return Ok(vec![Vec::new(); n]);
        }
        let walk = self.codes.as_ref().unwrap_or(flat);
        // An i8 walk quantizes the query as rows are (a scale per vector), so it scores
        // in integers; its candidates are then re-scored exactly.
        let quantize = walk.dtype() == DType::I8;
        let rescore = quantize || self.codes.is_some();
        let ef = self.expansion_search().max(k);
        Ok(queries
            .par_chunks_exact(dim)
            .map(|q| {
                let mut codes = Vec::new();
                let probe = if quantize {
                    let scale = quantize_row(q, &mut codes);
                    Probe::I8 {
                        scale,
                        codes: bytemuck_i8(&codes),
                    }
                } else {
                    Probe::F32(q)
                };
                SCRATCH.with_borrow_mut(|scratch| {
                    let mut from = scored(walk.score(probe, self.entry as usize), self.entry);
                    for level in (1..=self.top).rev() {
                        from = greedy(self, walk, probe, from, level, &mut scratch.links);
                    }
                    let found = search_level(self, walk, probe, from, ef, 0, scratch);
                    let best = if rescore {
                        // Scored again against the flat vectors: exact scores, exact order.
                        let mut top = TopK::new(k);
                        for c in &found {
                            top.push(scored(flat.dot(q, c.key as usize), c.key as u32));
                        }
                        top.into_sorted()
                    } else {
                        found
                    };
                    best.iter().take(k).map(|c| (c.key as usize, c.score)).collect()
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rows` vectors of `dim` around 200 centres, L2-normalised, and a flat index of them.
    fn clustered(dir: &Path, rows: usize, dim: usize, dtype: DType) -> (Vec<f32>, FlatIndex) {
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 20_001) as f32 / 10_000.0 - 1.0
        };
        let centres: Vec<f32> = (0..200 * dim).map(|_| next()).collect();
        let mut vectors = Vec::with_capacity(rows * dim);
        for r in 0..rows {
            let c = (r * 7919) % 200;
            let v: Vec<f32> = (0..dim).map(|i| centres[c * dim + i] + 0.5 * next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            vectors.extend(v.iter().map(|x| x / norm));
        }
        let _ = std::fs::remove_dir_all(dir);
        let mut w = DenseWriter::create(dir, dim, dtype).unwrap();
        w.add(&vectors).unwrap();
        w.finish().unwrap();
        let settings = DenseSettings {
            dim,
            dtype,
            rows: rows as u64,
        };
        (vectors, FlatIndex::open(dir, settings).unwrap())
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("searchr1-hnsw-{name}-{}", std::process::id()))
    }

    #[test]
    fn a_damaged_or_old_graph_is_an_error_not_a_crash() {
        let dir = temp("damaged");
        let (_, flat) = clustered(&dir, 3_000, 16, DType::F32);
        let settings = HnswSettings {
            dtype: Quantization::F32,
            ..HnswSettings::default()
        };
        HnswIndex::build(&dir, &flat, settings, 2, |_| {}, &AtomicBool::new(false)).unwrap();
        let graph = dir.join(GRAPH);
        let good = std::fs::read(&graph).unwrap();
        let message = |bytes: &[u8]| {
            std::fs::write(&graph, bytes).unwrap();
            match HnswIndex::open(&dir, settings, &flat) {
                Ok(_) => "opened".to_string(),
                Err(e) => e.to_string(),
            }
        };
        assert!(message(&good[..good.len() - 4]).contains("do not hold a graph"));
        assert!(message(&good[..10]).contains("not a searchr1 HNSW graph"));
        let mut other_m = good.clone();
        other_m[12..16].copy_from_slice(&8u32.to_le_bytes());
        assert!(message(&other_m).contains("the manifest says M 16"));
        let mut bad_upper = good.clone();
        let upper_rows_at = HEADER + 4 * 3_000 * 32;
        bad_upper[upper_rows_at..upper_rows_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(message(&bad_upper).contains("upper levels are damaged"));
        // Links past the last row are skipped, not followed.
        let mut bad_links = good.clone();
        for b in &mut bad_links[HEADER..HEADER + 4 * 3_000 * 32][..4 * 1000] {
            *b = 0xEE;
        }
        std::fs::write(&graph, &bad_links).unwrap();
        let index = HnswIndex::open(&dir, settings, &flat).unwrap();
        let q = flat.vectors(5, 6, &mut Vec::new()).to_vec();
        assert_eq!(index.search(&q, 16, 3, &flat).unwrap()[0].len(), 3);
        std::fs::remove_file(&graph).unwrap();
        std::fs::write(dir.join(USEARCH_GRAPH), b"old").unwrap();
        let old = HnswIndex::open(&dir, settings, &flat).err().unwrap().to_string();
        assert!(old.contains("older searchr1 (usearch)"), "{old}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn levels_thin_out_by_m() {
        let levels: Vec<usize> = (0..100_000).map(|r| level_of(r, 16)).collect();
        let above = |l: usize| levels.iter().filter(|&&x| x >= l).count() as f64 / 1e5;
        assert!((above(1) - 1.0 / 16.0).abs() < 0.005, "{}", above(1));
        assert!((above(2) - 1.0 / 256.0).abs() < 0.001, "{}", above(2));
    }

    #[test]
    fn recall_against_exact_search_for_every_walk_dtype() {
        let (rows, dim) = (20_000, 32);
        for (flat_dtype, graph) in [
            (DType::F32, Quantization::F32),
            (DType::F32, Quantization::F16),
            (DType::F32, Quantization::I8),
            (DType::I8, Quantization::I8),
        ] {
            let dir = temp(&format!("{flat_dtype:?}-{graph:?}"));
            let (vectors, flat) = clustered(&dir, rows, dim, flat_dtype);
            let settings = HnswSettings {
                dtype: graph,
                expansion_search: 64,
                ..HnswSettings::default()
            };
            HnswIndex::build(&dir, &flat, settings, 2, |_| {}, &AtomicBool::new(false)).unwrap();
            let index = HnswIndex::open(&dir, settings, &flat).unwrap();
            assert_eq!(index.codes.is_some(), flat_dtype != graph.dtype());
            let queries: Vec<f32> = vectors[..300 * dim].iter().map(|x| x * 0.9 + 0.01).collect();
            let exact = flat.search(&queries, 10).unwrap();
            let got = index.search(&queries, dim, 10, &flat).unwrap();
            let mut hits = 0;
            for ((g, e), q) in got.iter().zip(&exact).zip(queries.chunks_exact(dim)) {
                assert_eq!(g.len(), 10);
                assert!(g.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
                for (row, score) in g {
                    // Scores are those of the flat vectors, whatever the walk read.
                    assert!((score - flat.dot(q, *row)).abs() < 1e-6);
                    hits += e.iter().any(|(r, _)| r == row) as usize;
                }
            }
            let recall = hits as f64 / (10.0 * exact.len() as f64);
            assert!(
                recall >= 0.95,
                "{flat_dtype:?} vectors, {graph:?} walk: recall {recall}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
