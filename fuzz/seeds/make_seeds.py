#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/.

Each seed is a small, valid input in the target's own layout (see the comments at
the top of each fuzz_targets/*.rs), so the fuzzers start past the first checks.
Rerun after changing a target's input layout: python3 fuzz/seeds/make_seeds.py
"""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- api_request: method byte, path, "\n", body ----
METHODS = ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD", "OPTIONS", "BREW", "put"]
API = [
    ("GET", "/", ""),
    ("GET", "/version", ""),
    ("GET", "/machine-config", ""),
    ("GET", "/vm/config", ""),
    ("PUT", "/machine-config", '{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}'),
    ("PATCH", "/machine-config", '{"mem_size_mib": 512, "huge_pages": "Transparent"}'),
    ("PUT", "/boot-source", '{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}'),
    ("PUT", "/drives/rootfs", '{"drive_id": "rootfs", "path_on_host": "/d", "is_root_device": true, "is_read_only": false, "cache_type": "Writeback"}'),
    ("PATCH", "/drives/rootfs", '{"drive_id": "rootfs", "path_on_host": "/d2"}'),
    ("PUT", "/network-interfaces/eth0", '{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "AA:FC:00:00:00:01", "mtu": 1500}'),
    ("PUT", "/actions", '{"action_type": "InstanceStart"}'),
    ("PUT", "/actions", '{"action_type": "FlushMetrics"}'),
    ("PATCH", "/vm", '{"state": "Paused"}'),
    ("PUT", "/logger", '{"log_path": "/l", "level": "Warning", "show_level": true}'),
    ("PUT", "/metrics", '{"metrics_path": "/m"}'),
]
for i, (m, p, b) in enumerate(API):
    put("api_request", f"seed-{i:02}", bytes([METHODS.index(m)]) + p.encode() + b"\n" + b.encode())

# ---- config_file: JSON ----
full = {
    "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1", "initrd_path": None},
    "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": False},
    "drives": [
        {"drive_id": "rootfs", "path_on_host": "disk", "is_root_device": True, "is_read_only": False, "cache_type": "Writeback"},
        {"drive_id": "data", "path_on_host": "x/disk", "is_root_device": False, "is_read_only": True},
    ],
    "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "lo", "guest_mac": "AA:FC:00:00:00:01"}],
    "logger": {"level": "Info"},
    "metrics": {"metrics_path": "/m"},
}
put("config_file", "full", json.dumps(full).encode())
put("config_file", "minimal", b'{"boot-source": {"kernel_image_path": "vmlinux"}}')
put("config_file", "partuuid", json.dumps({
    "boot-source": {"kernel_image_path": "vmlinux"},
    "drives": [{"drive_id": "r", "path_on_host": "disk", "is_root_device": True, "partuuid": "0eaa91a0-01", "is_read_only": True}],
}).encode())
put("config_file", "unsupported", b'{"boot-source": {"kernel_image_path": "vmlinux"}, "vsock": {"guest_cid": 3}, "balloon": null}')

# ---- chains (block_request, net_tx, net_rx): see common.rs chains_from ----
def chains(spec, data_area, event_idx=0):
    """spec: list of (indirect, [(write, len, offset), ...])."""
    out = bytes([event_idx, (len(spec) - 1) % 8])
    for indirect, descs in spec:
        out += bytes([((len(descs) - 1) & 3) | (0x80 if indirect else 0)])
        for write, length, offset in descs:
            out += bytes([1 if write else 0]) + struct.pack("<HH", length, offset)
    return out + data_area

def blk_header(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)

def area(*pieces):
    """(offset, bytes) pieces laid into one data area."""
    size = max(o + len(b) for o, b in pieces)
    buf = bytearray(size)
    for o, b in pieces:
        buf[o:o + len(b)] = b
    return bytes(buf)

# mode byte: bit 0 chain mode, 2 read-only, 4 writeback, 8 all features
read = chains([(False, [(0, 16, 0), (1, 512, 0x100), (1, 1, 0x400)])], area((0, blk_header(0, 1))))
write = chains([(False, [(0, 16, 0), (0, 1024, 0x100), (1, 1, 0x600)])], area((0, blk_header(1, 2)), (0x100, b"\xa5" * 1024)))
flush = chains([(False, [(0, 16, 0), (1, 1, 0x40)])], area((0, blk_header(4, 0))))
get_id = chains([(False, [(0, 16, 0), (1, 20, 0x40), (1, 1, 0x80)])], area((0, blk_header(8, 0))))
indirect = chains([(True, [(0, 16, 0), (1, 512, 0x100), (1, 1, 0x400)])], area((0, blk_header(0, 63))))
several = chains([
    (False, [(0, 16, 0), (1, 512, 0x100), (1, 1, 0x400)]),
    (False, [(0, 16, 0x20), (0, 512, 0x200), (1, 1, 0x401)]),
    (True, [(0, 16, 0x40), (1, 1, 0x402)]),
], area((0, blk_header(0, 0)), (0x20, blk_header(1, 5)), (0x40, blk_header(4, 0))))
past_end = chains([(False, [(0, 16, 0), (1, 512, 0x100), (1, 1, 0x400)])], area((0, blk_header(0, 64))))
for name, seed in [("read", read), ("write", write), ("flush", flush), ("get-id", get_id),
                   ("indirect", indirect), ("several", several), ("past-end", past_end)]:
    put("block_request", name, b"\x01" + seed)
    put("block_request", name + "-wb-ro", b"\x0f" + seed)
put("block_request", "raw-zero", b"\x00" * 400)

VNET_HDR = bytes(12)
frame = VNET_HDR + b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(46)
tx_one = chains([(False, [(0, len(frame), 0)])], area((0, frame)))
tx_split = chains([(False, [(0, 12, 0), (0, 14, 0x100), (0, 46, 0x200)])], area((0, VNET_HDR), (0x100, frame[12:26]), (0x200, frame[26:])))
tx_indirect = chains([(True, [(0, 12, 0), (0, 60, 0x100)])], area((0, VNET_HDR), (0x100, frame[12:])))
tx_many = chains([(False, [(0, len(frame), 0)])] * 6, area((0, frame)))
for name, seed in [("one", tx_one), ("split", tx_split), ("indirect", tx_indirect), ("many", tx_many)]:
    put("net_tx", name, b"\x01" + seed)
    put("net_tx", name + "-features", b"\x03" + seed)
put("net_tx", "raw-zero", b"\x00" * 400)

rx_one = chains([(False, [(1, 2048, 0)])], b"")
rx_split = chains([(False, [(1, 12, 0), (1, 1024, 0x100), (1, 1024, 0x600)])], b"")
rx_merge = chains([(False, [(1, 256, 0x100 * i)]) for i in range(8)], b"")
rx_indirect = chains([(True, [(1, 12, 0), (1, 2048, 0x100)])], b"")
# rx: mode byte, frame count, frame size (u16), then the queue
for name, seed in [("one", rx_one), ("split", rx_split), ("merge", rx_merge), ("indirect", rx_indirect)]:
    put("net_rx", name, bytes([0x01, 0]) + struct.pack("<H", 74) + seed)
    put("net_rx", name + "-mrg", bytes([0x03, 2]) + struct.pack("<H", 1514) + seed)
put("net_rx", "raw-zero", bytes([0, 1, 60, 0]) + b"\x00" * 400)

# ---- mmio: device byte, then 6-byte operations (kind, selector, value) ----
REGS = ["MAGIC", "VERSION", "DEVICE_ID", "VENDOR_ID", "DEVICE_FEATURES", "DEVICE_FEATURES_SEL",
        "DRIVER_FEATURES", "DRIVER_FEATURES_SEL", "QUEUE_SEL", "QUEUE_NUM_MAX", "QUEUE_NUM",
        "QUEUE_READY", "QUEUE_NOTIFY", "INTERRUPT_STATUS", "INTERRUPT_ACK", "STATUS",
        "QUEUE_DESC_LOW", "QUEUE_DESC_HIGH", "QUEUE_AVAIL_LOW", "QUEUE_AVAIL_HIGH",
        "QUEUE_USED_LOW", "QUEUE_USED_HIGH", "CONFIG_GENERATION", "CONFIG"]

def rd(r):
    return bytes([0, REGS.index(r)]) + bytes(4)

def wr(r, v):
    return bytes([1, REGS.index(r)]) + struct.pack("<I", v)

def mem(addr, value):
    # kind 2: address (sel << 10) | (v0 << 2), bytes v1 v2 v3 v0
    assert addr % 4 == 0 and addr < 1 << 18
    sel, v0 = addr >> 10, (addr >> 2) & 0xff
    b = struct.pack("<I", value)
    return bytes([2, sel, v0, b[0], b[1], b[2]]) if b[3] == v0 else None

KICK = bytes([3, 0, 0, 0, 0, 0])

def init(queues, features_hi=1, features_lo=0):
    ops = rd("MAGIC") + rd("VERSION") + rd("DEVICE_ID") + wr("STATUS", 0)
    ops += wr("STATUS", 1) + wr("STATUS", 3)
    ops += wr("DEVICE_FEATURES_SEL", 0) + rd("DEVICE_FEATURES")
    ops += wr("DEVICE_FEATURES_SEL", 1) + rd("DEVICE_FEATURES")
    ops += wr("DRIVER_FEATURES_SEL", 0) + wr("DRIVER_FEATURES", features_lo)
    ops += wr("DRIVER_FEATURES_SEL", 1) + wr("DRIVER_FEATURES", features_hi)
    ops += wr("STATUS", 0xb) + rd("STATUS")
    for q in range(queues):
        base = 0x4000 * (q + 1)
        ops += wr("QUEUE_SEL", q) + rd("QUEUE_NUM_MAX") + wr("QUEUE_NUM", 16)
        ops += wr("QUEUE_DESC_LOW", base) + wr("QUEUE_DESC_HIGH", 0)
        ops += wr("QUEUE_AVAIL_LOW", base + 0x1000) + wr("QUEUE_AVAIL_HIGH", 0)
        ops += wr("QUEUE_USED_LOW", base + 0x2000) + wr("QUEUE_USED_HIGH", 0)
        ops += wr("QUEUE_READY", 1) + rd("QUEUE_READY")
    ops += wr("STATUS", 0xf) + rd("STATUS") + rd("INTERRUPT_STATUS") + wr("INTERRUPT_ACK", 1)
    return ops

put("mmio", "block-init", b"\x00" + init(1) + KICK)
put("mmio", "net-init", b"\x01" + init(2) + KICK)
put("mmio", "block-init-reset-init", b"\x00" + init(1) + KICK + wr("STATUS", 0) + init(1) + KICK)
put("mmio", "block-config", b"\x00" + bytes([0x20 | 0x40, 0x00, 0, 0, 0, 0]) + bytes([0x20 | 0x40 | 0x0c, 0x08, 0, 0, 0, 0]))
put("mmio", "bad-order", b"\x00" + wr("STATUS", 0xf) + wr("QUEUE_NUM", 0xffff) + wr("QUEUE_READY", 1) + KICK)

# ---- snapshot_file: mode byte (1: the target writes the header), then bytes ----
payload = b'{"pic_master": {}, "clock": {"clock": 1}}'
put("snapshot_file", "payload-only", b"\x01" + payload)
header = b"SPRYSNAP" + struct.pack("<IIQ", 1, zlib.crc32(payload), len(payload))
put("snapshot_file", "whole-file", b"\x00" + header + payload)
put("snapshot_file", "vcpu-fpu", b"\x01" + b'{"cpuid": [], "fpu": {"Xsave": [1, 2, 3]}, "msrs": [], "xcrs": null}')
put("snapshot_file", "wrong-version", b"\x00" + b"SPRYSNAP" + struct.pack("<IIQ", 2, 0, 0))
