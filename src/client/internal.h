/* ferry client internals shared by client.c (connection, requests,
 * commands) and buffers.c (buffer registry, tensor placement, restore). */
#ifndef FERRY_CLIENT_INTERNAL_H
#define FERRY_CLIENT_INTERNAL_H

#include <pthread.h>
#include <sys/uio.h>

#include "ferry/client.h"
#include "proto/rpc.h"
#include "transport/transport.h"

/* Every public call fills a local error when the caller passed none, so
 * the plumbing can always record a reason. */
#define ERR_OR_LOCAL(err)          \
    struct ferry_error err_local_; \
    if (!(err)) (err) = &err_local_

/* A large upload the server's cache should hold: for ferry_client_restore. */
struct upload_memo {
    struct ferry_remote_buffer *buf;
    uint64_t offset; /* from the buffer's start */
    uint64_t size;
    uint64_t hash;
};

/* The last graph sent per device, kept whole: a byte-for-byte match means
 * GRAPH_RECOMPUTE is exactly equivalent. */
struct last_graph {
    uint8_t *payload;
    size_t len;
};

struct ferry_client {
    pthread_mutex_t lock; /* one call at a time on the connection */
    char endpoint[FERRY_CONN_NAME_MAX];
    char host[FERRY_CONN_ADDR_MAX];
    int port;
    struct ferry_client_options opts;
    struct ferry_conn *conn; /* NULL when broken */
    char broken_reason[sizeof(struct ferry_error){ 0 }.msg];
    struct ferry_remote_buffer *buffers; /* registry head */
    struct upload_memo *memos;
    size_t n_memos, cap_memos;
    struct last_graph graphs[FERRY_CLIENT_MAX_DEVICES];
    struct ferry_client_stats stats;
    uint8_t hello_flags; /* byte 3 of the server's HELLO: ferry's extensions */
    bool asked_errors;   /* our HELLO asked for error replies (no RDMA offer) */
};

/* One request, and its response when the command has one: rsp_len is the
 * exact size it must have. Marks the client broken on any I/O or protocol
 * error. Caller holds the lock. */
int client_call(struct ferry_client *c, uint8_t cmd, const struct iovec *payload, int n_payload,
                void *rsp, uint64_t rsp_len, struct ferry_error *err);
/* FERRY_ERR_CLOSED with the reason when the connection is gone. */
int client_check_open(struct ferry_client *c, struct ferry_error *err);
void client_forget_graphs(struct ferry_client *c);

/* A tensor's wire record: buffer handle and current server address. */
int client_tensor_record(struct ferry_client *c, const struct ferry_tensor *t,
                         struct ferry_rpc_tensor *r, struct ferry_error *err);
/* For the graph encoder: (handle, current address) of t, or 0/0. */
int client_locate(void *ctx, const struct ferry_tensor *t, uint64_t *buffer, uint64_t *data,
                  struct ferry_error *err);

/* buffers.c */
int client_alloc_remote(struct ferry_client *c, struct ferry_remote_buffer *buf,
                        struct ferry_error *err);
void client_unregister(struct ferry_client *c, struct ferry_remote_buffer *buf);
void client_memo_add(struct ferry_client *c, struct ferry_remote_buffer *buf, uint64_t offset,
                     uint64_t size, uint64_t hash);
/* Forgets memos of buf overlapping [offset, offset + size). */
void client_memo_drop(struct ferry_client *c, const struct ferry_remote_buffer *buf,
                      uint64_t offset, uint64_t size);
/* The offset of t's data inside its buffer; checks [offset, +extent) fits. */
int client_tensor_offset(const struct ferry_tensor *t, uint64_t extent, uint64_t *offset,
                         struct ferry_error *err);

#endif
