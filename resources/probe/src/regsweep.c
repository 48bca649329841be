/*
 * probe.mode=regsweep: a hostile driver at the register level. For every
 * virtio-mmio device on the command line:
 *
 * 1. sweep: every 32-bit register offset 0x000..0x0fc and the first 64 bytes
 *    of the config space, written with every value of a list (boundaries,
 *    status combinations, every single bit, addresses in the MMIO gap, and
 *    garbage from a fixed LCG), each write followed by a read of the same
 *    offset; value after value, so Status, feature and queue writes meet
 *    each other's leftovers in every order. Then 1-, 2- and 8-byte and
 *    misaligned accesses at every offset.
 * 2. garbage rings: a by-the-book init whose queues point at rings full of
 *    LCG garbage (in probe memory), DRIVER_OK, and a notification of every
 *    queue: the device must serve or refuse them, not hang or crash.
 *    Then the same with rings that hold scrambled chains: descriptors into a
 *    scratch buffer of the probe with random lengths, flags (NEXT, WRITE,
 *    INDIRECT) and next indices, and random heads, which the device walks
 *    and serves (random request headers included).
 * 3. recovery: reset (Status 0 must read back 0) and a normal init; blk
 *    devices then read sector 0 (status ok), net devices must initialise.
 *
 * Line per device and phase: `probe: regsweep <dev> sweep: ok <n> writes,
 * <n> reads`, `regsweep <dev> garbage rings: ok status 0x..`, `regsweep <dev> scrambled chains: ok
 * status 0x..`, `regsweep <dev> recovery: ok ...`. spry must keep running and the probe must reach
 * its summary and reset.
 */
#include "blk.h"
#include "net.h"

#define CONFIG_SWEEP 0x40

static const u32 fixed_values[] = {
	0, 1, 2, 3, 4, 7, 8, 0xb, 0xf, 0x10, 0x40, 0x4f, 0x7f, 0x80, 0xff, 0x100,
	0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff,
	0xdeadbeef, 0xe0000000, 0xfee00000,
};
#define N_FIXED (sizeof(fixed_values) / sizeof(fixed_values[0]))
#define N_RANDOM 24

static u32 lcg = 0x5eed5a17;

static u32 garbage(void)
{
	lcg = lcg * 1103515245u + 12345u;
	return lcg ^ (lcg >> 15);
}

static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }

static u32 sink;        /* reads land here, so they are not optimised away */

/* value number i of the sweep: fixed values, single bits, then garbage */
static u32 sweep_value(u32 i)
{
	if (i < N_FIXED)
		return fixed_values[i];
	if (i < N_FIXED + 32)
		return 1u << (i - N_FIXED);
	return garbage();
}

static void sweep(struct vdev *d)
{
	int c = check_register_fmt("regsweep %s sweep", d->name);
	u32 writes = 0, reads = 0;
	for (u32 i = 0; i < N_FIXED + 32 + N_RANDOM; i++) {
		u32 v = sweep_value(i);
		for (u32 off = 0; off < VR_CONFIG + CONFIG_SWEEP; off += 4) {
			vw(d, off, v);
			sink += vr(d, off);
			writes++;
			reads++;
		}
	}
	/* odd sizes and misaligned offsets */
	for (u32 off = 0; off < VR_CONFIG + CONFIG_SWEEP; off++) {
		u32 v = garbage();
		mmio_write8(d->base + off, (u8)v);
		sink += mmio_read8(d->base + off);
		mmio_write16(d->base + off, (u16)v);
		sink += mmio_read16(d->base + off);
		mmio_write64(d->base + off, ((u64)garbage() << 32) | v);
		sink += (u32)mmio_read64(d->base + off);
		writes += 3;
		reads += 3;
	}
	OK_NOW(c, "%u writes, %u reads", writes, reads);
}

#define SCRATCH_BYTES 0x10000

/* Descriptors that point into `scratch` with random lengths (up to 8 KiB),
 * flags (NEXT, WRITE, INDIRECT) and next indices, and an available ring of
 * random heads: chains the device walks and serves, garbage inside. */
static void scramble(u64 ring, u16 size, u64 scratch)
{
	struct vdesc *t = (struct vdesc *)ring;
	volatile u16 *avail = (volatile u16 *)(ring + 4096);
	for (u16 i = 0; i < size; i++) {
		t[i].addr = scratch + (garbage() & (SCRATCH_BYTES - 0x2000 - 1));
		t[i].len = garbage() & 0x1fff;
		t[i].flags = garbage() & 7;
		t[i].next = garbage() & (size - 1);
	}
	avail[0] = 0;
	for (u16 i = 0; i < size; i++)
		avail[2 + i] = garbage() & (size - 1);
	avail[1] = size / 2;
}

