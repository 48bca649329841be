/*
 * virtio-vsock driver of the probe, probe.mode=vsock: one stream connection at
 * a time, driven step by step (every wait sti;hlt for the device interrupt,
 * bounded by probe.vsock_timeout_ms).
 *
 *   vsock           init (3 queues), the guest CID from the config space
 *   vsock-listen    probe.vsock_listen=P: "listening on port P", accept the
 *                   host's connection to P, echo every byte back until the
 *                   host shuts down (SHUTDOWN), answer with RST
 *   vsock-connect   probe.vsock_connect=P: connect to host port P, send
 *                   probe.vsock_bytes bytes of the pattern (i*7+0x5a), read
 *                   them back and compare, SHUTDOWN, wait for the RST
 *   vsock-refused   probe.vsock_refused=P: connect to host port P, expect RST
 *   vsock-hostile   probe.vsock_hostile=1 (runs first): seven malformed
 *                   transmit chains, each of which the device must complete
 *                   (and count); the wrong-type one must be answered with RST
 *
 * The listen and connect lines report the byte count and the FNV-1a hash of
 * the bytes received, which the host compares with what it sent. Buffers:
 * one 4 KiB descriptor per packet, header and payload together (Linux 6.2+
 * does the same), so a payload is at most 4096 - 44 bytes.
 */
#include "virtio.h"

#define VIRTIO_ID_VSOCK 19
#define HOST_CID        2
#define HDR             44
#define VBUF            4096
#define MAX_DATA        (VBUF - HDR)
#define GUEST_BUF_ALLOC 65536   /* what the probe advertises: it consumes at once */
#define LOCAL_PORT      1024

#define OP_REQUEST        1
#define OP_RESPONSE       2
#define OP_RST            3
#define OP_SHUTDOWN       4
#define OP_RW             5
#define OP_CREDIT_UPDATE  6
#define OP_CREDIT_REQUEST 7

