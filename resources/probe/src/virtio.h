/*
 * A minimal virtio-mmio (version 2, "modern") driver core for the probe:
 * device discovery from virtio_mmio.device= tokens, feature negotiation,
 * split virtqueues in probe memory, notification (with EVENT_IDX), bounded
 * polling and interrupt waits, a bump allocator for rings and buffers and a
 * millisecond tick for timeouts.
 */
#ifndef PROBE_VIRTIO_H
#define PROBE_VIRTIO_H
#include "io.h"
#include "probe.h"

/* ---- registers (virtio 1.2, 4.2.2) ---------------------------------------- */
#define VR_MAGIC          0x000
#define VR_VERSION        0x004
#define VR_DEVICE_ID      0x008
#define VR_VENDOR_ID      0x00c
#define VR_DEV_FEATURES   0x010
#define VR_DEV_FEAT_SEL   0x014
#define VR_DRV_FEATURES   0x020
#define VR_DRV_FEAT_SEL   0x024
#define VR_QUEUE_SEL      0x030
#define VR_QUEUE_NUM_MAX  0x034
#define VR_QUEUE_NUM      0x038
#define VR_QUEUE_READY    0x044
#define VR_QUEUE_NOTIFY   0x050
#define VR_INT_STATUS     0x060
#define VR_INT_ACK        0x064
#define VR_STATUS         0x070
#define VR_QUEUE_DESC_LO  0x080
#define VR_QUEUE_DESC_HI  0x084
#define VR_QUEUE_AVAIL_LO 0x090
#define VR_QUEUE_AVAIL_HI 0x094
#define VR_QUEUE_USED_LO  0x0a0
#define VR_QUEUE_USED_HI  0x0a4
#define VR_CONFIG_GEN     0x0fc
#define VR_CONFIG         0x100

#define VIRTIO_MAGIC     0x74726976u    /* "virt" */
#define SPRY_VENDOR_ID   0x59525053u    /* "SPRY" */
#define VIRTIO_ID_NET    1
#define VIRTIO_ID_BLOCK  2

#define VS_ACKNOWLEDGE   0x01
#define VS_DRIVER        0x02
#define VS_DRIVER_OK     0x04
#define VS_FEATURES_OK   0x08
#define VS_NEEDS_RESET   0x40
#define VS_FAILED        0x80

#define VIRTIO_INT_USED   1
#define VIRTIO_INT_CONFIG 2

#define F_BIT(n)          (1ull << (n))
#define VIRTIO_F_INDIRECT 28
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

/* ---- split virtqueue ------------------------------------------------------ */
#define VD_NEXT     1
#define VD_WRITE    2
#define VD_INDIRECT 4

struct vdesc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct vdev;

/* Ring layout in one block: descriptors at 0, avail ring at 16*size,
 * used ring at the next 4 KiB boundary. */
struct vq {
	struct vdev *dev;
	u16 index, size;
	struct vdesc *desc;
	volatile u16 *avail;    /* flags, idx, ring[size], used_event */
	volatile u16 *used;     /* flags, idx, {u32 id, u32 len}[size], avail_event */
	u16 avail_idx;          /* driver's next avail index */
	u16 kicked;             /* avail index at the last notification decision */
	u16 last_used;          /* next used entry to consume */
	u64 ring;               /* ring block, allocated once, zeroed on every setup */
	u64 ring_bytes;
	u32 kicks;              /* QueueNotify writes issued */
};

#define VIRTIO_MAX_DEVS 19      /* IRQs 5..23 */

struct vdev {
	u64 base;
	u32 irq;                /* GSI = IOAPIC pin */
	u32 type;               /* VIRTIO_ID_* */
	u32 unit;               /* N of blkN / netN */
	u32 vendor;             /* VendorID: any; spry's is SPRY_VENDOR_ID */
	char name[8];
	u64 offered, acked;
	u8 event_idx;
	u8 irq_on;              /* IOAPIC pin routed (else masked: polling) */
	volatile u32 isr;       /* InterruptStatus bits seen by the handler (accumulated) */
	volatile u32 irqs;      /* interrupts taken */
	u32 nq;
	struct vq q[3];         /* vsock: rx, tx, event */
};

extern struct vdev vdevs[VIRTIO_MAX_DEVS];
extern u32 num_vdevs;

static inline u32 vr(struct vdev *d, u32 off) { return mmio_read32(d->base + off); }
static inline void vw(struct vdev *d, u32 off, u32 v) { mmio_write32(d->base + off, v); }

