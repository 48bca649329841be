#!/usr/bin/env bash
# Boot the guest artifacts from build.sh under QEMU (microvm machine, TCG
# software emulation: works where /dev/kvm cannot run Linux) and check that
# the kernel reaches our init, that init reports what it should, and that
# `reboot -f` (reboot=k -> i8042 reset) ends QEMU.
#
# Usage: resources/guest/qemu-smoke.sh [OUTDIR]    (default: <repo>/build/guest)
# Exit: 0 all boots passed, 1 a boot failed, 2 cannot run (missing artifacts
#       or qemu-system-x86_64 and not root to install it).
#
# Environment:
#   QEMU                 qemu binary (default qemu-system-x86_64)
#   SPRY_SMOKE_TIMEOUT   seconds per boot (default 120)
#   SPRY_SMOKE_LOGDIR    keep the serial logs here (default: a temp dir,
#                        removed when everything passed)
#   SPRY_SMOKE_ONLY      space-separated test names to run (default: all)
#
# Why these QEMU flags: `-M microvm,acpi=off` is required. With ACPI on (the
# default) QEMU describes the virtio-mmio devices only in the DSDT, and our
# kernel has no ACPI; with acpi=off QEMU appends `virtio_mmio.device=` to the
# command line and qboot writes an MP table (SMP without ACPI). microvm has
# no i8042 unless `-device i8042` is given; without it reboot=k spins ~1.5 s
# and then falls back to a triple fault. The RTC stays on: without kvmclock
# (TCG) the kernel reads the wall clock from the CMOS RTC, and an absent RTC
# (ports 0x70/0x71 reading 0xff) costs a 1 s "Unable to read current time from
# RTC" timeout. The PIT and PIC stay on (TCG default); no option ROMs.

set -uo pipefail
exec </dev/null

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUTDIR=${1:-$REPO/build/guest}
QEMU=${QEMU:-qemu-system-x86_64}
TIMEOUT=${SPRY_SMOKE_TIMEOUT:-120}
ONLY=${SPRY_SMOKE_ONLY:-}

T0=${EPOCHREALTIME/,/.}
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.2f", b - a }'; }
log() { printf '[smoke %6.1fs] %s\n' "$(since "$T0")" "$*" >&2; }
cannot() { log "CANNOT RUN: $*"; exit 2; }

for f in vmlinux bzImage rootfs.ext4 initramfs.cpio; do
	[ -f "$OUTDIR/$f" ] || cannot "$OUTDIR/$f missing; run resources/guest/build.sh $OUTDIR first"
done
if ! command -v "$QEMU" >/dev/null; then
	[ "$QEMU" = qemu-system-x86_64 ] && [ "$(id -u)" -eq 0 ] || cannot "$QEMU not found (apt-get install qemu-system-x86)"
	log "installing qemu-system-x86"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -q qemu-system-x86 >&2 ||
		{ DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
		  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -q qemu-system-x86 >&2; } ||
		cannot "apt-get install qemu-system-x86 failed"
fi

if [ -n "${SPRY_SMOKE_LOGDIR:-}" ]; then
	LOGDIR=$SPRY_SMOKE_LOGDIR; mkdir -p "$LOGDIR"; KEEP=1
