/*
 * 'interrupt' check: the UART's THR-empty interrupt must arrive through the
 * in-kernel IOAPIC (ISA IRQ 4, pin from the MP table) and LAPIC while the CPU
 * sits in "sti; hlt". A one-shot LAPIC timer bounds the wait.
 *
 * The interrupt is asked for the way Linux's 8250 driver transmits: THRI
 * enabled, then a byte written (a newline, so the console shows a blank
 * line). A 16550 also raises THRE as soon as THRI is enabled while the
 * transmitter is empty, and some VMM models do not (vm-superio before 0.8.2,
 * Firecracker's); Linux copes with both (its UART_BUG_THRE test), so the
 * check does not depend on it. Either way exactly one interrupt is pending
 * when interrupts are enabled: a model that raised it on the IER write does
 * not raise it again until IIR is read.
 */
#include "io.h"
#include "probe.h"

#define COM1 0x3f8
#define UART_IER 1
#define UART_IIR 2
#define UART_MCR 4
#define MCR_DTR_RTS_OUT2 0x0b
#define IER_THRI 0x02
#define IIR_ID_MASK 0x0f
#define IIR_THRI 0x02

static volatile u32 uart_irqs, uart_iir, timer_fired;

static void uart_isr(struct irq_frame *f)
{
	(void)f;
	u8 iir = inb(COM1 + UART_IIR);
	if (!uart_irqs)
		uart_iir = iir;
	outb(COM1 + UART_IER, 0);       /* one interrupt is enough */
	uart_irqs++;
	lapic_eoi();
}

static void timeout_isr(struct irq_frame *f)
{
	(void)f;
	timer_fired = 1;
	lapic_eoi();
}

void check_interrupt(void)
{
	if (!facts.lapic_base) {
		FAIL(CHK_INTERRUPT, "skipped: LAPIC unusable (see cpuid)");
		return;
	}
	if (!mapped(facts.ioapic_base, 4096, "IOAPIC")) {
		FAIL(CHK_INTERRUPT, "skipped: IOAPIC at 0x%lx not mapped", facts.ioapic_base);
		return;
	}
	u32 pin = facts.uart_pin;
	pic_mask_all();
	irq_set_handler(VEC_UART, uart_isr);
	irq_set_handler(VEC_TIMER, timeout_isr);
	lapic_enable();
	ioapic_route(pin, VEC_UART, facts.lapic_id);
	outb(COM1 + UART_MCR, MCR_DTR_RTS_OUT2);
	lapic_timer_oneshot(VEC_TIMER, cfg.irq_timeout_ms * 1000000ull);
	outb(COM1 + UART_IER, IER_THRI);
	outb(COM1, '\n');
	while (!uart_irqs && !timer_fired)
		sti_hlt();
	cli();
	lapic_timer_stop();
	u64 redir = ioapic_read_redir(pin);
	ioapic_mask(pin);
	outb(COM1 + UART_IER, 0);
	irq_set_handler(VEC_UART, NULL);
	irq_set_handler(VEC_TIMER, NULL);

	u32 stray = 0;
	for (u32 v = 32; v < NUM_VECTORS; v++)
		if (v != VEC_UART && v != VEC_TIMER && v != VEC_SPURIOUS)
			stray += irq_count[v];
	if (!uart_irqs)
		FAIL(CHK_INTERRUPT, "no IRQ 4 within %lu ms (IOAPIC pin %u redirection 0x%lx, LAPIC timer %s)",
		     cfg.irq_timeout_ms, pin, redir, timer_fired ? "fired" : "did not fire");
	else if ((uart_iir & IIR_ID_MASK) != IIR_THRI)
		FAIL(CHK_INTERRUPT, "IRQ 4 on vector 0x%x but IIR=0x%x, want THR empty (0x2)", VEC_UART, uart_iir);
	else if (stray)
		FAIL(CHK_INTERRUPT, "%u stray interrupts besides vector 0x%x", stray, VEC_UART);
	else
		OK(CHK_INTERRUPT, "vector 0x%x", VEC_UART);
}
