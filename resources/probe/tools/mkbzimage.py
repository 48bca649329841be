#!/usr/bin/env python3
"""Pack the probe's flat payload into an x86 bzImage (Linux boot protocol 2.12).

usage: mkbzimage.py PAYLOAD_ELF PAYLOAD_BIN OUT

PAYLOAD_ELF is the probe linked at 0x100000 (used for sanity checks and
init_size), PAYLOAD_BIN its objcopy -O binary image. The result is
  [boot sector + 4 setup sectors with the setup header at 0x1f1][payload]
The payload is what the VMM loads at code32_start (0x100000); the 64-bit
entry is at payload offset 0x200.
"""
import os
import struct
import sys

SETUP_SECTS = 4
VERSION = 0x020C
LOAD = 0x100000
KERNEL_VERSION = b"spry-probe 1 (emulator-safe; not Linux)\0"
KVER_OFFSET = 0x300          # file offset of the version string
RM_STUB_OFFSET = 0x270       # real-mode stub the 0x200 jump leads to


def die(msg):
    sys.stderr.write("mkbzimage: error: %s\n" % msg)
    sys.exit(1)


def elf_load_info(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        die("%s is not a little-endian ELF64 file" % path)
    e_entry, e_phoff = struct.unpack_from("<QQ", data, 0x18)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    loads = []
    for i in range(e_phnum):
        p_type, _flags, _off, _vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == 1:
            loads.append((p_paddr, p_filesz, p_memsz))
    if len(loads) != 1:
        die("%s: expected exactly one PT_LOAD segment, found %d" % (path, len(loads)))
    return e_entry, loads[0]


def main():
    if len(sys.argv) != 4:
        die("usage: mkbzimage.py PAYLOAD_ELF PAYLOAD_BIN OUT")
    elf, binf, out = sys.argv[1:]
    entry, (paddr, filesz, memsz) = elf_load_info(elf)
    if paddr != LOAD:
        die("payload linked at 0x%x, must be 0x%x" % (paddr, LOAD))
    if entry != LOAD + 0x200:
        die("payload entry 0x%x, must be load address + 0x200" % entry)
    with open(binf, "rb") as f:
        payload = f.read()
    if len(payload) != filesz:
        die("%s is %d bytes, ELF says %d" % (binf, len(payload), filesz))
    init_size = (memsz + 0xFFF) & ~0xFFF

    setup = bytearray((SETUP_SECTS + 1) * 512)
    setup[0:4] = b"\xfa\xf4\xeb\xfd"                         # cli; hlt; jmp .-1
    setup[RM_STUB_OFFSET:RM_STUB_OFFSET + 4] = b"\xfa\xf4\xeb\xfd"
    setup[KVER_OFFSET:KVER_OFFSET + len(KERNEL_VERSION)] = KERNEL_VERSION

    def put(fmt, off, *vals):
        struct.pack_into("<" + fmt, setup, off, *vals)

    put("B", 0x1F1, SETUP_SECTS)                  # setup_sects
    put("H", 0x1F2, 0)                            # root_flags
    put("I", 0x1F4, (len(payload) + 15) // 16)    # syssize (16-byte units)
    put("H", 0x1FA, 0xFFFF)                       # vid_mode: normal
    put("H", 0x1FE, 0xAA55)                       # boot_flag
    put("BB", 0x200, 0xEB, RM_STUB_OFFSET - 0x202)  # jump: jmp short to the stub
    setup[0x202:0x206] = b"HdrS"                  # header
    put("H", 0x206, VERSION)                      # version
    put("H", 0x20C, 0x1000)                       # start_sys_seg (obsolete)
    put("H", 0x20E, KVER_OFFSET - 0x200)          # kernel_version
    put("B", 0x211, 0x01)                         # loadflags: LOADED_HIGH
    put("H", 0x212, 0x8000)                       # setup_move_size
    put("I", 0x214, LOAD)                         # code32_start
    put("I", 0x22C, 0x7FFFFFFF)                   # initrd_addr_max
    put("I", 0x230, 0x01000000)                   # kernel_alignment
    put("B", 0x234, 0)                            # relocatable_kernel: no
    put("B", 0x235, 12)                           # min_alignment (log2)
    put("H", 0x236, 0x0001)                       # xloadflags: XLF_KERNEL_64
    put("I", 0x238, 2048)                         # cmdline_size
    put("Q", 0x258, LOAD)                         # pref_address
    put("I", 0x260, init_size)                    # init_size

    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(setup)
        f.write(payload)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
