//! Reading a passage corpus: JSONL, plain or gzip, streamed line by line.
//!
//! Two row formats are accepted, as Search-R1 and FlashRAG write them:
//!
//! * `{"id": "0", "contents": "\"Title\"\ntext"}` (the title is the first line);
//! * `{"id": "0", "title": "Title", "text": "text"}`, turned into the first form with
//!   the title quoted, so observations read the same either way.
//!
//! Ids are strings; an integer id is read as its decimal text (`5` is `"5"`), and any
//! other kind of id is an error that says so. A UTF-8 byte-order mark at the start of
//! the file (as some Windows tools write) is skipped. A malformed line stops the read
//! with an error that names the file, the line and what is wrong, unless bad lines are
//! to be skipped (then they are counted). Blank lines are ignored. A repeated id is
//! always an error.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Deserialize;

use crate::error::CorpusError;

/// One passage: its id and its contents (`"Title"\ntext`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    pub id: String,
    pub contents: String,
}

impl Passage {
    /// The first line of the contents (quotes kept, as Search-R1 shows it).
    pub fn title(&self) -> &str {
        self.contents.split('\n').next().unwrap_or("")
    }

    /// Everything after the first line.
    pub fn text(&self) -> &str {
        self.contents.split_once('\n').map_or("", |(_, rest)| rest)
    }
}

/// What a good row looks like, for error messages.
const ROW_SHAPE: &str = r#"rows look like {"id": "1", "contents": "\"Title\"\ntext"}"#;

