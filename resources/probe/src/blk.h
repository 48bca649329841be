/* The probe's virtio-blk driver (blk.c), shared by the blk, hostile and
 * blkbench modes. */
#ifndef PROBE_BLK_H
#define PROBE_BLK_H
#include "virtio.h"

#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO      5
#define VIRTIO_BLK_F_FLUSH   9

#define VIRTIO_BLK_T_IN     0
#define VIRTIO_BLK_T_OUT    1
#define VIRTIO_BLK_T_FLUSH  4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_BOGUS  0xff        /* no such request type */

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define BLK_TIMEOUT   0x100     /* blk_req(): no completion in time */
#define BLK_BAD_ID    0x200     /* blk_req(): completion of an unknown chain */
#define BLK_NO_IRQ    0x400     /* blk_req(): completed, but no interrupt came */

#define BLK_SLOTS_MAX 86        /* 3-descriptor chains in a 256-entry queue */
#define BLK_BUF_BYTES 65536     /* pattern buffer: 128 sectors per request */

struct blk {
	struct vdev *d;
	struct vq *q;
	u64 capacity;
	u32 seg_max;
	u8 ro, flush, dead;
	u8 *hdr;                /* 16 bytes per slot */
	u8 *status;             /* 16 bytes per slot (status byte at +0) */
};

/* init (features VERSION_1, EVENT_IDX, SEG_MAX, RO, FLUSH and extra_features
 * as offered),
 * queue of qsize entries, reads the config; FAIL(chk) and 0 on failure */
int blk_open(struct blk *b, struct vdev *d, u16 qsize, u64 extra_features, int chk);
/* one request on descriptors 0..2 (header, optional data, status); data is
 * device-writable for IN and GET_ID. Returns the status byte, or BLK_* */
u32 blk_req(struct blk *b, u32 type, u64 sector, void *buf, u32 len, int irq, u32 *used);
/* the sector pattern: byte i of sector s is (s * 31 + i * 7 + 0x5a) & 0xff */
void pattern_fill(u8 *dst, u64 sector, u64 nsect);
/* 1 if buf holds the pattern of nsect sectors from 'sector'; else the first
 * difference in *bad_sector / *bad_byte / *got */
int pattern_check(const u8 *buf, u64 sector, u64 nsect, u64 *bad_sector, u64 *bad_byte, u64 *got);
/* write pattern to [first, first+count), flush if offered, read back and
 * compare; records the result in chk (and flush_chk if >= 0) */
int blk_write_read(struct blk *b, u64 first, u64 count, int chk, int flush_chk);
u8 *blk_buffer(void);           /* BLK_BUF_BYTES, allocated on first use */
const char *blk_status_name(u32 st);

#endif
