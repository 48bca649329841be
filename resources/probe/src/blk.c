/*
 * virtio-blk driver of the probe, probe.mode=blk and probe.mode=blkbench.
 *
 * blk: for every block device on the command line (blk0, blk1, ... in
 * command-line order): init, GET_ID, capacity line, then either the pattern
 * write + flush + read-back (writable drives) or a refused write and a read
 * of sector 0 (read-only drives), a read past the end and an unsupported
 * request type. Completion: GET_ID, read-back, read sector 0 and the
 * unsupported request are polled (used index, IOAPIC pin masked); writes,
 * flush, the refused write and the read past the end wait in sti;hlt for
 * the device interrupt.
 */
#include "blk.h"
#include "clock.h"

#define P1(j) (u8)((7 * (j) + 0x5a) & 0xff),
#define P4(j) P1(j) P1(j + 1) P1(j + 2) P1(j + 3)
#define P16(j) P4(j) P4(j + 4) P4(j + 8) P4(j + 12)
#define P64(j) P16(j) P16(j + 16) P16(j + 32) P16(j + 48)
#define P256(j) P64(j) P64(j + 64) P64(j + 128) P64(j + 192)
/* ptab[j] = (7j + 0x5a) & 0xff. Since 7 * 41 = 31 (mod 256), byte i of
 * sector s is ptab[i + d] with d = (41 s) & 0xff: a sector is one
 * 512-byte run of this table (copied/compared with rep movsq/cmpsq). */
static const u8 ptab[768] = { P256(0) P256(256) P256(512) };

static inline const u8 *sector_src(u64 s)
{
	return ptab + ((s * 41) & 0xff);
}

void pattern_fill(u8 *dst, u64 sector, u64 nsect)
{
	for (; nsect; nsect--, sector++, dst += 512)
		copy_q(dst, sector_src(sector), 64);
}

int pattern_check(const u8 *buf, u64 sector, u64 nsect, u64 *bad_sector, u64 *bad_byte, u64 *got)
{
	for (; nsect; nsect--, sector++, buf += 512) {
		const u8 *want = sector_src(sector);
		if (equal_q(buf, want, 64))
			continue;
		u64 i = 0;
		while (i < 511 && buf[i] == want[i])
			i++;
		*bad_sector = sector;
		*bad_byte = i;
		*got = buf[i];
		return 0;
	}
	return 1;
}

static u8 *the_buffer;
u8 *blk_buffer(void)
{
	if (!the_buffer)
		the_buffer = dma_alloc(BLK_BUF_BYTES, 4096);
	return the_buffer;
}

const char *blk_status_name(u32 st)
{
	switch (st) {
	case VIRTIO_BLK_S_OK: return "ok";
	case VIRTIO_BLK_S_IOERR: return "ioerr";
	case VIRTIO_BLK_S_UNSUPP: return "unsupp";
	case 0xff: return "status byte not written";
	case BLK_TIMEOUT: return "no completion in time";
	case BLK_BAD_ID: return "completion of an unknown chain";
	case BLK_NO_IRQ: return "completed without an interrupt";
	default: return "bad status";
	}
}

int blk_open(struct blk *b, struct vdev *d, u16 qsize, u64 extra_features, int chk)
{
	b->d = d;
	b->q = &d->q[0];
	b->dead = 0;
	u64 want = F_BIT(VIRTIO_F_EVENT_IDX) | F_BIT(VIRTIO_BLK_F_SEG_MAX) | F_BIT(VIRTIO_BLK_F_RO) |
		   F_BIT(VIRTIO_BLK_F_FLUSH) | extra_features;
	if (!vdev_init(d, want, 1, qsize, chk))
		return 0;
	b->capacity = vr(d, VR_CONFIG) | ((u64)vr(d, VR_CONFIG + 4) << 32);
	b->seg_max = vr(d, VR_CONFIG + 0xc);
	b->ro = (d->acked & F_BIT(VIRTIO_BLK_F_RO)) != 0;
	b->flush = (d->acked & F_BIT(VIRTIO_BLK_F_FLUSH)) != 0;
	if (!b->hdr) {
		b->hdr = dma_alloc(32 * BLK_SLOTS_MAX, 64);
		if (!b->hdr) {
			FAIL(chk, "no memory for request headers");
			return 0;
		}
		b->status = b->hdr + 16 * BLK_SLOTS_MAX;
	}
	return 1;
}

