/* Checks of struct boot_params: boot-params, cmdline, e820, initrd. The e820
 * and initrd checks also serve the PVH flavour (pvh.c fills the same facts
 * from hvm_start_info: its memmap, module 0). */
#include "bootparam.h"
#include "probe.h"

struct probe_facts facts = {
	.ioapic_base = IOAPIC_DEFAULT,
	.uart_pin = 4,
};


void check_boot_params(void)
{
	u64 bp = entry_state.rsi;
	if (!mapped(bp, 4096, "zero page")) {
		FAIL(CHK_BOOT_PARAMS, "rsi=0x%lx does not point at mapped memory", bp);
		FAIL(CHK_CMDLINE, "no usable boot_params");
		return;
	}
	facts.bp = bp;
	facts.bp_len = 4096;
	facts.bp_what = "zero page";
	facts.e820_table = bp + BP_E820_TABLE;
	facts.e820_entries = ld8(bp + BP_E820_ENTRIES);
	facts.e820_stride = E820_ENTRY_SIZE;
	u16 flag = ld16(bp + BP_BOOT_FLAG);
	u32 hdrs = ld32(bp + BP_HEADER);
	u8 loader = ld8(bp + BP_TYPE_OF_LOADER);
	u32 align = ld32(bp + BP_KERNEL_ALIGNMENT);
	u64 cmd = ld32(bp + BP_CMD_LINE_PTR) | ((u64)ld32(bp + BP_EXT_CMD_LINE_PTR) << 32);
	facts.initrd_addr = ld32(bp + BP_RAMDISK_IMAGE) | ((u64)ld32(bp + BP_EXT_RAMDISK_IMAGE) << 32);
	facts.initrd_size = ld32(bp + BP_RAMDISK_SIZE) | ((u64)ld32(bp + BP_EXT_RAMDISK_SIZE) << 32);

	if (flag != BOOT_FLAG_MAGIC)
		FAIL(CHK_BOOT_PARAMS, "boot_flag=0x%x, want 0xaa55 (rsi=0x%lx)", flag, bp);
	if (hdrs != HDRS_MAGIC)
		FAIL(CHK_BOOT_PARAMS, "header=0x%x, want 0x53726448 \"HdrS\"", hdrs);
	if (loader != 0xff)
		FAIL(CHK_BOOT_PARAMS, "type_of_loader=0x%x, want 0xff", loader);
	if (!cmd)
		FAIL(CHK_BOOT_PARAMS, "cmd_line_ptr is 0");
	if (align != 0x01000000)
		FAIL(CHK_BOOT_PARAMS, "kernel_alignment=0x%x, want 0x1000000", align);
#ifdef PROBE_BZIMAGE
	u16 version = ld16(bp + BP_VERSION);
	/* For a bzImage the VMM must copy the image's setup header; spot-check
	 * fields whose values the packer (tools/mkbzimage.py) fixed. */
	{
		u8 sects = ld8(bp + BP_SETUP_SECTS), lflags = ld8(bp + BP_LOADFLAGS);
		u16 xl = ld16(bp + BP_XLOADFLAGS);
		u32 c32 = ld32(bp + BP_CODE32_START);
		if (version != PROBE_HDR_VERSION || sects != PROBE_SETUP_SECTS || !(lflags & 1) || !(xl & 1) ||
		    c32 != 0x100000)
			FAIL(CHK_BOOT_PARAMS,
			     "bzImage header not copied: version=0x%x setup_sects=%u loadflags=0x%x code32_start=0x%x",
			     version, sects, lflags, c32);
	}
	OK(CHK_BOOT_PARAMS, "at 0x%lx, bzImage boot, protocol %u.%02u", bp, version >> 8, version & 0xff);
#else
	OK(CHK_BOOT_PARAMS, "at 0x%lx, ELF boot", bp);
#endif

	/* cmdline: NUL-terminated within cmdline_size ("maximum size of the
	 * command line without the terminating zero"; VMMs set the actual
	 * length, Linux's COMMAND_LINE_SIZE or anything in between), then the
	 * probe options */
	if (!cmd) {
		FAIL(CHK_CMDLINE, "cmd_line_ptr is 0");
		return;
	}
	check_cmdline_at(cmd, ld32(bp + BP_CMDLINE_SIZE));
}

/* The cmdline check of the command line at cmd (not 0), at most size bytes
 * before its NUL; parses the probe options. */
