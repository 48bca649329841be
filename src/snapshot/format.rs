//! The snapshot state file's container: a fixed header, then a JSON payload.
//!
//! ```text
//! offset  size  field
//!      0     8  magic, b"SPRYSNAP"
//!      8     4  format version, little-endian u32
//!     12     4  CRC-32 (IEEE) of the payload, little-endian
//!     16     8  payload length in bytes, little-endian u64
//!     24     n  payload: the state, as serde JSON
//! ```
//!
//! Reading checks, in order, that the file is long enough for a header, the magic, the
//! version, that the payload is exactly as long as the header says, the CRC, and last
//! that the payload decodes; each refusal is its own one-line error.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first eight bytes of every spry snapshot.
pub const MAGIC: [u8; 8] = *b"SPRYSNAP";
/// The format this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 24;

/// Errors while writing or reading a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFormatError {
    /// Shorter than a header.
    #[error("truncated snapshot: {found} bytes, a header alone takes {HEADER_LEN}")]
    TruncatedHeader {
        /// Bytes present.
        found: usize,
    },
    /// Not a spry snapshot.
    #[error("not a spry snapshot: the file starts with {found:02x?}, not {MAGIC:02x?}")]
    Foreign {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// Another format version.
    #[error("snapshot format version {found}, this spry reads version {FORMAT_VERSION}")]
    Version {
        /// Version in the header.
        found: u32,
    },
    /// The payload is shorter than the header says.
    #[error("truncated snapshot: the header announces {expected} payload bytes, {found} follow")]
    TruncatedPayload {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Bytes after the payload.
    #[error("corrupted snapshot: {extra} bytes follow the {expected}-byte payload")]
    TrailingBytes {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes past them.
        extra: u64,
    },
    /// The payload's CRC differs from the header's.
    #[error(
        "corrupted snapshot: payload CRC-32 is {computed:#010x}, the header says {stored:#010x}"
    )]
    Checksum {
        /// CRC in the header.
        stored: u32,
        /// CRC of the payload read.
        computed: u32,
    },
    /// The payload, intact, does not decode to the expected state.
    #[error("snapshot payload does not decode")]
    Decode(#[source] serde_json::Error),
    /// The state does not encode.
    #[error("cannot encode the snapshot state")]
    Encode(#[source] serde_json::Error),
    /// Reading the file failed.
    #[error("cannot read snapshot file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// Writing the file failed.
    #[error("cannot write snapshot file {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// `state` as a whole snapshot file: header and payload.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, SnapshotFormatError> {
    let payload = serde_json::to_vec(state).map_err(SnapshotFormatError::Encode)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// The payload of a whole snapshot file, once every header check passes.
pub fn payload(bytes: &[u8]) -> Result<&[u8], SnapshotFormatError> {
    let Some((header, body)) = bytes.split_at_checked(HEADER_LEN) else {
        // A short file that does not even start like a snapshot is foreign, not truncated.
        if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(&bytes[..MAGIC.len()]);
            return Err(SnapshotFormatError::Foreign { found });
        }
        return Err(SnapshotFormatError::TruncatedHeader { found: bytes.len() });
    };
    if header[..8] != MAGIC {
        let mut found = [0u8; 8];
        found.copy_from_slice(&header[..8]);
        return Err(SnapshotFormatError::Foreign { found });
    }
    let version = le_u32(&header[8..12]);
    if version != FORMAT_VERSION {
        return Err(SnapshotFormatError::Version { found: version });
    }
    let stored = le_u32(&header[12..16]);
    let expected = le_u64(&header[16..24]);
    let found = body.len() as u64;
    if found < expected {
        return Err(SnapshotFormatError::TruncatedPayload { expected, found });
    }
    if found > expected {
        return Err(SnapshotFormatError::TrailingBytes {
            expected,
            extra: found - expected,
        });
    }
    let computed = crc32fast::hash(body);
    if computed != stored {
        return Err(SnapshotFormatError::Checksum { stored, computed });
    }
    Ok(body)
}

/// The state in a whole snapshot file.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotFormatError> {
    serde_json::from_slice(payload(bytes)?).map_err(SnapshotFormatError::Decode)
}

/// Writes `state` to `path` whole or not at all: into a temporary file beside it, synced,
/// then renamed over `path`, so a failed write leaves no file that could pass as a
/// snapshot.
pub fn write_file<T: Serialize>(path: &Path, state: &T) -> Result<(), SnapshotFormatError> {
    let bytes = encode(state)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".partial");
    let tmp = PathBuf::from(tmp_name);
    let written = File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // Best effort: the temporary file may not exist (create failed).
        let _ = fs::remove_file(&tmp);
        return Err(SnapshotFormatError::Write(path.to_path_buf(), e));
    }
    Ok(())
}

