/*
 * virtio-net driver of the probe, probe.mode=net and probe.mode=netbench.
 *
 * net: for every network device (net0, net1, ... in command-line order):
 * init, MAC line, probe.net_tx standard frames sent (TX completion polled),
 * then probe.net_rx frames of EtherType 0x88b5 received (sti;hlt until the
 * device interrupt, bounded by probe.net_timeout_ms per frame), each
 * printed and echoed back with EtherType 0x88b6 (zero-copy: the receive
 * buffer itself is transmitted, then posted again).
 *
 * The standard frame k: dst ff:ff:ff:ff:ff:ff, src = the device MAC (or
 * 02:00:00:00:00:01 without VIRTIO_NET_F_MAC), EtherType 0x88b5, payload of
 * 64 + k bytes: the string "spry-probe frame <k> " (k in decimal) repeated
 * and cut to length.
 */
#include "net.h"
#include "clock.h"

static const u8 default_mac[6] = { 0x02, 0, 0, 0, 0, 0x01 };

int net_open(struct net *n, struct vdev *d, u16 qsize, u64 tx_slot, int post_rx, int chk)
{
	n->d = d;
	n->rx = &d->q[0];
	n->tx = &d->q[1];
	u64 want = F_BIT(VIRTIO_F_EVENT_IDX) | F_BIT(VIRTIO_NET_F_MRG_RXBUF) | F_BIT(VIRTIO_NET_F_MAC) |
		   F_BIT(VIRTIO_NET_F_MTU);
	if (!vdev_init(d, want, 2, qsize, chk))
		return 0;
	n->has_mac = (d->acked & F_BIT(VIRTIO_NET_F_MAC)) != 0;
	n->mrg = (d->acked & F_BIT(VIRTIO_NET_F_MRG_RXBUF)) != 0;
	if (n->has_mac) {
		u32 lo = vr(d, VR_CONFIG), hi = vr(d, VR_CONFIG + 4);
		for (u32 i = 0; i < 4; i++)
			n->mac[i] = (u8)(lo >> (8 * i));
		n->mac[4] = (u8)hi;
		n->mac[5] = (u8)(hi >> 8);
	} else {
		memcpy(n->mac, default_mac, 6);
	}
	n->mtu = (d->acked & F_BIT(VIRTIO_NET_F_MTU)) ? (u16)(vr(d, VR_CONFIG + 8) >> 16) : 1500;
	tx_slot = (tx_slot + 63) & ~63ull;
	/* buffers are allocated once per struct net; reallocated only if they grow */
	if (!n->rxbuf || n->rx_count < n->rx->size) {
		n->rxbuf = dma_alloc((u64)n->rx->size * NET_BUF_BYTES, 4096);
		n->rx_count = n->rx->size;
	}
	if (!n->txbuf || tx_slot > n->tx_slot || n->tx_count < n->tx->size) {
		n->txbuf = dma_alloc((u64)n->tx->size * tx_slot, 4096);
		n->tx_slot = tx_slot;
		n->tx_count = n->tx->size;
	}
	if (!n->rxbuf || !n->txbuf) {
		FAIL(chk, "no memory for %u+%u buffers", n->rx->size, n->tx->size);
		return 0;
	}
	for (u16 i = 0; i < n->rx->size; i++) {
		struct vdesc *dd = &n->rx->desc[i];
		dd->addr = (u64)(n->rxbuf + (u64)i * NET_BUF_BYTES);
		dd->len = NET_BUF_BYTES;
		dd->flags = VD_WRITE;
		dd->next = 0;
		if (post_rx)
			vq_add(n->rx, i);
	}
	for (u16 i = 0; i < n->tx->size; i++) {
		struct vdesc *dd = &n->tx->desc[i];
		dd->addr = (u64)(n->txbuf + (u64)i * n->tx_slot);
		dd->len = 0;
		dd->flags = 0;
		dd->next = 0;
	}
	n->tx_free = n->tx->size;
	n->tx_next = 0;
	vq_want_irq_after(n->tx, 0x8000);       /* TX completions are polled */
	if (post_rx)
		vq_kick(n->rx);
	return 1;
}

