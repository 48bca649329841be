/*
 * probe.mode=console: echo every byte received on COM1 back to it until 'q'
 * or Ctrl-D (0x04) arrives, then print "probe: console bye" and reset; or
 * until Ctrl-Alt-Del arrives on the i8042 (kbd.c): "probe: ctrl-alt-del".
 * RX is interrupt driven (IER RDA, ISA IRQ 4 via the IOAPIC) with "sti; hlt"
 * in between; a periodic LAPIC timer also wakes the loop so input is still
 * seen (by polling LSR) if RX interrupts never arrive.
 */
#include "io.h"
#include "probe.h"

#define COM1 0x3f8
#define IER_RDI 0x01
#define POLL_NS 20000000ull

static void rx_isr(struct irq_frame *f)
{
	(void)f;
	(void)inb(COM1 + 2);    /* IIR: acknowledge */
	lapic_eoi();
}

static void tick_isr(struct irq_frame *f)
{
	(void)f;
	lapic_eoi();
}

void console_run(void)
{
	char last = '\n';
	pic_mask_all();
	irq_set_handler(VEC_UART, rx_isr);
	irq_set_handler(VEC_TIMER, tick_isr);
	if (facts.lapic_base) {
		lapic_enable();
		if (mapped(facts.ioapic_base, 4096, "IOAPIC"))
			ioapic_route(facts.uart_pin, VEC_UART, facts.lapic_id);
		lapic_timer_periodic(VEC_TIMER, POLL_NS);
	}
	kbd_init();
	outb(COM1 + 4, 0x0b);           /* MCR: DTR RTS OUT2 */
	outb(COM1 + 1, IER_RDI);
	pr_always("probe: console ready\n");
	pr_flush();
	for (;;) {
		cli();
		if (kbd_ctrl_alt_del) {
			outb(COM1 + 1, 0);
			lapic_timer_stop();
			kbd_stop();
			pr_always("%sprobe: ctrl-alt-del\n", last == '\n' ? "" : "\n");
			return;
		}
		while (serial_rx_ready()) {
			char c = (char)serial_rx();
			if (c == 'q' || c == 0x04) {
				outb(COM1 + 1, 0);
				lapic_timer_stop();
				pr_always("%sprobe: console bye\n", last == '\n' ? "" : "\n");
				return;
			}
			serial_write(&c, 1);
			last = c;
		}
		if (!facts.lapic_base)
			continue;       /* no wakeup source: poll */
		sti_hlt();
	}
}