u32 blk_req(struct blk *b, u32 type, u64 sector, void *buf, u32 len, int irq, u32 *used)
{
	struct vq *q = b->q;
	struct vdesc *dd = q->desc;
	u8 *h = b->hdr;
	*(u32 *)h = type;
	*(u32 *)(h + 4) = 0;
	*(u64 *)(h + 8) = sector;
	b->status[0] = 0xff;
	u16 wflag = (type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID) ? VD_WRITE : 0;
	dd[0].addr = (u64)h;
	dd[0].len = 16;
	dd[0].flags = VD_NEXT;
	dd[0].next = 1;
	u16 n = 1;
	if (len) {
		dd[1].addr = (u64)buf;
		dd[1].len = len;
		dd[1].flags = VD_NEXT | wflag;
		dd[1].next = 2;
		n = 2;
	}
	dd[n].addr = (u64)b->status;
	dd[n].len = 1;
	dd[n].flags = VD_WRITE;
	dd[n].next = 0;
	/* EVENT_IDX: interrupt on this completion (irq), or not at all (polling);
	 * set before the kick, or the device may complete with the old value */
	if (b->d->event_idx)
		vq_want_irq_after(q, irq ? 1 : 0x8000);
	u32 irqs = b->d->irqs;
	if (b->d->irq_on != irq)
		vdev_irq(b->d, irq);
	vq_add(q, 0);
	vq_kick(q);
	if (!vq_wait(q, 1, irq, cfg.virtio_timeout_ms)) {
		b->dead = 1;
		return BLK_TIMEOUT;
	}
	u32 ulen, id = vq_get(q, &ulen);
	if (used)
		*used = ulen;
	if (id != 0)
		return BLK_BAD_ID;
	if (irq && b->d->irqs == irqs) {
		/* the tick woke us: give the interrupt a moment before calling it lost */
		u64 dl = deadline(cfg.virtio_timeout_ms);
		while (b->d->irqs == irqs && !expired(dl))
			sti_hlt();
		if (b->d->irqs == irqs)
			return BLK_NO_IRQ;
	}
	return b->status[0];
}

int blk_write_read(struct blk *b, u64 first, u64 count, int chk, int flush_chk)
{
	u8 *buf = blk_buffer();
	const u64 per = BLK_BUF_BYTES / 512;
	if (!buf) {
		FAIL(chk, "no memory for the data buffer");
		return 0;
	}
	if (first >= b->capacity || count > b->capacity - first) {
		FAIL(chk, "sectors %lu..+%lu beyond the capacity of %lu sectors", first, count, b->capacity);
		return 0;
	}
	u32 st;
	for (u64 s = first, left = count; left;) {
		u64 n = left < per ? left : per;
		pattern_fill(buf, s, n);
		st = blk_req(b, VIRTIO_BLK_T_OUT, s, buf, (u32)(n * 512), 1, NULL);
		if (st != VIRTIO_BLK_S_OK) {
			FAIL(chk, "write of sectors %lu..+%lu: %s (0x%x)", s, n, blk_status_name(st), st);
			return 0;
		}
		s += n;
		left -= n;
	}
	if (flush_chk >= 0) {
		st = blk_req(b, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 1, NULL);
		if (st != VIRTIO_BLK_S_OK)
			FAIL_NOW(flush_chk, "%s (0x%x)", blk_status_name(st), st);
		else
			OK_NOW(flush_chk, "");
	}
	for (u64 s = first, left = count; left;) {
		u64 n = left < per ? left : per;
		fill_q(buf, 0xccccccccccccccccull, n * 64);
		st = blk_req(b, VIRTIO_BLK_T_IN, s, buf, (u32)(n * 512), 0, NULL);
		if (st != VIRTIO_BLK_S_OK) {
			FAIL(chk, "read of sectors %lu..+%lu: %s (0x%x)", s, n, blk_status_name(st), st);
			return 0;
		}
		u64 bs, bb, got;
		if (!pattern_check(buf, s, n, &bs, &bb, &got)) {
			FAIL(chk, "read back sector %lu byte %lu: 0x%x, want 0x%x", bs, bb, got,
			     (bs * 31 + bb * 7 + 0x5a) & 0xff);
			return 0;
		}
		s += n;
		left -= n;
	}
	OK(chk, "");
	return 1;
}

