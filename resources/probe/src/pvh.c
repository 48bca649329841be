/*
 * PVH flavour of the probe (entered through pvh_entry.S, e.g. by QEMU): checks of
 * what the PVH boot protocol hands over instead of Linux's boot_params.
 *
 *   pvh-entry    the 32-bit entry state pvh_entry.S recorded: CR0.PE set, PG clear;
 *                EFLAGS IF, TF, VM clear; CS a flat 4 GiB 32-bit code
 *                segment, DS/ES/SS flat 4 GiB writable data (read from the
 *                GDT the VMM's firmware left loaded)
 *   start-info   EBX points at a mapped struct hvm_start_info with the magic;
 *                its module list (module 0 = the initrd) is mapped
 *   cmdline      cmdline_paddr (0: none), NUL-terminated within 4 KiB
 *   memmap       the e820 check over the start_info memory map (version >= 1)
 *
 * start-info and memmap are the boot-params and e820 check slots, renamed,
 * so the shared checks (e820, initrd, mptable, paging) report under them.
 */
#include "probe.h"
#include "pvh.h"

struct pvh_entry pvh_entry;     /* filled by pvh_entry.S; all zero after the Linux entry */

#define CR0_PE     0x1u
#define CR0_PG     0x80000000u
#define EFLAGS_BAD 0x20300u     /* VM, IF, TF */

#define DESC_G    (1ull << 55)
#define DESC_D    (1ull << 54)
#define DESC_L    (1ull << 53)
#define DESC_P    (1ull << 47)
#define DESC_S    (1ull << 44)
#define DESC_CODE (1ull << 43)
#define DESC_RW   (1ull << 41)  /* code: readable, data: writable */

static u64 desc_base(u64 d)
{
	return ((d >> 16) & 0xffffff) | ((d >> 32) & 0xff000000);
}

static u64 desc_limit(u64 d)
{
	u64 l = (d & 0xffff) | ((d >> 32) & 0xf0000);
	return d & DESC_G ? (l << 12) | 0xfff : l;
}

/* Is selector sel of the entry GDT a flat 4 GiB segment of the wanted kind?
 * Records the failure (naming 'what') if not. */
static int flat_segment(u32 sel, int code, const char *what)
{
	const struct pvh_entry *e = &pvh_entry;
	u64 idx = sel & ~7u;
	if ((sel & 4) || idx + 7 > e->gdt_limit || !idx) {
		FAIL(CHK_PVH_ENTRY, "%s selector 0x%x not in the GDT (base 0x%x limit 0x%x)", what, sel, e->gdt_base,
		     e->gdt_limit);
		return 0;
	}
	if (!mapped(e->gdt_base + idx, 8, "entry GDT")) {
		FAIL(CHK_PVH_ENTRY, "entry GDT at 0x%x not mapped", e->gdt_base);
		return 0;
	}
	u64 d = ld64(e->gdt_base + idx);
	u64 want = DESC_P | DESC_S | DESC_RW | (code ? DESC_CODE | DESC_D : 0);
	u64 mask = DESC_P | DESC_S | DESC_RW | DESC_CODE | (code ? DESC_D | DESC_L : 0);
	if ((d & mask) != want || desc_base(d) || desc_limit(d) != 0xffffffff) {
		FAIL(CHK_PVH_ENTRY, code ? "%s=0x%x descriptor 0x%016lx: want flat 4G 32-bit code"
					 : "%s=0x%x descriptor 0x%016lx: want flat 4G writable data",
		     what, sel, d);
		return 0;
	}
	return 1;
}

void check_pvh_entry(void)
{
	const struct pvh_entry *e = &pvh_entry;
	if ((e->cr0 & (CR0_PE | CR0_PG)) != CR0_PE)
		FAIL(CHK_PVH_ENTRY, "cr0=0x%x: want protected mode (PE) without paging (PG)", e->cr0);
	if (e->eflags & EFLAGS_BAD)
		FAIL(CHK_PVH_ENTRY, "eflags=0x%x: IF, TF or VM set", e->eflags);
	if (flat_segment(e->cs, 1, "cs") && flat_segment(e->ds, 0, "ds") && flat_segment(e->es, 0, "es"))
		flat_segment(e->ss, 0, "ss");
	OK(CHK_PVH_ENTRY, "cr0=0x%x eflags=0x%x cs=0x%x ds=0x%x", e->cr0, e->eflags, e->cs, e->ds);
}

void check_start_info(void)
{
	checks[CHK_BOOT_PARAMS].name = "start-info";
	checks[CHK_E820].name = "memmap";
	u64 si = pvh_entry.start_info;
	if (!si || !mapped(si, SI_SIZE_V0, "start_info")) {
		FAIL(CHK_BOOT_PARAMS, "ebx=0x%lx does not point at mapped memory", si);
		FAIL(CHK_CMDLINE, "no usable start_info");
		return;
	}
	u32 magic = ld32(si + SI_MAGIC), version = ld32(si + SI_VERSION), nr = ld32(si + SI_NR_MODULES);
	if (magic != START_INFO_MAGIC) {
		FAIL(CHK_BOOT_PARAMS, "magic 0x%x at 0x%lx, want 0x336ec578", magic, si);
		FAIL(CHK_CMDLINE, "no usable start_info");
		return;
	}
	facts.bp = si;
	facts.bp_what = "start_info";
	facts.bp_len = SI_SIZE_V0;
	/* the memory map exists from version 1 on; without one the memmap check fails */
	if (version >= 1 && mapped(si, SI_SIZE_V1, "start_info")) {
		facts.bp_len = SI_SIZE_V1;
		u64 map = ld64(si + SI_MEMMAP_PADDR), n = ld32(si + SI_MEMMAP_ENTRIES);
		if (map && mapped(map, n * MEMMAP_ENTRY_SIZE, "memory map")) {
			facts.e820_table = map;
			facts.e820_entries = n;
			facts.e820_stride = MEMMAP_ENTRY_SIZE;
		}
	}
	if (nr) {
		u64 list = ld64(si + SI_MODLIST_PADDR);
		if (list && mapped(list, MODLIST_ENTRY_SIZE, "module list")) {
			facts.modlist = list;
			facts.initrd_addr = ld64(list);
			facts.initrd_size = ld64(list + 8);
		} else {
			FAIL(CHK_BOOT_PARAMS, "%u modules, module list at 0x%lx unusable", nr, list);
		}
	}
	OK(CHK_BOOT_PARAMS, "at 0x%lx, version %u, %u modules, rsdp 0x%lx", si, version, nr, ld64(si + SI_RSDP_PADDR));

	u64 cmd = ld64(si + SI_CMDLINE_PADDR);
	if (!cmd)
		OK(CHK_CMDLINE, "none");
	else
		check_cmdline_at(cmd, CMDLINE_SCAN_MAX - 1);
}
