//! The pure-Rust core of searchr1.
//!
//! * [`tags`]: the action of a turn (`<search>` / `<answer>`) exactly as Search-R1
//!   parses it, and a streaming scanner for stop strings in text.
//! * [`stop`]: stop checking on token ids for a batch of sequences decoded in lockstep,
//!   so generation ends exactly at `</search>` or `</answer>` with nothing decoded.
//! * [`pack`]: multi-turn rollouts into batch arrays with the loss mask that hides
//!   injected tokens (retrieved documents) from the loss.
//!
//! This crate has no Python dependency; `searchr1-python` binds it as `searchr1._core`.

pub mod error;
pub mod pack;
pub mod stop;
pub mod tags;

pub use error::{PackError, TagError};
pub use pack::{pack, pack_into, PackBuffers, PackConfig, PackedBatch, Segment, Trajectory};
pub use stop::{StopAutomaton, TokenStopChecker, CONTINUE};
pub use tags::{parse_action, Action, ActionKind, StopScanner};