void check_cmdline_at(u64 cmd, u64 size)
{
	u64 scan = size < CMDLINE_SCAN_MAX ? size + 1 : CMDLINE_SCAN_MAX;
	if (!mapped(cmd, scan, "command line")) {
		FAIL(CHK_CMDLINE, "command line at 0x%lx not mapped", cmd);
		return;
	}
	u64 len = strnlen_fast((const char *)cmd, scan);
	if (len >= scan || len > size) {
		FAIL(CHK_CMDLINE, facts.pvh ? "not NUL-terminated within %lu bytes (at 0x%lx)"
					    : "not NUL-terminated within cmdline_size=%lu bytes (at 0x%lx)",
		     size, cmd);
		return;
	}
	facts.cmdline = cmd;
	facts.cmdline_len = len;
	cmdline_parse((const char *)cmd, len);
	OK(CHK_CMDLINE, "'%s'", cmd);
}

/* Is [addr, addr+len) inside one e820 RAM entry? */
int e820_is_ram(u64 addr, u64 len)
{
	if (!facts.e820_ok)
		return 0;
	u64 n = facts.e820_entries;
	for (u64 e = facts.e820_table; n; n--, e += facts.e820_stride) {
		u64 a = ld64(e), s = ld64(e + 8);
		if (ld32(e + 16) == E820_RAM && addr >= a && addr + len <= a + s)
			return 1;
	}
	return 0;
}

extern char __image_start[], __image_end[];

/* Pairwise overlap test of an unsorted map (n^2, but only maps that are not
 * sorted pay for it). */
static void e820_overlaps(u64 n)
{
	u64 stride = facts.e820_stride;
	for (u64 i = 0, ei = facts.e820_table; i < n; i++, ei += stride) {
		u64 a = ld64(ei), end = a + ld64(ei + 8);
		for (u64 j = i + 1, ej = ei + stride; j < n && end > a; j++, ej += stride) {
			u64 b = ld64(ej), b_end = b + ld64(ej + 8);
			if (b < end && a < b_end && b_end > b)
				FAIL(CHK_E820, "entries %lu [0x%lx, +0x%lx) and %lu overlap", i, a, end - a, j);
		}
	}
}

void check_e820(void)
{
	if (!facts.e820_table) {
		FAIL(CHK_E820, "no usable %s", facts.pvh ? "memory map" : "boot_params");
		return;
	}
	u64 n = facts.e820_entries;
	if (n == 0 || n > BP_E820_MAX) {
		FAIL(CHK_E820, "%s=%lu", facts.pvh ? "memmap_entries" : "e820_entries", n);
		return;
	}
	u64 prev_end = 0, low_end = 0, high = 0, unsorted = 0, empty = 0;
	u64 e = facts.e820_table;
	for (u64 i = 0; i < n; i++, e += facts.e820_stride) {
		u64 a = ld64(e), s = ld64(e + 8);
		u32 t = ld32(e + 16);
		/* PVH: QEMU's firmware ends its map with an empty entry; Linux
		 * drops those */
		if (!s && facts.pvh) {
			empty++;
			continue;
		}
		if (!s || a + s < a) {
			FAIL(CHK_E820, "entry %lu [0x%lx, +0x%lx) empty or wrapping", i, a, s);
			continue;
		}
		/* Linux's boot protocol: sorted. PVH promises no order (QEMU's
		 * firmware lists KVM's reserved page before RAM; Linux sorts): only
		 * overlaps fail, found below */
		if (a < prev_end && !facts.pvh)
			FAIL(CHK_E820, "entry %lu at 0x%lx overlaps or is out of order (previous ends at 0x%lx)", i, a, prev_end);
		unsorted |= a < prev_end;
		prev_end = a + s;
		if (t != E820_RAM)
			continue;
		if (a < MMIO_GAP_END && a + s > MMIO_GAP_START)
			FAIL(CHK_E820, "RAM entry %lu [0x%lx, 0x%lx) overlaps the MMIO gap", i, a, a + s);
		if (a + s <= FOUR_GIB) {
			if (a + s > low_end)
				low_end = a + s;
		} else if (a >= FOUR_GIB) {
			high += s;
		}
	}
	if (unsorted && facts.pvh)
		e820_overlaps(n);
	facts.e820_ok = 1;
	facts.mem_mib = (low_end + high) >> 20;
	u64 img = (u64)__image_start;
	if (!e820_is_ram(img, (u64)__image_end - img))
		FAIL(CHK_E820, "probe image [0x%lx, 0x%lx) is not in e820 RAM", img, (u64)__image_end);
	if (cfg.has_expect_mem_mib && facts.mem_mib != cfg.expect_mem_mib)
		FAIL(CHK_E820, "%lu entries describe %lu MiB, probe.expect_mem_mib=%lu", n, facts.mem_mib,
		     cfg.expect_mem_mib);
	if (unsorted || empty)
		OK(CHK_E820, "%lu entries (%lu empty, %s), %lu MiB", n, empty, unsorted ? "unsorted" : "sorted",
		   facts.mem_mib);
	else
		OK(CHK_E820, "%lu entries, %lu MiB", n, facts.mem_mib);
}

