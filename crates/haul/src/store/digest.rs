//! Digests of a file: the one the archive records of every file (`--digest`: none by default,
//! or BLAKE3, or SHA-256) and the ones a manifest asks to verify (SHA-256, MD5), each computed only
//! when needed.
//!
//! Why none by default: a digest haul computes itself proves nothing about the download (the
//! server's bytes are checked by the manifest's checksums, when it has them, and always by the
//! length the server or the manifest announced); it only lets `haul verify --full` tell later that
//! a file changed on disk. Every byte hashed costs CPU: SHA-256 was half of haul's CPU time on
//! large files (perf: 53% in `sha2::compress` with SHA-NI), BLAKE3 still a quarter (it runs at
//! about 3.5 GB/s here on data fresh from the socket), and on a machine that is CPU-bound CPU
//! time is throughput. `--digest blake3` (the fast choice) or `--digest sha256` (to match other
//! systems' SHA-256 lists) records one for every file.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use md5::Md5;
use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// The digest the archive records of every downloaded file.
///
/// ```
/// assert_eq!("blake3".parse::<haul::DigestKind>(), Ok(haul::DigestKind::Blake3));
/// assert_eq!(haul::DigestKind::default(), haul::DigestKind::None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestKind {
    /// No digest (the default): `haul verify --full` checks only sizes. A manifest's checksums
    /// are verified whatever this says.
    #[default]
    None,
    /// BLAKE3 of every file (fast).
    Blake3,
    /// SHA-256 of every file.
    Sha256,
}

impl std::str::FromStr for DigestKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "blake3" => Ok(Self::Blake3),
            "sha256" | "sha-256" => Ok(Self::Sha256),
            "none" => Ok(Self::None),
            _ => Err(format!("unknown digest {s:?} (blake3, sha256 or none)")),
        }
    }
}

/// Which digests one file needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) blake3: bool,
    pub(crate) sha256: bool,
    pub(crate) md5: bool,
}

impl Want {
    /// True when any digest is wanted.
    pub(crate) fn any(self) -> bool {
        self.blake3 || self.sha256 || self.md5
    }

    /// The archive's digest, plus what the expectation checks.
    pub(crate) fn new(kind: DigestKind, expect: &super::Expect) -> Self {
        Self {
            blake3: kind == DigestKind::Blake3,
            sha256: kind == DigestKind::Sha256 || expect.sha256.is_some(),
            md5: expect.md5.is_some(),
        }
    }
}

/// The digests of a finished file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileDigests {
    /// BLAKE3, when recorded.
    pub blake3: Option<[u8; 32]>,
    /// SHA-256, when recorded or verified.
    pub sha256: Option<[u8; 32]>,
    /// MD5, when verified.
    pub md5: Option<[u8; 16]>,
}

/// Running digests.
pub(crate) struct Digests {
    blake3: Option<Box<blake3::Hasher>>,
    sha256: Option<Sha256>,
    md5: Option<Md5>,
}

impl Digests {
    pub(crate) fn new(want: Want) -> Self {
        Self {
            blake3: want.blake3.then(|| Box::new(blake3::Hasher::new())),
            sha256: want.sha256.then(Sha256::new),
            md5: want.md5.then(Md5::new),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.blake3 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.md5 {
            h.update(data);
        }
    }

    pub(crate) fn finish(self) -> FileDigests {
        FileDigests {
            blake3: self.blake3.map(|h| *h.finalize().as_bytes()),
            sha256: self.sha256.map(|h| h.finalize().into()),
            md5: self.md5.map(|h| h.finalize().into()),
        }
    }

    /// Hashes up to `limit` bytes (all, when `None`) read from `file`; returns how many.
    pub(crate) fn read_from(&mut self, file: &mut impl Read, path: &Path, limit: Option<u64>) -> Result<u64, Error> {
        let mut block = vec![0u8; READ_BLOCK];
        let mut total = 0u64;
        loop {
            let want = limit.map_or(READ_BLOCK, |l| {
                usize::try_from((l - total).min(READ_BLOCK as u64)).unwrap_or(READ_BLOCK)
            });
            if want == 0 {
                return Ok(total);
            }
            let got = match file.read(&mut block[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", path, e)),
            };
            if got == 0 {
                return Ok(total);
            }
            self.update(&block[..got]);
            total += got as u64;
        }
    }
}

/// Bytes read at a time when hashing a file on disk.
const READ_BLOCK: usize = 1024 * 1024;

/// The length and digests (as asked) of the file at `path`: what `haul verify --full` compares
/// with the archive.
///
/// # Errors
/// The file cannot be opened or read.
pub fn hash_file(path: &Path, blake3: bool, sha256: bool) -> Result<(u64, FileDigests), Error> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut digests = Digests::new(Want {
        blake3,
        sha256,
        md5: false,
    });
    let total = digests.read_from(&mut file, path, None)?;
    Ok((total, digests.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_wanted_is_computed() {
        let mut d = Digests::new(Want {
            blake3: true,
            sha256: false,
            md5: true,
        });
        d.update(b"abc");
        let f = d.finish();
        assert_eq!(
            crate::job::to_hex(&f.blake3.unwrap()),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert!(f.sha256.is_none());
        assert_eq!(crate::job::to_hex(&f.md5.unwrap()), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn a_manifest_sha256_is_always_computed() {
        let expect = super::super::Expect {
            sha256: Some([0; 32]),
            ..Default::default()
        };
        assert!(Want::new(DigestKind::None, &expect).sha256);
        assert!(!Want::new(DigestKind::Blake3, &super::super::Expect::default()).sha256);
    }
}
