//! Descriptor chains as scatter-gather lists of guest memory, checked against guest
//! memory once, then handed to `preadv`/`pwritev`/`readv`/`writev` without copying.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::snapshot::device_writes::device_writes;
use crate::vstate::memory::GuestMemory;

/// Most segments one request may have (the kernel's IOV_MAX).
pub const MAX_SEGMENTS: usize = 1024;

/// Ways a guest's descriptor chain can be malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain loops, is longer than the queue, names a descriptor outside the
    /// table, or its indirect table is invalid.
    #[error(
        "descriptor chain is truncated (a loop, more descriptors than the queue, or a bad index)"
    )]
    Truncated,
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A buffer is not inside guest RAM.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Buffer start.
        addr: u64,
        /// Buffer length.
        len: u64,
    },
    /// More segments than one system call takes.
    #[error("{0} segments in one chain, more than {MAX_SEGMENTS}")]
    TooManySegments(usize),
    /// A stream is shorter than the request needs.
    #[error("buffers hold {have} bytes, the request needs {need}")]
    TooShort {
        /// Bytes available.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// One guest buffer, already checked to lie inside one guest memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: usize,
}

/// A chain's buffers: device-readable ones first, then device-writable ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainBuffers {
    /// What the device reads (driver to device).
    pub readable: Vec<Segment>,
    /// What the device writes (device to driver).
    pub writable: Vec<Segment>,
}

impl ChainBuffers {
    /// Walks `chain`, checking every buffer against `mem`. Zero-length descriptors
    /// carry nothing and are skipped.
    pub fn from_chain<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
    ) -> Result<ChainBuffers, ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut buffers = ChainBuffers::default();
        let mut last_has_next = false;
        let mut count = 0usize;
        for desc in chain {
            last_has_next = desc.has_next();
            count += 1;
            if count > MAX_SEGMENTS {
                return Err(ChainError::TooManySegments(count));
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            let segment = Segment {
                addr: desc.addr(),
                len,
            };
            if mem.get_slice(segment.addr, len).is_err() {
                return Err(ChainError::OutsideMemory {
                    addr: segment.addr.0,
                    len: u64::from(desc.len()),
                });
            }
            if desc.is_write_only() {
                device_writes().mark(segment.addr.0, len);
                buffers.writable.push(segment);
            } else if buffers.writable.is_empty() {
                buffers.readable.push(segment);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
        }
        // The chain iterator stops quietly on loops, over-long chains and bad indices;
        // a last descriptor that still points onwards is how that shows.
        if last_has_next {
            return Err(ChainError::Truncated);
        }
        Ok(buffers)
    }
}

/// Total length of `segments`.
pub fn total_len(segments: &[Segment]) -> usize {
    segments.iter().map(|s| s.len).sum()
}

/// The sub-list of `segments` covering bytes `start..start + len` of their
/// concatenation.
pub fn sub_segments(
    segments: &[Segment],
    start: usize,
    len: usize,
) -> Result<Vec<Segment>, ChainError> {
    let have = total_len(segments);
    let need = start.checked_add(len).ok_or(ChainError::TooShort {
        have,
        need: usize::MAX,
    })?;
    if need > have {
        return Err(ChainError::TooShort { have, need });
    }
    let mut out = Vec::new();
    let mut skip = start;
    let mut left = len;
    for s in segments {
        if left == 0 {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let take = (s.len - skip).min(left);
        out.push(Segment {
            addr: GuestAddress(s.addr.0 + skip as u64),
            len: take,
        });
        left -= take;
        skip = 0;
    }
    Ok(out)
}

/// Host `iovec`s for `segments`. They stay valid while `mem` (a clone of the VM's
/// guest memory, which is never unmapped while the VM runs) is alive.
pub fn host_iovecs(
    mem: &GuestMemory,
    segments: &[Segment],
) -> Result<Vec<libc::iovec>, ChainError> {
    segments
        .iter()
        .map(|s| {
            let slice = mem
                .get_slice(s.addr, s.len)
                .map_err(|_| ChainError::OutsideMemory {
                    addr: s.addr.0,
                    len: s.len as u64,
                })?;
            Ok(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len,
            })
        })
        .collect()
}

