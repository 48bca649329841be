#!/usr/bin/env python3
"""Fail if the probe contains instructions outside the emulator-safe set.

usage: check_insns.py OBJDUMP ELF...

Disassembles the executable code and checks every mnemonic against an
allow-list of instructions that KVM's x86 instruction emulator
(arch/x86/kvm/emulate.c) implements: 64-bit code from the 64-bit entry
(startup_64, image offset 0x200) on, and, decoded as 32-bit code, the 32-bit
ranges CODE32 (the code32_start stub before startup_64 and, in the ELF, the
PVH entry stub pvh_entry.S). Anything else -- SSE/AVX/x87, endbr64,
popcnt/lzcnt/tzcnt, movbe, rdrand, fences, ud2, int3 ... -- is refused: the
emulator either does not implement it (KVM_EXIT_INTERNAL_ERROR) or it would be
a bug in the probe.
"""
import re
import subprocess
import sys

CC = r"(o|no|b|nae|c|ae|nb|nc|e|z|ne|nz|be|na|a|nbe|s|ns|p|pe|np|po|l|nge|ge|nl|le|ng|g|nle)"
ALLOWED = [
    r"mov[bwlq]?", r"movabs[bwlq]?", r"movz[bw][wlq]", r"movs[bw][wlq]", r"movslq",
    r"lea[wlq]?",
    r"(add|sub|and|or|xor|cmp|test|adc|sbb)[bwlq]?",
    r"(inc|dec|neg|not)[bwlq]?",
    r"(shl|shr|sar|sal|rol|ror)[bwlq]?",
    r"(imul|mul|div|idiv)[bwlq]?",
    r"(push|pop)[wq]?", r"(pushf|popf)[wq]?",
    r"(call|ret|jmp)q?", r"lretq", r"iretq", r"j" + CC, r"jmpq",
    r"set" + CC + r"b?", r"cmov" + CC + r"[wlq]?",
    r"cltq", r"cqto", r"cltd", r"cwtl", r"cbtw",
    r"xchg[bwlq]?", r"(bt|bts|btr|btc)[wlq]?", r"(bsf|bsr)[wlq]?", r"bswap[lq]?",
    r"nop[wlq]?", r"cs nop[wlq]?",
    r"(rep|repz|repnz|repe|repne) (stos|movs|cmps|scas|lods)[bwlq]?",
    r"(in|out)[bwl]?", r"outs[bwl]?", r"cli", r"sti", r"hlt", r"cld", r"std", r"pause", r"leave[q]?",
    r"cpuid", r"rdmsr", r"wrmsr", r"rdtsc",
    r"(lgdt|lidt|sgdt|sidt)[q]?",
]
# 32-bit code only, as objdump -M i386 spells it (each run under PVM: the PVH
# stub through QEMU's PVH boot, the code32_start stub pointed at by a PVH note)
ALLOWED32 = [
    r"ljmp", r"lods[bwl]?", r"(push|pop)l?", r"(pushf|popf)l?", r"(lgdt|sgdt)l?",
]
ALLOWED_RE = re.compile(r"^(" + "|".join(ALLOWED) + r")$")
ALLOWED32_RE = re.compile(r"^(" + "|".join(ALLOWED + ALLOWED32) + r")$")
PREFIXES = {"rep", "repz", "repnz", "repe", "repne", "cs"}

# [start, end) symbol pairs of 32-bit code; a pair whose start symbol is absent
# (the bzImage payload has no PVH entry) is skipped
CODE32 = [("startup_32", "startup_64"), ("pvh_start", "pvh_code32_end")]


def symbols(objdump, path):
    out = subprocess.run([objdump, "-t", path], capture_output=True, text=True)
    syms = {}
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) >= 2 and re.match(r"^[0-9a-f]{16}$", f[0]):
            syms[f[-1]] = int(f[0], 16)
    return syms


def disassemble(objdump, path, mode, start=None, stop=None):
    """[(addr, function, instruction text)] of the executable sections."""
    cmd = [objdump, "-d", "-w", "--no-show-raw-insn", "-M", mode + ",att"]
    if start is not None:
        cmd += ["--start-address=0x%x" % start, "--stop-address=0x%x" % stop]
    dis = subprocess.run(cmd + [path], capture_output=True, text=True)
    if dis.returncode:
        sys.stderr.write(dis.stderr)
        return None
    insns = []
    func = "?"
    for line in dis.stdout.splitlines():
        h = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if h:
            func = h.group(1)
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not re.match(r"^ *[0-9a-f]+:$", parts[0]):
            continue
        insns.append((int(parts[0].strip()[:-1], 16), func, parts[1].strip()))
    return insns


def refused(insns, allowed, path, mode):
    bad = []
    for addr, func, text in insns:
        words = text.split()
        if not words:
            continue
        mnem = words[0]
        if mnem in PREFIXES and len(words) > 1:
            mnem = mnem + " " + words[1]
        if not allowed.match(mnem):
            bad.append("%s: 0x%x <%s> (%s): %s" % (path, addr, func, mode, text))
    return bad


def check(objdump, path):
    syms = symbols(objdump, path)
    if "startup_64" not in syms:
        return ["%s: no startup_64 symbol" % path]
    ranges = []
    for lo, hi in CODE32:
        if lo not in syms:
            continue
        if hi not in syms or syms[hi] <= syms[lo]:
            return ["%s: 32-bit range %s..%s has no end" % (path, lo, hi)]
        ranges.append((syms[lo], syms[hi]))
    insns = disassemble(objdump, path, "x86-64")
    if insns is None:
        return ["objdump failed on %s" % path]
    # 64-bit code from startup_64 on, minus the 32-bit ranges (a 64-bit
    # decoding of 32-bit code is noise)
    start = syms["startup_64"]
    insns = [i for i in insns if i[0] >= start and not any(lo <= i[0] < hi for lo, hi in ranges)]
    bad = refused(insns, ALLOWED_RE, path, "64-bit")
    for lo, hi in ranges:
        insns = disassemble(objdump, path, "i386", lo, hi)
        if insns is None:
            return ["objdump failed on %s" % path]
        bad += refused(insns, ALLOWED32_RE, path, "32-bit")
    return bad


def main():
    objdump = sys.argv[1]
    bad = []
    for p in sys.argv[2:]:
        bad += check(objdump, p)
    for b in bad:
        sys.stderr.write("check_insns: not emulator-safe: %s\n" % b)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