static u32 frame_header(const struct net *n, u8 *p, u16 ethertype)
{
	fill_q(p, 0, 2);        /* virtio_net_hdr_mrg_rxbuf (+4 bytes overwritten below) */
	memset(p + NET_HDR_LEN, 0xff, 6);
	memcpy(p + NET_HDR_LEN + 6, n->mac, 6);
	p[NET_HDR_LEN + 12] = (u8)(ethertype >> 8);
	p[NET_HDR_LEN + 13] = (u8)ethertype;
	return NET_HDR_LEN + 14;
}

u32 net_build_frame(const struct net *n, u8 *p, u32 k, u16 ethertype)
{
	char s[32];
	u32 off = frame_header(n, p, ethertype);
	u32 sl = fmt_str(s, sizeof(s), "spry-probe frame %u ", k), len = 64 + k;
	for (u32 done = 0; done < len;) {
		u32 c = len - done < sl ? len - done : sl;
		memcpy(p + off + done, s, c);
		done += c;
	}
	return off + len;
}

void net_tx_reap(struct net *n)
{
	while (vq_pending(n->tx)) {
		vq_get(n->tx, NULL);
		n->tx_free++;
	}
}

int net_tx_drain(struct net *n, u64 timeout_ms)
{
	u64 dl = deadline(timeout_ms);
	for (;;) {
		net_tx_reap(n);
		if (n->tx_free == n->tx->size)
			return 1;
		if (expired(dl))
			return 0;
	}
}

/* next TX slot (waits, polling, for a free one); NULL on timeout */
static u8 *tx_slot(struct net *n, u16 *slot)
{
	u64 dl = deadline(cfg.virtio_timeout_ms);
	while (!n->tx_free) {
		net_tx_reap(n);
		if (!n->tx_free && expired(dl))
			return NULL;
	}
	n->tx_free--;
	*slot = n->tx_next;
	n->tx_next = (u16)((n->tx_next + 1) & (n->tx->size - 1));
	return n->txbuf + (u64)*slot * n->tx_slot;
}

static void tx_send(struct net *n, u16 slot, u64 addr, u32 len)
{
	struct vdesc *dd = &n->tx->desc[slot];
	dd->addr = addr;
	dd->len = len;
	dd->flags = 0;
	vq_add(n->tx, slot);
	vq_kick(n->tx);
}

