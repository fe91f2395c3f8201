/* ferry bench: the bare-TCP peer (`ferry bench net --listen`, or a thread
 * of `ferry bench rpc` against a loopback server). One thread per
 * connection, blocking sockets, TCP_NODELAY: the plainest possible echo /
 * sink / source, so it shows what the link itself can do. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli/bench.h"
#include "ferry/log.h"
#include "proto/rpc.h" /* little-endian field access */

#define CHUNK (4u << 20) /* sink / source work through a buffer this large */

struct peer_conn {
    int fd;
    pthread_t thread;
    atomic_bool done; /* the thread has finished: join and close it */
    struct peer_conn *next;
};

struct bench_net_peer {
    int listen_fd, port;
    int stop_pipe[2];
    atomic_bool stopping;
    pthread_t accept_thread;
    pthread_mutex_t lock;
    struct peer_conn *conns;
};

static int serve_pingpong(int fd, uint32_t req, uint32_t rsp, uint8_t *buf) {
    if (req == 0 || req > BENCH_MAX_PING || rsp > BENCH_MAX_PING) return -1;
    for (;;) {
        if (bench_read_full(fd, buf, req)) return -1;
        if (buf[0] == 'E') return 0;
        if (bench_write_full(fd, buf, rsp)) return -1;
    }
}

static int serve_sink(int fd, uint64_t bytes, uint8_t *buf) {
    while (bytes > 0) {
        size_t n = bytes < CHUNK ? (size_t)bytes : CHUNK;
        ssize_t k = recv(fd, buf, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        bytes -= (uint64_t)k;
    }
    uint8_t ack = 'A';
    return bench_write_full(fd, &ack, 1);
}

static int serve_source(int fd, uint64_t bytes, const uint8_t *buf) {
    while (bytes > 0) {
        size_t n = bytes < CHUNK ? (size_t)bytes : CHUNK;
        if (bench_write_full(fd, buf, n)) return -1;
        bytes -= n;
    }
    return 0;
}

static void *conn_main(void *arg) {
    struct peer_conn *pc = arg;
    uint8_t *buf = calloc(1, CHUNK);
    uint8_t ctl[BENCH_CTL_SIZE];
    while (buf && bench_read_full(pc->fd, ctl, sizeof ctl) == 0) {
        uint32_t op = ferry_get_le32(ctl), req = ferry_get_le32(ctl + 4);
        uint32_t rsp = ferry_get_le32(ctl + 8);
        uint64_t bytes = ferry_get_le64(ctl + 16);
        int rc = op == 'P'   ? serve_pingpong(pc->fd, req, rsp, buf)
                 : op == 'S' ? serve_sink(pc->fd, bytes, buf)
                 : op == 'R' ? serve_source(pc->fd, bytes, buf)
                             : -1;
        if (rc) break;
    }
    free(buf);
    shutdown(pc->fd, SHUT_RDWR); /* the fd itself is closed by whoever joins */
    atomic_store(&pc->done, true);
    return NULL;
}

/* A long-running --listen peer must not keep finished connections. */
static void reap(struct bench_net_peer *p) {
    pthread_mutex_lock(&p->lock);
    for (struct peer_conn **pp = &p->conns; *pp;) {
        struct peer_conn *pc = *pp;
        if (!atomic_load(&pc->done)) {
            pp = &pc->next;
            continue;
        }
        *pp = pc->next;
        pthread_join(pc->thread, NULL);
        close(pc->fd);
        free(pc);
    }
    pthread_mutex_unlock(&p->lock);
}

static void *accept_main(void *arg) {
    struct bench_net_peer *p = arg;
    while (!atomic_load(&p->stopping)) {
        reap(p);
        struct pollfd pf[2] = { { p->listen_fd, POLLIN, 0 }, { p->stop_pipe[0], POLLIN, 0 } };
        if (poll(pf, 2, 1000) <= 0 || pf[1].revents) continue;
        int fd = accept(p->listen_fd, NULL, NULL);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct peer_conn *pc = calloc(1, sizeof *pc);
        if (pc == NULL) {
            close(fd);
            continue;
        }
        pc->fd = fd;
        pthread_mutex_lock(&p->lock);
        if (pthread_create(&pc->thread, NULL, conn_main, pc) != 0) {
            pthread_mutex_unlock(&p->lock);
            close(fd);
            free(pc);
            continue;
        }
        pc->next = p->conns;
        p->conns = pc;
        pthread_mutex_unlock(&p->lock);
    }
    return NULL;
}

int bench_net_peer_start(const char *host, int port, struct bench_net_peer **out,
                         struct ferry_error *err) {
    *out = NULL;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (!strcmp(host, "localhost")) host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "bench net: '%s' is not an IPv4 address", host);
    struct bench_net_peer *p = calloc(1, sizeof *p);
    if (p == NULL) return ferry_fail(err, FERRY_ERR_NOMEM, "bench net: out of memory");
    p->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    socklen_t len = sizeof sa;
    if (p->listen_fd < 0 || setsockopt(p->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(p->listen_fd, (struct sockaddr *)&sa, sizeof sa) || listen(p->listen_fd, 16) ||
        getsockname(p->listen_fd, (struct sockaddr *)&sa, &len) || pipe(p->stop_pipe)) {
        int e = errno;
        if (p->listen_fd >= 0) close(p->listen_fd);
        free(p);
        return ferry_fail(err, FERRY_ERR_IO, "bench net: listen on %s:%d: %s", host, port, strerror(e));
    }
    p->port = ntohs(sa.sin_port);
    pthread_mutex_init(&p->lock, NULL);
    if (pthread_create(&p->accept_thread, NULL, accept_main, p) != 0) {
        close(p->listen_fd);
        close(p->stop_pipe[0]);
        close(p->stop_pipe[1]);
        pthread_mutex_destroy(&p->lock);
        free(p);
        return ferry_fail(err, FERRY_ERR_IO, "bench net: no thread");
    }
    *out = p;
    return FERRY_OK;
}

int bench_net_peer_port(const struct bench_net_peer *p) { return p->port; }

void bench_net_peer_stop(struct bench_net_peer *p) {
    if (p == NULL) return;
    atomic_store(&p->stopping, true);
    ssize_t w = write(p->stop_pipe[1], "x", 1);
    (void)w;
    pthread_join(p->accept_thread, NULL);
    pthread_mutex_lock(&p->lock);
    struct peer_conn *pc = p->conns;
    p->conns = NULL;
    pthread_mutex_unlock(&p->lock);
    while (pc) {
        struct peer_conn *next = pc->next;
        shutdown(pc->fd, SHUT_RDWR); /* wakes a thread blocked in recv */
        pthread_join(pc->thread, NULL);
        close(pc->fd);
        free(pc);
        pc = next;
    }
    close(p->listen_fd);
    close(p->stop_pipe[0]);
    close(p->stop_pipe[1]);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