/* ---- probe.mode=blk ------------------------------------------------------------ */
static void id_string(char *out, const u8 *id)
{
	u32 i = 0;
	for (; i < 20 && id[i]; i++)
		out[i] = (id[i] >= 0x20 && id[i] < 0x7f && id[i] != '\'') ? (char)id[i] : '?';
	out[i] = 0;
}

static void blk_device(struct vdev *d)
{
	static struct blk blks[VIRTIO_MAX_DEVS];
	struct blk *b = &blks[d->unit];
	const char *nm = d->name;
	int c = check_register_fmt("%s: init", nm);
	if (!blk_open(b, d, 16, 0, c)) {
		check_print(c);
		return;
	}
	OK_NOW(c, "mmio 0x%lx irq %u features 0x%lx of 0x%lx", d->base, d->irq, d->acked, d->offered);

	u8 *buf = blk_buffer();
	if (!buf)
		return;
	c = check_register_fmt("%s: get-id", nm);
	fill_q(buf, 0, 4);
	u32 used = 0, st = blk_req(b, VIRTIO_BLK_T_GET_ID, 0, buf, 20, 0, &used);
	char id[21];
	id_string(id, buf);
	if (st != VIRTIO_BLK_S_OK)
		FAIL_NOW(c, "%s (0x%x)", blk_status_name(st), st);
	else if (used != 21)
		FAIL_NOW(c, "used length %u, want 21 (20-byte id + status)", used);
	else
		OK_NOW(c, "");
	pr("probe: %s: capacity %lu id '%s'\n", nm, b->capacity, id);

	if (!b->ro) {
		int fc = b->flush ? check_register_fmt("%s: flush", nm) : -1;
		c = check_register_fmt("%s: write+read %lu sectors", nm, cfg.blk_count);
		blk_write_read(b, cfg.blk_first, cfg.blk_count, c, fc);
		if (fc >= 0 && !checks[fc].state)
			FAIL_NOW(fc, "not reached");
		check_print(c);
	} else {
		c = check_register_fmt("%s: read-only write refused", nm);
		fill_q(buf, 0, 64);
		st = b->dead ? BLK_TIMEOUT : blk_req(b, VIRTIO_BLK_T_OUT, 0, buf, 512, 1, &used);
		if (st == VIRTIO_BLK_S_IOERR)
			OK_NOW(c, "");
		else
			FAIL_NOW(c, "write to a read-only drive: %s (0x%x), want ioerr", blk_status_name(st), st);
		c = check_register_fmt("%s: read sector 0", nm);
		fill_q(buf, 0xccccccccccccccccull, 64);
		st = b->dead ? BLK_TIMEOUT : blk_req(b, VIRTIO_BLK_T_IN, 0, buf, 512, 0, &used);
		if (st != VIRTIO_BLK_S_OK)
			FAIL_NOW(c, "%s (0x%x)", blk_status_name(st), st);
		else
			OK_NOW(c, "%016lx%016lx", __builtin_bswap64(*(u64 *)buf), __builtin_bswap64(*(u64 *)(buf + 8)));
	}

	c = check_register_fmt("%s: read past end", nm);
	st = b->dead ? BLK_TIMEOUT : blk_req(b, VIRTIO_BLK_T_IN, b->capacity, buf, 512, 1, &used);
	if (st == VIRTIO_BLK_S_IOERR)
		OK_NOW(c, "ioerr");
	else
		FAIL_NOW(c, "sector %lu: %s (0x%x) used %u, want ioerr", b->capacity, blk_status_name(st), st, used);

	c = check_register_fmt("%s: unsupported request", nm);
	st = b->dead ? BLK_TIMEOUT : blk_req(b, VIRTIO_BLK_T_BOGUS, 0, NULL, 0, 0, &used);
	if (st == VIRTIO_BLK_S_UNSUPP)
		OK_NOW(c, "unsupp");
	else
		FAIL_NOW(c, "type 0x%x: %s (0x%x), want unsupp", VIRTIO_BLK_T_BOGUS, blk_status_name(st), st);
	vdev_reset(d);
}

