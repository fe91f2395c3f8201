/* ferry: the transport layer, one message-level interface for TCP, RDMA and
 * shared memory.
 *
 * A transport moves bytes between two peers and knows nothing of commands:
 * the upper layer (server, client) frames requests with src/proto and hands
 * the transport a header plus payload pointers. The contract:
 *
 *   send     one message = header parts + payload segments, gathered without
 *            copying (TCP: one sendmsg, looped only on partial writes).
 *   receive  in two steps: ferry_conn_recv_header() with the fixed header
 *            size the caller names, then ferry_conn_recv_payload() into
 *            whatever memory the caller picks (e.g. tensor data), or
 *            ferry_conn_discard() to skip a payload it refuses.
 *   timeouts idle_ms bounds the wait for the first byte of the next header;
 *            frame_ms bounds the rest of that frame (header, payload,
 *            discards) from the moment its first byte arrived, so a peer
 *            trickling one byte a second is dropped; a send must finish
 *            within frame_ms too. 0 means no limit.
 *   errors   FERRY_ERR_TIMEOUT, FERRY_ERR_CLOSED (peer closed, including in
 *            the middle of a frame), FERRY_ERR_IO (with strerror),
 *            FERRY_ERR_INVALID (bad arguments). After any error other than
 *            INVALID the stream is out of sync: close the connection.
 *   SIGPIPE  never raised: every TCP send uses MSG_NOSIGNAL, so writing to a
 *            vanished peer returns FERRY_ERR_CLOSED / FERRY_ERR_IO instead of
 *            killing the process. No signal handler is installed.
 *
 * Message boundaries. Message-based transports (RDMA SEND, as ggml's RDMA
 * path uses it) must keep the receiver's read units apart: ggml reads the
 * command byte, the length and the payload with separate receives, and a
 * SEND that spans two of them overflows its buffer. So a message is given
 * as header *parts* (each part one unit, never coalesced with the next on
 * such transports: a request is {cmd, 1} + {len, 8}) plus payload segments
 * (together one unit, which may be chunked freely). Stream transports (TCP)
 * coalesce everything into one write. Receivers need no such hint: they
 * read a byte stream and split nothing.
 *
 * A connection is used by one thread at a time (stats are plain counters). */
#ifndef FERRY_TRANSPORT_H
#define FERRY_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "ferry/error.h"

/* Upper bound on header parts + payload segments in one message. */
#define FERRY_CONN_MAX_IOV 64
/* Longest name, e.g. "tcp 255.255.255.255:65535", and address string. */
#define FERRY_CONN_NAME_MAX 64
/* A header read takes whatever else has already arrived, up to this much,
 * so a small request (header and payload) costs one receive call. Payload
 * bytes beyond it are received straight into the caller's memory. */
#define FERRY_CONN_READAHEAD 512
#define FERRY_CONN_ADDR_MAX 32

/* Defaults: wait for the next request as long as the peer likes, but a
 * started frame must complete within a minute (1 GiB at ~150 MB/s). */
#define FERRY_CONN_DEFAULT_IDLE_MS 0
#define FERRY_CONN_DEFAULT_FRAME_MS 60000

struct ferry_conn_timeouts {
    int idle_ms;  /* first byte of the next header; 0 = wait forever */
    int frame_ms; /* rest of a frame, and each send; 0 = no limit */
};

/* What the data path did, for benches. Kernel copies are not counted:
 * `copies` is bytes the CPU copied inside the transport (0 for TCP, bounce
 * buffers for RDMA/SHM). Discarded bytes count in bytes_in. */
struct ferry_conn_stats {
    uint64_t msgs_sent;  /* ferry_conn_send calls that completed */
    uint64_t msgs_recv;  /* headers received */
    uint64_t bytes_out;
    uint64_t bytes_in;
    uint64_t syscalls;   /* send/recv/poll calls made for data */
    uint64_t copies;     /* bytes memcpy'd by the transport */
    uint64_t waits;      /* times the transport slept (poll) */
    /* RDMA verbs work (all 0 for TCP, and for RDMA before the switch):
     * work requests posted by kind, completions reaped, and sleeps on the
     * completion channel (also counted in waits). recvs_posted includes
     * the receive ring posted at setup, not only re-posts. */
    uint64_t sends_posted;  /* SEND work requests (inline ones included) */
    uint64_t recvs_posted;  /* receive work requests */
    uint64_t writes_posted; /* RDMA WRITE (with or without immediate) */
    uint64_t reads_posted;  /* RDMA READ */
    uint64_t completions;   /* work completions polled from the CQ */
    uint64_t cq_sleeps;     /* sleeps on the completion channel */
    uint64_t cq_wakeups;    /* completion events taken from the channel */
    uint64_t spin_us;       /* time spent polling the CQ before a completion or a sleep */
    /* ferry-to-ferry RDMA only: credit-only messages sent, times a sender
     * waited for the peer's credits, memory registrations made on the data
     * path (a caller's range for one transfer) and bytes moved by RDMA WRITE
     * straight between registered memory (no bounce copy). */
    uint64_t credit_msgs;
    uint64_t credit_waits;
    uint64_t mr_regs;
    uint64_t write_bytes;
};

