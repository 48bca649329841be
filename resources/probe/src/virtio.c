/*
 * virtio-mmio driver core of the probe (see virtio.h): discovery from the
 * command line (virtio_mmio.device=<size>@<base>:<irq>[:<id>], Linux's
 * syntax), initialisation, split virtqueues, notifications, waits, memory
 * and time.
 */
#include "bootparam.h"
#include "virtio.h"

struct vdev vdevs[VIRTIO_MAX_DEVS];
u32 num_vdevs;
static struct vdev *irq_dev[24];
static int setup_done;

volatile u64 ticks;

static u32 mb_dummy;
void mb(void)
{
	u32 x = 0;
	__asm__ volatile("xchgl %0, %1" : "+r"(x), "+m"(mb_dummy) : : "memory");
}

/* ---- memory ----------------------------------------------------------------- */
extern char __image_end[];
static u64 heap_cur, heap_end;

static void heap_init(void)
{
	u64 start = ((u64)__image_end + 0xfff) & ~0xfffull, end = start;
	if (facts.e820_ok) {
		u64 n = facts.e820_entries;
		for (u64 e = facts.e820_table; n; n--, e += facts.e820_stride) {
			u64 a = ld64(e), s = ld64(e + 8);
			if (ld32(e + 16) == E820_RAM && a <= start && start < a + s)
				end = a + s;
		}
	}
	if (end > MMIO_GAP_START)
		end = MMIO_GAP_START;
	if (facts.initrd_size && facts.initrd_addr >= start && facts.initrd_addr < end)
		end = facts.initrd_addr & ~0xfffull;
	heap_cur = start;
	heap_end = end;
}

void *dma_alloc(u64 size, u64 align)
{
	u64 a = (heap_cur + align - 1) & ~(align - 1);
	if (a + size > heap_end || a + size < a)
		return NULL;
	if (!mapped(a, size, "probe buffer"))
		return NULL;
	heap_cur = a + size;
	return (void *)a;
}

u64 dma_avail(void)
{
	return heap_end > heap_cur ? heap_end - heap_cur : 0;
}

/* ---- time ------------------------------------------------------------------- */
static void tick_isr(struct irq_frame *f)
{
	(void)f;
	ticks += TICK_MS;
	lapic_eoi();
}

void msleep(u64 ms)
{
	u64 dl = ticks + ms;
	while (!expired(dl))
		sti_hlt();
}

/* ---- interrupts ------------------------------------------------------------- */
static void virtio_isr(struct irq_frame *f)
{
	struct vdev *d = irq_dev[(f->vector - VEC_IRQ(0)) & 31];
	if (d) {
		u32 st = vr(d, VR_INT_STATUS);
		if (st)
			vw(d, VR_INT_ACK, st);
		d->isr |= st;
		d->irqs++;
	}
	lapic_eoi();
}

/*
 * The pin is edge-triggered. spry signals through an irqfd, a fresh edge per
 * interrupt; QEMU drives a level, high while InterruptStatus is non-zero. While
 * the probe polls (pin masked) nobody acknowledges, so QEMU's line stays high
 * and the next interrupt would raise no edge. Acknowledging after routing
 * drops it (with the pin routed first, an edge in between is taken, not lost).
 */
void vdev_irq(struct vdev *d, int on)
{
	irq_dev[d->irq] = d;
	irq_set_handler(VEC_IRQ(d->irq), virtio_isr);
	if (on) {
		ioapic_route(d->irq, VEC_IRQ(d->irq), facts.lapic_id);
		cli();
		u32 st = vr(d, VR_INT_STATUS);
		if (st)
			vw(d, VR_INT_ACK, st);
		d->isr |= st;   /* seen, as if the handler had run */
		irq_enable();
	} else {
		ioapic_mask(d->irq);
	}
	d->irq_on = (u8)on;
}

