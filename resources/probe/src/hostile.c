/*
 * probe.mode=hostile: malformed requests spry must survive, then proof that
 * it still serves.
 *
 * blk0 (queue of 16): one malformed chain at a time, each freshly built and
 * polled for completion (bounded by probe.virtio_timeout_ms; on a timeout
 * the device is reset and re-initialised before the next case); a normal
 * read; then avail.idx += 1000, which must make spry declare the queue
 * broken (DEVICE_NEEDS_RESET in Status plus a config-change interrupt);
 * blk1 must keep working meanwhile; then blk0 is reset, re-initialised from
 * scratch and must pass the pattern write+read.
 * net0 (if present): malformed TX chains, then one normal frame (standard
 * frame 0, see net.c) that the host must receive -- and no other.
 */
#include "blk.h"
#include "net.h"

#define GAP_ADDR   0xe0000000ull        /* MMIO gap: no RAM */
#define HIGH_ADDR  0x1000000000ull      /* 64 GiB */
#define QSZ        16

static struct blk hb[2];
static struct vdesc *itab;              /* indirect tables */
static void extra_breakers(struct blk *b);

static void D(struct vdesc *t, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	t[i].addr = addr;
	t[i].len = len;
	t[i].flags = flags;
	t[i].next = next;
}

/* header for an IN request of sector 0, status sentinel 0xff */
static void prep(struct blk *b, u32 type)
{
	*(u32 *)b->hdr = type;
	*(u32 *)(b->hdr + 4) = 0;
	*(u64 *)(b->hdr + 8) = 0;
	b->status[0] = 0xff;
}

/* submits head 0; polls. 1 completed, 0 no completion, -1 wrong id */
static int submit(struct blk *b, u32 *used)
{
	struct vq *q = b->q;
	if (b->d->event_idx)
		vq_want_irq_after(q, 0x8000);
	vq_add(q, 0);
	vq_kick(q);
	*used = ~0u;
	if (!vq_wait(q, 1, 0, cfg.virtio_timeout_ms))
		return 0;
	u32 len, id = vq_get(q, &len);
	*used = id ? id : len;  /* the wrong id goes to finish() */
	return id == 0 ? 1 : -1;
}

static int reopen(struct blk *b, int chk)
{
	return blk_open(b, b->d, QSZ, F_BIT(VIRTIO_F_INDIRECT), chk);
}

enum expect { EXPECT_IOERR, EXPECT_NO_STATUS, EXPECT_SERVED_OR_IOERR, EXPECT_LAST_BYTE };

static void finish(struct blk *b, int c, int r, u32 used, enum expect e, const u8 *last_byte)
{
	u8 st = b->status[0];
	if (r <= 0) {
		if (r)
			FAIL_NOW(c, "completion of another chain, id %u (device reset and re-initialised)", used);
		else
			FAIL_NOW(c, "no completion within %lu ms (device reset and re-initialised)", cfg.virtio_timeout_ms);
		reopen(b, c);
		return;
	}
	switch (e) {
	case EXPECT_IOERR:
		if (st == VIRTIO_BLK_S_IOERR && used == 1)
			OK_NOW(c, "ioerr used 1");
		else
			FAIL_NOW(c, "status 0x%x used %u, want ioerr used 1", st, used);
		break;
	case EXPECT_NO_STATUS:
		if (used == 0 && st == 0xff)
			OK_NOW(c, "used 0, status untouched");
		else if (used == 1 && st == VIRTIO_BLK_S_IOERR)
			OK_NOW(c, "ioerr used 1");
		else
			FAIL_NOW(c, "status 0x%x used %u, want used 0 (no status) or ioerr", st, used);
		break;
	case EXPECT_SERVED_OR_IOERR:
		if (st == VIRTIO_BLK_S_OK)
			OK_NOW(c, "served, status ok used %u", used);
		else if (st == VIRTIO_BLK_S_IOERR)
			OK_NOW(c, "ioerr used %u", used);
		else
			FAIL_NOW(c, "status 0x%x used %u, want ok or ioerr", st, used);
		break;
	case EXPECT_LAST_BYTE:
		if (used == 0 && *last_byte == 0xee && st == 0xff)
			OK_NOW(c, "used 0, nothing written");
		else if (used == 1 && *last_byte == VIRTIO_BLK_S_IOERR && st == 0xff)
			OK_NOW(c, "used 1, ioerr in the last writable byte (data[511])");
		else
			FAIL_NOW(c, "used %u, data[511] 0x%x, status 0x%x (zero-length) ", used, *last_byte, st);
		break;
	}
}

