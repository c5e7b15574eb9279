//! Primary-key uniqueness within one upload, in bounded memory.
//!
//! Each valid row's key is hashed to 128 bits and appended, with its row
//! number, to one of [`BUCKETS`] files; at the end each bucket is checked on
//! its own, two at a time, through a hash table of its keys. Memory is two
//! buckets' tables (about 48 bytes × rows / 32), whatever the upload's size,
//! and the disk holds 24 bytes per row.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Number of spill files.
pub const BUCKETS: usize = 64;

/// A duplicate key: the row that repeats it and the first row that had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate {
    /// The repeating row (data rows count from 1).
    pub row: u64,
    /// The earlier row with the same key.
    pub first: u64,
}

/// Collects key hashes and finds repeats.
#[derive(Debug)]
pub struct KeySet {
    dir: tempfile::TempDir,
    writers: Vec<BufWriter<File>>,
    seed: u64,
    count: u64,
}

impl KeySet {
    /// A key set spilling under `temp_dir`.
    pub fn new(temp_dir: &Path) -> Result<Self> {
        let io = |source| Error::Io { path: temp_dir.to_path_buf(), source };
        let dir = tempfile::Builder::new().prefix("keys-").tempdir_in(temp_dir).map_err(io)?;
        let mut writers = Vec::with_capacity(BUCKETS);
        for i in 0..BUCKETS {
            let path = dir.path().join(format!("{i:02}"));
            let f = File::create(&path).map_err(|source| Error::Io { path, source })?;
            writers.push(BufWriter::with_capacity(16 * 1024, f));
        }
        // A seed per upload: keys chosen to collide cannot be prepared in advance.
        let seed = std::hash::RandomState::new().hash_one(0u64);
        Ok(Self { dir, writers, seed, count: 0 })
    }

    /// Records the key bytes of data row `row`.
    pub fn insert(&mut self, key: &[u8], row: u64) -> Result<()> {
        let h = twox_hash::XxHash3_128::oneshot_with_seed(self.seed, key);
        let bucket = ((h >> 64) as u64 % BUCKETS as u64) as usize;
        let mut rec = [0u8; 24];
        rec[..16].copy_from_slice(&h.to_le_bytes());
        rec[16..].copy_from_slice(&row.to_le_bytes());
        self.count += 1;
        self.writers[bucket].write_all(&rec).map_err(|source| Error::Io { path: self.dir.path().to_path_buf(), source })
    }

    /// Every repeated key, ordered by row. Buckets are checked on two threads.
    pub fn finish(self) -> Result<Vec<Duplicate>> {
        for mut w in self.writers {
            w.flush().map_err(|source| Error::Io { path: self.dir.path().to_path_buf(), source })?;
        }
        let dir = self.dir.path();
        let halves: Vec<Result<Vec<Duplicate>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|half| {
                    scope.spawn(move || -> Result<Vec<Duplicate>> {
                        let mut dups = Vec::new();
                        for i in (half..BUCKETS).step_by(2) {
                            dups.extend(bucket_repeats(dir, i)?);
                        }
                        Ok(dups)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(Error::Io { path: dir.to_path_buf(), source: std::io::Error::other("key check failed") })
                    })
                })
                .collect()
        });
        let mut dups = Vec::new();
        for half in halves {
            dups.extend(half?);
        }
        dups.sort_by_key(|d| d.row);
        Ok(dups)
    }
}

/// The key hashes are uniformly random already: their low half serves as
/// the hash table's hash.
#[derive(Default)]
struct LowHalf(u64);

impl std::hash::Hasher for LowHalf {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, h: u128) {
        self.0 = h as u64;
    }
}

/// The repeated keys of one bucket file. Rows were appended in upload
/// order, so the first row seen with a key is the first that had it.
fn bucket_repeats(dir: &Path, i: usize) -> Result<Vec<Duplicate>> {
    let path = dir.join(format!("{i:02}"));
    let io = |source| Error::Io { path: path.clone(), source };
    let file = File::open(&path).map_err(io)?;
    let records = file.metadata().map_err(io)?.len() as usize / 24;
    let mut first: HashMap<u128, u64, BuildHasherDefault<LowHalf>> =
        HashMap::with_capacity_and_hasher(records, BuildHasherDefault::default());
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut dups = Vec::new();
    let mut rec = [0u8; 24];
    for _ in 0..records {
        reader.read_exact(&mut rec).map_err(io)?;
        let mut k = [0u8; 16];
        k.copy_from_slice(&rec[..16]);
        let mut r = [0u8; 8];
        r.copy_from_slice(&rec[16..]);
        let row = u64::from_le_bytes(r);
        match first.entry(u128::from_le_bytes(k)) {
            Entry::Occupied(e) => dups.push(Duplicate { row, first: *e.get() }),
            Entry::Vacant(e) => {
                e.insert(row);
            }
        }
    }
    Ok(dups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_repeats_with_their_first_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut keys = KeySet::new(dir.path()).expect("keyset");
        for row in 1..=10_000u64 {
            keys.insert(format!("k{}", row % 9_990).as_bytes(), row).expect("insert");
        }
        let dups = keys.finish().expect("finish");
        assert_eq!(dups.len(), 10);
        assert_eq!(dups[0], Duplicate { row: 9_991, first: 1 });
        assert_eq!(dups[9], Duplicate { row: 10_000, first: 10 });
    }
}
