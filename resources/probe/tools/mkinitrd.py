#!/usr/bin/env python3
"""Make an initrd in the probe's format.

usage: mkinitrd.py OUT [--size BYTES] [--seed N] [--corrupt magic|length|sum]

Layout: bytes 0..16 "SPRYPROBEINITRD\\0", u32 LE total length, u32 LE
wrapping sum of all bytes from offset 24 to the end, then deterministic
pseudo-random filler. --size is the total size (default 4096, minimum 24).
--corrupt produces an image the probe must reject.
"""
import argparse
import os
import struct
import sys

MAGIC = b"SPRYPROBEINITRD\0"


def make(size, seed=1, corrupt=None):
    if size < 24:
        raise ValueError("size must be at least 24")
    body = bytearray(size - 24)
    x = (seed * 0x9E3779B97F4A7C15 + 1) & (2**64 - 1)
    for i in range(len(body)):
        x ^= (x << 13) & (2**64 - 1)
        x ^= x >> 7
        x ^= (x << 17) & (2**64 - 1)
        body[i] = x & 0xFF
    csum = sum(body) & 0xFFFFFFFF
    length = size
    magic = MAGIC
    if corrupt == "magic":
        magic = b"SPRYPROBEINITRDX"
    elif corrupt == "length":
        length = size + 1
    elif corrupt == "sum":
        csum = (csum + 1) & 0xFFFFFFFF
    return magic + struct.pack("<II", length, csum) + bytes(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--size", type=lambda s: int(s, 0), default=4096)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corrupt", choices=["magic", "length", "sum"])
    a = ap.parse_args()
    try:
        data = make(a.size, a.seed, a.corrupt)
    except ValueError as e:
        sys.exit("mkinitrd: error: %s" % e)
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