void blk_mode(void)
{
	virtio_setup();
	u32 n = 0;
	for (u32 i = 0; i < num_vdevs; i++)
		if (vdevs[i].type == VIRTIO_ID_BLOCK) {
			blk_device(&vdevs[i]);
			n++;
		}
	if (!n) {
		int c = check_register("blk");
		FAIL_NOW(c, "no virtio-blk device on the command line");
	}
}

/* ---- probe.mode=blkbench --------------------------------------------------------- */
void blkbench_mode(void)
{
	static struct blk bb;
	virtio_setup();
	int c = check_register("blkbench");
	struct vdev *d = virtio_find(VIRTIO_ID_BLOCK, 0);
	if (!d) {
		FAIL_NOW(c, "no virtio-blk device on the command line");
		return;
	}
	if (!blk_open(&bb, d, 256, 0, c)) {
		check_print(c);
		return;
	}
	struct blk *b = &bb;
	struct vq *q = b->q;
	u64 size = cfg.bench_size ? cfg.bench_size : 4096, n = cfg.bench_reqs;
	u64 spr = size / 512;
	int wr = cfg.bench_write;
	if (!spr || size % 512 || size > 0x400000 || spr > b->capacity) {
		FAIL_NOW(c, "probe.bench_size=%lu: want a multiple of 512 up to 4 MiB and the disk (%lu sectors)", size,
			 b->capacity);
		return;
	}
	if (wr && b->ro) {
		FAIL_NOW(c, "probe.bench_op=write on a read-only drive");
		return;
	}
	u64 depth = q->size / 3;
	if (depth > BLK_SLOTS_MAX)
		depth = BLK_SLOTS_MAX;
	if (cfg.bench_depth && cfg.bench_depth < depth)
		depth = cfg.bench_depth;
	if (depth > n)
		depth = n ? n : 1;
	u64 mem = dma_avail() > 0x100000 ? dma_avail() - 0x100000 : 0;
	if (depth * size > mem)
		depth = mem / size;
	u8 *data = depth ? dma_alloc(depth * size, 4096) : NULL;
	if (!data) {
		FAIL_NOW(c, "no memory for %lu x %lu bytes", depth ? depth : 1, size);
		return;
	}
	/* fixed chains: slot i = descriptors 3i (header), 3i+1 (data), 3i+2 (status) */
	for (u64 i = 0; i < depth; i++) {
		struct vdesc *dd = &q->desc[3 * i];
		*(u32 *)(b->hdr + 16 * i) = wr ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
		*(u32 *)(b->hdr + 16 * i + 4) = 0;
		dd[0].addr = (u64)(b->hdr + 16 * i);
		dd[0].len = 16;
		dd[0].flags = VD_NEXT;
		dd[0].next = (u16)(3 * i + 1);
		dd[1].addr = (u64)(data + size * i);
		dd[1].len = (u32)size;
		dd[1].flags = VD_NEXT | (wr ? 0 : VD_WRITE);
		dd[1].next = (u16)(3 * i + 2);
		dd[2].addr = (u64)(b->status + 16 * i);
		dd[2].len = 1;
		dd[2].flags = VD_WRITE;
		dd[2].next = 0;
	}
	u64 span = b->capacity / spr;   /* request k goes to sector (k % span) * spr */
	u64 submitted = 0, done = 0, errors = 0, next_sector = 0, bad_status = 0;
	int irq = cfg.bench_irq != 0;
	vdev_irq(d, irq);
	if (d->event_idx)
		vq_want_irq_after(q, 0x8000);
	int timed = clock_init();
	pr("probe: blkbench start %lu requests %lu bytes %s depth %lu %s\n", n, size, wr ? "write" : "read", depth,
	   irq ? "irq" : "poll");
	u64 t0 = ticks;
	boot_timer_mark();
	/* the clock window lies inside the boot-timer marks: it holds only the requests */
	u64 c0 = clock_ns();
	for (; submitted < depth && submitted < n; submitted++) {
		*(u64 *)(b->hdr + 16 * submitted + 8) = next_sector;
		next_sector += spr;
		if (next_sector + spr > span * spr)
			next_sector = 0;
		vq_add(q, (u16)(3 * submitted));
	}
	vq_kick(q);
	while (done < n) {
		if (irq) {
			if (!vq_pending(q) && !vq_wait(q, 1, 1, cfg.virtio_timeout_ms))
				break;
		} else {
			u64 dl = deadline(cfg.virtio_timeout_ms);
			while (!vq_pending(q) && !expired(dl))
				;
			if (!vq_pending(q))
				break;
		}
		do {
			u32 id = vq_get(q, NULL), slot = id / 3;
			u8 *sb = b->status + 16 * slot;
			if (*sb != VIRTIO_BLK_S_OK) {
				errors++;
				bad_status = *sb;
			}
			done++;
			if (submitted < n) {
				*sb = 0xff;
				*(u64 *)(b->hdr + 16 * slot + 8) = next_sector;
				next_sector += spr;
				if (next_sector + spr > span * spr)
					next_sector = 0;
				vq_add(q, (u16)id);
				submitted++;
			}
		} while (vq_pending(q));
		vq_kick(q);
	}
	u64 c1 = clock_ns();
	boot_timer_mark();
	u64 ms = ticks - t0;
	if (timed)
		pr_always("probe: blkbench done %lu requests %lu bytes in %lu ns (kvmclock)\n", done, size, c1 - c0);
	else
		pr_always("probe: blkbench done %lu requests %lu bytes\n", done, size);
	if (done < n)
		FAIL_NOW(c, "only %lu of %lu requests completed (no completion within %lu ms)", done, n,
			 cfg.virtio_timeout_ms);
	else if (errors)
		FAIL_NOW(c, "%lu requests failed, last status 0x%lx", errors, bad_status, 0);
	else
		OK_NOW(c, "%s, depth %lu, %u notifications, %u interrupts", wr ? "write" : "read", depth, q->kicks, d->irqs);
	pr("probe: blkbench took ~%lu ms (LAPIC ticks)\n", ms);
	vdev_reset(d);
}