struct ferry_conn;

/* One transport's implementation. Deadlines are ferry_transport_now_ms()
 * values, or -1 for none. */
struct ferry_conn_ops {
    const char *kind; /* "tcp", "rdma", "shm" */
    /* Sends all of iov[0..n) in order; the first hdr_parts entries are
     * header parts (see "Message boundaries"). Done when every byte is
     * handed to the transport, or fails at the deadline. */
    int (*send)(struct ferry_conn *c, const struct iovec *iov, int n, int hdr_parts,
                int64_t deadline, struct ferry_error *err);
    /* Receives between 1 and len bytes into buf, waiting until deadline;
     * *got is set on success. 0 bytes from the peer is FERRY_ERR_CLOSED. */
    int (*recv_some)(struct ferry_conn *c, void *buf, size_t len, size_t *got, int64_t deadline,
                     struct ferry_error *err);
    /* Memory registration, so RDMA can move tensor data without bounce
     * copies: called once per host range (a server buffer at allocation).
     * *handle is the transport's key for it. NULL or no-op for TCP. */
    int (*reg_mem)(struct ferry_conn *c, void *ptr, size_t len, void **handle,
                   struct ferry_error *err);
    void (*unreg_mem)(struct ferry_conn *c, void *handle);
    /* HELLO negotiation (stubs for TCP, which has nothing to offer):
     * local_caps writes this side's capability bytes (at most cap, *len
     * set; TCP writes none and the upper layer sends zeros); peer_caps
     * takes the peer's bytes and prepares the upgrade; confirm switches the
     * data path once both sides agreed (RDMA: QP to RTS). */
    int (*local_caps)(struct ferry_conn *c, uint8_t *out, size_t cap, size_t *len,
                      struct ferry_error *err);
    int (*peer_caps)(struct ferry_conn *c, const uint8_t *in, size_t len,
                     struct ferry_error *err);
    int (*confirm)(struct ferry_conn *c, bool ext, struct ferry_error *err);
    /* Optional: the next message received should carry a payload of exactly
     * len bytes that the caller will read into dst; a transport that can
     * place it there directly (RDMA WRITE) arranges it with the peer. dst
     * NULL withdraws the offer. */
    int (*offer_sink)(struct ferry_conn *c, void *dst, size_t len, struct ferry_error *err);
    /* Optional: why HELLO did not upgrade (FERRY_RDMA_REFUSED_*), 0 if it did
     * or nobody asked. */
    int (*refusal)(const struct ferry_conn *c);
    void (*close)(struct ferry_conn *c); /* releases everything, including c */
    /* Optional: writes a line for logs into out (when given) and returns
     * the data path's kind now ("tcp" before an RDMA upgrade, "rdma" after). */
    const char *(*describe)(const struct ferry_conn *c, char *out, size_t cap);
};

/* The part every transport embeds first in its own connection struct. */
struct ferry_conn {
    const struct ferry_conn_ops *ops;
    int fd; /* what an event loop polls on (RDMA: the completion channel) */
    char name[FERRY_CONN_NAME_MAX]; /* "tcp 127.0.0.1:50052" (the peer) */
    char peer[FERRY_CONN_ADDR_MAX];  /* "127.0.0.1:50052" */
    char local[FERRY_CONN_ADDR_MAX]; /* our end, "127.0.0.1:41234" */
    struct ferry_conn_timeouts timeouts;
    bool in_frame;          /* a header has started arriving */
    int64_t frame_deadline; /* of that frame; -1 for none */
    struct ferry_conn_stats stats;
    uint8_t ahead[FERRY_CONN_READAHEAD]; /* bytes received, not yet handed out */
    size_t ahead_pos, ahead_len;
    int refusal; /* a bare connection: why HELLO will not upgrade it (0: no device) */
};

/* ---- the interface the upper layers use ----------------------------------- */

/* Sends one message: hdr[0..hdr_n) header parts, then payload[0..payload_n)
 * (either may be empty; empty segments are allowed). No copy is made; the
 * memory must stay valid until the call returns. */
int ferry_conn_send(struct ferry_conn *c, const struct iovec *hdr, int hdr_n,
                    const struct iovec *payload, int payload_n, struct ferry_error *err);
