/* Socket helpers: see net.h. */
#include "transport/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t ferry_net_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- endpoints ------------------------------------------------------------ */

/* Strict a.b.c.d: four decimal parts 0..255, nothing else. inet_addr would
 * also take "1", "0x7f.1" or "010.0.0.1" (octal), which surprises people. */
static int parse_dotted_quad(const char *s, struct in_addr *addr) {
    uint32_t v = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0 && *s++ != '.') return -1;
        if (*s < '0' || *s > '9') return -1;
        unsigned n = 0;
        int digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 4) {
            n = n * 10 + (unsigned)(*s++ - '0');
            digits++;
        }
        if (n > 255 || digits > 3) return -1;
        v = v << 8 | n;
    }
    if (*s != '\0') return -1;
    addr->s_addr = htonl(v);
    return 0;
}

int ferry_net_resolve_ipv4(const char *host, struct in_addr *addr, struct ferry_error *err) {
    if (host == NULL || host[0] == '\0')
        return ferry_fail(err, FERRY_ERR_INVALID, "empty host");
    if (strcmp(host, "localhost") == 0) {
        addr->s_addr = htonl(INADDR_LOOPBACK);
        return FERRY_OK;
    }
    if (parse_dotted_quad(host, addr) != 0)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "host '%s' is not an IPv4 address (a.b.c.d) or 'localhost'; "
                          "hostnames are not resolved", host);
    return FERRY_OK;
}

static int parse_port(const char *s, int *port, struct ferry_error *err) {
    if (*s == '\0') return ferry_fail(err, FERRY_ERR_INVALID, "empty port");
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return ferry_fail(err, FERRY_ERR_INVALID, "port '%s' is not a number", s);
        v = v * 10 + (*p - '0');
        if (v > 65535) return ferry_fail(err, FERRY_ERR_INVALID, "port '%s' is out of range 0..65535", s);
    }
    *port = (int)v;
    return FERRY_OK;
}

int ferry_net_parse_endpoint(const char *endpoint, char *host, size_t host_cap, int *port,
                             struct ferry_error *err) {
    if (endpoint == NULL || endpoint[0] == '\0')
        return ferry_fail(err, FERRY_ERR_INVALID, "empty endpoint (want host:port)");
    const char *colon = strchr(endpoint, ':');
    if (colon == NULL)
        return ferry_fail(err, FERRY_ERR_INVALID, "endpoint '%s' has no ':port'", endpoint);
    size_t host_len = (size_t)(colon - endpoint);
    if (host_len == 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "endpoint '%s' has no host", endpoint);
    if (host_len >= host_cap || host_len >= FERRY_NET_HOST_MAX)
        return ferry_fail(err, FERRY_ERR_INVALID, "endpoint '%s': host too long", endpoint);
    char h[FERRY_NET_HOST_MAX];
    memcpy(h, endpoint, host_len);
    h[host_len] = '\0';
    struct in_addr addr;
    int rc = parse_port(colon + 1, port, err);
    if (rc != FERRY_OK) return rc;
    rc = ferry_net_resolve_ipv4(h, &addr, err);
    if (rc != FERRY_OK) return rc;
    memcpy(host, h, host_len + 1);
    return FERRY_OK;
}

/* ---- socket options ------------------------------------------------------- */

int ferry_net_set_nonblock(int fd, int on, struct ferry_error *err) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return ferry_fail(err, FERRY_ERR_IO, "fcntl(F_GETFL): %s", strerror(errno));
    flags = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
    if (fcntl(fd, F_SETFL, flags) < 0)
        return ferry_fail(err, FERRY_ERR_IO, "fcntl(F_SETFL): %s", strerror(errno));
    return FERRY_OK;
}

int ferry_net_set_nodelay(int fd, int on, struct ferry_error *err) {
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) < 0)
        return ferry_fail(err, FERRY_ERR_IO, "setsockopt(TCP_NODELAY): %s", strerror(errno));
    return FERRY_OK;
}

static void addr_str(const struct sockaddr_in *sa, char *out, size_t cap) {
    char ip[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip) == NULL) {
        snprintf(out, cap, "?");
        return;
    }
    snprintf(out, cap, "%s:%d", ip, ntohs(sa->sin_port));
}

void ferry_net_peer_str(int fd, char *out, size_t cap) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    if (getpeername(fd, (struct sockaddr *)&sa, &len) < 0 || sa.sin_family != AF_INET)
        snprintf(out, cap, "?");
    else
        addr_str(&sa, out, cap);
}

void ferry_net_local_str(int fd, char *out, size_t cap) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0 || sa.sin_family != AF_INET)
        snprintf(out, cap, "?");
    else
        addr_str(&sa, out, cap);
}

int ferry_net_local_port(int fd) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0 || sa.sin_family != AF_INET) return -1;
    return ntohs(sa.sin_port);
}

