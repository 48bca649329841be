//! The notification-suppression loop every queue handler runs (virtio-queue README:
//! disable, drain, re-enable, check again), with a budget so one busy queue cannot
//! monopolise the event loop, and detection of rings a guest has corrupted.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::devices::virtio::iovec::ChainError;
use crate::vstate::memory::GuestMemory;

/// A queue the driver broke; the device must stop using it until reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The available index is further ahead than the queue has entries.
    #[error(
        "available index {avail} is {ahead} entries ahead of {next}, beyond the queue size {size}"
    )]
    AvailIndexAhead {
        /// Driver's index.
        avail: u16,
        /// Device's next index.
        next: u16,
        /// Distance.
        ahead: u16,
        /// Queue size.
        size: u16,
    },
    /// A ring could not be read or written.
    #[error("ring access failed: {0}")]
    Ring(String),
    /// Buffers a chain already passed checks for no longer map to guest memory.
    #[error("{0}")]
    Buffers(#[from] ChainError),
}

impl From<virtio_queue::Error> for QueueError {
    fn from(e: virtio_queue::Error) -> QueueError {
        QueueError::Ring(e.to_string())
    }
}

fn ring(e: virtio_queue::Error) -> QueueError {
    e.into()
}

/// Chains waiting in the available ring, refusing an index no valid driver produces.
pub fn pending(queue: &Queue, mem: &GuestMemory) -> Result<u16, QueueError> {
    let avail = queue.avail_idx(mem, Ordering::Acquire).map_err(ring)?;
    let ahead = (avail - Wrapping(queue.next_avail())).0;
    if ahead > queue.size() {
        return Err(QueueError::AvailIndexAhead {
            avail: avail.0,
            next: queue.next_avail(),
            ahead,
            size: queue.size(),
        });
    }
    Ok(ahead)
}

/// What a drain achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Chains completed.
    pub completed: usize,
    /// The budget ran out with chains still waiting.
    pub more: bool,
}

/// Completes up to `budget` chains with `serve` (which returns the used length),
/// using notification suppression so the driver does not kick while we work.
pub fn drain<F>(
    queue: &mut Queue,
    mem: &GuestMemory,
    budget: usize,
    mut serve: F,
) -> Result<Drained, QueueError>
where
    F: FnMut(DescriptorChain<&GuestMemory>) -> u32,
{
    drain_batched(queue, mem, budget, |chains, used| {
        for chain in chains {
            used.push(serve(chain));
        }
    })
}

/// Publishes the used entries of one batch, in the order its chains came, as each
/// finishes: a driver polling the used ring (or handling an earlier interrupt)
/// sees a finished request while later ones of the batch are still being served.
pub struct UsedEntries<'a> {
    queue: &'a mut Queue,
    mem: &'a GuestMemory,
    heads: Vec<u16>,
    next: usize,
    error: Option<QueueError>,
}

impl UsedEntries<'_> {
    /// The next chain of the batch is done, with `len` bytes written to its buffers.
    pub fn push(&mut self, len: u32) {
        let Some(&head) = self.heads.get(self.next) else {
            debug_assert!(false, "more used entries than chains");
            return;
        };
        self.next += 1;
        if self.error.is_none() {
            if let Err(e) = self.queue.add_used(self.mem, head, len) {
                self.error = Some(e.into());
            }
        }
    }

    /// Completes what `serve` left unanswered (with nothing written), so no chain
    /// is lost; returns how many chains the batch held.
    fn finish(mut self) -> Result<usize, QueueError> {
        debug_assert_eq!(self.next, self.heads.len(), "one used entry per chain");
        while self.next < self.heads.len() {
            self.push(0);
        }
        self.error.map_or(Ok(self.heads.len()), Err)
    }
}

