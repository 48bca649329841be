/*
 * Kernel command line options of the probe (space-separated tokens; unknown
 * tokens are ignored, Linux-style):
 *   probe.mode=checks|console|count|blk|net|hostile|blkbench|netbench|vsock
 *                               what to do after the entry checks
 *   probe.expect_mem_mib=N      e820 must describe N MiB of RAM
 *   probe.expect_cpus=N         the MP table must list N enabled CPUs
 *   probe.expect_initrd=0|1     an initrd must be absent / present
 *   probe.quiet=1               print only the summary line
 *   probe.irq_timeout_ms=N      interrupt check timeout (default 100)
 *   probe.initrd_sum=0|1|2      initrd checksum: skip / before (default) /
 *                               after the boot-timer write
 *   probe.marks=1               write stage numbers to MMIO 0xC0000008
 *   virtio, count and bench modes: probe.blk_sectors=F:C, probe.net_tx=N,
 *   probe.net_rx=N, probe.net_timeout_ms=N, probe.virtio_timeout_ms=N,
 *   probe.count_ms=N, probe.touch_mib=N, probe.dirty_mib=N, probe.bench_reqs=N,
 *   probe.bench_size=N,
 *   probe.bench_op=read|write, probe.bench_depth=N, probe.bench_frames=N,
 *   probe.bench_rx=N, probe.bench_irq=0|1, probe.vsock_listen=P,
 *   probe.vsock_connect=P, probe.vsock_refused=P, probe.vsock_hostile=1,
 *   probe.vsock_bytes=N,
 *   probe.vsock_timeout_ms=N (see README.md)
 * Numbers are decimal or 0x-prefixed hex.
 */
#include "probe.h"

struct probe_config cfg = {
	.irq_timeout_ms = 100,
	.initrd_sum = 1,
	.mode = "checks",
	.mode_len = 6,
	.blk_first = 0,
	.blk_count = 8,
	.net_tx = 4,
	.net_timeout_ms = 2000,
	.vsock_bytes = 16384,
	.vsock_timeout_ms = 10000,
	.virtio_timeout_ms = 1000,
	.count_ms = 10,
	.bench_reqs = 1000,
	.bench_frames = 1000,
};

static int parse_num(const char *s, u64 n, u64 *out)
{
	u64 v = 0, base = 10;
	if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
		n -= 2;
	}
	if (!n)
		return 0;
	for (; n; n--, s++) {
		u64 d;
		char c = *s;
		if (c >= '0' && c <= '9')
			d = (u64)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = (u64)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = (u64)(c - 'A' + 10);
		else
			return 0;
		v = v * base + d;
	}
	*out = v;
	return 1;
}

struct option {
	const char *key;
	u8 keylen;
	u64 *val;
	u8 *has;        /* set when given; NULL if not tracked */
};

static const struct option options[] = {
	{ "expect_mem_mib", 14, &cfg.expect_mem_mib, &cfg.has_expect_mem_mib },
	{ "expect_cpus", 11, &cfg.expect_cpus, &cfg.has_expect_cpus },
	{ "expect_initrd", 13, &cfg.expect_initrd, &cfg.has_expect_initrd },
	{ "quiet", 5, &cfg.quiet, NULL },
	{ "irq_timeout_ms", 14, &cfg.irq_timeout_ms, NULL },
	{ "initrd_sum", 10, &cfg.initrd_sum, NULL },
	{ "marks", 5, &cfg.marks, NULL },
	{ "net_tx", 6, &cfg.net_tx, NULL },
	{ "net_rx", 6, &cfg.net_rx, NULL },
	{ "net_timeout_ms", 14, &cfg.net_timeout_ms, NULL },
	{ "vsock_listen", 12, &cfg.vsock_listen, NULL },
	{ "vsock_connect", 13, &cfg.vsock_connect, NULL },
	{ "vsock_refused", 13, &cfg.vsock_refused, NULL },
	{ "vsock_hostile", 13, &cfg.vsock_hostile, NULL },
	{ "vsock_bytes", 11, &cfg.vsock_bytes, NULL },
	{ "vsock_timeout_ms", 16, &cfg.vsock_timeout_ms, NULL },
	{ "virtio_timeout_ms", 17, &cfg.virtio_timeout_ms, NULL },
	{ "count_ms", 8, &cfg.count_ms, NULL },
	{ "touch_mib", 9, &cfg.touch_mib, NULL },
	{ "dirty_mib", 9, &cfg.dirty_mib, NULL },
	{ "bench_reqs", 10, &cfg.bench_reqs, NULL },
	{ "bench_size", 10, &cfg.bench_size, NULL },
	{ "bench_depth", 11, &cfg.bench_depth, NULL },
	{ "bench_frames", 12, &cfg.bench_frames, NULL },
	{ "bench_rx", 8, &cfg.bench_rx, NULL },
	{ "bench_irq", 9, &cfg.bench_irq, NULL },
};