static void blk_cases(struct blk *b, u8 *dbuf)
{
	struct vq *q = b->q;
	struct vdesc *t = q->desc;
	u64 h = (u64)b->hdr, s = (u64)b->status, db = (u64)dbuf;
	const char *nm = b->d->name;
	u32 used;
	int c, r;

	static const u64 bad_addr[2] = { GAP_ADDR, HIGH_ADDR };
	static const char *const bad_name[2] = { "data in mmio gap 0xe0000000", "data at 64 GiB" };
	for (u32 i = 0; i < 2; i++) {
		c = check_register_fmt("hostile %s %s", nm, bad_name[i]);
		prep(b, VIRTIO_BLK_T_IN);
		D(t, 0, h, 16, VD_NEXT, 1);
		D(t, 1, bad_addr[i], 512, VD_NEXT | VD_WRITE, 2);
		D(t, 2, s, 1, VD_WRITE, 0);
		r = submit(b, &used);
		finish(b, c, r, used, EXPECT_IOERR, NULL);
	}

	c = check_register_fmt("hostile %s descriptor loop", nm);
	prep(b, VIRTIO_BLK_T_IN);
	D(t, 0, h, 16, VD_NEXT, 1);
	D(t, 1, db, 512, VD_NEXT | VD_WRITE, 2);
	D(t, 2, s, 1, VD_NEXT | VD_WRITE, 0);
	r = submit(b, &used);
	finish(b, c, r, used, EXPECT_IOERR, NULL);

	c = check_register_fmt("hostile %s next index out of range", nm);
	prep(b, VIRTIO_BLK_T_IN);
	D(t, 0, h, 16, VD_NEXT, 1);
	D(t, 1, db, 512, VD_NEXT | VD_WRITE, 2);
	D(t, 2, s, 1, VD_NEXT | VD_WRITE, q->size);
	r = submit(b, &used);
	finish(b, c, r, used, EXPECT_IOERR, NULL);

	c = check_register_fmt("hostile %s readable data on IN", nm);
	prep(b, VIRTIO_BLK_T_IN);
	fill_q(dbuf, 0xa5a5a5a5a5a5a5a5ull, 64);
	D(t, 0, h, 16, VD_NEXT, 1);
	D(t, 1, db, 512, VD_NEXT, 2);
	D(t, 2, s, 1, VD_WRITE, 0);
	r = submit(b, &used);
	{
		u64 i = 0;
		while (i < 512 && dbuf[i] == 0xa5)
			i++;
		if (r > 0 && i < 512)
			FAIL_NOW(c, "the device wrote into a device-readable buffer (byte %lu = 0x%x)", i, dbuf[i]);
		else
			finish(b, c, r, used, EXPECT_IOERR, NULL);
	}

	c = check_register_fmt("hostile %s huge length 0xfffffe00", nm);
	prep(b, VIRTIO_BLK_T_IN);
	D(t, 0, h, 16, VD_NEXT, 1);
	D(t, 1, db, 0xfffffe00u, VD_NEXT | VD_WRITE, 2);
	D(t, 2, s, 1, VD_WRITE, 0);
	r = submit(b, &used);
	finish(b, c, r, used, EXPECT_IOERR, NULL);

	c = check_register_fmt("hostile %s zero-length status", nm);
	prep(b, VIRTIO_BLK_T_IN);
	dbuf[511] = 0xee;
	D(t, 0, h, 16, VD_NEXT, 1);
	D(t, 1, db, 512, VD_NEXT | VD_WRITE, 2);
	D(t, 2, s, 0, VD_WRITE, 0);
	r = submit(b, &used);
	finish(b, c, r, used, EXPECT_LAST_BYTE, dbuf + 511);

	/* indirect: 2 * QSZ + 2 entries, i.e. a chain longer than the queue */
	u16 ni = 2 * QSZ + 2;
	c = check_register_fmt("hostile %s indirect chain of %u (queue %u)", nm, ni, QSZ);
	prep(b, VIRTIO_BLK_T_IN);
	D(itab, 0, h, 16, VD_NEXT, 1);
	for (u16 i = 1; i + 1 < ni; i++)
		D(itab, i, db + 512ull * (i - 1), 512, VD_NEXT | VD_WRITE, (u16)(i + 1));
	D(itab, (u16)(ni - 1), s, 1, VD_WRITE, 0);
	D(t, 0, (u64)itab, 16u * ni, VD_INDIRECT, 0);
	r = submit(b, &used);
	finish(b, c, r, used, EXPECT_SERVED_OR_IOERR, NULL);

	c = check_register_fmt("hostile %s loop in indirect table", nm);
	prep(b, VIRTIO_BLK_T_IN);
	D(itab, 0, h, 16, VD_NEXT, 1);
	D(itab, 1, db, 512, VD_NEXT | VD_WRITE, 2);
	D(itab, 2, s, 1, VD_NEXT | VD_WRITE, 0);
	D(t, 0, (u64)itab, 48, VD_INDIRECT, 0);
	r = submit(b, &used);
	finish(b, c, r, used, EXPECT_IOERR, NULL);

	c = check_register_fmt("hostile %s indirect table length 56", nm);
	prep(b, VIRTIO_BLK_T_IN);
	D(itab, 0, h, 16, VD_NEXT, 1);
	D(itab, 1, db, 512, VD_NEXT | VD_WRITE, 2);
	D(itab, 2, s, 1, VD_WRITE, 0);
	D(t, 0, (u64)itab, 56, VD_INDIRECT, 0);
	r = submit(b, &used);
	finish(b, c, r, used, EXPECT_NO_STATUS, NULL);

	c = check_register_fmt("hostile %s indirect table in mmio gap", nm);
	prep(b, VIRTIO_BLK_T_IN);
	D(t, 0, GAP_ADDR, 48, VD_INDIRECT, 0);
	r = submit(b, &used);
	finish(b, c, r, used, EXPECT_NO_STATUS, NULL);

	c = check_register_fmt("hostile %s normal read after bad chains", nm);
	u32 st = blk_req(b, VIRTIO_BLK_T_IN, 0, dbuf, 512, 0, &used);
	if (st == VIRTIO_BLK_S_OK && used == 513)
		OK_NOW(c, "");
	else
		FAIL_NOW(c, "%s (0x%x) used %u", blk_status_name(st), st, used);
}

