#!/usr/bin/env bash
# Build spry's Linux guest artifacts:
#   OUTDIR/vmlinux         uncompressed ELF kernel (with symbols, no DWARF; PVH note)
#   OUTDIR/bzImage         same kernel, LZ4-compressed bzImage
#   OUTDIR/rootfs.ext4     busybox root file system (32 MiB ext4)
#   OUTDIR/initramfs.cpio  same tree as an uncompressed newc cpio
#   OUTDIR/System.map, OUTDIR/kernel.config.full, OUTDIR/build-info.txt
#
# Usage: resources/guest/build.sh [OUTDIR]        (default: <repo>/build/guest)
#
# Inputs: Debian's linux-source-6.1 and busybox-static packages, plus
# kernel.config, init and spry-exec.c beside this script. Results are cached under
# ${SPRY_CACHE_DIR:-$HOME/.cache/spry}/guest/<key>/, key = hash of every input;
# a rerun with the same inputs only copies the cached files. See README.md.
#
# Environment:
#   SPRY_CACHE_DIR       cache root (default $HOME/.cache/spry)
#   SPRY_GUEST_JOBS      make -j (default: nproc)
#   SPRY_GUEST_VERBOSE=1 stream the full kernel build output to stderr
#   SPRY_GUEST_REBUILD=1 ignore cached results (the kernel object tree is
#                        still reused incrementally)

set -euo pipefail
exec </dev/null

T0=${EPOCHREALTIME/,/.}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
REPO=$(cd "$HERE/../.." && pwd)
OUTDIR=${1:-$REPO/build/guest}
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE=${SPRY_CACHE_DIR:-$HOME/.cache/spry}/guest
JOBS=${SPRY_GUEST_JOBS:-$(nproc)}
ARCH=x86_64
LINUX_PKG=linux-source-6.1
LINUX_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUSYBOX=/bin/busybox
ROOTFS_MIB=32
ROOTFS_UUID=5b0e6f3a-9d1c-4b7e-8a55-0c2d7e5f5a01