/// Reads the state in the snapshot file at `path`.
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, SnapshotFormatError> {
    let bytes = fs::read(path).map_err(|e| SnapshotFormatError::Read(path.to_path_buf(), e))?;
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        rip: u64,
        name: String,
    }

    fn sample() -> Sample {
        Sample {
            rip: 0x10_0000,
            name: "probe".into(),
        }
    }

    #[test]
    fn test_round_trip_gives_back_the_state() {
        let bytes = encode(&sample()).unwrap();

        let back: Sample = decode(&bytes).unwrap();

        assert_eq!(back, sample());
    }

    #[test]
    fn test_header_layout() {
        let bytes = encode(&sample()).unwrap();

        assert_eq!(&bytes[..8], b"SPRYSNAP");
        assert_eq!(le_u32(&bytes[8..12]), FORMAT_VERSION);
        assert_eq!(
            le_u32(&bytes[12..16]),
            crc32fast::hash(&bytes[HEADER_LEN..])
        );
        assert_eq!(le_u64(&bytes[16..24]), (bytes.len() - HEADER_LEN) as u64);
    }

    #[test]
    fn test_short_header_is_truncated() {
        let bytes = encode(&sample()).unwrap();

        let err = decode::<Sample>(&bytes[..10]).unwrap_err();

        assert!(matches!(
            err,
            SnapshotFormatError::TruncatedHeader { found: 10 }
        ));
        assert_eq!(
            err.to_string(),
            "truncated snapshot: 10 bytes, a header alone takes 24"
        );
    }

    #[test]
    fn test_short_payload_is_truncated() {
        let bytes = encode(&sample()).unwrap();
        let cut = bytes.len() - 3;

        let err = decode::<Sample>(&bytes[..cut]).unwrap_err();

        assert!(matches!(err, SnapshotFormatError::TruncatedPayload { .. }));
        assert!(err
            .to_string()
            .starts_with("truncated snapshot: the header announces"));
    }

    #[test]
    fn test_flipped_payload_byte_fails_checksum() {
        let mut bytes = encode(&sample()).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;

        let err = decode::<Sample>(&bytes).unwrap_err();

        assert!(matches!(err, SnapshotFormatError::Checksum { .. }));
        assert!(err
            .to_string()
            .starts_with("corrupted snapshot: payload CRC-32 is"));
    }

    #[test]
    fn test_trailing_bytes_are_corruption() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.extend_from_slice(b"xx");

        let err = decode::<Sample>(&bytes).unwrap_err();

        assert!(matches!(
            err,
            SnapshotFormatError::TrailingBytes { extra: 2, .. }
        ));
    }

    #[test]
    fn test_other_version_is_refused() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());

        let err = decode::<Sample>(&bytes).unwrap_err();

        assert!(matches!(err, SnapshotFormatError::Version { found: 2 }));
        assert_eq!(
            err.to_string(),
            "snapshot format version 2, this spry reads version 1"
        );
    }

    #[test]
    fn test_foreign_file_is_refused() {
        // An ELF header is as foreign as files get.
        let elf = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00\x01\x00\x00\x00";

        let err = decode::<Sample>(elf).unwrap_err();

        assert!(matches!(err, SnapshotFormatError::Foreign { .. }));
        assert!(err.to_string().starts_with("not a spry snapshot"));
    }

    #[test]
    fn test_short_foreign_file_is_foreign() {
        let err = decode::<Sample>(b"#!/bin/sh\n").unwrap_err();

        assert!(matches!(err, SnapshotFormatError::Foreign { .. }));
    }

    #[test]
    fn test_intact_payload_of_another_shape_does_not_decode() {
        let bytes = encode(&vec![1, 2, 3]).unwrap();

        let err = decode::<Sample>(&bytes).unwrap_err();

        assert!(matches!(err, SnapshotFormatError::Decode(_)));
    }

    #[test]
    fn test_file_round_trip_leaves_no_partial_file() {
        let dir = std::env::temp_dir().join(format!("spry-snapfmt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.snap");

        write_file(&path, &sample()).unwrap();
        let back: Sample = read_file(&path).unwrap();

        assert_eq!(back, sample());
        assert!(!dir.join("vm.snap.partial").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_write_into_missing_directory_fails_and_leaves_nothing() {
        let path = Path::new("/nonexistent-spry-dir/vm.snap");

        let err = write_file(path, &sample()).unwrap_err();

        assert!(matches!(err, SnapshotFormatError::Write(..)));
        assert!(!path.exists());
    }
}
