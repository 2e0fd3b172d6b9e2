//! A plain passage store: row number -> (id, contents), memory-mapped.
//!
//! Two files: `passages.bin` holds `id \0 contents` back to back, and `passages.idx`
//! holds `rows + 1` little-endian u64 offsets into it. Reading a passage is a slice of
//! the map; nothing is decompressed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::IndexError;

pub(crate) const DATA: &str = "passages.bin";
pub(crate) const OFFSETS: &str = "passages.idx";

/// Appends passages, writing their offsets as it goes (so that its memory stays flat
/// however many passages it stores).
pub struct DocStoreWriter {
    dir: PathBuf,
    data: BufWriter<File>,
    offsets: BufWriter<File>,
    /// The offset after the last passage.
    end: u64,
    rows: usize,
}

impl DocStoreWriter {
    pub fn create(dir: &Path) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let create = |name: &str| {
            let path = dir.join(name);
            let file = File::create(&path).map_err(|e| IndexError::io(&path, e))?;
            Ok::<_, IndexError>(BufWriter::with_capacity(1 << 20, file))
        };
        let mut writer = DocStoreWriter {
            dir: dir.to_owned(),
            data: create(DATA)?,
            offsets: create(OFFSETS)?,
            end: 0,
            rows: 0,
        };
        writer.write_offset()?;
        Ok(writer)
    }

    pub fn add(&mut self, id: &str, contents: &str) -> Result<(), IndexError> {
        if id.contains('\0') {
            return Err(IndexError::Settings(format!(
                "passage id {id:?} contains a NUL character"
            )));
        }
        // The path is built only on an error: this runs once a passage.
        let io = |e| IndexError::io(&self.dir.join(DATA), e);
        self.data.write_all(id.as_bytes()).map_err(io)?;
        self.data.write_all(b"\0").map_err(io)?;
        self.data.write_all(contents.as_bytes()).map_err(io)?;
        self.end += id.len() as u64 + 1 + contents.len() as u64;
        self.rows += 1;
        self.write_offset()
    }

    fn write_offset(&mut self) -> Result<(), IndexError> {
        self.offsets
            .write_all(&self.end.to_le_bytes())
            .map_err(|e| IndexError::io(&self.dir.join(OFFSETS), e))
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(mut self) -> Result<(), IndexError> {
        for (file, name) in [(&mut self.data, DATA), (&mut self.offsets, OFFSETS)] {
            file.flush()
                .map_err(|e| IndexError::io(&self.dir.join(name), e))?;
        }
        Ok(())
    }
}

/// A read-only, memory-mapped passage store.
pub struct DocStore {
    data: Mmap,
    offsets: Mmap,
}

fn map(path: &Path) -> Result<Mmap, IndexError> {
    let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
    // SAFETY: index files are written once and never modified while opened.
    unsafe { Mmap::map(&file) }.map_err(|e| IndexError::io(path, e))
}

impl DocStore {
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let data = map(&dir.join(DATA))?;
        let offsets = map(&dir.join(OFFSETS))?;
        let store = DocStore { data, offsets };
        let n = store.offsets.len() / 8;
        if !store.offsets.len().is_multiple_of(8) || n == 0 || store.offset(n - 1) != store.data.len() as u64
        {
            return Err(IndexError::Corrupt(format!(
                "{}: the passage store's offsets do not match its data",
                dir.display()
            )));
        }
        Ok(store)
    }

    fn offset(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.offsets[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    }

    /// Number of passages.
    pub fn len(&self) -> usize {
        self.offsets.len() / 8 - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id and contents of passage `row`.
    pub fn get(&self, row: usize) -> Result<(String, String), IndexError> {
        if row >= self.len() {
            return Err(IndexError::Corrupt(format!(
                "passage row {row} is past the store's {}",
                self.len()
            )));
        }
        let (start, end) = (self.offset(row) as usize, self.offset(row + 1) as usize);
        let bytes = self
            .data
            .get(start..end)
            .ok_or_else(|| IndexError::Corrupt("passage offsets out of range".into()))?;
        let text =
            std::str::from_utf8(bytes).map_err(|_| IndexError::Corrupt("passage is not UTF-8".into()))?;
        let (id, contents) = text
            .split_once('\0')
            .ok_or_else(|| IndexError::Corrupt("passage record lacks its separator".into()))?;
        Ok((id.to_owned(), contents.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("searchr1-docstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = DocStoreWriter::create(&dir).unwrap();
        w.add("a", "\"T\"\nbody é").unwrap();
        w.add("b", "").unwrap();
        assert!(w.add("c\0", "x").is_err());
        w.finish().unwrap();
        let s = DocStore::open(&dir).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(0).unwrap(), ("a".into(), "\"T\"\nbody é".into()));
        assert_eq!(s.get(1).unwrap(), ("b".into(), "".into()));
        assert!(s.get(2).is_err());
        assert_eq!(std::fs::metadata(dir.join(OFFSETS)).unwrap().len(), 3 * 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_store_opens() {
        let dir = std::env::temp_dir().join(format!("searchr1-docstore-empty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DocStoreWriter::create(&dir).unwrap().finish().unwrap();
        let s = DocStore::open(&dir).unwrap();
        assert!(s.is_empty());
        assert!(s.get(0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