elapsed() { awk -v a="$T0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%6.1f", b - a }'; }
log() { printf '[guest %ss] %s\n' "$(elapsed)" "$*" >&2; }
die() { printf '[guest %ss] ERROR: %s\n' "$(elapsed)" "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || printf "[guest] FAILED (exit %d) after %ss\n" $rc "$(elapsed)" >&2' EXIT

# --- packages ------------------------------------------------------------------
PKGS=(linux-source-6.1 busybox-static make gcc libc6-dev binutils bc flex bison
      libelf-dev lz4 cpio xz-utils tar e2fsprogs coreutils util-linux)

pkg_installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

ensure_packages() {
	command -v dpkg-query >/dev/null || die "dpkg-query not found: this script needs a Debian system"
	local missing=() p
	for p in "${PKGS[@]}"; do pkg_installed "$p" || missing+=("$p"); done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing missing packages: ${missing[*]}"
	[ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root or: sudo apt-get install ${missing[*]}"
	local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -q)
	if ! "${apt[@]}" "${missing[@]}" >&2; then
		log "apt-get install failed; running apt-get update and retrying"
		DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed"
		"${apt[@]}" "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
	fi
	for p in "${missing[@]}"; do pkg_installed "$p" || die "package $p still not installed"; done
}

pkgver() { dpkg-query -W -f='${Version}' "$1"; }

# --- cache key ---------------------------------------------------------------------
# Kernel key: everything the kernel depends on. Full key: kernel key + rootfs inputs,
# among them whether build_rootfs can create /dev/console and /dev/null (only as
# root), so a cache shared between root and other users never hands a root-built
# tree to a non-root build or the other way round.
device_nodes() { if [ "$(id -u)" -eq 0 ]; then echo yes; else echo no; fi; }

compute_keys() {
	local kin fin
	kin=$(printf '%s\n' \
		"spry-guest-kernel v1" \
		"$LINUX_PKG=$(pkgver "$LINUX_PKG")" \
		"gcc=$(gcc --version | head -n1)" \
		"binutils=$(ld --version | head -n1)" \
		"lz4=$(pkgver lz4)" \
		"kernel.config=$(sha256sum <"$HERE/kernel.config")" \
		"build.sh=$(sha256sum <"$SELF")")
	KKEY=$(printf '%s' "$kin" | sha256sum | cut -c1-16)
	fin=$(printf '%s\n' \
		"kernel=$KKEY" \
		"busybox-static=$(pkgver busybox-static)" \
		"e2fsprogs=$(pkgver e2fsprogs)" \
		"cpio=$(pkgver cpio)" \
		"libc6-dev=$(pkgver libc6-dev)" \
		"init=$(sha256sum <"$HERE/init")" \
		"spry-exec.c=$(sha256sum <"$HERE/spry-exec.c")" \
		"spry-agent.c=$(sha256sum <"$HERE/spry-agent.c")" \
		"device-nodes=$(device_nodes)")
	KEY=$(printf '%s' "$fin" | sha256sum | cut -c1-16)
	KEY_INPUTS="$kin"$'\n'"$fin"
}

ARTIFACTS=(vmlinux bzImage rootfs.ext4 initramfs.cpio System.map kernel.config.full build-info.txt)

deliver() { # $1 = complete cache dir
	local src=$1 f
	mkdir -p "$OUTDIR"
	for f in "${ARTIFACTS[@]}"; do
		# Copies, not links: the VMM boots rootfs.ext4 read-write.
		cp --reflink=auto --sparse=always "$src/$f" "$OUTDIR/.$f.tmp"
		chmod u+w "$OUTDIR/.$f.tmp"
		mv -f "$OUTDIR/.$f.tmp" "$OUTDIR/$f"
	done
	touch "$src"
}

print_outputs() {
	local f
	for f in vmlinux bzImage rootfs.ext4 initramfs.cpio; do
		printf '%s\n' "$OUTDIR/$f"
	done
	log "kernel: $(sed -n 's/^kernel_version=//p' "$OUTDIR/build-info.txt")"
}

# --- kernel ------------------------------------------------------------------------
check_fragment() { # $1 = .config
	local cfg=$1 line k bad=0
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in
		CONFIG_*=n)
			k=${line%%=*}
			if grep -q "^$k=" "$cfg"; then
				log "config option $k: fragment wants it unset, olddefconfig gave $(grep "^$k=" "$cfg")"; bad=1
			fi ;;
		CONFIG_*=*)
			k=${line%%=*}
			if ! grep -qxF -- "$line" "$cfg"; then
				log "config option $k: fragment sets '$line', olddefconfig gave '$(grep -E "^$k=|^# $k is not set" "$cfg" || echo "<absent: dependency not met>")'"; bad=1
			fi ;;
		"# CONFIG_"*" is not set")
			k=${line#\# }; k=${k%% *}
			if grep -q "^$k=" "$cfg"; then
				log "config option $k: fragment wants it unset, olddefconfig gave $(grep "^$k=" "$cfg")"; bad=1
			fi ;;
		esac
	done <"$HERE/kernel.config"
	[ $bad -eq 0 ] || die "kernel.config options did not survive olddefconfig (see above); fix their dependencies in resources/guest/kernel.config"
}

run_make_logged() { # $1 = log file, rest = make args
	local logf=$1; shift
	local last=0 n=0 line now
	set +e
	if [ "${SPRY_GUEST_VERBOSE:-0}" = 1 ]; then
		make "$@" 2>&1 | tee "$logf" >&2
		local rc=${PIPESTATUS[0]}
	else
		make "$@" >"$logf" 2>&1 &
		local pid=$!
		while kill -0 $pid 2>/dev/null; do
			sleep 5
			n=$(grep -cE '^  (CC|AS|LD|AR|OBJCOPY|LZ4|HOSTCC)' "$logf" 2>/dev/null)
			line=$(grep -E '^  [A-Z]' "$logf" 2>/dev/null | tail -n1 | sed 's/^ *//; s/  */ /g')
			now=${EPOCHREALTIME%%[.,]*}
			if [ $((now - last)) -ge 20 ]; then
				log "kernel: $n build steps so far (last: ${line:-...})"
				last=$now
			fi
		done
		wait $pid
		local rc=$?
	fi
	set -e
	if [ "$rc" -ne 0 ]; then
		tail -n 40 "$logf" >&2
		die "kernel build failed (make $*); full log: $logf"
	fi
}