/* ---- probe.mode=net ------------------------------------------------------------ */
static void net_device(struct vdev *d)
{
	static struct net nets[VIRTIO_MAX_DEVS];
	struct net *n = &nets[d->unit];
	const char *nm = d->name;
	int c = check_register_fmt("%s: init", nm);
	if (!net_open(n, d, 16, NET_BUF_BYTES, 1, c)) {
		check_print(c);
		return;
	}
	OK_NOW(c, "mmio 0x%lx irq %u features 0x%lx of 0x%lx", d->base, d->irq, d->acked, d->offered);
	pr("probe: %s: mac %02x:%02x:%02x:%02x:", nm, n->mac[0], n->mac[1], n->mac[2], n->mac[3]);
	pr("%02x:%02x%s mtu %u\n", n->mac[4], n->mac[5], n->has_mac ? "" : " (default)", n->mtu);

	/* (a) transmit the standard frames 0 .. net_tx-1 */
	c = check_register_fmt("%s: tx %lu frames", nm, cfg.net_tx);
	u32 sent = 0;
	for (; sent < cfg.net_tx; sent++) {
		u16 slot;
		u8 *p = tx_slot(n, &slot);
		if (!p || 64 + sent + 26 > n->tx_slot)
			break;
		tx_send(n, slot, (u64)p, net_build_frame(n, p, sent, ETH_P_PROBE));
	}
	if (sent < cfg.net_tx)
		FAIL_NOW(c, "frame %u: no free TX slot within %lu ms (or frame too long)", sent, cfg.virtio_timeout_ms);
	else if (!net_tx_drain(n, cfg.virtio_timeout_ms))
		FAIL_NOW(c, "%u of %u frames not completed within %lu ms", n->tx->size - n->tx_free, sent,
			 cfg.virtio_timeout_ms);
	else
		OK_NOW(c, "");

	/* (b) receive and echo net_rx frames */
	if (!cfg.net_rx) {
		vdev_reset(d);
		return;
	}
	c = check_register_fmt("%s: rx+echo %lu frames", nm, cfg.net_rx);
	pr_always("probe: %s: rx ready for %lu frames\n", nm, cfg.net_rx);
	vdev_irq(d, 1);
	u32 got = 0, ignored = 0;
	u64 dl = deadline(cfg.net_timeout_ms);
	while (got < cfg.net_rx) {
		if (!vq_pending(n->rx) && !vq_wait(n->rx, 1, 1, dl > ticks ? dl - ticks : 0))
			break;
		u32 len, id = vq_get(n->rx, &len);
		u8 *buf = n->rxbuf + (u64)(id & (n->rx->size - 1)) * NET_BUF_BYTES;
		u32 nbuf = ld16((u64)buf + 10);
		if (id >= n->rx->size || len < NET_HDR_LEN + 14 || len > NET_BUF_BYTES || (n->mrg && nbuf != 1)) {
			FAIL(c, "frame %u: used id %u len %u num_buffers %u (want one buffer, 26..2048 bytes)", got, id, len,
			     nbuf);
			vq_add(n->rx, (u16)(id & (n->rx->size - 1)));
			vq_kick(n->rx);
			got++;
			continue;
		}
		u8 *fr = buf + NET_HDR_LEN;
		u32 flen = len - NET_HDR_LEN;
		if (ld16((u64)fr + 12) != 0xb588) {     /* not 0x88b5 (big endian) */
			ignored++;
			vq_add(n->rx, (u16)id);
			vq_kick(n->rx);
			continue;
		}
		pr("probe: %s: rx %u len %u sum %04lx\n", nm, got, flen, bytesum((u64)fr, flen) & 0xffff);
		/* echo in place: EtherType 0x88b6, zeroed virtio header */
		fr[13] = 0xb6;
		fill_q(buf, 0, 1);
		*(u32 *)(buf + 8) = 0;
		u16 slot;
		u8 *p = tx_slot(n, &slot);
		if (!p) {
			FAIL(c, "frame %u: no free TX slot for the echo", got);
			break;
		}
		tx_send(n, slot, (u64)buf, len);
		if (!net_tx_drain(n, cfg.virtio_timeout_ms)) {
			FAIL(c, "echo of frame %u not completed within %lu ms", got, cfg.virtio_timeout_ms);
			break;
		}
		vq_add(n->rx, (u16)id);
		vq_kick(n->rx);
		got++;
		dl = deadline(cfg.net_timeout_ms);
	}
	if (got < cfg.net_rx)
		FAIL(c, "only %u of %lu frames within %lu ms", got, cfg.net_rx, cfg.net_timeout_ms);
	else
		OK(c, "");
	check_print(c);
	if (ignored)
		pr("probe: %s: ignored %u frames of other EtherTypes\n", nm, ignored);
	vdev_reset(d);
}

void net_mode(void)
{
	virtio_setup();
	u32 k = 0;
	for (u32 i = 0; i < num_vdevs; i++)
		if (vdevs[i].type == VIRTIO_ID_NET) {
			net_device(&vdevs[i]);
			k++;
		}
	if (!k) {
		int c = check_register("net");
		FAIL_NOW(c, "no virtio-net device on the command line");
	}
}