/* initrd format: "SPRYPROBEINITRD\0", u32 LE total length, u32 LE wrapping
 * sum of all bytes from offset 24 to the end. */
#define INITRD_HDR 24

void check_initrd(void)
{
	u64 a = facts.initrd_addr, s = facts.initrd_size;
	if (!facts.bp) {
		FAIL(CHK_INITRD, "no usable %s", facts.pvh ? "start_info" : "boot_params");
		return;
	}
	if (!s) {
		if (cfg.has_expect_initrd && cfg.expect_initrd)
			FAIL(CHK_INITRD, "none (%s), but probe.expect_initrd=1",
			     facts.pvh ? "no modules" : "ramdisk_size=0");
		else
			OK(CHK_INITRD, "none");
		return;
	}
	if (cfg.has_expect_initrd && !cfg.expect_initrd) {
		FAIL(CHK_INITRD, "%lu bytes at 0x%lx, but probe.expect_initrd=0", s, a);
		return;
	}
	if (a & 0xfff) {
		FAIL(CHK_INITRD, "%s=0x%lx is not page-aligned", facts.pvh ? "module paddr" : "ramdisk_image", a);
		return;
	}
	if (a + s > FOUR_GIB || !e820_is_ram(a, s)) {
		FAIL(CHK_INITRD, "[0x%lx, 0x%lx) is not inside e820 RAM below 4 GiB", a, a + s);
		return;
	}
	u64 img = (u64)__image_start, img_end = (u64)__image_end;
	if (a < img_end && a + s > img) {
		FAIL(CHK_INITRD, "[0x%lx, 0x%lx) overlaps the kernel image", a, a + s);
		return;
	}
	if (!mapped(a, s, "initrd")) {
		FAIL(CHK_INITRD, "at 0x%lx not identity-mapped", a);
		return;
	}
	if (s < INITRD_HDR) {
		FAIL(CHK_INITRD, "%lu bytes at 0x%lx: shorter than the 24-byte header", s, a);
		return;
	}
	if (ld64(a) != 0x424f525059525053ull /* "SPRYPROB" */ || ld64(a + 8) != 0x00445254494e4945ull /* "EINITRD\0" */) {
		FAIL(CHK_INITRD, "bad magic 0x%016lx%016lx at 0x%lx", __builtin_bswap64(ld64(a)),
		     __builtin_bswap64(ld64(a + 8)), a);
		return;
	}
	u32 len = ld32(a + 16), want = ld32(a + 20);
	if (len != s) {
		FAIL(CHK_INITRD, "header length %u != %s %lu", len, facts.pvh ? "module size" : "ramdisk_size", s);
		return;
	}
	OK(CHK_INITRD, "%lu bytes at 0x%lx", s, a);
	facts.initrd_sum_pending = cfg.initrd_sum != 0;
	facts.initrd_sum_want = want;
}

/* The content checksum, ~0.7 us per byte under the emulator; run before the
 * boot-timer write (probe.initrd_sum=1, default) or after it (=2). */
void check_initrd_sum(void)
{
	if (!facts.initrd_sum_pending)
		return;
	facts.initrd_sum_pending = 0;
	u64 a = facts.initrd_addr, s = facts.initrd_size;
	u32 sum = (u32)bytesum(a + INITRD_HDR, s - INITRD_HDR);
	if (sum != facts.initrd_sum_want)
		FAIL(CHK_INITRD, "checksum 0x%x, header says 0x%x (%lu bytes at 0x%lx)", sum, facts.initrd_sum_want, s, a);
}