/* a normal write+read of the pattern (or, on a read-only drive, a read of
 * sector 0) under the check "hostile <drive> <what> ..." */
static void prove_serving(struct blk *b, const char *what)
{
	const char *nm = b->d->name;
	int c;
	if (b->ro) {
		c = check_register_fmt("hostile %s %sread sector 0", nm, what);
		u32 used, st = blk_req(b, VIRTIO_BLK_T_IN, 0, blk_buffer(), 512, 1, &used);
		if (st == VIRTIO_BLK_S_OK)
			OK_NOW(c, "");
		else
			FAIL_NOW(c, "%s (0x%x)", blk_status_name(st), st);
	} else {
		c = check_register_fmt("hostile %s %swrite+read %lu sectors", nm, what, cfg.blk_count);
		blk_write_read(b, cfg.blk_first, cfg.blk_count, c, -1);
		check_print(c);
	}
}

/* the second drive must keep working while blk0 is broken */
static void other_drive(struct blk *b)
{
	int c = check_register_fmt("hostile %s init", b->d->name);
	if (!blk_open(b, b->d, QSZ, 0, c)) {
		check_print(c);
		return;
	}
	OK_NOW(c, "while %s is broken", hb[0].d->name);
	prove_serving(b, "");
	vdev_reset(b->d);
}

/* Status must show DEVICE_NEEDS_RESET within the timeout: polled back to back
 * for 20 ms, then once a tick */
static int wait_needs_reset(struct vdev *d, u32 *st)
{
	u64 dl = deadline(cfg.virtio_timeout_ms), fast = deadline(20);
	while (!((*st = vr(d, VR_STATUS)) & VS_NEEDS_RESET) && !expired(dl))
		if (expired(fast))
			msleep(TICK_MS);
	return (*st & VS_NEEDS_RESET) != 0;
}