/* compiler barrier; full barrier (xchg is implicitly locked) */
#define barrier() __asm__ volatile("" ::: "memory")
void mb(void);

/* Finds the virtio_mmio.device= devices and identifies them; registers and
 * prints the 'virtio-mmio' check. Sets up interrupts (PIC masked, LAPIC on,
 * IF=1) and the millisecond tick. Idempotent. */
u32 virtio_setup(void);
struct vdev *virtio_find(u32 type, u32 unit);

/* Resets d, negotiates want & offered (VERSION_1 required), sets up nq
 * queues of qsize entries (rings allocated on first use, zeroed every
 * time) and sets DRIVER_OK. On failure records FAIL(chk, ...) and
 * returns 0. */
int vdev_init(struct vdev *d, u64 want, u32 nq, u16 qsize, int chk);
void vdev_reset(struct vdev *d);
/* route (1) or mask (0) the device's IOAPIC pin; routing it acknowledges
 * InterruptStatus bits left from polling (see virtio.c) */
void vdev_irq(struct vdev *d, int on);

/* avail ring: add a chain head, then kick (notify unless suppressed) */
static inline __attribute__((always_inline)) void vq_add(struct vq *q, u16 head)
{
	q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
	q->avail_idx++;
}
static inline __attribute__((always_inline)) void vq_publish(struct vq *q)
{
	barrier();
	q->avail[1] = q->avail_idx;
}
void vq_kick(struct vq *q);     /* vq_publish + notify if the device wants it */
void vq_notify(struct vq *q);   /* unconditional QueueNotify write */

static inline __attribute__((always_inline)) u16 vq_used_idx(struct vq *q) { return *(volatile u16 *)&q->used[1]; }
static inline __attribute__((always_inline)) u16 vq_pending(struct vq *q) { return (u16)(vq_used_idx(q) - q->last_used); }
/* next used element: returns its id, *len its length; call only if pending */
static inline __attribute__((always_inline)) u32 vq_get(struct vq *q, u32 *len)
{
	volatile u32 *e = (volatile u32 *)((u64)q->used + 4 + 8 * (q->last_used & (q->size - 1)));
	q->last_used++;
	if (len)
		*len = e[1];
	return e[0];
}
/* EVENT_IDX: interrupt when the used index passes last_used + n - 1 */
static inline __attribute__((always_inline)) void vq_want_irq_after(struct vq *q, u16 n)
{
	q->avail[2 + q->size] = (u16)(q->last_used + n - 1);
}

/* Waits until at least n used entries are pending, by polling the used
 * index (irq == 0) or in sti;hlt until the device interrupt (irq == 1);
 * gives up after timeout_ms. Returns 1 if they arrived. */
int vq_wait(struct vq *q, u16 n, int irq, u64 timeout_ms);

/* ---- memory and time ------------------------------------------------------ */
/* bump allocator over the RAM after the probe image (identity-mapped,
 * zero-filled by the VMM, never freed); NULL when exhausted */
void *dma_alloc(u64 size, u64 align);
u64 dma_avail(void);

#define TICK_MS 5               /* LAPIC timer period; each tick costs ~50 instructions */
extern volatile u64 ticks;      /* milliseconds since virtio_setup(), in TICK_MS steps */
static inline u64 deadline(u64 ms) { return ticks + ms + TICK_MS; }
static inline int expired(u64 dl) { return (s64)(ticks - dl) >= 0; }
/* sleep (sti; hlt) for about ms milliseconds */
void msleep(u64 ms);

/* the boot timer: spry logs each 123 written here with a monotonic stamp */
static inline __attribute__((always_inline)) void boot_timer_mark(void)
{
	if (facts.boot_timer_ok)
		mmio_write8(BOOT_TIMER_ADDR, BOOT_TIMER_MAGIC);
}

/* qword string helpers: one emulated iteration per 8 bytes */
static inline void copy_q(void *d, const void *s, u64 nq)
{
	__asm__ volatile("rep movsq" : "+D"(d), "+S"(s), "+c"(nq) : : "memory");
}
static inline void fill_q(void *d, u64 v, u64 nq)
{
	__asm__ volatile("rep stosq" : "+D"(d), "+c"(nq) : "a"(v) : "memory");
}
static inline int equal_q(const void *a, const void *b, u64 nq)
{
	u8 ne;
	if (!nq)
		return 1;
	__asm__ volatile("repe cmpsq" : "+D"(b), "+S"(a), "+c"(nq), "=@ccnz"(ne) : : "memory");
	return !ne;
}

static inline void irq_enable(void) { __asm__ volatile("sti" ::: "memory"); }

#endif