/* ---- discovery ---------------------------------------------------------------- */
/* decimal or 0x hex; advances *p; returns 0 without digits */
static int parse_u(const char **p, const char *end, u64 *out)
{
	const char *s = *p;
	u64 v = 0, base = 10;
	if (end - s > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	const char *digits = s;
	for (; s < end; s++) {
		char c = *s;
		u64 dg;
		if (c >= '0' && c <= '9')
			dg = (u64)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			dg = (u64)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			dg = (u64)(c - 'A' + 10);
		else
			break;
		v = v * base + dg;
	}
	if (s == digits)
		return 0;
	*p = s;
	*out = v;
	return 1;
}

/* "<size>[KMG]@<base>:<irq>[:<id>]" -> base, irq */
static int parse_dev(const char *s, const char *end, u64 *base, u64 *irq, u64 *size)
{
	if (!parse_u(&s, end, size))
		return 0;
	if (s < end && (*s == 'K' || *s == 'k'))
		*size <<= 10, s++;
	else if (s < end && (*s == 'M' || *s == 'm'))
		*size <<= 20, s++;
	else if (s < end && (*s == 'G' || *s == 'g'))
		*size <<= 30, s++;
	if (s >= end || *s++ != '@' || !parse_u(&s, end, base))
		return 0;
	if (s >= end || *s++ != ':' || !parse_u(&s, end, irq))
		return 0;
	return 1;
}

u32 virtio_setup(void)
{
	if (setup_done)
		return num_vdevs;
	setup_done = 1;
	int chk = check_register("virtio-mmio");
	heap_init();
	if (!facts.lapic_base || !mapped(facts.ioapic_base, 4096, "IOAPIC")) {
		FAIL_NOW(chk, "no usable LAPIC/IOAPIC (see cpuid, paging): no interrupts, no timeouts");
		return 0;
	}
	pic_mask_all();
	lapic_enable();
	irq_set_handler(VEC_TIMER, tick_isr);
	lapic_timer_periodic(VEC_TIMER, TICK_MS * 1000000ull);
	irq_enable();

	const char *cmd = (const char *)facts.cmdline;
	const char *end = cmd + facts.cmdline_len, *p = cmd;
	u32 nblk = 0, nnet = 0, other = 0, foreign = 0;
	static const char key[] = "virtio_mmio.device=";
	while (cmd && p < end) {
		const char *q = memchr_fast(p, (u64)(end - p), 'v');
		if (!q)
			break;
		p = q + 1;
		if ((q != cmd && q[-1] != ' ') || (u64)(end - q) < sizeof(key) - 1 || memcmp(q, key, sizeof(key) - 1))
			continue;
		const char *v = q + sizeof(key) - 1;
		const char *tok_end = memchr_fast(v, (u64)(end - v), ' ');
		if (!tok_end)
			tok_end = end;
		p = tok_end;
		u64 base, irq, size;
		if (!parse_dev(v, tok_end, &base, &irq, &size) || irq < 1 || irq > 23 || size < 0x200) {
			FAIL(chk, "cannot parse '%.*s'", (u64)(tok_end - q), q);
			continue;
		}
		if (num_vdevs == VIRTIO_MAX_DEVS) {
			FAIL(chk, "more than %u devices", VIRTIO_MAX_DEVS);
			break;
		}
		if (irq_dev[irq]) {
			FAIL(chk, "IRQ %lu used twice (0x%lx)", irq, base);
			continue;
		}
		if (!mapped(base, 0x1000, "virtio-mmio window")) {
			FAIL(chk, "window 0x%lx not mapped", base);
			continue;
		}
		struct vdev *d = &vdevs[num_vdevs];
		d->base = base;
		d->irq = (u32)irq;
		u32 magic = vr(d, VR_MAGIC), version = vr(d, VR_VERSION);
		d->vendor = vr(d, VR_VENDOR_ID);
		d->type = vr(d, VR_DEVICE_ID);
		/* any vendor's modern (version 2) device; legacy version 1 has another register layout */
		if (magic != VIRTIO_MAGIC || version != 2) {
			FAIL(chk, "0x%lx: magic 0x%x version %u (vendor 0x%x), want \"virt\" 2", base, magic, version,
			     d->vendor);
			continue;
		}
		if (!d->type)
			continue;       /* device ID 0: an empty transport (virtio-mmio 4.2.3.1.1) */
		if (d->vendor != SPRY_VENDOR_ID)
			foreign = d->vendor;
		if (d->type == VIRTIO_ID_BLOCK) {
			d->unit = nblk++;
			fmt_str(d->name, sizeof(d->name), "blk%u", d->unit);
		} else if (d->type == VIRTIO_ID_NET) {
			d->unit = nnet++;
			fmt_str(d->name, sizeof(d->name), "net%u", d->unit);
		} else {
			d->unit = other++;
			fmt_str(d->name, sizeof(d->name), "dev%u", num_vdevs);
		}
		irq_dev[irq] = d;
		vdev_irq(d, 0);
		num_vdevs++;
	}
	/* spry's contract: block devices first (other VMMs order as they like) */
	for (u32 i = 1; i < num_vdevs && !foreign; i++)
		if (vdevs[i].type == VIRTIO_ID_BLOCK && vdevs[i - 1].type == VIRTIO_ID_NET)
			FAIL(chk, "block device at 0x%lx after a network device (want block devices first)", vdevs[i].base);
	if (foreign) {
		/* a check detail takes four values: format this one now */
		static char detail[80];
		fmt_str(detail, sizeof(detail), "%u devices: %u blk, %u net, %u other (vendor 0x%x)", num_vdevs, nblk,
			nnet, other, foreign);
		OK_NOW(chk, "%s", detail);
	} else
		OK_NOW(chk, "%u devices: %u blk, %u net, %u other", num_vdevs, nblk, nnet, other);
	return num_vdevs;
}

struct vdev *virtio_find(u32 type, u32 unit)
{
	for (u32 i = 0; i < num_vdevs; i++)
		if (vdevs[i].type == type && vdevs[i].unit == unit)
			return &vdevs[i];
	return NULL;
}

/* ---- device initialisation -------------------------------------------------- */
void vdev_reset(struct vdev *d)
{
	vw(d, VR_STATUS, 0);
}

static u64 ring_bytes(u16 size, u64 *used_off)
{
	u64 off = ((16ull * size + 6 + 2ull * size) + 63) & ~63ull;
	*used_off = off;
	return off + ((6 + 8ull * size + 63) & ~63ull);
}

int vdev_init(struct vdev *d, u64 want, u32 nq, u16 qsize, int chk)
{
	vw(d, VR_STATUS, 0);
	u32 st = vr(d, VR_STATUS);
	if (st) {
		FAIL(chk, "status 0x%x after reset (write 0), want 0", st);
		return 0;
	}
	d->isr = 0;
	vw(d, VR_STATUS, VS_ACKNOWLEDGE);
	vw(d, VR_STATUS, VS_ACKNOWLEDGE | VS_DRIVER);
	vw(d, VR_DEV_FEAT_SEL, 0);
	u64 lo = vr(d, VR_DEV_FEATURES);
	vw(d, VR_DEV_FEAT_SEL, 1);
	d->offered = lo | ((u64)vr(d, VR_DEV_FEATURES) << 32);
	if (!(d->offered & F_BIT(VIRTIO_F_VERSION_1))) {
		FAIL(chk, "features 0x%lx lack VERSION_1", d->offered);
		vw(d, VR_STATUS, VS_FAILED);
		return 0;
	}
	d->acked = (d->offered & want) | F_BIT(VIRTIO_F_VERSION_1);
	d->event_idx = (d->acked & F_BIT(VIRTIO_F_EVENT_IDX)) != 0;
	vw(d, VR_DRV_FEAT_SEL, 0);
	vw(d, VR_DRV_FEATURES, (u32)d->acked);
	vw(d, VR_DRV_FEAT_SEL, 1);
	vw(d, VR_DRV_FEATURES, (u32)(d->acked >> 32));
	vw(d, VR_STATUS, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK);
	st = vr(d, VR_STATUS);
	if (!(st & VS_FEATURES_OK)) {
		FAIL(chk, "features 0x%lx refused (status 0x%x)", d->acked, st);
		vw(d, VR_STATUS, VS_FAILED);
		return 0;
	}
	d->nq = nq;
	for (u32 i = 0; i < nq; i++) {
		struct vq *q = &d->q[i];
		vw(d, VR_QUEUE_SEL, i);
		u32 ready = vr(d, VR_QUEUE_READY), max = vr(d, VR_QUEUE_NUM_MAX);
		u16 size = qsize;
		if (ready || !max) {
			FAIL(chk, "queue %u: ready %u, QueueNumMax %u", i, ready, max);
			vw(d, VR_STATUS, VS_FAILED);
			return 0;
		}
		while (size > max)
			size >>= 1;
		u64 used_off, bytes = ring_bytes(size, &used_off);
		if (!q->ring || q->ring_bytes < bytes) {
			q->ring = (u64)dma_alloc(bytes, 4096);
			q->ring_bytes = bytes;
			if (!q->ring) {
				FAIL(chk, "no memory for queue %u (%lu bytes)", i, bytes);
				vw(d, VR_STATUS, VS_FAILED);
				return 0;
			}
		}
		u64 n = q->ring_bytes / 8;
		u64 dst = q->ring;
		__asm__ volatile("rep stosq" : "+D"(dst), "+c"(n) : "a"(0ull) : "memory");
		q->dev = d;
		q->index = (u16)i;
		q->size = size;
		q->desc = (struct vdesc *)q->ring;
		q->avail = (volatile u16 *)(q->ring + 16ull * size);
		q->used = (volatile u16 *)(q->ring + used_off);
		q->avail_idx = q->kicked = q->last_used = 0;
		q->kicks = 0;
		vw(d, VR_QUEUE_NUM, size);
		vw(d, VR_QUEUE_DESC_LO, (u32)(u64)q->desc);
		vw(d, VR_QUEUE_DESC_HI, (u32)((u64)q->desc >> 32));
		vw(d, VR_QUEUE_AVAIL_LO, (u32)(u64)q->avail);
		vw(d, VR_QUEUE_AVAIL_HI, (u32)((u64)q->avail >> 32));
		vw(d, VR_QUEUE_USED_LO, (u32)(u64)q->used);
		vw(d, VR_QUEUE_USED_HI, (u32)((u64)q->used >> 32));
		vw(d, VR_QUEUE_READY, 1);
	}
	vw(d, VR_STATUS, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
	st = vr(d, VR_STATUS);
	if ((st & (VS_DRIVER_OK | VS_NEEDS_RESET)) != VS_DRIVER_OK) {
		FAIL(chk, "status 0x%x after DRIVER_OK (features 0x%lx)", st, d->acked);
		return 0;
	}
	return 1;
}

/* ---- queues ------------------------------------------------------------------- */
void vq_notify(struct vq *q)
{
	q->kicks++;
	vw(q->dev, VR_QUEUE_NOTIFY, q->index);
}

void vq_kick(struct vq *q)
{
	u16 old = q->kicked, now = q->avail_idx;
	vq_publish(q);
	q->kicked = now;
	if (old == now)
		return;
	mb();   /* avail idx store before the avail_event / flags load */
	if (q->dev->event_idx) {
		u16 ev = q->used[2 + 4 * q->size];
		if ((u16)(now - ev - 1) >= (u16)(now - old))
			return;
	} else if (q->used[0] & 1) {    /* VRING_USED_F_NO_NOTIFY */
		return;
	}
	vq_notify(q);
}

int vq_wait(struct vq *q, u16 n, int irq, u64 timeout_ms)
{
	u64 dl = deadline(timeout_ms);
	if (irq) {
		if (q->dev->event_idx) {
			vq_want_irq_after(q, n);
			mb();
		}
		for (;;) {
			cli();
			if (vq_pending(q) >= n || expired(dl))
				break;
			sti_hlt();
		}
		irq_enable();
	} else {
		while (vq_pending(q) < n && !expired(dl))
			;
	}
	return vq_pending(q) >= n;
}