/// Like [`drain`], but hands `serve` every chain available at once (so it can merge
/// their work); `serve` reports each chain's used length through [`UsedEntries`],
/// in order.
pub fn drain_batched<F>(
    queue: &mut Queue,
    mem: &GuestMemory,
    budget: usize,
    mut serve: F,
) -> Result<Drained, QueueError>
where
    F: FnMut(Vec<DescriptorChain<&GuestMemory>>, &mut UsedEntries<'_>),
{
    let mut completed = 0;
    loop {
        queue.disable_notification(mem).map_err(ring)?;
        // One read of the avail index per pass, checked before any chain is taken.
        let n = usize::from(pending(queue, mem)?).min(budget - completed);
        if n > 0 {
            let chains: Vec<_> = queue.iter(mem).map_err(ring)?.take(n).collect();
            let heads = chains.iter().map(DescriptorChain::head_index).collect();
            let mut used = UsedEntries {
                queue: &mut *queue,
                mem,
                heads,
                next: 0,
                error: None,
            };
            serve(chains, &mut used);
            completed += used.finish()?;
        }
        if completed == budget && pending(queue, mem)? > 0 {
            return Ok(Drained {
                completed,
                more: true,
            });
        }
        if !queue.enable_notification(mem).map_err(ring)? {
            return Ok(Drained {
                completed,
                more: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{add_chains, default_mem, driver_queue, Desc};

    #[test]
    fn test_drain_completes_every_chain_in_order() {
        let mem = default_mem();
        let (vq, mut q) = driver_queue(&mem, 16);
        add_chains(&vq, 0, &[&[Desc::w(0x10000, 8)], &[Desc::w(0x20000, 8)]]);
        let mut heads = Vec::new();
        let drained = drain(&mut q, &mem, 64, |c| {
            heads.push(c.head_index());
            8
        })
        .unwrap();
        assert_eq!(
            drained,
            Drained {
                completed: 2,
                more: false
            }
        );
        assert_eq!(heads, vec![0, 1]);
        assert_eq!(vq.used().idx().load(), 2);
    }

    #[test]
    fn test_budget_leaves_the_rest_for_later() {
        let mem = default_mem();
        let (vq, mut q) = driver_queue(&mem, 16);
        add_chains(
            &vq,
            0,
            &[
                &[Desc::w(0x10000, 8)],
                &[Desc::w(0x20000, 8)],
                &[Desc::w(0x30000, 8)],
            ],
        );
        let drained = drain(&mut q, &mem, 2, |_| 0).unwrap();
        assert_eq!(
            drained,
            Drained {
                completed: 2,
                more: true
            }
        );
        let rest = drain(&mut q, &mem, 2, |_| 0).unwrap();
        assert_eq!(
            rest,
            Drained {
                completed: 1,
                more: false
            }
        );
    }

    #[test]
    fn test_batched_drain_hands_over_every_pending_chain_at_once() {
        let mem = default_mem();
        let (vq, mut q) = driver_queue(&mem, 16);
        add_chains(
            &vq,
            0,
            &[
                &[Desc::w(0x10000, 8)],
                &[Desc::w(0x20000, 8)],
                &[Desc::w(0x30000, 8)],
            ],
        );
        let mut batches = Vec::new();
        let drained = drain_batched(&mut q, &mem, 64, |chains, used| {
            batches.push(chains.len());
            for c in &chains {
                used.push(u32::from(c.head_index()) + 100);
            }
        })
        .unwrap();
        assert_eq!(
            drained,
            Drained {
                completed: 3,
                more: false
            }
        );
        assert_eq!(batches, vec![3]);
        assert_eq!(vq.used().ring().ref_at(2).unwrap().load().len(), 102);
    }

    #[test]
    fn test_batched_drain_publishes_each_used_entry_as_it_is_pushed() {
        let mem = default_mem();
        let (vq, mut q) = driver_queue(&mem, 16);
        add_chains(&vq, 0, &[&[Desc::w(0x10000, 8)], &[Desc::w(0x20000, 8)]]);
        let mut seen = Vec::new();
        drain_batched(&mut q, &mem, 64, |chains, used| {
            for _ in &chains {
                used.push(1);
                seen.push(vq.used().idx().load());
            }
        })
        .unwrap();
        assert_eq!(seen, vec![1, 2]);
    }

    #[test]
    fn test_avail_index_far_ahead_breaks_the_queue() {
        let mem = default_mem();
        let (vq, mut q) = driver_queue(&mem, 16);
        vq.avail().idx().store(1000);
        let result = drain(&mut q, &mem, 64, |_| 0);
        assert!(matches!(
            result,
            Err(QueueError::AvailIndexAhead {
                avail: 1000,
                size: 16,
                ..
            })
        ));
        assert_eq!(vq.used().idx().load(), 0);
    }
}