/* ---- probe.mode=blkclone ----------------------------------------------------------- */
/*
 * For clones of one snapshot sharing a disk: blk0 is opened during the checks,
 * then the probe idles (sti;hlt on the virtio tick) until a byte arrives on
 * COM1. A letter or digit T starts a round on sectors probe.blk_sectors:
 * read them and tell whose data they hold ("base": the sector pattern,
 * "mine": the pattern shifted by T, as this clone writes it, "other":
 * anything else), write the shifted pattern, read it back. 'q' ends the mode.
 * probe.touch_mib=N writes one word in each page of N MiB before idling; '!'
 * then reads one word of each of those pages, '#' writes one.
 * Tagged pattern: sector s holds what the plain pattern puts in sector s + T.
 */
static struct blk clone_blk;
static int clone_ready;
static u8 *clone_ws;            /* the probe.touch_mib working set */
static u64 clone_ws_bytes;

void blkclone_mode(void)
{
	virtio_setup();
	int c = check_register("blkclone: init");
	struct vdev *d = virtio_find(VIRTIO_ID_BLOCK, 0);
	if (!d) {
		FAIL_NOW(c, "no virtio-blk device on the command line");
		return;
	}
	if (!blk_open(&clone_blk, d, 16, 0, c)) {
		check_print(c);
		return;
	}
	if (clone_blk.ro || cfg.blk_first >= clone_blk.capacity ||
	    cfg.blk_count > clone_blk.capacity - cfg.blk_first || !blk_buffer()) {
		FAIL_NOW(c, "blk0 is read-only, or sectors %lu..+%lu beyond its %lu sectors", cfg.blk_first,
			 cfg.blk_count, clone_blk.capacity);
		return;
	}
	/* A working set, as a booted sandbox has one (kernel, page cache): one write
	 * per page makes each page the VM's own. */
	u64 touch = cfg.touch_mib << 20;
	u8 *ws = touch && touch < dma_avail() ? dma_alloc(touch, 4096) : NULL;
	if (touch && !ws) {
		FAIL_NOW(c, "probe.touch_mib=%lu: only %lu bytes free", cfg.touch_mib, dma_avail());
		return;
	}
	for (u64 off = 0; off < touch; off += 4096)
		*(volatile u64 *)(ws + off) = off | 1;
	clone_ws = ws;
	clone_ws_bytes = touch;
	clone_ready = 1;
	OK_NOW(c, "capacity %lu, %lu MiB touched", clone_blk.capacity, cfg.touch_mib);
}