else
	LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/spry-smoke.XXXXXX"); KEEP=0
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spry-smoke-work.XXXXXX")
# The pid of the running boot's timeout(1): it leads a process group of its own
# with QEMU, which a signal to this script's group does not reach.
QPID_FILE="$WORK/qemu.pid"
# The shell test's background jobs.
feeder='' drain=''
cleanup() {
	local job qpid
	for job in $feeder $drain; do kill "$job" 2>/dev/null; done
	if qpid=$(cat "$QPID_FILE" 2>/dev/null) && [ -n "$qpid" ]; then
		kill -- -"$qpid" 2>/dev/null || kill "$qpid" 2>/dev/null
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

BASE_CMDLINE="console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd"
MACHINE=(-M microvm,acpi=off,x-option-roms=off,rtc=on -accel tcg -nodefaults -no-user-config
         -display none -serial stdio -no-reboot -device i8042)

PASSED=0 FAILED=0
FAILS=()

# boot NAME SECONDS_TO_WAIT QEMU-ARGS... ; the serial log (each line prefixed
# with the host-side seconds since QEMU started) ends up in $LOGDIR/NAME.log.
# Sets BOOT_RC (qemu's exit status, 124 on timeout) and BOOT_WALL.
boot() {
	local name=$1; shift
	local logf="$LOGDIR/$name.log" start start_us line rc t
	: >"$logf"
	start=$(now) start_us=${EPOCHREALTIME/[.,]/}
	# timeout(1) kills qemu if the guest never resets; qemu exits by itself
	# (status 0) on the guest's reset because of -no-reboot. The subshell records
	# its pid, which exec makes timeout's, for cleanup().
	(
		echo "$BASHPID" >"$QPID_FILE"
		exec timeout --kill-after=5 "$TIMEOUT" "$QEMU" "${MACHINE[@]}" "$@"
	) 2>&1 <"${BOOT_STDIN:-/dev/null}" |
		while IFS= read -r line; do
			t=$((${EPOCHREALTIME/[.,]/} - start_us))
			printf '%d.%06d %s\n' $((t / 1000000)) $((t % 1000000)) "${line%$'\r'}"
		done >"$logf"
	rc=${PIPESTATUS[0]}
	rm -f "$QPID_FILE"
	BOOT_RC=$rc BOOT_WALL=$(since "$start")
}

# seen LOG REGEX -> prints host seconds of the first matching line
# (a REGEX starting with ^ must match the prefix itself: '^[0-9.]+ text$')
seen() {
	local re=$2
	[[ $re == ^* ]] || re="^[0-9.]+ .*$re"
	grep -aE -m1 -- "$re" "$1" | cut -d' ' -f1
}

check() { # NAME LOG REGEX...
	local name=$1 logf=$2 re ok=1; shift 2
	for re in "$@"; do
		if [ -z "$(seen "$logf" "$re")" ]; then
			log "  $name: expected line not seen: /$re/"
			ok=0
		fi
	done
	[ $ok = 1 ]
}

finish_test() { # NAME OK(0/1) EXTRA
	local name=$1 ok=$2 extra=$3 logf="$LOGDIR/$1.log" t_init kt_init
	t_init=$(seen "$logf" 'spry-guest: init running')
	kt_init=$(grep -aE -m1 'Run /(s?bin/)?init as init process' "$logf" | sed -n 's/.*\[ *\([0-9.]*\)\].*/\1/p')
	if [ "$BOOT_RC" -ne 0 ]; then
		if [ "$BOOT_RC" -eq 124 ]; then
			log "  $name: qemu did not exit within ${TIMEOUT}s (no reset from the guest)"
		else
			log "  $name: qemu exited with status $BOOT_RC"
		fi
		ok=0
	fi
	if [ "$ok" = 1 ]; then
		PASSED=$((PASSED + 1))
		kt_init=${kt_init:+${kt_init}s}
		log "PASS $name: init after ${t_init:-?}s wall (kernel clock ${kt_init:-n/a: quiet}), qemu exited after ${BOOT_WALL}s${extra:+, $extra}"
	else
		FAILED=$((FAILED + 1)); FAILS+=("$name")
		log "FAIL $name (serial log: $logf); last lines:"
		tail -n 15 "$logf" | sed 's/^/    | /' >&2
	fi
}

want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

mem_ok() { # LOG MIN MAX: mem_kib of the report line within [MIN, MAX]
	local m
	m=$(grep -aoE -m1 'spry-guest: report .*mem_kib=[0-9]+' "$1" | sed 's/.*mem_kib=//')
	[ -n "$m" ] && [ "$m" -ge "$2" ] && [ "$m" -le "$3" ] && return 0
	log "  mem_kib=${m:-none} not within [$2, $3]"
	return 1
}

# The rootfs is booted read-write: use a scratch copy, never OUTDIR's.
cp --sparse=always "$OUTDIR/rootfs.ext4" "$WORK/rootfs.ext4"
DISK=(-drive "id=root,file=$WORK/rootfs.ext4,format=raw,if=none" -device virtio-blk-device,drive=root)
NET=(-netdev user,id=n0,restrict=on -device virtio-net-device,netdev=n0)

log "QEMU: $("$QEMU" --version | head -n1); artifacts: $OUTDIR; timeout ${TIMEOUT}s per boot"

# 1. vmlinux (PVH entry) + ext4 root on virtio-blk + virtio-net with kernel ip=.
if want ext4-vmlinux; then
	boot ext4-vmlinux -m 256 -smp 2 -kernel "$OUTDIR/vmlinux" "${DISK[@]}" "${NET[@]}" \
		-append "$BASE_CMDLINE root=/dev/vda rw ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off spry.mode=report"
	ok=1
	check ext4-vmlinux "$LOGDIR/ext4-vmlinux.log" \
		'Linux version [0-9.]+-spry' \
		'spry-guest: init running cpus=2 mem_kib=[0-9]+$' \
		'spry-guest: report cpus=2 mem_kib=[0-9]+ root=/dev/vda fstype=ext4 net=eth0,10\.0\.2\.15/24$' \
		'reboot: Restarting system' || ok=0
	mem_ok "$LOGDIR/ext4-vmlinux.log" 230000 262144 || ok=0
	finish_test ext4-vmlinux $ok "-m 256 -smp 2"
fi

# 2. bzImage + initramfs (no root=), other CPU/memory sizes, eth0 without ip=.
if want initramfs-bzimage; then
	boot initramfs-bzimage -m 192 -smp 3 -kernel "$OUTDIR/bzImage" -initrd "$OUTDIR/initramfs.cpio" "${NET[@]}" \
		-append "$BASE_CMDLINE spry.mode=report"
	ok=1
	check initramfs-bzimage "$LOGDIR/initramfs-bzimage.log" \
		'spry-guest: init running cpus=3 mem_kib=[0-9]+$' \
		'spry-guest: report cpus=3 mem_kib=[0-9]+ root=rootfs fstype=rootfs net=eth0,noaddr$' \
		'reboot: Restarting system' || ok=0
	mem_ok "$LOGDIR/initramfs-bzimage.log" 170000 196608 || ok=0
	finish_test initramfs-bzimage $ok "-m 192 -smp 3"
fi

# 3. spry.mode=run: the command encoding (+ = space, %XX = byte) and exit status;
#    also the boot-timer devmem write path (a /dev/mem MMIO write + read-back
#    through the IOAPIC's index/data registers).
if want run-mode; then
	# echo hello+world; echo "a  b"; devmem 0xfec00000 32 1; echo ioapic=$(devmem 0xfec00010 32); exit 7
	cmd='echo+hello%2Bworld%3B+echo+%22a++b%22%3B+devmem+0xfec00000+32+1%3B+echo+ioapic%3D%24(devmem+0xfec00010+32)%3B+exit+7'
	boot run-mode -m 128 -smp 1 -kernel "$OUTDIR/vmlinux" "${DISK[@]}" \
		-append "$BASE_CMDLINE root=/dev/vda rw quiet spry.mode=run spry.cmd=$cmd"
	ok=1
	check run-mode "$LOGDIR/run-mode.log" \
		'spry-guest: init running cpus=1 ' \
		'^[0-9.]+ hello\+world$' \
		'^[0-9.]+ a  b$' \
		'^[0-9.]+ ioapic=0x00[0-9a-f]{2}00[0-9a-f]{2}$' \
		'spry-guest: run exit=7$' || ok=0
	finish_test run-mode $ok ""
fi

# 4. Shell mode: type into the interactive shell over the serial port, check
#    that Ctrl-C interrupts a command (signals are not left ignored) and then
#    press Ctrl-Alt-Del on the i8042 keyboard from the QEMU monitor: init must
#    get SIGINT (ctrl-alt-del sysctl = 0), sync and `reboot -f`.
if want shell; then
	logf="$LOGDIR/shell.log"
	mkfifo "$WORK/serial.in" "$WORK/mon.in" "$WORK/mon.out"
	wait_for() { # REGEX: up to TIMEOUT seconds
		local _
		for _ in $(seq 1 $((TIMEOUT * 10))); do
			[ -n "$(seen "$logf" "$1")" ] && return 0
			sleep 0.1
		done
		return 1
	}
	( # feeder: types into the serial console, then presses Ctrl-Alt-Del.
		exec 7>"$WORK/serial.in"
		wait_for 'Exit the shell to reboot' || exit 0
		sleep 1
		printf 'sleep 60\n' >&7
		sleep 2
		printf '\003' >&7
		sleep 1
		printf 'echo "int-rc:$?"\n' >&7
		wait_for '^[0-9.]+ int-rc:' || exit 0
		printf 'grep SigIgn /proc/self/status\n' >&7
		wait_for '^[0-9.]+ SigIgn:' || exit 0
		sleep 0.5
		echo 'sendkey ctrl-alt-delete' >"$WORK/mon.in"
		# exec: killing $feeder then ends the sleep, and with it the fifo's writer.
		exec sleep "$TIMEOUT"
	) &
	feeder=$!
	cat "$WORK/mon.out" >/dev/null 2>&1 &
	drain=$!
	BOOT_STDIN="$WORK/serial.in" boot shell -m 128 -smp 2 -kernel "$OUTDIR/vmlinux" "${DISK[@]}" \
		-chardev "pipe,id=mon0,path=$WORK/mon" -mon chardev=mon0,mode=readline \
		-append "$BASE_CMDLINE root=/dev/vda rw quiet spry.mode=shell"
	kill "$feeder" "$drain" 2>/dev/null; wait "$feeder" "$drain" 2>/dev/null
	feeder='' drain=''
	ok=1
	check shell "$logf" \
		'Exit the shell to reboot' \
		'^[0-9.]+ int-rc:130$' \
		'^[0-9.]+ SigIgn:[[:space:]]+0+$' \
		'spry-guest: ctrl-alt-del$' \
		'spry-guest: rebooting$' || ok=0
	finish_test shell $ok "Ctrl-C + Ctrl-Alt-Del"
fi

# 5. spry.mode=exit with `quiet`: the boot-benchmark path.
if want exit-mode; then
	boot exit-mode -m 256 -smp 2 -kernel "$OUTDIR/vmlinux" "${DISK[@]}" \
		-append "$BASE_CMDLINE root=/dev/vda rw quiet spry.mode=exit"
	ok=1
	check exit-mode "$LOGDIR/exit-mode.log" 'spry-guest: init running cpus=2 ' 'spry-guest: rebooting$' || ok=0
	finish_test exit-mode $ok ""
fi

log "logs: $LOGDIR"
if [ $FAILED -eq 0 ] && [ $KEEP = 0 ]; then rm -rf "$LOGDIR"; fi
[ $FAILED -eq 0 ] || log "failed: ${FAILS[*]}"
echo "qemu-smoke: $PASSED passed, $FAILED failed"
[ $FAILED -eq 0 ] && [ $PASSED -gt 0 ]