/* Receives exactly len header bytes, starting a new frame: the idle timeout
 * covers the wait for its first byte, the frame timeout everything after. */
int ferry_conn_recv_header(struct ferry_conn *c, void *buf, size_t len, struct ferry_error *err);
/* Receives exactly len payload bytes of the current frame into dst. */
int ferry_conn_recv_payload(struct ferry_conn *c, void *dst, size_t len, struct ferry_error *err);
/* Reads and drops len payload bytes of the current frame; refuses (INVALID,
 * nothing read) when len > max, so a hostile length cannot pin the
 * connection for long: the caller should then close instead. */
int ferry_conn_discard(struct ferry_conn *c, uint64_t len, uint64_t max, struct ferry_error *err);

void ferry_conn_set_timeouts(struct ferry_conn *c, struct ferry_conn_timeouts t);
struct ferry_conn_timeouts ferry_conn_get_timeouts(const struct ferry_conn *c);
const struct ferry_conn_stats *ferry_conn_stats(const struct ferry_conn *c);
void ferry_conn_reset_stats(struct ferry_conn *c);

int ferry_conn_fd(const struct ferry_conn *c);
const char *ferry_conn_name(const struct ferry_conn *c);
const char *ferry_conn_peer(const struct ferry_conn *c);
const char *ferry_conn_local(const struct ferry_conn *c);

/* Registration and negotiation hooks; transports without them succeed with
 * a NULL handle / no capability bytes. */
int ferry_conn_reg_mem(struct ferry_conn *c, void *ptr, size_t len, void **handle,
                       struct ferry_error *err);
void ferry_conn_unreg_mem(struct ferry_conn *c, void *handle);
int ferry_conn_local_caps(struct ferry_conn *c, uint8_t *out, size_t cap, size_t *len,
                          struct ferry_error *err);
int ferry_conn_peer_caps(struct ferry_conn *c, const uint8_t *in, size_t len,
                         struct ferry_error *err);
/* ext: client, the server advertised ferry's RDMA extension; server, it
 * advertised it in its HELLO response (see docs/protocol-extensions.md). */
int ferry_conn_confirm(struct ferry_conn *c, bool ext, struct ferry_error *err);
/* See ferry_conn_ops.offer_sink; a no-op for transports without it. */
int ferry_conn_offer_sink(struct ferry_conn *c, void *dst, size_t len, struct ferry_error *err);

/* Why a side did not take RDMA, as the server tells a ferry client in the
 * upper bits of the HELLO flag byte (0: not refused, or not asked). */
#define FERRY_RDMA_REFUSED_NONE 0
#define FERRY_RDMA_REFUSED_NO_DEVICE 1 /* no RDMA device, or a build without RDMA */
#define FERRY_RDMA_REFUSED_TCP_ONLY 2  /* --transport tcp */
#define FERRY_RDMA_REFUSED_MEMLOCK 3   /* locked-memory limit too low */
#define FERRY_RDMA_REFUSED_NO_GID 4    /* no active port / GID for the address */
#define FERRY_RDMA_REFUSED_SETUP 5     /* a verbs call failed */
#define FERRY_RDMA_REFUSED_MAX 15
int ferry_conn_rdma_refusal(const struct ferry_conn *c);
const char *ferry_rdma_refusal_text(int code);

/* Closes and frees; NULL is fine. */
void ferry_conn_close(struct ferry_conn *c);

/* For implementations: fills the shared part (timeouts to the defaults). */
void ferry_conn_init(struct ferry_conn *c, const struct ferry_conn_ops *ops, int fd);
/* Monotonic milliseconds; deadline_after(0) is -1 (none). */
int64_t ferry_transport_now_ms(void);
int64_t ferry_transport_deadline_after(int ms);

/* ---- TCP ------------------------------------------------------------------ */

struct ferry_listener;

/* Listens on host:port (an IPv4 dotted literal, or "localhost"; port 0
 * picks an ephemeral port), SO_REUSEADDR, backlog FERRY_LISTEN_BACKLOG. */
#define FERRY_LISTEN_BACKLOG 128
int ferry_tcp_listen(const char *host, int port, struct ferry_listener **out,
                     struct ferry_error *err);
/* Waits up to timeout_ms (-1: forever) for a client; FERRY_ERR_TIMEOUT when
 * none came. The connection has TCP_NODELAY and default timeouts. */
int ferry_listener_accept(struct ferry_listener *l, int timeout_ms, struct ferry_conn **out,
                          struct ferry_error *err);
int ferry_listener_port(const struct ferry_listener *l); /* the bound port */
int ferry_listener_fd(const struct ferry_listener *l);
void ferry_listener_close(struct ferry_listener *l);

