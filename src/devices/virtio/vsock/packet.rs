//! The virtio-vsock wire format (virtio 1.2, 5.10.6): operation codes, flags and
//! a plain copy of a packet header. Parsing a descriptor chain into a packet is
//! rust-vmm's `virtio-vsock` crate's job (it reads the header once, so a guest
//! changing it afterwards cannot change what spry acted on).

use virtio_vsock::packet::VsockPacket;

/// The host's context id: the guest addresses the host as CID 2.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type spry serves.
pub const TYPE_STREAM: u16 = 1;

/// Operation codes (`VIRTIO_VSOCK_OP_*`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// The sender will not receive and/or send any more (see `flags`).
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// The sender's `buf_alloc`/`fwd_cnt` changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a `CREDIT_UPDATE`.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Largest payload of one packet, either way (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// A packet header as plain values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Sender's context id.
    pub src_cid: u64,
    /// Receiver's context id.
    pub dst_cid: u64,
    /// Sender's port.
    pub src_port: u32,
    /// Receiver's port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation, one of [`op`].
    pub op: u16,
    /// Operation flags (`SHUTDOWN_*`).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far.
    pub fwd_cnt: u32,
}

impl Header {
    /// The header of a packet the driver sent.
    pub fn of<B: vm_memory::bitmap::BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Header {
        Header {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// Writes every field into the header of a receive packet.
    pub fn write_to<B: vm_memory::bitmap::BitmapSlice>(&self, pkt: &mut VsockPacket<'_, B>) {
        pkt.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_len(self.len)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt);
    }

    /// The reset that answers this packet (ports and CIDs swapped).
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{default_mem, driver_queue, Desc};
    use virtio_queue::QueueT;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len: 0,
            type_: TYPE_STREAM,
            op: op::REQUEST,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 17,
        }
    }

    #[test]
    fn test_reset_reply_swaps_ends_and_carries_no_credit() {
        let rst = sample().reset_reply();
        assert_eq!(
            rst,
            Header {
                src_cid: HOST_CID,
                dst_cid: 3,
                src_port: 52,
                dst_port: 1000,
                type_: TYPE_STREAM,
                op: op::RST,
                ..Header::default()
            }
        );
    }

    #[test]
    fn test_header_written_to_a_receive_buffer_reads_back_the_same() {
        let mem = default_mem();
        let (vq, mut q) = driver_queue(&mem, 16);
        crate::devices::virtio::test_utils::add_chains(&vq, 0, &[&[Desc::w(0x10_0000, 4096)]]);
        let mut chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut pkt = VsockPacket::from_rx_virtq_chain(&mem, &mut chain, MAX_PKT_DATA).unwrap();

        sample().write_to(&mut pkt);

        assert_eq!(Header::of(&pkt), sample());
        assert_eq!(pkt.data_slice().map(|d| d.len()), Some(4096 - 44));
    }
}