/* Reads the round's sectors; returns "base", "mine" or "other", or NULL on a failed read. */
static const char *clone_whose(u64 tag, u32 *st)
{
	u8 *buf = blk_buffer();
	const u64 per = BLK_BUF_BYTES / 512;
	int base = 1, mine = 1;
	for (u64 s = cfg.blk_first, left = cfg.blk_count; left;) {
		u64 n = left < per ? left : per, bs, bb, got;
		fill_q(buf, 0xccccccccccccccccull, n * 64);
		*st = blk_req(&clone_blk, VIRTIO_BLK_T_IN, s, buf, (u32)(n * 512), 0, NULL);
		if (*st != VIRTIO_BLK_S_OK)
			return NULL;
		base &= pattern_check(buf, s, n, &bs, &bb, &got);
		mine &= pattern_check(buf, s + tag, n, &bs, &bb, &got);
		s += n;
		left -= n;
	}
	return base ? "base" : mine ? "mine" : "other";
}

static void clone_round(u8 tag)
{
	u8 *buf = blk_buffer();
	const u64 per = BLK_BUF_BYTES / 512;
	u32 st = 0;
	const char *before = clone_whose(tag, &st);
	if (!before) {
		pr_always("probe: blkclone %c: FAIL first read: %s\n", tag, blk_status_name(st));
		return;
	}
	for (u64 s = cfg.blk_first, left = cfg.blk_count; left;) {
		u64 n = left < per ? left : per;
		pattern_fill(buf, s + tag, n);
		st = blk_req(&clone_blk, VIRTIO_BLK_T_OUT, s, buf, (u32)(n * 512), 0, NULL);
		if (st != VIRTIO_BLK_S_OK) {
			pr_always("probe: blkclone %c: FAIL write of sectors %lu..+%lu: %s\n", tag, s, n,
				  blk_status_name(st));
			return;
		}
		s += n;
		left -= n;
	}
	const char *after = clone_whose(tag, &st);
	if (!after || after[0] != 'm')
		pr_always("probe: blkclone %c: FAIL read back: %s\n", tag, after ? after : blk_status_name(st));
	else
		pr_always("probe: blkclone %c: before %s, write+read %lu sectors: ok\n", tag, before, cfg.blk_count);
}

void blkclone_run(void)
{
	if (!clone_ready)
		return;
	pr_always("probe: blkclone ready\n");
	pr_flush();
	for (;;) {
		cli();
		while (serial_rx_ready()) {
			u8 c = serial_rx();
			if (c == 'q') {
				pr_always("probe: blkclone bye\n");
				return;
			}
			if (c == '!' || c == '#') {
				/* '!' reads one word of every working-set page, '#' writes one:
				 * after a restore, how a clone uses memory it shares with its
				 * snapshot (a read maps the shared page, a write copies it) */
				u64 sum = 0;
				for (u64 off = 0; off < clone_ws_bytes; off += 4096) {
					volatile u64 *w = (volatile u64 *)(clone_ws + off);
					if (c == '#')
						*w = off | 3;
					sum += *w;
				}
				pr_always("probe: blkclone %s %lu MiB: ok %lx\n", c == '!' ? "read" : "wrote",
					  clone_ws_bytes >> 20, sum);
				pr_flush();
				continue;
			}
			if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
				clone_round(c);
				pr_flush();
			}
		}
		sti_hlt();      /* the virtio tick (TICK_MS) wakes the poll */
	}
}