/* A by-the-book init whose rings are garbage (tame == 0) or hold scrambled
 * chains in probe memory (tame == 1), then a notification per queue. */
static void garbage_rings(struct vdev *d, u32 nq, int tame)
{
	int c = check_register_fmt("regsweep %s %s", d->name, tame ? "scrambled chains" : "garbage rings");
	u32 *rings = dma_alloc(3 * 4096 * nq, 4096);
	u8 *scratch = tame ? dma_alloc(SCRATCH_BYTES, 4096) : 0;
	if (!rings || (tame && !scratch)) {
		FAIL_NOW(c, "no memory");
		return;
	}
	for (u32 i = 0; i < 3 * 1024 * nq; i++)
		rings[i] = garbage();
	vw(d, VR_STATUS, 0);
	vw(d, VR_STATUS, VS_ACKNOWLEDGE | VS_DRIVER);
	vw(d, VR_DEV_FEAT_SEL, 0);
	vw(d, VR_DRV_FEAT_SEL, 0);
	vw(d, VR_DRV_FEATURES, vr(d, VR_DEV_FEATURES));
	vw(d, VR_DEV_FEAT_SEL, 1);
	vw(d, VR_DRV_FEAT_SEL, 1);
	vw(d, VR_DRV_FEATURES, vr(d, VR_DEV_FEATURES));
	vw(d, VR_STATUS, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK);
	for (u32 q = 0; q < nq; q++) {
		u64 base = (u64)rings + 3 * 4096 * q;
		vw(d, VR_QUEUE_SEL, q);
		u32 max = vr(d, VR_QUEUE_NUM_MAX);
		u16 size = max < 256 ? (u16)max : 256;
		vw(d, VR_QUEUE_NUM, size);
		if (tame)
			scramble(base, size, (u64)scratch);
		vw(d, VR_QUEUE_DESC_LO, (u32)base);
		vw(d, VR_QUEUE_DESC_HI, 0);
		vw(d, VR_QUEUE_AVAIL_LO, (u32)(base + 4096));
		vw(d, VR_QUEUE_AVAIL_HI, 0);
		vw(d, VR_QUEUE_USED_LO, (u32)(base + 8192));
		vw(d, VR_QUEUE_USED_HI, 0);
		vw(d, VR_QUEUE_READY, 1);
	}
	vw(d, VR_STATUS, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
	for (u32 q = 0; q < nq; q++)
		vw(d, VR_QUEUE_NOTIFY, q);
	/* let the event loop chew on them */
	msleep(20);
	u32 st = vr(d, VR_STATUS);
	vw(d, VR_INT_ACK, vr(d, VR_INT_STATUS));
	OK_NOW(c, "status 0x%x", st);
}

static void recovery(struct vdev *d)
{
	int c = check_register_fmt("regsweep %s recovery", d->name);
	vw(d, VR_STATUS, 0);
	u32 st = vr(d, VR_STATUS);
	if (st) {
		FAIL_NOW(c, "status 0x%x after reset, want 0", st);
		return;
	}
	if (d->type == VIRTIO_ID_BLOCK) {
		static struct blk b;
		u8 *buf = blk_buffer();
		if (!buf || !blk_open(&b, d, 16, 0, c)) {
			check_print(c);
			return;
		}
		u32 used = 0, r = blk_req(&b, VIRTIO_BLK_T_IN, 0, buf, 512, 0, &used);
		if (r == VIRTIO_BLK_S_OK && used == 513)
			OK_NOW(c, "read sector 0");
		else
			FAIL_NOW(c, "read sector 0: %s (0x%x) used %u", blk_status_name(r), r, used);
		return;
	}
	if (vdev_init(d, 0, 2, 16, c))
		OK_NOW(c, "init");
	else
		check_print(c);
}

void regsweep_mode(void)
{
	virtio_setup();
	if (!num_vdevs) {
		int c = check_register("regsweep");
		FAIL_NOW(c, "no virtio device on the command line");
		return;
	}
	for (u32 i = 0; i < num_vdevs; i++) {
		struct vdev *d = &vdevs[i];
		u32 nq = d->type == VIRTIO_ID_NET ? 2 : 1;
		sweep(d);
		garbage_rings(d, nq, 0);
		garbage_rings(d, nq, 1);
		recovery(d);
	}
}