/* ---- waiting -------------------------------------------------------------- */

int ferry_net_wait(int fd, short events, int64_t deadline, uint64_t *polls,
                   struct ferry_error *err) {
    for (;;) {
        int timeout = -1;
        if (deadline >= 0) {
            int64_t left = deadline - ferry_net_now_ms();
            if (left <= 0) return ferry_fail(err, FERRY_ERR_TIMEOUT, "timed out");
            timeout = left > INT_MAX ? INT_MAX : (int)left;
        }
        struct pollfd p = {.fd = fd, .events = events};
        if (polls) (*polls)++;
        int n = poll(&p, 1, timeout);
        if (n > 0) return FERRY_OK;
        if (n < 0 && errno != EINTR)
            return ferry_fail(err, FERRY_ERR_IO, "poll: %s", strerror(errno));
        /* n == 0 or EINTR: loop; the deadline check decides */
    }
}

/* ---- listen, accept, connect ---------------------------------------------- */

static int make_addr(const char *host, int port, struct sockaddr_in *sa, struct ferry_error *err) {
    if (port < 0 || port > 65535)
        return ferry_fail(err, FERRY_ERR_INVALID, "port %d is out of range 0..65535", port);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return ferry_net_resolve_ipv4(host, &sa->sin_addr, err);
}

int ferry_net_listen(const char *host, int port, int backlog, int *fd_out,
                     struct ferry_error *err) {
    struct sockaddr_in sa;
    int rc = make_addr(host, port, &sa, err);
    if (rc != FERRY_OK) return rc;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return ferry_fail(err, FERRY_ERR_IO, "socket: %s", strerror(errno));
    /* a restarted server must not wait out TIME_WAIT of its old clients */
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0) {
        rc = ferry_fail(err, FERRY_ERR_IO, "setsockopt(SO_REUSEADDR): %s", strerror(errno));
    } else if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        rc = ferry_fail(err, FERRY_ERR_IO, "bind %s:%d: %s", host, port, strerror(errno));
    } else if (listen(fd, backlog) < 0) {
        rc = ferry_fail(err, FERRY_ERR_IO, "listen %s:%d: %s", host, port, strerror(errno));
    }
    if (rc != FERRY_OK) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return FERRY_OK;
}

int ferry_net_accept(int listen_fd, int *fd_out, struct ferry_error *err) {
    int fd;
    do {
        fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED)
            return ferry_fail(err, FERRY_ERR_TIMEOUT, "no pending connection");
        return ferry_fail(err, FERRY_ERR_IO, "accept: %s", strerror(errno));
    }
    int rc = ferry_net_set_nodelay(fd, 1, err);
    if (rc != FERRY_OK) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return FERRY_OK;
}

static int connect_error(int e, const char *host, int port, struct ferry_error *err) {
    if (e == ECONNREFUSED)
        return ferry_fail(err, FERRY_ERR_REFUSED, "connect %s:%d: %s", host, port, strerror(e));
    if (e == ETIMEDOUT)
        return ferry_fail(err, FERRY_ERR_TIMEOUT, "connect %s:%d: %s", host, port, strerror(e));
    return ferry_fail(err, FERRY_ERR_IO, "connect %s:%d: %s", host, port, strerror(e));
}

/* Waits for a non-blocking connect to finish and collects its result. */
static int finish_connect(int fd, const char *host, int port, int timeout_ms,
                          struct ferry_error *err) {
    int64_t deadline = timeout_ms > 0 ? ferry_net_now_ms() + timeout_ms : -1;
    int rc = ferry_net_wait(fd, POLLOUT, deadline, NULL, err);
    if (rc == FERRY_ERR_TIMEOUT)
        return ferry_fail(err, FERRY_ERR_TIMEOUT, "connect %s:%d: timed out after %d ms", host,
                          port, timeout_ms);
    if (rc != FERRY_OK) return rc;
    int e = 0;
    socklen_t len = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0) e = errno;
    return e ? connect_error(e, host, port, err) : FERRY_OK;
}

int ferry_net_connect(const char *host, int port, int timeout_ms, int *fd_out,
                      struct ferry_error *err) {
    if (port == 0) return ferry_fail(err, FERRY_ERR_INVALID, "cannot connect to port 0");
    struct sockaddr_in sa;
    int rc = make_addr(host, port, &sa, err);
    if (rc != FERRY_OK) return rc;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return ferry_fail(err, FERRY_ERR_IO, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno == EINPROGRESS || errno == EINTR)
            rc = finish_connect(fd, host, port, timeout_ms, err);
        else
            rc = connect_error(errno, host, port, err);
    }
    if (rc == FERRY_OK) rc = ferry_net_set_nodelay(fd, 1, err);
    if (rc != FERRY_OK) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return FERRY_OK;
}
