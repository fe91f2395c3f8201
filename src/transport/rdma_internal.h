/* The RDMA transport's shared state: the connection struct and what the
 * setup half (rdma.c: device, queue pair, HELLO negotiation) and the data
 * half (rdma_data.c: completions, credits, SEND framing, RDMA WRITE) call
 * in each other. Not a public interface. */
#ifndef FERRY_RDMA_INTERNAL_H
#define FERRY_RDMA_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <infiniband/verbs.h>

#include "transport/transport.h"
#include "util/bytes.h"

#define RDMA_CHUNK (256u * 1024) /* largest SEND; each receive buffer */
#define RX_DEPTH 16              /* receive ring: 4 MiB */
#define TX_SLOTS 4               /* send bounce buffers: 1 MiB */
#define SQ_DEPTH 32              /* work requests in flight */
#define CQ_DEPTH (RX_DEPTH + SQ_DEPTH + 4)
#define INLINE_WANT 256
#define MAX_SGE 4
#define RXQ_CAP (2 * RX_DEPTH) /* received messages and markers not yet read */
#define SEND_TAG (1ull << 32)  /* wr_id of a send-queue WR: SEND_TAG | slot (or NO_SLOT) */
#define NO_SLOT 0xffffu
#define SPIN_FLOOR_US 20       /* the least a wait spins before it sleeps */
#define DEFAULT_SPIN_CAP_US 10000 /* the most ($FERRY_RDMA_SPIN_US): see docs/rdma-waiting.md */
#define WAIT_KEYS 256          /* spin estimates, by the first byte of the last message sent */
#define DRAIN_MS 1000             /* at close: how long queued SENDs may take to leave */
#define DEFAULT_WRITE_MIN (1u << 20) /* payloads from here on move by RDMA WRITE (ferry mode) */
#define MAX_WRITE (1u << 30)      /* one WRITE work request at most */
#define ACK_TIMEOUT 18            /* 4.096 us * 2^18 = 1.07 s per try (rdma.c: to_rts) */
#define RETRY_CNT 6               /* retries after the first try: 7 tries, >= 7.5 s */
#define KEEPALIVE_IDLE_S 3        /* the liveness socket: silence before the first probe */
#define KEEPALIVE_INTVL_S 1       /* between probes */
#define KEEPALIVE_CNT 6           /* unanswered probes to give up: dead 9 s after silence */

/* The data path, once HELLO is done. */
enum rdma_state {
    ST_TCP,     /* everything over the TCP socket (before the switch, or refused) */
    ST_PENDING, /* server, extension advertised: the first thing the client sends decides */
    ST_GGML,    /* ggml's framing: SENDs without immediates, no credits */
    ST_FERRY,   /* ferry's: immediates with kinds and credits, RDMA WRITE for bulk */
};

/* ferry mode: the kind of a message, in the top 4 bits of its immediate;
 * the low 16 bits return credits (receive buffers re-posted). */
enum rdma_kind {
    K_DATA = 0,     /* stream bytes */
    K_CREDIT = 1,   /* nothing but credits */
    K_RTS = 2,      /* u64 n: the next n stream bytes are offered by WRITE */
    K_CTS = 3,      /* u64 addr, u64 len, u32 rkey: write them here (len 0: send them) */
    K_SINK = 4,     /* u64 addr, u64 len, u32 rkey: put the next reply's payload here */
    K_WDONE = 5,    /* WRITE_WITH_IMM: the granted CTS range is written */
    K_SINKDONE = 6, /* WRITE_WITH_IMM: the payload is in the sink */
    K_STATS = 7,    /* empty: send me your counters; else u32 count, count x u64 */
};
#define STATS_FIELDS 8 /* counters a STATS answer carries (rdma_data.c: stats_field) */
#define STATS_BYTES (4 + 8 * STATS_FIELDS)
#define IMM(kind, credits) (((uint32_t)(kind) << 28) | (credits))
#define IMM_KIND(imm) ((imm) >> 28)
#define IMM_CREDITS(imm) ((imm)&0xffffu)

/* A received message or marker, in stream order. */
struct rx_entry {
    uint8_t kind;  /* K_DATA, K_RTS or K_SINKDONE */
    uint16_t slot; /* K_DATA: receive buffer holding it */
    uint64_t len;  /* bytes of stream it stands for */
};

/* Memory registered for RDMA WRITE: server buffers at allocation, a
 * caller's range for one transfer (temp). */
struct rdma_region {
    uint8_t *p;
    size_t len;
    struct ibv_mr *mr;
    bool temp;
};

struct rdma_remote { /* a CTS grant or a sink, as the peer described it */
    bool valid;
    uint64_t addr, len;
    uint32_t rkey;
};

struct rdma_conn {
    struct ferry_conn base; /* first, so a ferry_conn * is an rdma_conn * */
    struct ferry_conn *tcp; /* the data path until the switch, then liveness */
    struct ferry_rdma_options opts;
    char dev_opt[64], ip_opt[64];
    bool offered; /* our caps carry a queue pair */
    bool ctx_cached; /* ctx belongs to the process-wide device cache: not ours to close */
    bool broken;  /* a completion failed: skip the drain at close */
    enum rdma_state state;
    int refusal;  /* FERRY_RDMA_REFUSED_* when this side stayed on TCP */