/// The UTF-8 encoding of U+FEFF, the byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A row's `"id"` as found: any JSON value deserialises, so that a wrong kind gets its
/// own message rather than serde's.
enum RawId {
    Text(String),
    Int(String),
    /// The kind of value found instead (for the message).
    Other(&'static str),
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawId;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<RawId, E> {
                Ok(RawId::Text(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawId, E> {
                Ok(RawId::Int(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawId, E> {
                Ok(RawId::Int(v.to_string()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawId, E> {
                Ok(RawId::Other("a number with a fraction or an exponent"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawId, E> {
                Ok(RawId::Other("a boolean"))
            }
            fn visit_unit<E>(self) -> Result<RawId, E> {
                Ok(RawId::Other("null"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawId, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(RawId::Other("an array"))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawId, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(RawId::Other("an object"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
struct RawPassage {
    // Not a plain Option: that would read `"id": null` as no id at all.
    #[serde(default, deserialize_with = "present_id")]
    id: Option<RawId>,
    contents: Option<String>,
    title: Option<String>,
    text: Option<String>,
}

fn present_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<RawId>, D::Error> {
    RawId::deserialize(deserializer).map(Some)
}

/// A checksum of every byte read from the file (CRC-32 and length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checksum {
    pub crc32: u32,
    pub bytes: u64,
}

#[derive(Default)]
struct ChecksumState {
    hasher: crc32fast::Hasher,
    bytes: u64,
}

/// Reports how far a [`CorpusReader`] has read, for progress bars.
pub struct ChecksumHandle(Rc<RefCell<ChecksumState>>);

impl ChecksumHandle {
    /// Bytes of the file read so far.
    pub fn bytes(&self) -> u64 {
        self.0.borrow().bytes
    }
}

/// Passes reads through while checksumming them.
struct ChecksumReader<R> {
    inner: R,
    state: Rc<RefCell<ChecksumState>>,
}

impl<R: Read> Read for ChecksumReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.state.borrow_mut();
        state.hasher.update(&buf[..n]);
        state.bytes += n as u64;
        Ok(n)
    }
}

/// Streams the passages of a corpus file.
pub struct CorpusReader {
    path: PathBuf,
    lines: Box<dyn BufRead>,
    line_no: u64,
    skip_bad: bool,
    skipped: u64,
    seen: HashSet<u64>,
    id_hasher: std::collections::hash_map::RandomState,
    checksum: Rc<RefCell<ChecksumState>>,
    buf: Vec<u8>,
}

impl CorpusReader {
    /// Opens `path` (gzip when it ends in `.gz`). With `skip_bad`, malformed lines are
    /// skipped and counted instead of stopping the read.
    pub fn open(path: &Path, skip_bad: bool) -> Result<Self, CorpusError> {
        let file = File::open(path).map_err(|source| CorpusError::Io {
            path: path.to_owned(),
            source,
        })?;
        let checksum = Rc::new(RefCell::new(ChecksumState::default()));
        let raw = ChecksumReader {
            inner: file,
            state: checksum.clone(),
        };
        let gz = path.extension().is_some_and(|e| e == "gz");
        let lines: Box<dyn BufRead> = if gz {
            Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, raw)),
            ))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, raw))
        };
        Ok(CorpusReader {
            path: path.to_owned(),
            lines,
            line_no: 0,
            skip_bad,
            skipped: 0,
            seen: HashSet::new(),
            id_hasher: Default::default(),
            checksum,
            buf: Vec::new(),
        })
    }

    /// Lines skipped as malformed so far (only with `skip_bad`).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The checksum of the bytes of the file read so far (the whole file once the
    /// iterator is exhausted).
    pub fn checksum(&self) -> Checksum {
        let state = self.checksum.borrow();
        Checksum {
            crc32: state.hasher.clone().finalize(),
            bytes: state.bytes,
        }
    }

    /// A handle that reports the bytes read so far while the reader is borrowed.
    pub fn checksum_handle(&self) -> ChecksumHandle {
        ChecksumHandle(self.checksum.clone())
    }

    fn bad(&self, reason: String) -> CorpusError {
        CorpusError::BadLine {
            path: self.path.clone(),
            line: self.line_no,
            reason,
        }
    }

    fn parse(&self, line: &str) -> Result<Passage, CorpusError> {
        let raw: RawPassage = serde_json::from_str(line).map_err(|e| {
            self.bad(match e.classify() {
                serde_json::error::Category::Data => format!("a field has the wrong type ({e}); {ROW_SHAPE}"),
                _ => format!("not valid JSON ({e})"),
            })
        })?;
        let id = match raw.id {
            Some(RawId::Text(s) | RawId::Int(s)) => s,
            Some(RawId::Other(kind)) => {
                return Err(self.bad(format!(
                    "\"id\" is {kind}; ids must be strings (or whole numbers, read as their \
                     decimal text); {ROW_SHAPE}"
                )))
            }
            None => return Err(self.bad("no \"id\" field".into())),
        };
        let contents = match (raw.contents, raw.title, raw.text) {
            (Some(contents), _, _) => contents,
            (None, Some(title), Some(text)) => format!("\"{title}\"\n{text}"),
            (None, None, Some(text)) => text,
            _ => {
                return Err(self.bad(format!(
                    "no \"contents\" field (nor \"title\" and \"text\"); {ROW_SHAPE}"
                )))
            }
        };
        Ok(Passage { id, contents })
    }
}

impl Iterator for CorpusReader {
    type Item = Result<Passage, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.lines.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => self.line_no += 1,
                Err(source) => {
                    return Some(Err(CorpusError::Io {
                        path: self.path.clone(),
                        source,
                    }))
                }
            }
            if self.buf.starts_with(BOM) {
                if self.line_no == 1 {
                    self.buf.drain(..BOM.len());
                } else {
                    // Files saved with a BOM and then concatenated carry one mid-file.
                    let err = self.bad(
                        "the line starts with a UTF-8 byte-order mark (U+FEFF), as when files \
                         saved with one are concatenated; remove it (only the file's first \
                         line may have one)"
                            .into(),
                    );
                    if self.skip_bad {
                        self.skipped += 1;
                        continue;
                    }
                    return Some(Err(err));
                }
            }
            let parsed = match std::str::from_utf8(&self.buf) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => self.parse(line.trim_end_matches(['\n', '\r'])),
                Err(e) => Err(self.bad(format!("not valid UTF-8 (byte {})", e.valid_up_to() + 1))),
            };
            let passage = match parsed {
                Ok(passage) => passage,
                Err(_) if self.skip_bad => {
                    self.skipped += 1;
                    continue;
                }
                Err(e) => return Some(Err(e)),
            };
            let mut h = self.id_hasher.build_hasher();
            h.write(passage.id.as_bytes());
            if !self.seen.insert(h.finish()) {
                return Some(Err(CorpusError::DuplicateId {
                    path: self.path.clone(),
                    line: self.line_no,
                    id: passage.id,
                }));
            }
            return Some(Ok(passage));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(name: &str, body: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("searchr1-corpus-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn both_formats_and_blank_lines() {
        let path = write(
            "a.jsonl",
            b"{\"id\": \"0\", \"contents\": \"\\\"T\\\"\\nbody\"}\n\n{\"id\": 7, \"title\": \"U\", \"text\": \"x\\ny\"}\n",
        );
        let got: Vec<Passage> = CorpusReader::open(&path, false)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].title(), got[0].text()), ("\"T\"", "body"));
        assert_eq!(got[1].id, "7");
        assert_eq!(got[1].contents, "\"U\"\nx\ny");
    }

    #[test]
    fn integer_ids_read_as_text_and_a_leading_bom_is_skipped() {
        let path = write(
            "bom.jsonl",
            b"\xEF\xBB\xBF{\"id\": 5, \"contents\": \"x\"}\n{\"id\": 18446744073709551615, \"contents\": \"y\"}\n",
        );
        let ids: Vec<String> = CorpusReader::open(&path, false)
            .unwrap()
            .map(|p| p.unwrap().id)
            .collect();
        assert_eq!(ids, ["5", "18446744073709551615"]);

        let later = write(
            "bom2.jsonl",
            b"{\"id\": \"a\", \"contents\": \"x\"}\n\xEF\xBB\xBF{\"id\": \"b\", \"contents\": \"y\"}\n",
        );
        let err = CorpusReader::open(&later, false)
            .unwrap()
            .nth(1)
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bom2.jsonl:2: the line starts with a UTF-8 byte-order mark"),
            "{err}"
        );
        let mut reader = CorpusReader::open(&later, true).unwrap();
        assert_eq!(reader.by_ref().count(), 1);
        assert_eq!(reader.skipped(), 1);
    }

    #[test]
    fn gzip_and_checksum() {
        let body = b"{\"id\": \"a\", \"contents\": \"x\"}\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body).unwrap();
        let compressed = gz.finish().unwrap();
        let path = write("b.jsonl.gz", &compressed);
        let mut reader = CorpusReader::open(&path, false).unwrap();
        assert_eq!(reader.next().unwrap().unwrap().id, "a");
        assert!(reader.next().is_none());
        let sum = reader.checksum();
        assert_eq!(sum.bytes, compressed.len() as u64);
        assert_eq!(sum.crc32, crc32fast::hash(&compressed));
    }

    #[test]
    fn errors_name_file_and_line() {
        let path = write(
            "c.jsonl",
            b"{\"id\": \"a\", \"contents\": \"x\"}\n{\"id\": \"b\"}\nnot json\n",
        );
        let err = CorpusReader::open(&path, false)
            .unwrap()
            .nth(1)
            .unwrap()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("c.jsonl:2:") && msg.contains("no \"contents\""),
            "{msg}"
        );

        let mut reader = CorpusReader::open(&path, true).unwrap();
        assert_eq!(reader.by_ref().filter_map(Result::ok).count(), 1);
        assert_eq!(reader.skipped(), 2);

        let dup = write(
            "d.jsonl",
            b"{\"id\": 1, \"contents\": \"x\"}\n{\"id\": \"1\", \"contents\": \"y\"}\n",
        );
        let err = CorpusReader::open(&dup, true)
            .unwrap()
            .nth(1)
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("d.jsonl:2: duplicate id \"1\""), "{err}");

        let bad_utf8 = write(
            "e.jsonl",
            b"{\"id\": \"a\", \"contents\": \"\xff\"}\n{\"id\": \"b\", \"contents\": \"ok\"}\n",
        );
        let err = CorpusReader::open(&bad_utf8, false)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("e.jsonl:1: not valid UTF-8"), "{err}");
        let ok: Vec<_> = CorpusReader::open(&bad_utf8, true).unwrap().collect();
        assert_eq!(ok.len(), 1);

        for (id, kind) in [
            ("5.5", "a number with a fraction or an exponent"),
            ("true", "a boolean"),
            ("null", "null"),
            ("[1]", "an array"),
            ("{\"a\": [1]}", "an object"),
        ] {
            let body = format!("{{\"id\": {id}, \"contents\": \"x\"}}\n");
            let path = write("f.jsonl", body.as_bytes());
            let err = CorpusReader::open(&path, false)
                .unwrap()
                .next()
                .unwrap()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("f.jsonl:1: \"id\" is {kind}; ids must be strings")),
                "{err}"
            );
        }

        let missing = CorpusReader::open(Path::new("/nonexistent/x.jsonl"), false)
            .err()
            .unwrap();
        assert!(missing.to_string().contains("/nonexistent/x.jsonl"));
    }
}