static void break_and_recover(struct blk *b, struct vdev *other)
{
	struct vq *q = b->q;
	struct vdev *d = b->d;
	const char *nm = d->name;
	int c = check_register_fmt("hostile %s avail index +1000", nm);
	vdev_irq(d, 1);
	d->isr = 0;
	q->avail_idx = (u16)(q->avail_idx + 1000);
	vq_publish(q);
	mb();
	vq_notify(q);
	u64 t0 = ticks, dl = deadline(cfg.virtio_timeout_ms);
	u32 st;
	wait_needs_reset(d, &st);
	u64 ms = ticks - t0;
	while (!(d->isr & VIRTIO_INT_CONFIG) && !expired(dl))
		sti_hlt();
	if (!(st & VS_NEEDS_RESET))
		FAIL_NOW(c, "status 0x%x: no DEVICE_NEEDS_RESET within %lu ms", st, cfg.virtio_timeout_ms);
	else if (!(d->isr & VIRTIO_INT_CONFIG))
		FAIL_NOW(c, "needs-reset after ~%lu ms, but no config-change interrupt (InterruptStatus bits seen 0x%x)",
			 ms, d->isr);
	else
		OK_NOW(c, "needs-reset after ~%lu ms, config interrupt", ms);
	vdev_irq(d, 0);

	if (other)
		other_drive(&hb[1]);

	c = check_register_fmt("hostile %s reset", nm);
	vdev_reset(d);
	st = vr(d, VR_STATUS);
	u32 is = vr(d, VR_INT_STATUS);
	if (st || is)
		FAIL_NOW(c, "status 0x%x interrupt status 0x%x after writing 0, want 0 0", st, is);
	else
		OK_NOW(c, "status 0");

	c = check_register_fmt("hostile %s reinit", nm);
	if (reopen(b, c)) {
		OK_NOW(c, "");
		prove_serving(b, "reinit ");
	} else {
		check_print(c);
	}
	extra_breakers(b);
}

/* reset, re-init, one read: the device serves again */
static void recover(struct blk *b, const char *after)
{
	const char *nm = b->d->name;
	int c = check_register_fmt("hostile %s reset+read after %s", nm, after);
	u32 used, st;
	vdev_reset(b->d);
	if (!reopen(b, c)) {
		check_print(c);
		return;
	}
	st = blk_req(b, VIRTIO_BLK_T_IN, 0, blk_buffer(), 512, 0, &used);
	if (st == VIRTIO_BLK_S_OK)
		OK_NOW(c, "");
	else
		FAIL_NOW(c, "%s (0x%x)", blk_status_name(st), st);
}

