/* Shared declarations of the spry probe guest. */
#ifndef PROBE_H
#define PROBE_H
#include "types.h"

/* ---- memory map of the spry boot contract -------------------------------- */
#define MMIO_GAP_START  0xC0000000ull
#define MMIO_GAP_END    0x100000000ull
#define BOOT_TIMER_ADDR 0xC0000000ull
#define BOOT_TIMER_MAGIC 123
#define LAPIC_DEFAULT   0xFEE00000ull
#define IOAPIC_DEFAULT  0xFEC00000ull
#define FOUR_GIB        0x100000000ull

/* ---- entry state, captured by entry.S before anything else runs ---------- */
struct entry_state {
	u64 rsi, rsp, rflags;
	u64 cs, ds, es, ss, fs, gs;
	u16 gdt_limit;          /* sgdt image: limit then base */
	u64 gdt_base;
} __attribute__((packed));
extern struct entry_state entry_state;

/* ---- checks ---------------------------------------------------------------- */
enum check_id {
	CHK_PVH_ENTRY,          /* PVH flavour only (pvh.c) */
	CHK_LONG_MODE,
	CHK_INTERRUPTS_OFF,
	CHK_SEGMENTS,
	CHK_GDT,
	CHK_PAGING,
	CHK_BOOT_PARAMS,
	CHK_CMDLINE,
	CHK_E820,
	CHK_MPTABLE,
	CHK_CPUID,
	CHK_INITRD,
	CHK_INTERRUPT,
	CHK_MODE,
	CHK_EXCEPTION,
	CHK_FIRST_DYNAMIC,      /* modes may register more with check_register() */
	CHK_MAX = 96
};

enum check_state { CHECK_NOT_RUN = 0, CHECK_OK, CHECK_FAIL };

/* Results are recorded cheaply (format pointer plus up to four values) and
 * only formatted when printed, after the boot-timer write. */
struct check_result {
	const char *name;
	const char *fmt;
	u64 arg[4];
	u8 state;
	u8 printed;
};
extern struct check_result checks[CHK_MAX];

/* inline: a call costs more emulated instructions than the stores */
static inline __attribute__((always_inline)) void check_record(int id, int ok, const char *fmt, u64 a, u64 b,
							       u64 c, u64 d)
{
	struct check_result *r = &checks[id];
	if (r->state == CHECK_FAIL)
		return;
	r->state = ok ? CHECK_OK : CHECK_FAIL;
	r->fmt = fmt;
	r->arg[0] = a;
	r->arg[1] = b;
	r->arg[2] = c;
	r->arg[3] = d;
}
int check_register(const char *name);
/* check_register() with a formatted name (kept in a static pool) */
int check_register_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* record and print at once (mode checks print as they complete) */
#define OK_NOW(id, ...)   do { OK((id), __VA_ARGS__); check_print(id); } while (0)
#define FAIL_NOW(id, ...) do { FAIL((id), __VA_ARGS__); check_print(id); } while (0)
void check_print(int id);
void check_print_pending(void);
int check_failed(int id);

#define CHK_ARGS_(z, a, b, c, d, ...) (u64)(a), (u64)(b), (u64)(c), (u64)(d)
#define CHK_ARGS(...) CHK_ARGS_(0, ##__VA_ARGS__, 0, 0, 0, 0)
/* OK() only sets the detail if the check has not already failed. */
#define OK(id, fmt, ...)   check_record((id), 1, (fmt), CHK_ARGS(__VA_ARGS__))
/* FAIL() keeps the first failure's message. */
#define FAIL(id, fmt, ...) check_record((id), 0, (fmt), CHK_ARGS(__VA_ARGS__))

/* ---- configuration from the kernel command line ------------------------- */
struct probe_config {
	u64 expect_mem_mib;
	u64 expect_cpus;
	u64 expect_initrd;
	u64 irq_timeout_ms;
	u64 quiet;
	u64 initrd_sum;
	u64 marks;
	const char *mode;       /* points into the command line, not terminated */
	u32 mode_len;
	u8 has_expect_mem_mib, has_expect_cpus, has_expect_initrd;
	u8 bench_write;         /* probe.bench_op=write */
	/* virtio modes (see README) */
	u64 blk_first, blk_count;       /* probe.blk_sectors=<first>:<count> */
	u64 net_tx, net_rx, net_timeout_ms;
	u64 vsock_listen, vsock_connect, vsock_refused, vsock_hostile, vsock_bytes, vsock_timeout_ms;
	u64 virtio_timeout_ms;
	u64 count_ms;
	u64 touch_mib;           /* blkclone: MiB of RAM written before idling (a working set) */
	u64 dirty_mib;          /* probe.dirty_mib=N: count mode writes N MiB per count */
	u64 bench_reqs, bench_size, bench_depth, bench_frames, bench_rx, bench_irq;
};
extern struct probe_config cfg;

