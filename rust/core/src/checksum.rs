//! Checksums of an index's files, recorded in its manifest.
//!
//! Each file's size, CRC-32 and the CRC-32 of its two ends (the first and the last
//! 4 KiB): opening an index checks sizes and ends, which costs two small reads per file
//! whatever its size, and catches a truncated, zero-filled or replaced file; `verify`
//! reads every byte.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cancel::Cancel;
use crate::error::IndexError;

/// Bytes of each end that [`FileSum::ends_crc32`] covers.
const END: u64 = 4096;
/// Bytes read at a time; the cancel is asked between reads.
const CHUNK: usize = 8 << 20;

/// What the manifest records of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub crc32: u32,
    /// The CRC-32 of the first 4 KiB and the last 4 KiB (the whole file when smaller).
    pub ends_crc32: u32,
}

impl FileSum {
    /// Reads all of `path`.
    pub fn of(path: &Path, cancel: &Cancel) -> Result<Self, IndexError> {
        let io = |e| IndexError::io(path, e);
        let mut file = File::open(path).map_err(io)?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        let mut bytes = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
            cancel.check()?;
        }
        Ok(FileSum {
            bytes,
            crc32: hasher.finalize(),
            ends_crc32: ends_crc32(&mut file, bytes).map_err(io)?,
        })
    }

    /// Checks the size and ends of `path` against this record; a message saying what
    /// differs when it does.
    pub fn check_quick(&self, path: &Path) -> Result<Option<String>, IndexError> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Some(format!("{} is missing", path.display())))
            }
            Err(e) => return Err(IndexError::io(path, e)),
        };
        let io = |e| IndexError::io(path, e);
        let bytes = file.metadata().map_err(io)?.len();
        if bytes != self.bytes {
            return Ok(Some(format!(
                "{}: {bytes} bytes, but the manifest records {}",
                path.display(),
                self.bytes
            )));
        }
        if ends_crc32(&mut file, bytes).map_err(io)? != self.ends_crc32 {
            return Ok(Some(format!(
                "{}: its first or last 4 KiB differ from what the build wrote (checksum mismatch)",
                path.display()
            )));
        }
        Ok(None)
    }

    /// Checks every byte of `path` against this record.
    pub fn check_full(&self, path: &Path, cancel: &Cancel) -> Result<Option<String>, IndexError> {
        if let Some(problem) = self.check_quick(path)? {
            return Ok(Some(problem));
        }
        let got = FileSum::of(path, cancel)?;
        Ok((got.crc32 != self.crc32).then(|| {
            format!(
                "{}: CRC-32 {:08x}, but the build wrote {:08x}: the file is damaged",
                path.display(),
                got.crc32,
                self.crc32
            )
        }))
    }
}

/// The CRC-32 of the first and the last [`END`] bytes of a file of `bytes` bytes.
fn ends_crc32(file: &mut File, bytes: u64) -> std::io::Result<u32> {
    let head = bytes.min(END);
    let tail = (bytes - head).min(END);
    let mut buf = vec![0u8; (head + tail) as usize];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut buf[..head as usize])?;
    file.seek(SeekFrom::Start(bytes - tail))?;
    file.read_exact(&mut buf[head as usize..])?;
    Ok(crc32fast::hash(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_checks() {
        let dir = std::env::temp_dir().join(format!("searchr1-checksum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let never = Cancel::default();
        for len in [0usize, 10, 5000, 9000, 3 * CHUNK / 2] {
            let path = dir.join(format!("f{len}"));
            let body: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8 + 1).collect();
            std::fs::write(&path, &body).unwrap();
            let sum = FileSum::of(&path, &never).unwrap();
            assert_eq!((sum.bytes, sum.crc32), (len as u64, crc32fast::hash(&body)));
            assert_eq!(sum.check_quick(&path).unwrap(), None);
            assert_eq!(sum.check_full(&path, &never).unwrap(), None);
            if len == 0 {
                continue;
            }
            // Zero-filled: the ends differ. A byte changed in the middle of a long file:
            // only the full check sees it.
            std::fs::write(&path, vec![0u8; len]).unwrap();
            let zeroed = sum.check_quick(&path).unwrap().unwrap();
            assert!(zeroed.contains("checksum mismatch"), "{zeroed}");
            let mut middle = body.clone();
            middle[len / 2] ^= 1;
            std::fs::write(&path, &middle).unwrap();
            let full = sum.check_full(&path, &never).unwrap();
            let full = full.unwrap();
            if len as u64 > 2 * END {
                assert_eq!(sum.check_quick(&path).unwrap(), None);
                assert!(full.contains("the file is damaged"), "{full}");
            } else {
                assert!(full.contains("checksum mismatch"), "{full}");
            }
            std::fs::write(&path, &body[1..]).unwrap();
            assert!(sum
                .check_quick(&path)
                .unwrap()
                .unwrap()
                .contains("bytes, but the manifest records"));
            std::fs::remove_file(&path).unwrap();
            assert!(sum.check_quick(&path).unwrap().unwrap().contains("is missing"));
        }
        let path = dir.join("long");
        std::fs::write(&path, vec![1u8; 3 * CHUNK]).unwrap();
        let stop = Cancel::new(|| true);
        assert!(matches!(FileSum::of(&path, &stop), Err(IndexError::Cancelled)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
