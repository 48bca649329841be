/*
 * 'mptable' check: Intel MultiProcessor Specification 1.4 tables.
 * Floating pointer "_MP_" searched on 16-byte boundaries in the EBDA window
 * 0x9fc00..0xa0000, then 0xf0000..0x100000; checksums verified; the
 * configuration table "PCMP" walked entry by entry.
 *
 * The entries are walked by the table's length, as Linux's smp_read_mpc()
 * does: the header's entry count is not what a guest relies on, and VMMs fill
 * it differently (qboot leaves it 0, Firecracker counts the floating pointer
 * as an entry, spry counts the entries of the table).
 *
 * PVH flavour (QEMU's firmware, qboot, writes the table): no table is not a
 * failure (the cpu count is then not checked); ISA IRQs 0..15 must be routed
 * (IRQ 2 may be missing: qboot routes IRQ 0 to pin 2), not spry's 0..23.
 */
#include "probe.h"

#define MPC_CPU     0
#define MPC_BUS     1
#define MPC_IOAPIC  2
#define MPC_INTSRC  3
#define MPC_LINTSRC 4

static u64 find_mpf(u64 lo, u64 hi)
{
	if (!mapped(lo, hi - lo, "MP table search area"))
		return 0;
	for (u64 p = lo; p < hi; p += 16)
		if (ld32(p) == 0x5f504d5f /* "_MP_" */)
			return p;
	return 0;
}

