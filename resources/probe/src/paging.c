/*
 * Page-table walker (4- or 5-level, 4 KiB / 2 MiB / 1 GiB leaves) and the
 * 'paging' check. Tables are read through the identity mapping the boot
 * contract promises for all memory below 4 GiB.
 */
#include "io.h"
#include "probe.h"
#include "pvh.h"

#define PTE_P    0x1ull
#define PTE_PS   0x80ull
#define PTE_ADDR 0x000ffffffffff000ull
#define CR4_LA57 (1ull << 12)

static u64 cr3_table;    /* 0 until first use */
static u64 la57;

/* The PDPT entry of the last 1 GiB region walked (non-leaf), so walks in the
 * same GiB (the low memory and the probe image; the MMIO gap) start at the
 * page directory. */
static u64 pd_region = ~0ull, pd_entry;

/* The table entry for va at the level whose index starts at bit 'shift'. */
#define PTE(e, va, shift) (*(volatile u64 *)(((e) & PTE_ADDR) + (((va) >> (shift)) & 511) * 8))

/* Translate va. Returns the leaf size (0 if not present); *pa gets the address. */
static __attribute__((noinline)) u64 walk(u64 va, u64 *pa)
{
	u64 e, size = 1ull << 21;
	if ((va >> 30) != pd_region) {
		if (!cr3_table) {
			cr3_table = (read_cr3() & PTE_ADDR) | PTE_P;
			la57 = read_cr4() & CR4_LA57;
		}
		e = cr3_table;
		if (la57 && !((e = PTE(e, va, 48)) & PTE_P))
			return 0;
		if (!((e = PTE(e, va, 39)) & PTE_P) || !((e = PTE(e, va, 30)) & PTE_P))
			return 0;
		if (e & PTE_PS) {
			size = 1ull << 30;
			goto leaf;
		}
		pd_region = va >> 30;
		pd_entry = e;
	}
	e = PTE(pd_entry, va, 21);
	if (!(e & PTE_P))
		return 0;
	if (!(e & PTE_PS)) {
		e = PTE(e, va, 12);
		if (!(e & PTE_P))
			return 0;
		size = 1ull << 12;
	}
leaf:
	*pa = (e & PTE_ADDR & ~(size - 1)) | (va & (size - 1));
	return size;
}

/* One-entry cache of the last identity-mapped leaf (fast path in probe.h). */
u64 map_cache_lo = 1, map_cache_hi;

int mapped_slow(u64 addr, u64 len, const char *what)
{
	u64 end = addr + (len ? len : 1);
	if (end < addr) {
		FAIL(CHK_PAGING, "%s 0x%lx+0x%lx wraps around", what, addr, len);
		return 0;
	}
	do {
		u64 pa, size = walk(addr, &pa);
		if (!size) {
			FAIL(CHK_PAGING, "%s: 0x%lx not mapped", what, addr);
			return 0;
		}
		if (pa != addr) {
			FAIL(CHK_PAGING, "%s: 0x%lx maps to 0x%lx, not identity", what, addr, pa);
			return 0;
		}
		map_cache_lo = addr & ~(size - 1);
		addr = map_cache_hi = map_cache_lo + size;
	} while (addr < end);
	return 1;
}

extern char __image_start[], __image_end[];

void check_paging(void)
{
	u64 img = (u64)__image_start;
	/* zero page (PVH: start_info, memory map, module list) and command line
	 * first: the walk cache is still warm */
	if (facts.bp)
		mapped(facts.bp, facts.bp_len, facts.bp_what);
	if (facts.pvh && facts.e820_table)
		mapped(facts.e820_table, facts.e820_entries * facts.e820_stride, "memory map");
	if (facts.modlist)
		mapped(facts.modlist, MODLIST_ENTRY_SIZE, "module list");
	if (facts.cmdline)
		mapped(facts.cmdline, facts.cmdline_len + 1, "command line");
	mapped(img, (u64)__image_end - img, "probe image");
	if (facts.initrd_size)
		mapped(facts.initrd_addr, facts.initrd_size, "initrd");
	facts.boot_timer_ok = mapped(BOOT_TIMER_ADDR, 1, "boot timer (MMIO gap)");
	OK(CHK_PAGING, "cr3=0x%lx", cr3_table & PTE_ADDR);
}