/* ---- probe.mode=netbench --------------------------------------------------------- */
void netbench_mode(void)
{
	static struct net nb;
	struct net *n = &nb;
	virtio_setup();
	int c = check_register("netbench");
	struct vdev *d = virtio_find(VIRTIO_ID_NET, 0);
	if (!d) {
		FAIL_NOW(c, "no virtio-net device on the command line");
		return;
	}
	u64 size = cfg.bench_size ? cfg.bench_size : 1514, frames = cfg.bench_frames;
	if (size < 18 || size > 65535) {
		FAIL_NOW(c, "probe.bench_size=%lu: want 18..65535 (Ethernet frame bytes)", size);
		return;
	}
	if (!net_open(n, d, 256, NET_HDR_LEN + size, cfg.bench_rx != 0, c)) {
		check_print(c);
		return;
	}
	struct vq *tx = n->tx;
	u64 depth = tx->size;
	if (cfg.bench_depth && cfg.bench_depth < depth)
		depth = cfg.bench_depth;
	/* prebuilt frames: header + payload; bytes 0..3 of the payload = frame
	 * index (u32 LE), the rest stays zero (fresh RAM, never written) */
	for (u64 i = 0; i < depth; i++) {
		u8 *p = n->txbuf + i * n->tx_slot;
		frame_header(n, p, ETH_P_PROBE);
		tx->desc[i].len = (u32)(NET_HDR_LEN + size);
	}
	int irq = cfg.bench_irq != 0;
	vdev_irq(d, irq);
	int timed = clock_init();
	pr("probe: netbench start %lu frames %lu bytes depth %lu %s\n", frames, size, depth, irq ? "irq" : "poll");
	u64 t0 = ticks, sent = 0, done = 0;
	boot_timer_mark();
	/* the clock window lies inside the boot-timer marks: it holds only the frames */
	u64 c0 = clock_ns();
	for (; sent < depth && sent < frames; sent++) {
		*(u32 *)(n->txbuf + sent * n->tx_slot + NET_HDR_LEN + 14) = (u32)sent;
		vq_add(tx, (u16)sent);
	}
	vq_kick(tx);
	while (done < frames) {
		if (irq) {
			if (!vq_pending(tx) && !vq_wait(tx, 1, 1, cfg.virtio_timeout_ms))
				break;
		} else {
			u64 dl = deadline(cfg.virtio_timeout_ms);
			while (!vq_pending(tx) && !expired(dl))
				;
			if (!vq_pending(tx))
				break;
		}
		do {
			u32 id = vq_get(tx, NULL);
			done++;
			if (sent < frames) {
				*(u32 *)(n->txbuf + (u64)id * n->tx_slot + NET_HDR_LEN + 14) = (u32)sent;
				vq_add(tx, (u16)id);
				sent++;
			}
		} while (vq_pending(tx));
		vq_kick(tx);
	}
	u64 c1 = clock_ns();
	boot_timer_mark();
	u64 ms = ticks - t0;
	if (timed)
		pr_always("probe: netbench done %lu frames %lu bytes in %lu ns (kvmclock)\n", done, size, c1 - c0);
	else
		pr_always("probe: netbench done %lu frames %lu bytes\n", done, size);
	if (done < frames)
		FAIL_NOW(c, "only %lu of %lu frames completed (none within %lu ms)", done, frames, cfg.virtio_timeout_ms);
	else
		OK_NOW(c, "tx, depth %lu, %u notifications, %u interrupts", depth, tx->kicks, d->irqs);
	pr("probe: netbench took ~%lu ms (LAPIC ticks)\n", ms);
	if (!cfg.bench_rx) {
		vdev_reset(d);
		return;
	}

	/* receive: count 0x88b5 frames; sti;hlt only when the ring is empty */
	c = check_register("netbench rx");
	struct vq *rx = n->rx;
	u32 irqs0 = d->irqs;
	pr_always("probe: netbench rx ready for %lu frames\n", cfg.bench_rx);
	u64 got = 0, bytes = 0, other = 0, bad = 0, first_ns = 0, last_ns = 0;
	while (got < cfg.bench_rx) {
		/* poll, or (probe.bench_irq=1) sti;hlt until the interrupt when the ring is empty */
		if (!vq_pending(rx) && !vq_wait(rx, 1, irq, cfg.net_timeout_ms))
			break;
		do {
			u32 len, id = vq_get(rx, &len);
			u8 *fr = n->rxbuf + (u64)(id & (rx->size - 1)) * NET_BUF_BYTES + NET_HDR_LEN;
			if (len < NET_HDR_LEN + 14 || len > NET_BUF_BYTES)
				bad++;
			else if (ld16((u64)fr + 12) == 0xb588) {
				/* timed from the first frame to the last: got - 1 frame intervals */
				if (!got++)
					first_ns = clock_ns();
				bytes += len - NET_HDR_LEN;
			} else
				other++;
			vq_add(rx, (u16)(id & (rx->size - 1)));
		} while (vq_pending(rx) && got < cfg.bench_rx);
		vq_kick(rx);
	}
	if (got == cfg.bench_rx) {
		last_ns = clock_ns();
		boot_timer_mark();
	}
	if (timed && got > 1 && last_ns)
		pr_always("probe: netbench rx done %lu frames %lu bytes in %lu ns (kvmclock, frame 1 to %lu)\n", got, bytes,
			  last_ns - first_ns, got);
	else
		pr_always("probe: netbench rx done %lu frames %lu bytes\n", got, bytes);
	if (got < cfg.bench_rx)
		FAIL_NOW(c, "only %lu of %lu frames (none within %lu ms)", got, cfg.bench_rx, cfg.net_timeout_ms);
	else if (bad)
		FAIL_NOW(c, "%lu bad used entries", bad);
	else
		OK_NOW(c, "%lu other frames ignored, %u notifications, %u interrupts", other, rx->kicks, d->irqs - irqs0);
	vdev_reset(d);
}