/* extra cases that break the device, each followed by a recovery */
static void extra_breakers(struct blk *b)
{
	struct vdev *d = b->d;
	struct vq *q = b->q;
	const char *nm = d->name;
	u32 st, used;

	/* a head index outside the queue in the avail ring */
	int c = check_register_fmt("hostile %s avail head index 0xffff", nm);
	if (!reopen(b, c)) {
		check_print(c);
		return;
	}
	vq_add(q, 0xffff);
	vq_kick(q);
	u64 dl = deadline(cfg.virtio_timeout_ms);
	while (!vq_pending(q) && !(vr(d, VR_STATUS) & VS_NEEDS_RESET) && !expired(dl))
		msleep(TICK_MS);
	if (vq_pending(q)) {
		u32 id = vq_get(q, &used);
		OK_NOW(c, "completed: id 0x%x used %u", id, used);
	} else if (wait_needs_reset(d, &st)) {
		OK_NOW(c, "needs-reset");
	} else {
		FAIL_NOW(c, "neither a completion nor DEVICE_NEEDS_RESET within %lu ms (status 0x%x)",
			 cfg.virtio_timeout_ms, st);
	}
	recover(b, "bad head");

	/* DRIVER_OK with the descriptor table in the MMIO gap: activation must fail */
	c = check_register_fmt("hostile %s descriptor table in mmio gap", nm);
	vdev_reset(d);
	d->isr = 0;
	vdev_irq(d, 1);
	vw(d, VR_STATUS, VS_ACKNOWLEDGE | VS_DRIVER);
	vw(d, VR_DRV_FEAT_SEL, 1);
	vw(d, VR_DRV_FEATURES, 1);      /* VERSION_1 */
	vw(d, VR_DRV_FEAT_SEL, 0);
	vw(d, VR_DRV_FEATURES, 0);
	vw(d, VR_STATUS, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK);
	vw(d, VR_QUEUE_SEL, 0);
	vw(d, VR_QUEUE_NUM, QSZ);
	vw(d, VR_QUEUE_DESC_LO, (u32)GAP_ADDR);
	vw(d, VR_QUEUE_DESC_HI, 0);
	vw(d, VR_QUEUE_AVAIL_LO, (u32)(u64)q->avail);
	vw(d, VR_QUEUE_AVAIL_HI, 0);
	vw(d, VR_QUEUE_USED_LO, (u32)(u64)q->used);
	vw(d, VR_QUEUE_USED_HI, 0);
	vw(d, VR_QUEUE_READY, 1);
	vw(d, VR_STATUS, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
	if (!wait_needs_reset(d, &st))
		FAIL_NOW(c, "status 0x%x: no DEVICE_NEEDS_RESET within %lu ms", st, cfg.virtio_timeout_ms);
	else {
		dl = deadline(cfg.virtio_timeout_ms);
		while (!(d->isr & VIRTIO_INT_CONFIG) && !expired(dl))
			sti_hlt();
		if (d->isr & VIRTIO_INT_CONFIG)
			OK_NOW(c, "needs-reset, config interrupt");
		else
			FAIL_NOW(c, "needs-reset but no config-change interrupt (bits seen 0x%x)", d->isr);
	}
	vdev_irq(d, 0);
	recover(b, "bad ring");
	vdev_reset(d);
}

/* ---- net ------------------------------------------------------------------------ */
static void net_cases(struct vdev *d)
{
	static struct net hn;
	struct net *n = &hn;
	const char *nm = d->name;
	int c = check_register_fmt("hostile %s init", nm);
	if (!net_open(n, d, QSZ, NET_BUF_BYTES, 0, c)) {
		check_print(c);
		return;
	}
	OK_NOW(c, "");
	struct vq *q = n->tx;
	static const char *const names[3] = { "tx device-writable descriptor", "tx shorter than the header",
					      "tx buffer in mmio gap" };
	for (u16 i = 0; i < 4; i++) {
		u8 *p = n->txbuf + (u64)i * n->tx_slot;
		struct vdesc *dd = &q->desc[i];
		if (i < 3)
			c = check_register_fmt("hostile %s %s", nm, names[i]);
		else
			c = check_register_fmt("hostile %s normal tx", nm);
		u32 len = net_build_frame(n, p, i < 3 ? 900 + i : 0, ETH_P_PROBE);
		dd->addr = (u64)p;
		dd->len = len;
		dd->flags = 0;
		if (i == 0)
			dd->flags = VD_WRITE;
		else if (i == 1)
			dd->len = 6;
		else if (i == 2)
			dd->addr = GAP_ADDR;
		vq_add(q, i);
		vq_kick(q);
		if (!vq_wait(q, 1, 0, cfg.virtio_timeout_ms)) {
			FAIL_NOW(c, "no completion within %lu ms (device reset and re-initialised)", cfg.virtio_timeout_ms);
			if (!net_open(n, d, QSZ, NET_BUF_BYTES, 0, c))
				return;
			continue;
		}
		u32 used, id = vq_get(q, &used);
		u32 st = vr(d, VR_STATUS);
		if (id != i)
			FAIL_NOW(c, "completion of chain %u, want %u", id, i);
		else if (st & VS_NEEDS_RESET)
			FAIL_NOW(c, "device needs reset after it (status 0x%x)", st);
		else
			OK_NOW(c, "completed, used %u", used);
	}
	vdev_reset(d);
}

void hostile_mode(void)
{
	virtio_setup();
	struct vdev *d0 = virtio_find(VIRTIO_ID_BLOCK, 0), *d1 = virtio_find(VIRTIO_ID_BLOCK, 1);
	struct vdev *n0 = virtio_find(VIRTIO_ID_NET, 0);
	if (!d0 && !n0) {
		int c = check_register("hostile");
		FAIL_NOW(c, "no virtio-blk or virtio-net device on the command line");
		return;
	}
	if (d0) {
		u8 *dbuf = blk_buffer();
		itab = dma_alloc(16 * 64, 64);
		int c = check_register_fmt("hostile %s init", d0->name);
		hb[0].d = d0;
		if (!dbuf || !itab) {
			FAIL_NOW(c, "no memory");
			return;
		}
		if (!reopen(&hb[0], c)) {
			check_print(c);
		} else {
			OK_NOW(c, "mmio 0x%lx irq %u features 0x%lx", d0->base, d0->irq, d0->acked);
			if (d1)
				hb[1].d = d1;
			blk_cases(&hb[0], dbuf);
			break_and_recover(&hb[0], d1);
		}
	}
	if (n0)
		net_cases(n0);
}