/* ---- facts gathered by the checks, used by later stages ------------------ */
struct probe_facts {
	u8 pvh;                 /* entered through the PVH entry (pvh_entry.S): PVH flavour */
	u64 bp;                 /* boot_params (PVH: hvm_start_info) address, 0 if unusable */
	u64 bp_len;             /* its size, for the paging check */
	const char *bp_what;    /* "zero page" / "start_info" */
	u64 cmdline;            /* command line address, 0 if unusable */
	u64 cmdline_len;
	u64 e820_table;         /* e820 table (PVH: memmap) address */
	u64 e820_entries;
	u64 e820_stride;        /* entry size: 20 (e820), 24 (PVH memmap) */
	u64 modlist;            /* PVH: module list address (0: none) */
	u64 e820_ok;            /* e820 table was readable */
	u64 mem_mib;
	u64 lapic_base;         /* 0 if unusable */
	u32 lapic_id;
	u64 ioapic_base;        /* from the MP table, default IOAPIC_DEFAULT */
	u32 ioapic_id;
	u32 uart_pin;           /* IOAPIC pin for ISA IRQ 4 (MP table), default 4 */
	u64 mpc_table;          /* MP configuration table (0 if unusable) */
	u32 mpc_isa_bus;        /* its ISA bus id */
	u32 mp_cpus;
	u64 initrd_addr, initrd_size;
	u8 boot_timer_ok;       /* 0xC0000000 is identity-mapped */
	u8 initrd_sum_pending;  /* header fine, content sum still to verify */
	u32 initrd_sum_want;
};
extern struct probe_facts facts;

/* ---- stages ----------------------------------------------------------------- */
void cmdline_parse(const char *s, u64 len);
void check_cpu_state(void);     /* long-mode, interrupts-off, segments, gdt (PVH: long-mode) */
void check_boot_params(void);   /* boot-params, cmdline */
#define CMDLINE_SCAN_MAX 4096
void check_cmdline_at(u64 cmd, u64 size);
void check_e820(void);        /* over facts.e820_table: e820 or the PVH memmap */
void check_paging(void);
void check_mptable(void);
void check_cpuid(void);
void check_initrd(void);
void check_initrd_sum(void);
void check_interrupt(void);

/* page-table walk: is [addr, addr+len) identity-mapped and present? Records a
 * paging failure naming 'what' if not. */
int mapped_slow(u64 addr, u64 len, const char *what);
extern u64 map_cache_lo, map_cache_hi;
static inline int mapped(u64 addr, u64 len, const char *what)
{
	if (addr >= map_cache_lo && len && addr + len <= map_cache_hi && addr + len > addr)
		return 1;
	return mapped_slow(addr, len, what);
}
int e820_is_ram(u64 addr, u64 len);

/* ---- output --------------------------------------------------------------- */
void serial_init(void);
void serial_write(const char *s, u64 n);
int serial_rx_ready(void);
u8 serial_rx(void);
void pr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));   /* suppressed by probe.quiet */
void pr_always(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void pr_flush(void);
u32 fmt_str(char *buf, u32 cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void pr_line_break(void);

/* ---- interrupts ----------------------------------------------------------- */
#define VEC_IRQ(n)   (0x20 + (n))     /* ISA IRQ / GSI n (0..23) -> vector 0x20..0x37 */
#define VEC_KBD      VEC_IRQ(1)
#define VEC_UART     VEC_IRQ(4)
#define VEC_TIMER    0x3e
#define VEC_SPURIOUS 0x3f
#define NUM_VECTORS  64         /* IDT entries provided by isr.S */

struct irq_frame {
	u64 r15, r14, r13, r12, r11, r10, r9, r8;
	u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vector, error;
	u64 rip, cs, rflags, rsp, ss;
};
typedef void (*irq_handler_t)(struct irq_frame *f);
void irq_set_handler(u32 vector, irq_handler_t h);
extern volatile u32 irq_count[NUM_VECTORS];

void lapic_enable(void);
void lapic_eoi(void);
void lapic_timer_oneshot(u32 vector, u64 ns);
void lapic_timer_periodic(u32 vector, u64 ns);
void lapic_timer_stop(void);
void ioapic_route(u32 pin, u32 vector, u32 dest_apic);
void ioapic_mask(u32 pin);
u64 ioapic_read_redir(u32 pin);
void pic_mask_all(void);

/* probe.marks=1: write stage numbers to MMIO 0xC0000008 (one VM exit each)
 * so a VMM or test bench can time the stages. */
static inline void mark(u32 stage)
{
	if (cfg.marks)
		*(volatile u8 *)(BOOT_TIMER_ADDR + 8) = (u8)stage;
}

/* ---- modes & end of run --------------------------------------------------- */
struct probe_mode {
	const char *name;
	void (*checks)(void);      /* extra checks, before the summary; may be NULL */
	void (*interactive)(void); /* runs after the summary line; may be NULL */
};
extern const struct probe_mode probe_modes[];
extern const u32 probe_num_modes;
void console_run(void);
void count_run(void);
void blk_mode(void);
void blkclone_mode(void);
void blkclone_run(void);
void blkbench_mode(void);
void net_mode(void);
void netbench_mode(void);
void hostile_mode(void);
void vsock_mode(void);
void regsweep_mode(void);

/* i8042 keyboard (kbd.c): IRQ 1 through the IOAPIC, Ctrl-Alt-Del detection */
void kbd_init(void);
void kbd_stop(void);
extern volatile u8 kbd_ctrl_alt_del;
u32 mp_isa_pin(u32 irq, u32 dflt);

void print_summary(void);
void __attribute__((noreturn)) probe_reset(void);
void __attribute__((noreturn)) probe_halt(void);

#endif