void check_mptable(void)
{
	u64 mpf = find_mpf(0x9fc00, 0xa0000);
	if (!mpf)
		mpf = find_mpf(0xf0000, 0x100000);
	if (!mpf) {
		if (facts.pvh && !cfg.has_expect_cpus)
			OK(CHK_MPTABLE, "none (no \"_MP_\" floating pointer: cpu count not checked)");
		else
			FAIL(CHK_MPTABLE, "no \"_MP_\" floating pointer in 0x9fc00-0xa0000 or 0xf0000-0x100000");
		return;
	}
	u8 flen = ld8(mpf + 8), frev = ld8(mpf + 9);
	if (flen != 1 || (u8)bytesum(mpf, 16) != 0 || (frev != 1 && frev != 4)) {
		FAIL(CHK_MPTABLE, "floating pointer at 0x%lx: length %u, spec 0x%x, checksum %s", mpf, flen, frev,
		     (u8)bytesum(mpf, 16) ? "bad" : "ok");
		return;
	}
	if (ld8(mpf + 11)) {
		FAIL(CHK_MPTABLE, "floating pointer at 0x%lx selects default configuration %u, want a table", mpf,
		     ld8(mpf + 11));
		return;
	}
	u64 t = ld32(mpf + 4);
	if (!t || !mapped(t, 44, "MP config table")) {
		FAIL(CHK_MPTABLE, "config table pointer 0x%lx unusable", t);
		return;
	}
	u64 len = ld16(t + 4);
	if (ld32(t) != 0x504d4350 /* "PCMP" */ || len < 44 || !mapped(t, len, "MP config table")) {
		FAIL(CHK_MPTABLE, "config table at 0x%lx: signature 0x%x length %lu", t, ld32(t), len);
		return;
	}
	if ((u8)bytesum(t, len) != 0) {
		FAIL(CHK_MPTABLE, "config table at 0x%lx: bad checksum (sum 0x%x)", t, (u8)bytesum(t, len));
		return;
	}
	if (e820_is_ram(mpf, 16) || e820_is_ram(t, len))
		FAIL(CHK_MPTABLE, "tables at 0x%lx/0x%lx lie in e820 RAM (the kernel may overwrite them)", mpf, t);
	u32 lapic = ld32(t + 36);
	if (lapic != LAPIC_DEFAULT)
		FAIL(CHK_MPTABLE, "LAPIC address 0x%x, want 0xfee00000", lapic);

	u64 apic_seen[4] = { 0, 0, 0, 0 };
	u32 cpus = 0, bsps = 0, bsp_id = ~0u, buses = 0, isa_bus = ~0u, ioapics = 0, lint = 0;
	u64 irqs = 0;
	u64 end = t + len, p = t + 44;
	/* one 8-byte load per entry; fields are extracted from the register */
	while (p < end) {
		u64 x = ld64(p);
		u32 type = (u8)x;
		if (type == MPC_INTSRC) {
			/* the bulk of the table (24 entries): a tight inner loop
			 * matching source bus and destination IOAPIC at once */
			u64 key = ((u64)facts.ioapic_id << 16) | isa_bus;
			for (;;) {
				if (((x >> 32) & 0xff00ff) == key) {
					u64 irq = (u8)(x >> 40);
					__asm__("btsq %1, %0" : "+r"(irqs) : "r"(irq) : "cc");
					if (irq == 4)
						facts.uart_pin = (u32)(x >> 56);
				}
				p += 8;
				if (p >= end)
					break;
				x = ld64(p);
				if ((u8)x != MPC_INTSRC)
					break;
			}
			continue;
		}
		if (type == MPC_CPU) {
			u32 id = (u8)(x >> 8), flags = (u8)(x >> 24);
			if (flags & 1) {
				cpus++;
				if (apic_seen[id >> 6] & (1ull << (id & 63)))
					FAIL(CHK_MPTABLE, "APIC id %u listed twice", id);
				apic_seen[id >> 6] |= 1ull << (id & 63);
				if (flags & 2) {
					bsps++;
					bsp_id = id;
				}
			}
			p += 20;
			continue;
		} else if (type == MPC_BUS) {
			buses++;
			if ((u32)(x >> 16) == 0x20415349 /* "ISA " */)
				isa_bus = (u8)(x >> 8);
		} else if (type == MPC_IOAPIC) {
			if ((x >> 24) & 1) {
				if (!ioapics) {
					facts.ioapic_id = (u8)(x >> 8);
					facts.ioapic_base = (u32)(x >> 32);
				}
				ioapics++;
			}
		} else if (type == MPC_LINTSRC) {
			lint |= 1u << ((u8)(x >> 8) & 31);   /* irqtype: 3 ExtINT, 1 NMI */
		} else {
			FAIL(CHK_MPTABLE, "unknown entry type %u at 0x%lx", type, p);
			break;
		}
		p += 8;
	}
	facts.mp_cpus = cpus;
	facts.mpc_table = t;
	facts.mpc_isa_bus = isa_bus;
	if (p > end)
		FAIL(CHK_MPTABLE, "last entry runs %lu bytes past the table length %lu", p - end, len);
	if (bsps != 1 || bsp_id != facts.lapic_id)
		FAIL(CHK_MPTABLE, "%u BSP entries, BSP APIC id 0x%x, running on APIC id %u", bsps, bsp_id, facts.lapic_id);
	if (isa_bus == ~0u)
		FAIL(CHK_MPTABLE, "no ISA bus entry (%u buses)", buses);
	if (ioapics != 1 || facts.ioapic_base != IOAPIC_DEFAULT)
		FAIL(CHK_MPTABLE, "%u IOAPIC entries, first at 0x%lx (want one at 0xfec00000)", ioapics, facts.ioapic_base);
	if (facts.pvh ? (irqs & 0xfffb) != 0xfffb : (irqs & 0xffffff) != 0xffffff)
		FAIL(CHK_MPTABLE, "ISA IRQs routed to the IOAPIC: mask 0x%lx, want %s", irqs,
		     facts.pvh ? "0..15 except 2 (0xfffb)" : "0..23 (0xffffff)");
	if ((lint & 0xa) != 0xa)
		FAIL(CHK_MPTABLE, "local interrupt entries: type mask 0x%x, want ExtINT and NMI", lint);
	if (cfg.has_expect_cpus && cpus != cfg.expect_cpus)
		FAIL(CHK_MPTABLE, "%u enabled cpus, probe.expect_cpus=%lu", cpus, cfg.expect_cpus);
	OK(CHK_MPTABLE, "%u cpus", cpus);
}

/* IOAPIC pin of ISA IRQ 'irq' from the MP table's interrupt source entries
 * (used after the boot timer, by the modes that route more ISA IRQs). */
u32 mp_isa_pin(u32 irq, u32 dflt)
{
	u64 t = facts.mpc_table;
	if (!t)
		return dflt;
	u64 end = t + ld16(t + 4), p = t + 44;
	while (p < end) {
		u64 x = ld64(p);
		u32 type = (u8)x;
		if (type == MPC_INTSRC && (u8)(x >> 32) == facts.mpc_isa_bus && (u8)(x >> 40) == irq &&
		    (u8)(x >> 48) == facts.ioapic_id)
			return (u8)(x >> 56);
		p += type == MPC_CPU ? 20 : 8;
	}
	return dflt;
}