build_kernel() { # -> $CACHE/kernel-$KKEY/
	local kdir="$CACHE/kernel-$KKEY"
	if [ -f "$kdir/.complete" ] && [ "${SPRY_GUEST_REBUILD:-0}" != 1 ]; then
		log "kernel: cached ($kdir)"
		return 0
	fi
	local ver tree src obj tmp
	ver=$(pkgver "$LINUX_PKG")
	[ -f "$LINUX_TARBALL" ] || die "$LINUX_TARBALL missing (package $LINUX_PKG $ver)"
	tree="$CACHE/kbuild/$LINUX_PKG-$ver"
	src="$tree/src" obj="$tree/obj"
	# Drop kernel trees of other linux-source versions (about 1.5 GiB each).
	for t in "$CACHE"/kbuild/*; do
		[ -d "$t" ] && [ "$t" != "$tree" ] && { log "removing old kernel tree $t"; rm -rf "$t"; }
	done
	if [ ! -f "$src/Makefile" ]; then
		log "kernel: unpacking $LINUX_TARBALL ($LINUX_PKG $ver)"
		rm -rf "$tree/src.tmp"; mkdir -p "$tree/src.tmp"
		tar -xf "$LINUX_TARBALL" -C "$tree/src.tmp" --strip-components=1
		rm -rf "$src"; mv "$tree/src.tmp" "$src"
	fi
	mkdir -p "$obj"
	# Reproducible version banner: no user/host/date/build counter of this machine.
	export KBUILD_BUILD_USER=spry KBUILD_BUILD_HOST=spry KBUILD_BUILD_VERSION=1
	KBUILD_BUILD_TIMESTAMP="$(LC_ALL=C date -u -r "$LINUX_TARBALL" '+%a %b %e %H:%M:%S UTC %Y')"
	export KBUILD_BUILD_TIMESTAMP
	local mk=(-C "$src" O="$obj" ARCH="$ARCH")
	log "kernel: tinyconfig + kernel.config + olddefconfig"
	make "${mk[@]}" -s tinyconfig >"$obj/spry-config.log" 2>&1 || { cat "$obj/spry-config.log" >&2; die "make tinyconfig failed"; }
	"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$HERE/kernel.config" >>"$obj/spry-config.log" 2>&1 \
		|| { cat "$obj/spry-config.log" >&2; die "merge_config.sh failed"; }
	make "${mk[@]}" -s olddefconfig >>"$obj/spry-config.log" 2>&1 || { cat "$obj/spry-config.log" >&2; die "make olddefconfig failed"; }
	check_fragment "$obj/.config"
	log "kernel: make -j$JOBS vmlinux bzImage (cold: ~3 min on 2 cores; log: $obj/spry-build.log)"
	run_make_logged "$obj/spry-build.log" "${mk[@]}" -j"$JOBS" vmlinux bzImage
	log "kernel: built $(cat "$obj/include/config/kernel.release")"

	tmp=$(mktemp -d "$CACHE/.tmp-kernel-XXXXXX")
	# vmlinux is NOT stripped: an ELF loader reads only the PT_LOAD segments
	# (and the PVH note), which sit before the symbol table, so the symbols
	# cost nothing at boot (file 18.7 vs 17.7 MB) and let gdb/addr2line name
	# guest RIPs. There is no DWARF (no CONFIG_DEBUG_INFO).
	cp "$obj/vmlinux" "$tmp/vmlinux"
	cp "$obj/arch/x86/boot/bzImage" "$tmp/bzImage"
	cp "$obj/System.map" "$tmp/System.map"
	cp "$obj/.config" "$tmp/kernel.config.full"
	cat "$obj/include/config/kernel.release" >"$tmp/kernel.release"
	LC_ALL=C grep -a -m1 -o 'Linux version [^%]*' "$obj/vmlinux" | head -n1 | tr -d '\n' >"$tmp/kernel.version" || true
	touch "$tmp/.complete"
	rm -rf "$kdir"; mv -T "$tmp" "$kdir"
}

# --- root file system ---------------------------------------------------------------
build_rootfs() { # $1 = staging dir (gets rootfs.ext4 + initramfs.cpio)
	local out=$1 tree="$1/tree" f d
	[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (package busybox-static)"
	if LC_ALL=C readelf -l "$BUSYBOX" | grep -q 'program interpreter'; then
		die "$BUSYBOX is dynamically linked; need the one from busybox-static"
	fi
	log "rootfs: busybox $(pkgver busybox-static) + init"
	mkdir -p "$tree"
	for d in bin sbin usr/bin usr/sbin dev proc sys tmp run root etc mnt var/log; do
		mkdir -p "$tree/$d"
	done
	chmod 1777 "$tree/tmp"; chmod 700 "$tree/root"
	cp "$BUSYBOX" "$tree/bin/busybox"
	# One symlink per applet, relative to bin/busybox; our init replaces busybox init.
	"$BUSYBOX" --list-full | while IFS= read -r f; do
		case "$f" in bin/busybox | sbin/init | linuxrc | "") continue ;; esac
		d=$(dirname "$f")
		case "$d" in
		bin) ln -sf busybox "$tree/$f" ;;
		sbin | usr) ln -sf ../bin/busybox "$tree/$f" ;;
		usr/bin | usr/sbin) ln -sf ../../bin/busybox "$tree/$f" ;;
		*) die "unexpected applet path $f" ;;
		esac
	done
	for f in sh devmem mount nproc ip reboot setsid cttyhack; do
		[ -e "$tree/bin/$f" ] || [ -e "$tree/sbin/$f" ] || [ -e "$tree/usr/bin/$f" ] || [ -e "$tree/usr/sbin/$f" ] ||
			die "busybox $(pkgver busybox-static) lacks the $f applet the init needs"
	done
	install -m 0755 "$HERE/init" "$tree/sbin/init"
	# Tiny static helper the init uses to start jobs with default signal
	# dispositions (see spry-exec.c).
	gcc -static -Os -s -Wall -o "$tree/sbin/spry-exec" "$HERE/spry-exec.c" >&2 ||
		die "compiling spry-exec.c failed (needs gcc and libc6-dev's static libc.a)"
	# The agent `spry exec` and `spry cp` talk to over vsock (docs/agent-protocol.md).
	gcc -static -Os -s -Wall -o "$tree/sbin/spry-agent" "$HERE/spry-agent.c" >&2 ||
		die "compiling spry-agent.c failed (needs gcc and libc6-dev's static libc.a)"
	ln -s sbin/init "$tree/init"            # initramfs entry point (rdinit=/init)
	printf 'root::0:0:root:/root:/bin/sh\n' >"$tree/etc/passwd"
	printf 'root:x:0:\ntty:x:5:\n' >"$tree/etc/group"
	printf 'spry\n' >"$tree/etc/hostname"
	ln -s /proc/net/pnp "$tree/etc/resolv.conf"   # DNS from kernel ip= autoconfig
	printf '/dev/root / auto rw 0 1\n' >"$tree/etc/fstab"
	cat >"$tree/etc/profile" <<-'EOF'
		export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
		PS1='spry:\w\$ '
	EOF
	if [ "$(device_nodes)" = yes ]; then
		mknod -m 600 "$tree/dev/console" c 5 1
		mknod -m 666 "$tree/dev/null" c 1 3
	fi
	# Reproducible timestamps.
	find "$tree" -exec touch -h -d @0 {} +

	log "rootfs: rootfs.ext4 (${ROOTFS_MIB} MiB, mkfs.ext4 -d)"
	truncate -s "${ROOTFS_MIB}M" "$out/rootfs.ext4"
	E2FSPROGS_FAKE_TIME=1 mkfs.ext4 -q -F -b 4096 -L spry-root -U "$ROOTFS_UUID" \
		-E root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard,hash_seed=$ROOTFS_UUID \
		-d "$tree" "$out/rootfs.ext4" >&2 || die "mkfs.ext4 failed"
	log "rootfs: initramfs.cpio (newc, uncompressed)"
	(cd "$tree" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --quiet --null -o -H newc -R 0:0 --reproducible >"$out/initramfs.cpio") || die "cpio failed"
	rm -rf "$tree"
}

# --- main --------------------------------------------------------------------
case "$CACHE/" in
"$REPO"/*) die "cache dir $CACHE is inside the checkout $REPO; set SPRY_CACHE_DIR elsewhere" ;;
esac
ensure_packages
compute_keys
FINAL="$CACHE/$KEY"

if [ -f "$FINAL/.complete" ] && [ "${SPRY_GUEST_REBUILD:-0}" != 1 ]; then
	deliver "$FINAL"
	log "cached: $FINAL (key $KEY) -> $OUTDIR"
	print_outputs
	exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
	log "waiting for another guest build (lock $CACHE/.build.lock)"
	flock 9
fi
if [ -f "$FINAL/.complete" ] && [ "${SPRY_GUEST_REBUILD:-0}" != 1 ]; then
	deliver "$FINAL"
	log "cached (built concurrently): $FINAL -> $OUTDIR"
	print_outputs
	exit 0
fi
log "building guest artifacts, key $KEY (kernel $KKEY), cache $CACHE"
rm -rf "$CACHE"/.tmp-*

build_kernel
KDIR="$CACHE/kernel-$KKEY"

STAGE=$(mktemp -d "$CACHE/.tmp-$KEY-XXXXXX")
build_rootfs "$STAGE"
for f in vmlinux bzImage System.map kernel.config.full; do
	ln "$KDIR/$f" "$STAGE/$f" 2>/dev/null || cp "$KDIR/$f" "$STAGE/$f"
done
{
	printf 'key=%s\nkernel_key=%s\n' "$KEY" "$KKEY"
	printf 'kernel_release=%s\n' "$(cat "$KDIR/kernel.release")"
	printf 'kernel_version=%s\n' "$(cat "$KDIR/kernel.version")"
	printf 'built=%s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
	printf 'build_seconds=%s\n' "$(elapsed | tr -d ' ')"
	for f in vmlinux bzImage rootfs.ext4 initramfs.cpio; do
		printf 'size.%s=%s\n' "$f" "$(stat -c %s "$STAGE/$f")"
	done
	printf -- '--- inputs ---\n%s\n' "$KEY_INPUTS"
} >"$STAGE/build-info.txt"
chmod a-w "$STAGE"/vmlinux "$STAGE"/bzImage "$STAGE"/rootfs.ext4 "$STAGE"/initramfs.cpio
touch "$STAGE/.complete"
rm -rf "$FINAL"
mv -T "$STAGE" "$FINAL"

# Keep the 4 most recently used results (kernel-* and <key> dirs); kbuild/ stays.
for pat in 'kernel-*' '[0-9a-f]*'; do
	# shellcheck disable=SC2012,SC2086 # $pat is a glob on purpose
	ls -1dt "$CACHE"/$pat 2>/dev/null | tail -n +5 | while IFS= read -r old; do
		case "$old" in "$FINAL" | "$KDIR") ;; *) rm -rf "$old" ;; esac
	done
done

deliver "$FINAL"
log "done: built in $(elapsed | tr -d ' ')s, cached as $FINAL"
print_outputs