/// Copies the first `buf.len()` bytes of `segments` into `buf` (small headers only).
pub fn read_prefix(
    mem: &GuestMemory,
    segments: &[Segment],
    buf: &mut [u8],
) -> Result<(), ChainError> {
    let mut done = 0;
    for s in sub_segments(segments, 0, buf.len())? {
        mem.read_slice(&mut buf[done..done + s.len], s.addr)
            .map_err(|_| ChainError::OutsideMemory {
                addr: s.addr.0,
                len: s.len as u64,
            })?;
        done += s.len;
    }
    Ok(())
}

/// Writes `bytes` at `offset` into the concatenation of `segments`.
pub fn write_at(
    mem: &GuestMemory,
    segments: &[Segment],
    offset: usize,
    bytes: &[u8],
) -> Result<(), ChainError> {
    let mut done = 0;
    for s in sub_segments(segments, offset, bytes.len())? {
        mem.write_slice(&bytes[done..done + s.len], s.addr)
            .map_err(|_| ChainError::OutsideMemory {
                addr: s.addr.0,
                len: s.len as u64,
            })?;
        done += s.len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{chain, default_mem, Desc};

    #[test]
    fn test_writable_buffers_are_recorded_for_diff_snapshots() {
        let mem = default_mem();
        // The record is the process's; other tests may add pages of their own.
        device_writes().enable();

        chain(&mem, &[Desc::r(0x77_1000, 16), Desc::w(0x77_2ff0, 32)]).unwrap();

        let pages = device_writes().take();
        assert!(
            pages.contains(&0x772) && pages.contains(&0x773),
            "{pages:?}"
        );
        assert!(!pages.contains(&0x771));
    }

    #[test]
    fn test_readable_then_writable_split() {
        let mem = default_mem();
        let buffers = chain(
            &mem,
            &[
                Desc::r(0x1000, 16),
                Desc::w(0x2000, 512),
                Desc::w(0x3000, 1),
            ],
        );
        let buffers = buffers.unwrap();
        assert_eq!(
            buffers.readable,
            vec![Segment {
                addr: GuestAddress(0x1000),
                len: 16
            }]
        );
        assert_eq!(total_len(&buffers.writable), 513);
    }

    #[test]
    fn test_readable_after_writable_is_refused() {
        let mem = default_mem();
        let result = chain(&mem, &[Desc::w(0x2000, 512), Desc::r(0x1000, 16)]);
        assert_eq!(result, Err(ChainError::ReadableAfterWritable));
    }

    #[test]
    fn test_buffer_outside_memory_is_refused() {
        let mem = default_mem();
        let result = chain(&mem, &[Desc::r(0x1000, 16), Desc::w(0xffff_0000, 512)]);
        assert!(matches!(
            result,
            Err(ChainError::OutsideMemory {
                addr: 0xffff_0000,
                ..
            })
        ));
    }

    #[test]
    fn test_huge_length_is_refused() {
        let mem = default_mem();
        let result = chain(&mem, &[Desc::r(0x1000, u32::MAX)]);
        assert!(matches!(result, Err(ChainError::OutsideMemory { .. })));
    }

    #[test]
    fn test_zero_length_descriptors_are_skipped() {
        let mem = default_mem();
        let buffers = chain(&mem, &[Desc::r(0x1000, 0), Desc::w(0x3000, 1)]).unwrap();
        assert!(buffers.readable.is_empty());
        assert_eq!(buffers.writable.len(), 1);
    }

    #[test]
    fn test_sub_segments_cross_boundaries() {
        let segs = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 10,
            },
            Segment {
                addr: GuestAddress(0x2000),
                len: 10,
            },
        ];
        assert_eq!(
            sub_segments(&segs, 5, 10).unwrap(),
            vec![
                Segment {
                    addr: GuestAddress(0x1005),
                    len: 5
                },
                Segment {
                    addr: GuestAddress(0x2000),
                    len: 5
                },
            ]
        );
        assert_eq!(
            sub_segments(&segs, 15, 6),
            Err(ChainError::TooShort { have: 20, need: 21 })
        );
    }

    #[test]
    fn test_write_then_read_across_segments() {
        let mem = default_mem();
        let segs = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 2,
            },
            Segment {
                addr: GuestAddress(0x2000),
                len: 2,
            },
        ];
        write_at(&mem, &segs, 1, b"abc").unwrap();
        let mut buf = [0u8; 4];
        read_prefix(&mem, &segs, &mut buf).unwrap();
        assert_eq!(&buf, b"\0abc");
    }
}