struct vhdr {
	u64 src_cid, dst_cid;
	u32 src_port, dst_port, len;
	u16 type, op;
	u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

static struct vdev *dev;
static struct vq *rxq, *txq;
static u8 *rxbuf, *txbuf;
static u64 guest_cid;
static u16 tx_next;
static u32 fwd_cnt;             /* bytes of the current connection consumed */
static u8 data[MAX_DATA];       /* payload of the last packet received */

static u32 fnv(u32 h, const u8 *p, u32 n)
{
	for (u32 i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x01000193u;
	}
	return h;
}
#define FNV_START 0x811c9dc5u

static inline u8 pattern(u64 i) { return (u8)((i * 7 + 0x5a) & 0xff); }

/* Sends one packet and waits (polling) for the device to take it. */
static int send(u32 src_port, u32 dst_port, u16 op, u32 flags, const u8 *payload, u32 len)
{
	u16 slot = tx_next;
	tx_next = (u16)((tx_next + 1) & (txq->size - 1));
	u8 *p = txbuf + (u64)slot * VBUF;
	struct vhdr h = {
		.src_cid = guest_cid, .dst_cid = HOST_CID, .src_port = src_port, .dst_port = dst_port,
		.len = len, .type = 1, .op = op, .flags = flags, .buf_alloc = GUEST_BUF_ALLOC, .fwd_cnt = fwd_cnt,
	};
	memcpy(p, &h, HDR);
	if (len)
		memcpy(p + HDR, payload, len);
	txq->desc[slot].len = HDR + len;
	vq_add(txq, slot);
	vq_kick(txq);
	if (!vq_wait(txq, 1, 0, cfg.virtio_timeout_ms))
		return 0;
	vq_get(txq, NULL);
	return 1;
}

/* Waits for the next packet; copies its header to *h and payload to data[].
 * Returns 0 on timeout or a malformed used entry. */
static int recv(struct vhdr *h)
{
	if (!vq_wait(rxq, 1, 1, cfg.vsock_timeout_ms))
		return 0;
	u32 len, id = vq_get(rxq, &len);
	int ok = id < rxq->size && len >= HDR && len <= VBUF;
	if (ok) {
		u8 *p = rxbuf + (u64)id * VBUF;
		memcpy(h, p, HDR);
		ok = h->len <= MAX_DATA && h->len == len - HDR;
		if (ok && h->len)
			memcpy(data, p + HDR, h->len);
	}
	if (id < rxq->size) {
		vq_add(rxq, (u16)id);
		vq_kick(rxq);
	}
	return ok;
}

/* The next packet of connection local<->peer (others are dropped). */
static int recv_on(struct vhdr *h, u32 local, u32 peer)
{
	for (;;) {
		if (!recv(h))
			return 0;
		if (h->dst_port == local && h->src_port == peer)
			return 1;
	}
}

static int open_device(int c)
{
	dev = virtio_find(VIRTIO_ID_VSOCK, 0);
	if (!dev) {
		FAIL_NOW(c, "no virtio-vsock device (type 19) on the command line");
		return 0;
	}
	if (!vdev_init(dev, 0, 3, 64, c)) {
		check_print(c);
		return 0;
	}
	rxq = &dev->q[0];
	txq = &dev->q[1];
	guest_cid = vr(dev, VR_CONFIG) | ((u64)vr(dev, VR_CONFIG + 4) << 32);
	if (!rxbuf)
		rxbuf = dma_alloc((u64)rxq->size * VBUF, 4096);
	if (!txbuf)
		txbuf = dma_alloc((u64)txq->size * VBUF, 4096);
	if (!rxbuf || !txbuf) {
		FAIL_NOW(c, "no memory for %u+%u buffers", rxq->size, txq->size);
		return 0;
	}
	for (u16 i = 0; i < rxq->size; i++) {
		rxq->desc[i] = (struct vdesc){ .addr = (u64)(rxbuf + (u64)i * VBUF), .len = VBUF, .flags = VD_WRITE };
		vq_add(rxq, i);
	}
	for (u16 i = 0; i < txq->size; i++)
		txq->desc[i] = (struct vdesc){ .addr = (u64)(txbuf + (u64)i * VBUF) };
	vq_kick(rxq);
	vdev_irq(dev, 1);
	OK_NOW(c, "cid %lu", guest_cid);
	return 1;
}

static void listen_step(u32 port)
{
	int c = check_register("vsock-listen");
	struct vhdr h;
	pr("probe: vsock: listening on port %u\n", port);
	pr_flush();
	for (;;) {
		if (!recv(&h)) {
			FAIL_NOW(c, "port %u: no connection request", port);
			return;
		}
		if (h.op == OP_REQUEST && h.dst_port == port)
			break;
	}
	u32 peer = h.src_port;
	fwd_cnt = 0;
	if (!send(port, peer, OP_RESPONSE, 0, NULL, 0)) {
		FAIL_NOW(c, "port %u: RESPONSE not taken", port);
		return;
	}
	u32 sum = FNV_START;
	u64 total = 0;
	for (;;) {
		if (!recv_on(&h, port, peer)) {
			FAIL_NOW(c, "port %u: timed out after %lu bytes", port, total);
			return;
		}
		if (h.op == OP_RW) {
			sum = fnv(sum, data, h.len);
			total += h.len;
			fwd_cnt += h.len;
			if (!send(port, peer, OP_RW, 0, data, h.len)) {
				FAIL_NOW(c, "port %u: echo not taken", port);
				return;
			}
		} else if (h.op == OP_CREDIT_REQUEST) {
			send(port, peer, OP_CREDIT_UPDATE, 0, NULL, 0);
		} else if (h.op == OP_SHUTDOWN) {
			send(port, peer, OP_RST, 0, NULL, 0);
			break;
		} else if (h.op == OP_RST) {
			FAIL_NOW(c, "port %u: reset by the host after %lu bytes", port, total);
			return;
		}
	}
	OK_NOW(c, "port %u: %lu bytes echoed, fnv 0x%x", port, total, sum);
}

static void connect_step(u32 port)
{
	int c = check_register("vsock-connect");
	u32 local = LOCAL_PORT + 1;
	struct vhdr h;
	fwd_cnt = 0;
	if (!send(local, port, OP_REQUEST, 0, NULL, 0) || !recv_on(&h, local, port)) {
		FAIL_NOW(c, "port %u: no answer to the request", port);
		return;
	}
	if (h.op != OP_RESPONSE) {
		FAIL_NOW(c, "port %u: answered with op %u, want RESPONSE", port, h.op);
		return;
	}
	u64 bytes = cfg.vsock_bytes, sent = 0, got = 0;
	u32 sum = FNV_START;
	static u8 chunk[MAX_DATA];
	while (sent < bytes) {
		u32 n = bytes - sent < MAX_DATA ? (u32)(bytes - sent) : MAX_DATA;
		for (u32 i = 0; i < n; i++)
			chunk[i] = pattern(sent + i);
		if (!send(local, port, OP_RW, 0, chunk, n)) {
			FAIL_NOW(c, "port %u: data not taken after %lu bytes", port, sent);
			return;
		}
		sent += n;
	}
	while (got < bytes) {
		if (!recv_on(&h, local, port) || h.op == OP_RST) {
			FAIL_NOW(c, "port %u: %lu of %lu bytes came back", port, got, bytes);
			return;
		}
		if (h.op != OP_RW)
			continue;
		for (u32 i = 0; i < h.len; i++)
			if (data[i] != pattern(got + i)) {
				FAIL_NOW(c, "port %u: byte %lu is 0x%x, want 0x%x", port, got + i, data[i],
					 pattern(got + i));
				return;
			}
		sum = fnv(sum, data, h.len);
		got += h.len;
		fwd_cnt += h.len;
		if (fwd_cnt % (GUEST_BUF_ALLOC / 2) < h.len)
			send(local, port, OP_CREDIT_UPDATE, 0, NULL, 0);
	}
	send(local, port, OP_SHUTDOWN, 3, NULL, 0);
	for (;;) {
		if (!recv_on(&h, local, port)) {
			FAIL_NOW(c, "port %u: no RST after SHUTDOWN", port);
			return;
		}
		if (h.op == OP_RST)
			break;
	}
	OK_NOW(c, "port %u: %lu bytes echoed back, fnv 0x%x", port, got, sum);
}

/* Queues n descriptors as one chain (tx slots, restored afterwards) and waits
 * for the device to complete it. */
static int send_raw(const struct vdesc *descs, u16 n)
{
	if (tx_next + n > txq->size)
		tx_next = 0;
	u16 head = tx_next;
	for (u16 i = 0; i < n; i++) {
		struct vdesc *d = &txq->desc[head + i];
		*d = descs[i];
		if (i + 1 < n) {
			d->flags |= VD_NEXT;
			d->next = (u16)(head + i + 1);
		}
	}
	tx_next = (u16)((tx_next + n) & (txq->size - 1));
	vq_add(txq, head);
	vq_kick(txq);
	int done = vq_wait(txq, 1, 0, cfg.virtio_timeout_ms);
	if (done)
		vq_get(txq, NULL);
	for (u16 i = 0; i < n; i++)
		txq->desc[head + i] = (struct vdesc){ .addr = (u64)(txbuf + (u64)(head + i) * VBUF) };
	return done;
}

/* Header number `slot` of the hostile chains (each in a buffer of its own). */
static u64 hostile_header(u32 slot, u64 cid, u16 type, u32 len, u16 op)
{
	static u8 bufs[5][64] __attribute__((aligned(64)));
	u8 *buf = bufs[slot];
	struct vhdr h = {
		.src_cid = cid, .dst_cid = HOST_CID, .src_port = LOCAL_PORT + 3, .dst_port = 9,
		.len = len, .type = type, .op = op, .buf_alloc = GUEST_BUF_ALLOC,
	};
	memcpy(buf, &h, HDR);
	return (u64)buf;
}

static void hostile_step(void)
{
	int c = check_register("vsock-hostile");
	u64 ok_hdr = hostile_header(0, guest_cid, 1, 16, OP_RW);
	u64 payload = (u64)data;
	const struct vdesc chains[][2] = {
		{ { .addr = ok_hdr, .len = 20 } },                         /* header cut short */
		{ { .addr = ok_hdr, .len = HDR, .flags = VD_WRITE } },     /* device-writable */
		{ { .addr = ok_hdr, .len = HDR }, { .addr = 0xfff00000000ull, .len = 16 } }, /* outside RAM */
		{ { .addr = hostile_header(1, guest_cid, 1, 1u << 20, OP_RW), .len = HDR },
		  { .addr = payload, .len = 16 } },                        /* len beyond any packet */
	};
	const u16 lens[] = { 1, 1, 2, 2 };
	u32 sent = 0;
	for (u32 i = 0; i < ARRAY_SIZE(lens); i++, sent++)
		if (!send_raw(chains[i], lens[i])) {
			FAIL_NOW(c, "malformed chain %u was never completed", i);
			return;
		}
	/* a chain whose next index points outside the table */
	struct vdesc broken = { .addr = hostile_header(2, guest_cid, 1, 16, OP_RW), .len = HDR, .flags = VD_NEXT };
	txq->desc[0] = broken;
	txq->desc[0].next = 200;
	tx_next = 0;
	vq_add(txq, 0);
	vq_kick(txq);
	if (!vq_wait(txq, 1, 0, cfg.virtio_timeout_ms)) {
		FAIL_NOW(c, "the chain with a bad next index was never completed");
		return;
	}
	vq_get(txq, NULL);
	txq->desc[0] = (struct vdesc){ .addr = (u64)txbuf };
	tx_next = 1;
	sent++;
	/* a spoofed source CID, then a socket type the device does not serve */
	struct vdesc spoofed = { .addr = hostile_header(3, 99, 1, 0, OP_REQUEST), .len = HDR };
	struct vdesc seqpacket = { .addr = hostile_header(4, guest_cid, 2, 0, OP_REQUEST), .len = HDR };
	if (!send_raw(&spoofed, 1) || !send_raw(&seqpacket, 1)) {
		FAIL_NOW(c, "a malformed header was never completed");
		return;
	}
	sent += 2;
	struct vhdr h;
	if (!recv_on(&h, LOCAL_PORT + 3, 9) || h.op != OP_RST) {
		FAIL_NOW(c, "no RST for the wrong socket type");
		return;
	}
	OK_NOW(c, "%u malformed packets completed, RST for the wrong type", sent);
}

static void refused_step(u32 port)
{
	int c = check_register("vsock-refused");
	u32 local = LOCAL_PORT + 2;
	struct vhdr h;
	if (!send(local, port, OP_REQUEST, 0, NULL, 0) || !recv_on(&h, local, port)) {
		FAIL_NOW(c, "port %u: no answer to the request", port);
		return;
	}
	if (h.op != OP_RST) {
		FAIL_NOW(c, "port %u: answered with op %u, want RST", port, h.op);
		return;
	}
	OK_NOW(c, "port %u: reset", port);
}

void vsock_mode(void)
{
	virtio_setup();
	int c = check_register("vsock");
	if (!open_device(c))
		return;
	if (cfg.vsock_hostile)
		hostile_step();
	if (cfg.vsock_listen)
		listen_step((u32)cfg.vsock_listen);
	if (cfg.vsock_connect)
		connect_step((u32)cfg.vsock_connect);
	if (cfg.vsock_refused)
		refused_step((u32)cfg.vsock_refused);
}
