/* The probe's virtio-net driver (net.c), shared by the net, hostile and
 * netbench modes. */
#ifndef PROBE_NET_H
#define PROBE_NET_H
#include "virtio.h"

#define VIRTIO_NET_F_MTU       3
#define VIRTIO_NET_F_MAC       5
#define VIRTIO_NET_F_MRG_RXBUF 15

#define NET_HDR_LEN   12        /* struct virtio_net_hdr_mrg_rxbuf */
#define NET_BUF_BYTES 2048      /* one receive buffer */
#define ETH_P_PROBE   0x88b5    /* frames the probe sends and answers */
#define ETH_P_ECHO    0x88b6    /* echoed frames */

struct net {
	struct vdev *d;
	struct vq *rx, *tx;
	u8 mac[6];
	u8 has_mac, mrg;
	u16 mtu;
	u8 *rxbuf;              /* rx->size buffers of NET_BUF_BYTES; buffer i = descriptor i */
	u8 *txbuf;              /* tx->size buffers of tx_slot bytes; buffer i = descriptor i */
	u64 tx_slot;
	u16 rx_count, tx_count; /* buffers allocated */
	u16 tx_free;            /* TX slots not in flight */
	u16 tx_next;            /* next TX slot to use (round robin) */
};

/* init with queues of qsize entries (VERSION_1, EVENT_IDX, MRG_RXBUF, MAC,
 * MTU as offered), TX buffers of tx_slot bytes; posts every RX buffer if
 * post_rx. FAIL(chk) and 0 on failure. */
int net_open(struct net *n, struct vdev *d, u16 qsize, u64 tx_slot, int post_rx, int chk);
/* the standard frame k (virtio header included) at p; returns its length */
u32 net_build_frame(const struct net *n, u8 *p, u32 k, u16 ethertype);
/* reclaims completed TX chains (polling) */
void net_tx_reap(struct net *n);
/* waits (polling) until every TX chain completed; 0 on timeout */
int net_tx_drain(struct net *n, u64 timeout_ms);

#endif
