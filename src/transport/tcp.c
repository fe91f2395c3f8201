/* The TCP transport: non-blocking sockets waited on with poll, one sendmsg
 * per message (MSG_NOSIGNAL, so a vanished peer is an error, not SIGPIPE),
 * and reads straight into the caller's memory: no copies of our own. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/net.h"
#include "transport/transport.h"

struct tcp_conn {
    struct ferry_conn base; /* first, so a ferry_conn * is a tcp_conn * */
    bool drained; /* the last receive emptied the socket */
};

struct ferry_listener {
    int fd;
    int port;
};

static int io_error(struct ferry_conn *c, const char *what, int e, struct ferry_error *err) {
    /* EPIPE / ECONNRESET: the peer is gone, which callers treat like a close */
    if (e == EPIPE || e == ECONNRESET)
        return ferry_fail(err, FERRY_ERR_CLOSED, "%s: %s: %s", c->name, what, strerror(e));
    return ferry_fail(err, FERRY_ERR_IO, "%s: %s: %s", c->name, what, strerror(e));
}

/* Drops the first n bytes from the iovec window [*iov, *iov + *cnt). */
static void iov_advance(struct iovec **iov, int *cnt, size_t n) {
    while (*cnt > 0 && n >= (*iov)->iov_len) {
        n -= (*iov)->iov_len;
        (*iov)++;
        (*cnt)--;
    }
    if (*cnt > 0 && n > 0) {
        (*iov)->iov_base = (uint8_t *)(*iov)->iov_base + n;
        (*iov)->iov_len -= n;
    }
}

static int tcp_send(struct ferry_conn *c, const struct iovec *in, int n, int hdr_parts,
                    int64_t deadline, struct ferry_error *err) {
    (void)hdr_parts; /* a stream: header parts and payload go out together */
    struct iovec iov[FERRY_CONN_MAX_IOV];
    memcpy(iov, in, (size_t)n * sizeof *iov);
    struct iovec *cur = iov;
    int cnt = n;
    iov_advance(&cur, &cnt, 0); /* skip leading empty segments */
    while (cnt > 0) {
        struct msghdr msg = {.msg_iov = cur, .msg_iovlen = (size_t)cnt};
        c->stats.syscalls++;
        ssize_t w = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        if (w >= 0) {
            iov_advance(&cur, &cnt, (size_t)w);
            continue;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return io_error(c, "send", errno, err);
        c->stats.waits++;
        int rc = ferry_net_wait(c->fd, POLLOUT, deadline, &c->stats.syscalls, err);
        if (rc == FERRY_ERR_TIMEOUT)
            return ferry_fail(err, rc, "%s: send not complete within %d ms (peer not reading)",
                              c->name, c->timeouts.frame_ms);
        if (rc != FERRY_OK) return rc;
    }
    return FERRY_OK;
}

static int tcp_recv_some(struct ferry_conn *c, void *buf, size_t len, size_t *got,
                         int64_t deadline, struct ferry_error *err) {
    struct tcp_conn *t = (struct tcp_conn *)c;
    /* After a receive that emptied the socket the next bytes are usually a
     * round trip away (request/response), so wait first instead of paying
     * for a recv that can only say EAGAIN. */
    if (t->drained) {
        t->drained = false;
        c->stats.waits++;
        int rc = ferry_net_wait(c->fd, POLLIN, deadline, &c->stats.syscalls, err);
        if (rc != FERRY_OK) return rc;
    }
    for (;;) {
        c->stats.syscalls++;
        ssize_t r = recv(c->fd, buf, len, 0);
        if (r > 0) {
            *got = (size_t)r;
            t->drained = (size_t)r < len;
            return FERRY_OK;
        }
        if (r == 0) return ferry_fail(err, FERRY_ERR_CLOSED, "%s: peer closed", c->name);
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return io_error(c, "recv", errno, err);
        c->stats.waits++;
        int rc = ferry_net_wait(c->fd, POLLIN, deadline, &c->stats.syscalls, err);
        if (rc != FERRY_OK) return rc;
    }
}

static void tcp_close(struct ferry_conn *c) {
    if (c->fd >= 0) close(c->fd);
    free(c);
}

/* TCP has no registration or capabilities: the vtable leaves those NULL and
 * transport.c answers "nothing to do" for it. */
static const struct ferry_conn_ops tcp_ops = {
    .kind = "tcp",
    .send = tcp_send,
    .recv_some = tcp_recv_some,
    .close = tcp_close,
};

/* Wraps a connected, non-blocking socket (taking ownership of fd). */
static int tcp_conn_new(int fd, struct ferry_conn **out, struct ferry_error *err) {
    struct tcp_conn *t = calloc(1, sizeof *t);
    if (t == NULL) {
        close(fd);
        return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory for a connection");
    }
    struct ferry_conn *c = &t->base;
    ferry_conn_init(c, &tcp_ops, fd);
    ferry_net_peer_str(fd, c->peer, sizeof c->peer);
    ferry_net_local_str(fd, c->local, sizeof c->local);
    snprintf(c->name, sizeof c->name, "tcp %s", c->peer);
    *out = c;
    return FERRY_OK;
}

/* ---- listener and connect ------------------------------------------------- */

int ferry_tcp_listen(const char *host, int port, struct ferry_listener **out,
                     struct ferry_error *err) {
    int fd;
    int rc = ferry_net_listen(host, port, FERRY_LISTEN_BACKLOG, &fd, err);
    if (rc != FERRY_OK) return rc;
    struct ferry_listener *l = calloc(1, sizeof *l);
    if (l == NULL) {
        close(fd);
        return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory for a listener");
    }
    l->fd = fd;
    l->port = ferry_net_local_port(fd);
    *out = l;
    return FERRY_OK;
}

int ferry_listener_accept(struct ferry_listener *l, int timeout_ms, struct ferry_conn **out,
                          struct ferry_error *err) {
    int64_t deadline = timeout_ms >= 0 ? ferry_net_now_ms() + timeout_ms : -1;
    for (;;) {
        int fd;
        int rc = ferry_net_accept(l->fd, &fd, err);
        if (rc == FERRY_OK) return tcp_conn_new(fd, out, err);
        if (rc != FERRY_ERR_TIMEOUT) return rc;
        /* nothing pending (or the client gave up before we got to it) */
        if (timeout_ms == 0) return rc;
        rc = ferry_net_wait(l->fd, POLLIN, deadline, NULL, err);
        if (rc == FERRY_ERR_TIMEOUT)
            return ferry_fail(err, rc, "no connection within %d ms", timeout_ms);
        if (rc != FERRY_OK) return rc;
    }
}

int ferry_listener_port(const struct ferry_listener *l) { return l->port; }
int ferry_listener_fd(const struct ferry_listener *l) { return l->fd; }

void ferry_listener_close(struct ferry_listener *l) {
    if (l == NULL) return;
    close(l->fd);
    free(l);
}

int ferry_tcp_connect(const char *host, int port, int timeout_ms, struct ferry_conn **out,
                      struct ferry_error *err) {
    int fd;
    int rc = ferry_net_connect(host, port, timeout_ms, &fd, err);
    if (rc != FERRY_OK) return rc;
    return tcp_conn_new(fd, out, err);
}