/* Connects within timeout_ms (0: the kernel's own limit). Same host rules
 * as listen; the port must be 1..65535. FERRY_ERR_REFUSED when nobody
 * listens there, FERRY_ERR_TIMEOUT, or FERRY_ERR_IO. */
int ferry_tcp_connect(const char *host, int port, int timeout_ms, struct ferry_conn **out,
                      struct ferry_error *err);

/* ---- RDMA (src/transport/rdma.c) ------------------------------------------ */

/* Which transport a side wants: auto (RDMA when both sides can, else TCP),
 * tcp (never RDMA), rdma (required: refuse rather than fall back). The same
 * values as ferry_client_options.transport / ferry_server_config.transport. */
#ifndef FERRY_TRANSPORT_AUTO
#define FERRY_TRANSPORT_AUTO 0
#define FERRY_TRANSPORT_TCP 1
#define FERRY_TRANSPORT_RDMA 2
#endif

/* "auto" | "tcp" | "rdma" to a mode; FERRY_ERR_INVALID otherwise. */
int ferry_transport_parse(const char *s, int *mode, struct ferry_error *err);
const char *ferry_transport_name(int mode);

struct ferry_rdma_options {
    int mode;          /* FERRY_TRANSPORT_AUTO, _RDMA, or _TCP (ferry_conn_offer_upgrade only) */
    bool server;       /* the accepting side */
    const char *dev;   /* RDMA device name; NULL: $FERRY_RDMA_DEV, $GGML_RDMA_DEV, any */
    const char *ip;    /* use the GID of this IPv4 address; NULL: $FERRY_RDMA_IP, else the
                          TCP connection's local address */
    int gid_index;     /* -1: choose (or $FERRY_RDMA_GID, $GGML_RDMA_GID) */
};

/* Whether this build has RDMA and the host has at least one RDMA device;
 * otherwise why not, in words, when why is given. Cheap (sysfs), cached. */
bool ferry_rdma_available(char *why, size_t cap);
/* One line per RDMA device and port: name, state, active MTU, IPv4 GIDs. */
int ferry_rdma_list_devices(char *out, size_t cap);

/* Wraps an established TCP connection so that HELLO can upgrade it to RDMA:
 * until ferry_conn_confirm switches, data goes over TCP; afterwards over
 * the queue pair, and the TCP socket stays open as the liveness channel
 * (its fd stays the connection's fd, so shutdown() on it wakes a waiter).
 * Takes ownership of tcp, also on failure. The HELLO hooks:
 *   client: local_caps (probes the device, creates the queue pair; zeros in
 *           auto mode when it cannot), then peer_caps (the server's), then
 *           confirm (RTR, RTS; stays on TCP when either side sent zeros);
 *           with a ferry server (ext) confirm first agrees on the path MTU
 *           and credits over TCP, and either side may still refuse.
 *   server: peer_caps (the client's: creates the queue pair, posts the
 *           receive ring, RTR, before the response leaves), local_caps,
 *           then confirm after the response is sent (RTS). With ext, the
 *           first thing the client sends tells a ferry client (its record,
 *           over TCP) from a ggml one (a command, over the queue pair).
 * In required mode every "stay on TCP" above is an error that says why. */
int ferry_rdma_wrap(struct ferry_conn *tcp, const struct ferry_rdma_options *o,
                    struct ferry_conn **out, struct ferry_error *err);
/* What both sides do with a new TCP connection before HELLO: with mode
 * FERRY_TRANSPORT_TCP it stays bare and remembers that RDMA was turned off
 * (the refusal a ferry peer is told); otherwise ferry_rdma_wrap. */
int ferry_conn_offer_upgrade(struct ferry_conn *tcp, const struct ferry_rdma_options *o,
                             struct ferry_conn **out, struct ferry_error *err);
/* The transport's own counters for a closing connection's log line:
 * "; rdma: N sends, ..." for RDMA, empty for TCP. */
void ferry_conn_describe_counters(const struct ferry_conn *c, char *out, size_t cap);
/* The peer's transport counters, asked for over the connection (ferry's
 * RDMA framing, both sides new enough: STATS message; the peer answers
 * from its transport, whatever its thread does). FERRY_ERR_UNSUPPORTED,
 * nothing sent, on any other connection. Same thread rules as a send. */
int ferry_conn_peer_counters(struct ferry_conn *c, struct ferry_conn_stats *out, struct ferry_error *err);
/* "tcp" or "rdma": what the data path uses now. */
const char *ferry_conn_transport(const struct ferry_conn *c);
/* A line for logs: transport, and for RDMA device, port, GID, MTU. */
void ferry_conn_describe(const struct ferry_conn *c, char *out, size_t cap);

#endif
