#!/usr/bin/env bash
# Build the spry probe guest.
#   resources/probe/build.sh [OUTDIR]        (default: <repo>/build/probe)
# Produces OUTDIR/vmlinux (ELF, PT_LOAD at 0x1000000, 64-bit entry at
# e_entry and a PVH entry note for QEMU), OUTDIR/bzImage (payload at 0x100000,
# 64-bit entry at +0x200) and OUTDIR/initrd.img (a valid test initrd). Needs only gcc, binutils (ld, objcopy, objdump) and python3.
set -eEuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/build/probe}

die() { echo "probe/build.sh: error: $*" >&2; exit 1; }
trap '[ "$BASHPID" = "$$" ] && die "build failed (command above exited non-zero)"' ERR

CC=${CC:-gcc}
LD=${LD:-ld}
OBJCOPY=${OBJCOPY:-objcopy}
OBJDUMP=${OBJDUMP:-objdump}
for t in "$CC" "$LD" "$OBJCOPY" "$OBJDUMP" python3; do
	command -v "$t" >/dev/null 2>&1 || die "'$t' not found"
done

mkdir -p "$out"
out=$(cd "$out" && pwd)

# Up to date when the same sources, script and tools built what is there: a build
# takes seconds here but minutes in the nested host's emulated L1, where the tests
# that boot the probe also run.
key=$({
	cat "$here/build.sh" "$here/link.ld" "$here"/src/* "$here"/tools/*
	"$CC" --version
	"$LD" --version
	echo "$CC $LD $OBJCOPY $OBJDUMP"
} | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/.build-key" 2>/dev/null)" = "$key" ] &&
	[ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ] && [ -f "$out/initrd.img" ]; then
	echo "probe: up to date in $out"
	exit 0
fi
rm -f "$out/.build-key"
obj="$out/obj"
rm -rf "$obj"
mkdir -p "$obj/elf" "$obj/bz"

# Emulator-safe code generation: no SSE/x87/AVX, no endbr64, no red zone
# (interrupts run on the same stack), no stack protector, no PIC, no unwind
# tables; -Os because under KVM's instruction emulator every executed
# instruction costs ~0.7 us and -Os emits no executed alignment NOPs.
CFLAGS=(
	-std=gnu11 -Os -Wall -Wextra -Wno-unused-parameter
	-ffreestanding -nostdlib -fno-builtin -fno-common -fno-strict-aliasing
	-fno-pic -fno-pie -mcmodel=small -march=x86-64 -mtune=generic
	-mno-red-zone -mgeneral-regs-only -mno-sse -mno-sse2 -mno-mmx -mno-avx -mno-3dnow -mno-80387
	-mskip-rax-setup -fcf-protection=none -fno-stack-protector -fno-stack-clash-protection
	-fno-asynchronous-unwind-tables -fno-unwind-tables -fno-exceptions
	-fno-tree-loop-distribute-patterns -fno-jump-tables -fno-delete-null-pointer-checks
	-fno-ident
)
ASFLAGS=(-fno-pic -fno-pie -Wa,--noexecstack)
LDFLAGS=(-nostdlib -static --no-dynamic-linker --build-id=none -z noexecstack -z max-page-size=0x1000
	--no-warn-rwx-segments)

src="$here/src"
common_c=(main.c cpu.c paging.c cmdline.c mptable.c apic.c idt.c irqtest.c console.c serial.c printf.c string.c
	virtio.c blk.c net.c vsock.c hostile.c regsweep.c kbd.c pvh.c clock.c)
# two compiler processes (independent objects; the build fails if either does)
srcs=("${common_c[@]/#/$src/}")
half=$((${#srcs[@]} / 2))
(cd "$obj" && "$CC" "${CFLAGS[@]}" -c "${srcs[@]:0:half}") &
cc1=$!
(cd "$obj" && "$CC" "${CFLAGS[@]}" -c "${srcs[@]:half}") || { wait "$cc1"; false; }
wait "$cc1"
"$CC" "${ASFLAGS[@]}" -c "$src/entry.S" -o "$obj/entry.o"
"$CC" "${ASFLAGS[@]}" -c "$src/note.S" -o "$obj/note.o"
"$CC" "${ASFLAGS[@]}" -c "$src/bytesum.S" -o "$obj/bytesum.o"
common_o=()
for f in "${common_c[@]}"; do common_o+=("$obj/${f%.c}.o"); done
common_o+=("$obj/entry.o" "$obj/note.o" "$obj/bytesum.o")
# the PVH entry (32-bit stub, page tables, Xen note): ELF only, since QEMU
# boots only ELF kernels through PVH
"$CC" "${ASFLAGS[@]}" -c "$src/pvh_entry.S" -o "$obj/pvh_entry.o"

link() { # variant load_addr extra-objects extra-cflags... -> $obj/$variant/probe.elf
	local v=$1 addr=$2 extra=$3; shift 3
	"$CC" "${CFLAGS[@]}" "$@" -c "$src/bootparams.c" -o "$obj/$v/bootparams.o"
	"$CC" "${ASFLAGS[@]}" -DLOAD_ADDR="$addr" -c "$src/isr.S" -o "$obj/$v/isr.o"
	# shellcheck disable=SC2086 # $extra: zero or more object paths
	"$LD" "${LDFLAGS[@]}" -T "$here/link.ld" --defsym=LOAD_ADDR="$addr" -Map="$obj/$v/probe.map" \
		-o "$obj/$v/probe.elf" "${common_o[@]}" "$obj/$v/bootparams.o" "$obj/$v/isr.o" $extra
}
link elf 0x1000000 "$obj/pvh_entry.o"
link bz 0x100000 "" -DPROBE_BZIMAGE -DPROBE_HDR_VERSION=0x020c -DPROBE_SETUP_SECTS=4

# refuse instructions KVM's emulator does not implement
python3 "$here/tools/check_insns.py" "$OBJDUMP" "$obj/elf/probe.elf" "$obj/bz/probe.elf" ||
	die "emulator-unsafe instructions in the probe (see above)"

cp "$obj/elf/probe.elf" "$out/vmlinux.tmp"
mv -f "$out/vmlinux.tmp" "$out/vmlinux"
"$OBJCOPY" -O binary "$obj/bz/probe.elf" "$obj/bz/payload.bin"
python3 "$here/tools/mkbzimage.py" "$obj/bz/probe.elf" "$obj/bz/payload.bin" "$out/bzImage"
python3 "$here/tools/mkinitrd.py" "$out/initrd.img" --size 4096
echo "$key" >"$out/.build-key"
echo "probe: built $out/vmlinux $out/bzImage $out/initrd.img"
