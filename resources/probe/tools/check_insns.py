#!/usr/bin/env python3
"""Fail if the probe contains instructions outside the emulator-safe set.

usage: check_insns.py OBJDUMP ELF...

Disassembles the executable code from the 64-bit entry (startup_64, image
offset 0x200) on and checks every mnemonic against an allow-list of
instructions that KVM's x86 instruction emulator (arch/x86/kvm/emulate.c)
implements. The 32-bit stub before startup_64 is not checked (it is never
reached through the 64-bit entry, and a 64-bit disassembly of it is noise).
Anything else -- SSE/AVX/x87, endbr64, popcnt/lzcnt/tzcnt, movbe, rdrand,
fences, ud2, int3 ... -- is refused: the emulator either does not implement it
(KVM_EXIT_INTERNAL_ERROR) or it would be a bug in the probe.
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
ALLOWED_RE = re.compile(r"^(" + "|".join(ALLOWED) + r")$")
PREFIXES = {"rep", "repz", "repnz", "repe", "repne", "cs"}


def check(objdump, path):
    dis = subprocess.run([objdump, "-d", "-w", "--no-show-raw-insn", "-M", "att", path],
                         capture_output=True, text=True)
    if dis.returncode:
        sys.stderr.write(dis.stderr)
        return ["objdump failed on %s" % path]
    m = re.search(r"^([0-9a-f]+) <startup_64>:", dis.stdout, re.M)
    if not m:
        return ["%s: no startup_64 symbol" % path]
    start = int(m.group(1), 16)
    bad = []
    func = "?"
    for line in dis.stdout.splitlines():
        h = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if h:
            func = h.group(1)
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not re.match(r"^ *[0-9a-f]+:$", parts[0]):
            continue
        addr = int(parts[0].strip()[:-1], 16)
        if addr < start:
            continue
        words = parts[1].split()
        if not words:
            continue
        mnem = words[0]
        if mnem in PREFIXES and len(words) > 1:
            mnem = mnem + " " + words[1]
        if not ALLOWED_RE.match(mnem):
            bad.append("%s: 0x%x <%s>: %s" % (path, addr, func, parts[1].strip()))
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
