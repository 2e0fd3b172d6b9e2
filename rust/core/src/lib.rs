//! The pure-Rust core of searchr1.
//!
//! * [`tags`]: the action of a turn (`<search>` / `<answer>`) exactly as Search-R1
//!   parses it, and a streaming scanner for stop strings in text.
//! * [`stop`]: stop checking on token ids for a batch of sequences decoded in lockstep,
//!   so generation ends exactly at `</search>` or `</answer>` with nothing decoded.
//! * [`corpus`], [`bm25`], [`index`]: the retriever — a streamed JSONL corpus, BM25
//!   over tantivy scored as Lucene does with settable `k1` / `b`, batched search on
//!   rayon, and an index directory whose [`manifest`] the index layer writes after each
//!   build stage (the commit point), with [`checksum`]s of every file; a long build
//!   step stops when its [`cancel`] says so.
//! * [`dense`], [`graph`], [`simd`]: dense vectors searched exactly (blocked SGEMMs) or
//!   through usearch's HNSW graph re-scored exactly, with SIMD chosen at run time.
//! * [`pack`]: multi-turn rollouts into batch arrays with the loss mask that hides
//!   injected tokens (retrieved documents) from the loss.
//!
//! This crate has no Python dependency; `searchr1-python` binds it as `searchr1._core`.

pub mod analysis;
pub mod bm25;
pub mod cancel;
pub mod checksum;
pub mod corpus;
pub mod dense;
pub mod docstore;
pub mod error;
pub mod graph;
pub mod index;
pub mod manifest;
pub mod pack;
pub mod simd;
pub mod stop;
pub mod tags;
pub mod topk;

pub use bm25::{Bm25Index, Bm25Settings, ScoredPassage};
pub use cancel::Cancel;
pub use corpus::{CorpusReader, Passage};
pub use error::{CorpusError, IndexError, PackError, TagError};
pub use index::{BuildOptions, IndexBuilder, IndexDir};
pub use manifest::Manifest;
pub use pack::{pack, pack_into, PackBuffers, PackConfig, PackedBatch, Segment, Trajectory};
pub use stop::{StopAutomaton, StopMatch, TokenStopChecker, CONTINUE};
pub use tags::{parse_action, Action, ActionKind, StopScanner};
