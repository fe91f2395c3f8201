/* ferry server: refused connections. ggml's protocol has no way to say
 * why a connection is refused, so a ggml client just sees the server close
 * it. A ferry client asks for error replies in its HELLO caps; to answer
 * it, the accept loop reads the refused connection's HELLO without
 * blocking (a few at a time, each for at most a second or two), sends the
 * error reply in place of the HELLO response when the client asked for
 * one, and closes. The socket is non-blocking and the reply is a few
 * hundred bytes into an empty send buffer, so nothing here waits. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "ferry/log.h"
#include "server/internal.h"

#define REFUSAL_WAIT_MS 2000 /* for the refused client's HELLO */

static void drop(struct ferry_server *s, int i) {
    ferry_conn_close(s->refusals[i].conn);
    s->refusals[i] = s->refusals[--s->n_refusals];
}

void server_refuse(struct ferry_server *s, struct ferry_conn *c, uint32_t code, const char *why) {
    if (s->n_refusals == SERVER_MAX_REFUSALS) { /* a flood: no words for the oldest */
        drop(s, 0);
    }
    struct server_refusal *r = &s->refusals[s->n_refusals++];
    memset(r, 0, sizeof *r);
    r->conn = c;
    int wait = s->cfg.hello_timeout_ms > 0 && s->cfg.hello_timeout_ms < REFUSAL_WAIT_MS ? s->cfg.hello_timeout_ms
                                                                                        : REFUSAL_WAIT_MS;
    r->deadline_ms = ferry_transport_now_ms() + wait;
    r->code = code;
    snprintf(r->reason, sizeof r->reason, "%s", why);
}

int server_refusals_pollfds(struct ferry_server *s, struct pollfd *p, int *timeout_ms) {
    int64_t now = ferry_transport_now_ms();
    for (int i = 0; i < s->n_refusals; i++) {
        p[i] = (struct pollfd){ .fd = ferry_conn_fd(s->refusals[i].conn), .events = POLLIN };
        int64_t left = s->refusals[i].deadline_ms - now;
        if (left < 0) left = 0;
        if (left < *timeout_ms) *timeout_ms = (int)left;
    }
    return s->n_refusals;
}

/* The HELLO is complete: answer if it asked for error replies. */
static void answer(const struct ferry_server *s, struct server_refusal *r) {
    uint64_t size = ferry_get_le64(r->got + 1);
    const uint8_t *caps = r->got + FERRY_RPC_FRAME_HEADER_SIZE;
    if (s->cfg.no_ferry_ext || r->got[0] != FERRY_RPC_CMD_HELLO || size != FERRY_RPC_CONN_CAPS_SIZE ||
        !(ferry_rpc_caps_features(caps) & FERRY_RPC_CAPS_FEAT_ERRORS))
        return; /* a ggml client: the close says it all */
    uint8_t out[FERRY_RPC_ERROR_HEADER_SIZE + FERRY_RPC_ERROR_MAX_REASON];
    size_t n = ferry_rpc_encode_error(r->code, r->reason, out, sizeof out);
    ssize_t w = send(ferry_conn_fd(r->conn), out, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w != (ssize_t)n)
        ferry_log_debug("%s: error reply not sent: %s", ferry_conn_peer(r->conn),
                        w < 0 ? strerror(errno) : "short write");
}

void server_refusals_poll(struct ferry_server *s, const struct pollfd *p) {
    int64_t now = ferry_transport_now_ms();
    /* p[i] matches refusals[i] as listed; walk down so drop's swap is harmless */
    for (int i = s->n_refusals - 1; i >= 0; i--) {
        struct server_refusal *r = &s->refusals[i];
        bool done = false;
        if (p[i].revents) {
            ssize_t got = recv(ferry_conn_fd(r->conn), r->got + r->n, sizeof r->got - r->n, MSG_DONTWAIT);
            if (got > 0) r->n += (size_t)got;
            done = got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK) ||
                   (r->n >= 1 && r->got[0] != FERRY_RPC_CMD_HELLO);
            if (r->n == sizeof r->got) {
                answer(s, r);
                done = true;
            }
        }
        if (done || now >= r->deadline_ms) drop(s, i);
    }
}

void server_refusals_close_all(struct ferry_server *s) {
    while (s->n_refusals > 0) drop(s, s->n_refusals - 1);
}