    /* verbs objects, in the order they are made */
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *ch;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    uint8_t *rx_buf, *tx_buf;
    struct ibv_mr *rx_mr, *tx_mr;
    size_t pinned;
    unsigned unacked_events;

    char dev_name[IBV_SYSFS_NAME_MAX];
    uint8_t port;
    int gid_index;
    union ibv_gid gid;
    bool roce_v2;
    enum ibv_mtu port_mtu, mtu;
    uint32_t max_inline;
    uint32_t max_msg;
    uint32_t psn;
    uint8_t ack_timeout, retry_cnt; /* as set at RTS, for the message when they run out */

    uint32_t peer_qpn, peer_psn;
    union ibv_gid peer_gid;
    bool peer_ext; /* client: the server advertised the extension */

    /* received, not yet handed out, in arrival order */
    struct rx_entry rxq[RXQ_CAP];
    unsigned rx_head, rx_count;
    uint64_t rx_pos; /* bytes of the head entry already handed out */

    bool tx_busy[TX_SLOTS];
    unsigned tx_next;
    unsigned sq_inflight;

    /* waiting (docs/rdma-waiting.md): the most a wait spins, and per key
     * (the first byte of the last message sent: a client's command) the
     * typical wait for the peer's next message, in microseconds */
    int spin_cap_us;
    uint8_t wait_key;
    uint32_t wait_est[WAIT_KEYS];
    uint64_t rx_seen; /* receive completions taken, ever */

    /* ferry mode */
    uint32_t tx_credits;    /* SENDs (and WRITEs with immediate) the peer can take */
    uint32_t peer_depth;    /* its receive ring: the most credits there can be */
    uint32_t send_chunk;    /* largest SEND: min(ours, the peer's receive buffer) */
    uint32_t rx_unreturned; /* buffers re-posted, not yet reported to the peer */
    uint64_t write_min;
    uint32_t features;      /* both sides have these (REC_FEAT_*) */
    bool stats_owed;        /* the peer asked for our counters: answer when credits allow */
    bool stats_waiting;     /* we asked for the peer's counters */
    struct ferry_conn_stats peer_stats; /* its last answer */
    bool rts_outstanding;   /* we offered bytes by WRITE, waiting for the CTS */
    struct rdma_remote cts;       /* the peer's answer to our RTS */
    struct rdma_remote peer_sink; /* where the peer wants our next payload */
    bool granted;                 /* we sent a CTS with room: a WDONE may come */
    bool wdone;                   /* the peer finished writing our grant */
    struct {                      /* where we asked the peer to write its reply */
        bool active, sent;
        uint8_t *p;
        size_t len;
        struct rdma_region *reg;
    } sink;
    struct rdma_region **regions;
    size_t n_regions, cap_regions;

    char info[400];
};

/* ferry framing features (record field "features") */
#define REC_FEAT_WRITE 1u     /* accepts RDMA WRITE transfers */
#define REC_FEAT_SOLICITED 2u /* sets the solicited-event bit on every message: its peer may sleep
                                 for solicited completions only */
#define REC_FEAT_STATS 4u     /* answers a STATS message with its counters */

/* rdma.c */
int rdma_mtu_bytes(enum ibv_mtu m);
size_t rdma_pinned_add(long long delta); /* process-wide pinned bytes, after the change */
int rdma_check_memlock(size_t need, struct ferry_error *err);

/* rdma_data.c */
int rdma_post_recv(struct rdma_conn *r, unsigned slot, struct ferry_error *err);
/* Waits until a completion arrives (want_recv: a receive completion).
 * See docs/rdma-waiting.md for how long it spins before it sleeps. */
int rdma_progress(struct rdma_conn *r, bool want_recv, int64_t deadline, struct ferry_error *err);
void rdma_drain(struct rdma_conn *r);
int rdma_send(struct ferry_conn *c, const struct iovec *iov, int n, int hdr_parts, int64_t deadline,
              struct ferry_error *err);
int rdma_recv_some(struct ferry_conn *c, void *buf, size_t len, size_t *got, int64_t deadline,
                   struct ferry_error *err);
int rdma_reg_mem(struct ferry_conn *c, void *ptr, size_t len, void **handle, struct ferry_error *err);
void rdma_unreg_mem(struct ferry_conn *c, void *handle);
int rdma_offer_sink(struct ferry_conn *c, void *dst, size_t len, struct ferry_error *err);
void rdma_release_regions(struct rdma_conn *r);
/* Asks the peer for its counters (STATS) and waits for its answer. */
int rdma_query_stats(struct rdma_conn *r, struct ferry_conn_stats *out, int64_t deadline, struct ferry_error *err);
/* the server's half of the negotiation, when the client's record arrives
 * (rdma.c; called from the completion wait in rdma_data.c) */
int rdma_server_record(struct rdma_conn *r, struct ferry_error *err);

#endif
