/* Local APIC, IOAPIC and legacy PIC helpers. */
#include "io.h"
#include "probe.h"

#define LAPIC_TPR     0x080
#define LAPIC_EOI     0x0b0
#define LAPIC_SVR     0x0f0
#define LAPIC_LVT_TMR 0x320
#define LAPIC_TMICT   0x380
#define LAPIC_TDCR    0x3e0

#define LVT_MASKED    (1u << 16)
#define LVT_PERIODIC  (1u << 17)

/* KVM's emulated LAPIC timer counts at 1 GHz (APIC_BUS_CYCLE_NS = 1) unless
 * the VMM changed KVM_CAP_X86_APIC_BUS_CYCLES_NS; divide-by-1 is used. */
#define LAPIC_TIMER_HZ 1000000000ull

static u64 lapic(void) { return facts.lapic_base ? facts.lapic_base : LAPIC_DEFAULT; }

void lapic_enable(void)
{
	mmio_write32(lapic() + LAPIC_SVR, 0x100 | VEC_SPURIOUS);
	mmio_write32(lapic() + LAPIC_TPR, 0);
}

void lapic_eoi(void)
{
	mmio_write32(lapic() + LAPIC_EOI, 0);
}

static void lapic_timer(u32 vector, u64 ns, u32 mode)
{
	u64 ticks = ns * (LAPIC_TIMER_HZ / 1000000000ull);
	if (ticks > 0xffffffffull)
		ticks = 0xffffffffull;
	if (!ticks)
		ticks = 1;
	mmio_write32(lapic() + LAPIC_TDCR, 0xb);    /* divide by 1 */
	mmio_write32(lapic() + LAPIC_LVT_TMR, vector | mode);
	mmio_write32(lapic() + LAPIC_TMICT, (u32)ticks);
}

void lapic_timer_oneshot(u32 vector, u64 ns) { lapic_timer(vector, ns, 0); }
void lapic_timer_periodic(u32 vector, u64 ns) { lapic_timer(vector, ns, LVT_PERIODIC); }

void lapic_timer_stop(void)
{
	mmio_write32(lapic() + LAPIC_TMICT, 0);
	mmio_write32(lapic() + LAPIC_LVT_TMR, LVT_MASKED | VEC_TIMER);
}

static void ioapic_write(u32 reg, u32 v)
{
	mmio_write32(facts.ioapic_base, reg);
	mmio_write32(facts.ioapic_base + 0x10, v);
}

static u32 ioapic_read(u32 reg)
{
	mmio_write32(facts.ioapic_base, reg);
	return mmio_read32(facts.ioapic_base + 0x10);
}

/* edge-triggered, active high, fixed delivery, physical destination */
void ioapic_route(u32 pin, u32 vector, u32 dest_apic)
{
	ioapic_write(0x11 + 2 * pin, dest_apic << 24);
	ioapic_write(0x10 + 2 * pin, vector);
}

void ioapic_mask(u32 pin)
{
	ioapic_write(0x10 + 2 * pin, LVT_MASKED);
}

u64 ioapic_read_redir(u32 pin)
{
	return ioapic_read(0x10 + 2 * pin) | ((u64)ioapic_read(0x11 + 2 * pin) << 32);
}

/* The 8259s are never initialised by the VMM; KVM's model then delivers
 * IRQs through LINT0 (ExtINT) with vector base 0, i.e. on exception vectors.
 * Mask them all (OCW1) before interrupts are enabled. */
void pic_mask_all(void)
{
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
}
