/*
 * spry probe guest: main flow, check bookkeeping and mode dispatch.
 *
 *   1. entry checks (cheap, results recorded, nothing printed); after the
 *      PVH entry (pvh_entry.S) the PVH flavour: pvh-entry, start-info and memmap
 *      instead of the Linux entry checks (pvh.c)
 *   2. boot-timer write (MMIO 0xC0000000 <- 123)
 *   3. one line per entry check on COM1
 *   4. interrupt check
 *   5. the mode's extra checks, summary line, the mode's interactive part
 *   6. reset through the i8042
 */
#include <stdarg.h>
#include "io.h"
#include "probe.h"
#include "pvh.h"

struct check_result checks[CHK_MAX] = {
	[CHK_PVH_ENTRY] = { .name = "pvh-entry" },
	[CHK_LONG_MODE] = { .name = "long-mode" },
	[CHK_INTERRUPTS_OFF] = { .name = "interrupts-off" },
	[CHK_SEGMENTS] = { .name = "segments" },
	[CHK_GDT] = { .name = "gdt" },
	[CHK_PAGING] = { .name = "paging" },
	[CHK_BOOT_PARAMS] = { .name = "boot-params" },
	[CHK_CMDLINE] = { .name = "cmdline" },
	[CHK_E820] = { .name = "e820" },
	[CHK_MPTABLE] = { .name = "mptable" },
	[CHK_CPUID] = { .name = "cpuid" },
	[CHK_INITRD] = { .name = "initrd" },
	[CHK_INTERRUPT] = { .name = "interrupt" },
	[CHK_MODE] = { .name = "mode" },
	[CHK_EXCEPTION] = { .name = "exception" },
};
static int next_check = CHK_FIRST_DYNAMIC;

int check_register(const char *name)
{
	if (next_check >= CHK_MAX)
		return CHK_MODE;        /* table full: report against "mode" */
	checks[next_check].name = name;
	return next_check++;
}

u32 vfmt_str(char *buf, u32 cap, const char *fmt, va_list ap);

/* names of checks registered with a formatted name */
static char name_pool[3072];
static u32 name_used;

int check_register_fmt(const char *fmt, ...)
{
	char *n = name_pool + name_used;
	u32 room = sizeof(name_pool) - name_used;
	if (room < 2)
		return check_register("?");
	va_list ap;
	va_start(ap, fmt);
	name_used += vfmt_str(n, room, fmt, ap) + 1;
	va_end(ap);
	return check_register(n);
}

int check_failed(int id)
{
	return checks[id].state == CHECK_FAIL;
}

void check_print(int id)
{
	struct check_result *r = &checks[id];
	if (r->state == CHECK_NOT_RUN)
		return;
	r->printed = 1;
	/* an exception is always reported, even with probe.quiet=1 */
	if (cfg.quiet && id != CHK_EXCEPTION)
		return;
	void (*out)(const char *, ...) = id == CHK_EXCEPTION ? pr_always : pr;
	out("probe: %s: %s", r->name, r->state == CHECK_OK ? "ok" : "FAIL");
	if (r->fmt && *r->fmt) {
		out(" ");
		out(r->fmt, r->arg[0], r->arg[1], r->arg[2], r->arg[3]);
	}
	out("\n");
}

/* results recorded but not printed yet (used when an exception cuts the run short) */
void check_print_pending(void)
{
	for (int id = 0; id < next_check; id++)
		if (!checks[id].printed)
			check_print(id);
}

void print_summary(void)
{
	u32 n = 0, k = 0;
	for (int i = 0; i < next_check; i++) {
		n += checks[i].state != CHECK_NOT_RUN;
		k += checks[i].state == CHECK_FAIL;
	}
	if (k)
		pr_always("probe: %u of %u checks failed\n", k, n);
	else
		pr_always("probe: all %u checks ok\n", n);
	pr_flush();
}

/* i8042 "pulse reset line" (Linux reboot=k); spry exits with status 0. */
void probe_reset(void)
{
	pr_flush();
	for (u32 i = 0; i < 64 && (inb(0x64) & 0x02); i++)
		;
	outb(0x64, 0xfe);
	probe_halt();
}

const struct probe_mode probe_modes[] = {
	{ "checks", NULL, NULL },
	{ "console", NULL, console_run },
	{ "count", NULL, count_run },
	{ "blk", blk_mode, NULL },
	{ "net", net_mode, NULL },
	{ "hostile", hostile_mode, NULL },
	{ "regsweep", regsweep_mode, NULL },
	{ "blkbench", blkbench_mode, NULL },
	{ "netbench", netbench_mode, NULL },
	{ "vsock", vsock_mode, NULL },
	{ "blkclone", blkclone_mode, blkclone_run },
};
const u32 probe_num_modes = ARRAY_SIZE(probe_modes);

static const struct probe_mode *find_mode(void)
{
	for (u32 i = 0; i < probe_num_modes; i++) {
		const char *n = probe_modes[i].name;
		if (strnlen_fast(n, 64) == cfg.mode_len && !memcmp(n, cfg.mode, cfg.mode_len))
			return &probe_modes[i];
	}
	FAIL(CHK_MODE, "unknown probe.mode '%.*s', running 'checks'", cfg.mode_len, cfg.mode);
	return &probe_modes[0];
}

void probe_main(void)
{
	/* entered through pvh_entry.S: PVH's start_info instead of Linux's boot_params */
	facts.pvh = (u8)pvh_entry.active;
	check_cpu_state();
	if (facts.pvh) {
		check_pvh_entry();
		check_start_info();
	} else {
		check_boot_params();
	}
	mark(1);
	check_paging();
	mark(2);
	check_e820();
	mark(3);
	check_cpuid();
	mark(4);
	check_mptable();
	mark(5);
	check_initrd();
	if (cfg.initrd_sum != 2)
		check_initrd_sum();
	mark(6);

	if (facts.boot_timer_ok)
		mmio_write8(BOOT_TIMER_ADDR, BOOT_TIMER_MAGIC);
	check_initrd_sum();     /* probe.initrd_sum=2: after the boot timer */

	serial_init();
	const struct probe_mode *mode = find_mode();
	for (int id = CHK_PVH_ENTRY; id <= CHK_INITRD; id++)
		check_print(id);
	mark(7);
	check_interrupt();
	mark(8);
	check_print(CHK_INTERRUPT);
	if (mode->checks)
		mode->checks();
	check_print(CHK_MODE);
	print_summary();
	mark(9);
	if (mode->interactive)
		mode->interactive();
	probe_reset();
}
