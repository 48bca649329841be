/*
 * i8042 keyboard: ISA IRQ 1 through the IOAPIC (pin from the MP table),
 * scan codes read from port 0x60 while status port 0x64 bit 0 is set, and
 * detection of the set-2 sequence spry's Ctrl-Alt-Del sends:
 * 0x14 (Ctrl), 0x11 (Alt), 0xe0 0x71 (Del).
 *
 * probe.mode=count: after the checks, "probe: count <n>" every
 * probe.count_ms ms (periodic LAPIC timer, sti;hlt in between) until
 * Ctrl-Alt-Del ("probe: ctrl-alt-del") or 'q' on COM1 ("probe: count bye").
 */
#include "io.h"
#include "probe.h"

#define COM1 0x3f8
#define I8042_DATA 0x60
#define I8042_STATUS 0x64
#define I8042_OBF 0x01

volatile u8 kbd_ctrl_alt_del;
static const u8 cad_seq[4] = { 0x14, 0x11, 0xe0, 0x71 };
static u8 cad_pos;
static u32 kbd_pin = ~0u;

static void kbd_drain(void)
{
	for (u32 i = 0; i < 32 && (inb(I8042_STATUS) & I8042_OBF); i++) {
		u8 c = inb(I8042_DATA);
		if (c == cad_seq[cad_pos]) {
			if (++cad_pos == sizeof(cad_seq)) {
				kbd_ctrl_alt_del = 1;
				cad_pos = 0;
			}
		} else {
			cad_pos = c == cad_seq[0];
		}
	}
}

static void kbd_isr(struct irq_frame *f)
{
	(void)f;
	kbd_drain();
	lapic_eoi();
}

void kbd_init(void)
{
	if (!facts.lapic_base || !mapped(facts.ioapic_base, 4096, "IOAPIC"))
		return;
	kbd_pin = mp_isa_pin(1, 1);
	irq_set_handler(VEC_KBD, kbd_isr);
	ioapic_route(kbd_pin, VEC_KBD, facts.lapic_id);
	kbd_drain();    /* bytes queued before the route existed (their edge is lost) */
}

void kbd_stop(void)
{
	if (kbd_pin != ~0u)
		ioapic_mask(kbd_pin);
}

/* ---- probe.mode=count --------------------------------------------------------- */
static volatile u64 count_ticks;

static void count_tick(struct irq_frame *f)
{
	(void)f;
	count_ticks++;
	lapic_eoi();
}

static void uart_ack(struct irq_frame *f)
{
	(void)f;
	(void)inb(COM1 + 2);    /* IIR */
	lapic_eoi();
}

/* probe.dirty_mib: guest RAM from 32 MiB up (above the image at 16 MiB), one u64
 * per 4 KiB page, so a count dirties N MiB at the cost of N * 256 writes. */
#define DIRTY_BASE (32ull << 20)

/* Reads the pages' value (all pages should hold the same), writes `next` to each;
 * returns the value found, or ~0 if the pages disagree. */
static u64 dirty_pages(u64 next)
{
	volatile u64 *p = (volatile u64 *)DIRTY_BASE;
	u64 pages = cfg.dirty_mib * 256, found = p[0];
	for (u64 i = 0; i < pages; i++) {
		if (p[i * 512] != found)
			found = ~0ull;
		p[i * 512] = next;
	}
	return found;
}

void count_run(void)
{
	u64 period = cfg.count_ms ? cfg.count_ms : 10;
	if (!facts.lapic_base) {
		pr_always("probe: count: FAIL no usable LAPIC (see cpuid)\n");
		return;
	}
	pic_mask_all();
	lapic_enable();
	irq_set_handler(VEC_UART, uart_ack);
	irq_set_handler(VEC_TIMER, count_tick);
	kbd_init();
	if (mapped(facts.ioapic_base, 4096, "IOAPIC"))
		ioapic_route(facts.uart_pin, VEC_UART, facts.lapic_id);
	outb(COM1 + 4, 0x0b);   /* MCR: DTR RTS OUT2 */
	outb(COM1 + 1, 0x01);   /* IER: RX data */
	if (cfg.dirty_mib && (!mapped(DIRTY_BASE, cfg.dirty_mib << 20, "dirty pages") ||
			      (cfg.has_expect_mem_mib && 32 + cfg.dirty_mib > cfg.expect_mem_mib))) {
		pr_always("probe: count: FAIL %lu MiB from 32 MiB is not all RAM\n", cfg.dirty_mib);
		return;
	}
	lapic_timer_periodic(VEC_TIMER, period * 1000000ull);
	u64 n = 0, seen = 0;
	for (;;) {
		cli();
		if (kbd_ctrl_alt_del) {
			pr_always("probe: ctrl-alt-del\n");
			break;
		}
		int quit = 0;
		while (serial_rx_ready())
			if (serial_rx() == 'q')
				quit = 1;
		if (quit) {
			pr_always("probe: count bye\n");
			break;
		}
		if (count_ticks != seen) {
			seen = count_ticks;
			if (cfg.dirty_mib) {
				/* Count n finds n (written by count n - 1 as n; 0 at first):
				 * any other value is memory out of step with the vCPU. */
				u64 found = dirty_pages(n + 1);
				pr_always("probe: count %lu found %lu\n", n, found);
				n++;
			} else {
				pr_always("probe: count %lu\n", n++);
			}
		}
		sti_hlt();
	}
	lapic_timer_stop();
	outb(COM1 + 1, 0);
	kbd_stop();
}