/* key/val: the text after "probe." split at '=' */
static void option(const char *key, u64 klen, const char *val, u64 vlen)
{
	if (klen == 4 && !memcmp(key, "mode", 4)) {
		cfg.mode = val;
		cfg.mode_len = (u32)vlen;
		return;
	}
	if (klen == 8 && !memcmp(key, "bench_op", 8)) {
		if (vlen == 5 && !memcmp(val, "write", 5))
			cfg.bench_write = 1;
		else if (vlen == 4 && !memcmp(val, "read", 4))
			cfg.bench_write = 0;
		else
			FAIL(CHK_CMDLINE, "bad value '%.*s' for probe.bench_op (read|write)", vlen, val);
		return;
	}
	if (klen == 11 && !memcmp(key, "blk_sectors", 11)) {
		const char *colon = memchr_fast(val, vlen, ':');
		u64 first, count;
		if (!colon || !parse_num(val, (u64)(colon - val), &first) ||
		    !parse_num(colon + 1, vlen - (u64)(colon - val) - 1, &count) || !count) {
			FAIL(CHK_CMDLINE, "bad value '%.*s' for probe.blk_sectors (<first>:<count>)", vlen, val);
			return;
		}
		cfg.blk_first = first;
		cfg.blk_count = count;
		return;
	}
	for (u32 i = 0; i < ARRAY_SIZE(options); i++) {
		const struct option *o = &options[i];
		if (o->keylen != klen || memcmp(key, o->key, klen))
			continue;
		u64 v;
		if (!parse_num(val, vlen, &v)) {
			FAIL(CHK_CMDLINE, "bad value '%.*s' for probe.%s", vlen, val, o->key);
			return;
		}
		*o->val = v;
		if (o->has)
			*o->has = 1;
		return;
	}
	/* unknown probe.* keys are ignored like any unknown token */
}

/*
 * Finds "probe." tokens with repne scasb for 'p' (one emulated iteration per
 * byte) instead of a C loop over every character.
 */
void cmdline_parse(const char *s, u64 len)
{
	const char *end = s + len, *p = s;
	while (p < end) {
		const char *q = memchr_fast(p, (u64)(end - p), 'p');
		if (!q)
			return;
		p = q + 1;
		if ((q != s && q[-1] != ' ') || end - q < 7 || ld32((u64)q) != 0x626f7270 /* "prob" */ ||
		    ld16((u64)q + 4) != 0x2e65 /* "e." */)
			continue;
		const char *key = q + 6;
		const char *tok_end = memchr_fast(key, (u64)(end - key), ' ');
		if (!tok_end)
			tok_end = end;
		p = tok_end;
		const char *eq = memchr_fast(key, (u64)(tok_end - key), '=');
		if (!eq)
			continue;   /* "probe.x" without '=' */
		option(key, (u64)(eq - key), eq + 1, (u64)(tok_end - eq - 1));
	}
}
