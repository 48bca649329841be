/* Checks of the CPU state at entry: long-mode, interrupts-off, segments,
 * gdt (Linux 64-bit entry only), and (later, once the LAPIC is known to be
 * mapped) cpuid. */
#include "io.h"
#include "probe.h"

#define MSR_EFER      0xC0000080
#define MSR_APIC_BASE 0x1B
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define CR0_PE   (1ull << 0)
#define CR0_PG   (1ull << 31)
#define CR4_PAE  (1ull << 5)
#define RFLAGS_IF (1ull << 9)
#define RFLAGS_ARITH 0x8d5ull   /* CF PF AF ZF SF OF: harmless at entry */

#define BOOT_CS 0x10
#define BOOT_DS 0x18
/* Linux's boot protocol: 4G flat, execute/read code (L=1) and read/write data.
 * Compared with the accessed bit (40) and AVL (52) masked out. */
#define DESC_IGNORE ((1ull << 40) | (1ull << 52))
#define WANT_CODE 0x00af9a000000ffffull
#define WANT_DATA 0x00cf92000000ffffull

void check_cpu_state(void)
{
	const struct entry_state *e = &entry_state;
	u64 efer = rdmsr(MSR_EFER), cr0 = read_cr0(), cr4 = read_cr4();

	if (!(efer & EFER_LMA) || !(efer & EFER_LME) || !(cr0 & CR0_PG) || !(cr0 & CR0_PE) || !(cr4 & CR4_PAE))
		FAIL(CHK_LONG_MODE, "efer=0x%lx cr0=0x%lx cr4=0x%lx (need EFER.LME|LMA, CR0.PE|PG, CR4.PAE)", efer, cr0, cr4);
	else
		OK(CHK_LONG_MODE, "efer=0x%lx cr0=0x%lx cr4=0x%lx", efer, cr0, cr4);

	/* PVH flavour: the entry state is pvh_entry.S's own switch to long mode; what
	 * the VMM handed over is the pvh-entry check (pvh.c) */
	if (facts.pvh)
		return;

	if (e->rflags & RFLAGS_IF)
		FAIL(CHK_INTERRUPTS_OFF, "rflags=0x%lx has IF set", e->rflags);
	else if ((e->rflags & ~RFLAGS_ARITH) != 0x2)
		FAIL(CHK_INTERRUPTS_OFF, "rflags=0x%lx, want 0x2 (system flags set)", e->rflags);
	else
		OK(CHK_INTERRUPTS_OFF, "rflags=0x%lx", e->rflags);

	if (e->cs != BOOT_CS || e->ds != BOOT_DS || e->es != BOOT_DS || e->ss != BOOT_DS)
		FAIL(CHK_SEGMENTS, "cs=0x%x ds=0x%x es=0x%x ss=0x%x, want cs=0x10 ds=es=ss=0x18",
		     e->cs, e->ds, e->es, e->ss);
	else
		OK(CHK_SEGMENTS, "cs=0x%x ds=es=ss=0x%x fs=0x%x gs=0x%x", e->cs, e->ds, e->fs, e->gs);

	u64 base = e->gdt_base, limit = e->gdt_limit;
	if (limit < BOOT_DS + 7) {
		FAIL(CHK_GDT, "gdt limit 0x%lx at 0x%lx too small for selector 0x18", limit, base);
	} else if (!mapped(base, limit + 1, "gdt")) {
		FAIL(CHK_GDT, "gdt at 0x%lx not identity-mapped", base);
	} else {
		u64 code = ld64(base + BOOT_CS), data = ld64(base + BOOT_DS);
		if ((code & ~DESC_IGNORE) != WANT_CODE || (data & ~DESC_IGNORE) != WANT_DATA)
			FAIL(CHK_GDT, "gdt[0x10]=0x%016lx gdt[0x18]=0x%016lx, want 4G flat 0x00af9b000000ffff/0x00cf93000000ffff",
			     code, data);
		else
			OK(CHK_GDT, "base 0x%lx limit 0x%lx", base, limit);
	}
}

void check_cpuid(void)
{
	u32 a, b, c, d;
	u64 apic_msr = rdmsr(MSR_APIC_BASE);
	u64 base = apic_msr & 0xfffff000ull;

	cpuid(1, 0, &a, &b, &c, &d);
	u32 cpuid_apic = b >> 24;
	int hv = (c >> 31) & 1;

	u32 sig[3] = { 0, 0, 0 };
	if (hv)
		cpuid(0x40000000, 0, &a, &sig[0], &sig[1], &sig[2]);

	if (!(apic_msr & (1 << 11)) || (apic_msr & (1 << 10))) {
		FAIL(CHK_CPUID, "IA32_APIC_BASE=0x%lx: LAPIC not enabled in xAPIC mode", apic_msr);
		return;
	}
	if (!mapped(base, 4096, "LAPIC")) {
		FAIL(CHK_CPUID, "LAPIC at 0x%lx not mapped", base);
		return;
	}
	facts.lapic_base = base;
	facts.lapic_id = mmio_read32(base + 0x20) >> 24;
	if (!hv)
		FAIL(CHK_CPUID, "hypervisor bit (leaf 1 ECX[31]) clear");
	else if (cpuid_apic != facts.lapic_id)
		FAIL(CHK_CPUID, "leaf 1 APIC id %u != LAPIC ID register %u", cpuid_apic, facts.lapic_id);
	else {
		static u32 hvsig[4];    /* 12 chars + NUL */
		hvsig[0] = sig[0];
		hvsig[1] = sig[1];
		hvsig[2] = sig[2];
		OK(CHK_CPUID, "apic id %u, hypervisor '%.12s'", facts.lapic_id, (const char *)hvsig);
	}
}
