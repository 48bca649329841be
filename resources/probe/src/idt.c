/* Interrupt dispatch (the IDT itself is built by isr.S at assembly time). */
#include "io.h"
#include "probe.h"

static irq_handler_t handlers[NUM_VECTORS];
volatile u32 irq_count[NUM_VECTORS];

void irq_set_handler(u32 vector, irq_handler_t h)
{
	handlers[vector] = h;
}

static const char *const exc_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF(9)", "#TS", "#NP",
	"#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23",
	"#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
};

static int in_exception;

void isr_dispatch(struct irq_frame *f)
{
	u64 v = f->vector;
	if (v < NUM_VECTORS)
		irq_count[v]++;
	if (v < NUM_VECTORS && handlers[v]) {
		handlers[v](f);
		return;
	}
	if (v == 2)     /* NMI (LINT1): counted, not fatal */
		return;
	if (v == VEC_SPURIOUS)
		return;
	if (v >= 32) {  /* unexpected IRQ: acknowledge and count */
		lapic_eoi();
		return;
	}
	/* a CPU exception: report it, summarize, reset */
	if (in_exception++)
		probe_reset();
	pr_line_break();
	FAIL(CHK_EXCEPTION, "%s error 0x%lx at rip 0x%lx, cr2 0x%lx", exc_names[v], f->error, f->rip, read_cr2());
	check_print_pending();
	print_summary();
	probe_reset();
}
