/* ferry: small socket helpers in the spirit of redis' anet.c. IPv4 only, as
 * ggml's RPC protocol is; every fd made here is close-on-exec and
 * non-blocking (the transports wait with poll). Failures fill a
 * struct ferry_error with the call that failed and strerror. */
#ifndef FERRY_NET_H
#define FERRY_NET_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"

#define FERRY_NET_HOST_MAX 64
#define FERRY_NET_ADDR_MAX 32 /* "255.255.255.255:65535" */

/* Splits "host:port" at its first ':' (as ggml does). host must be a dotted
 * IPv4 literal or "localhost"; port 0..65535 (0 is meaningful to listen).
 * FERRY_ERR_INVALID with a reason naming the bad part otherwise. */
int ferry_net_parse_endpoint(const char *endpoint, char *host, size_t host_cap, int *port,
                             struct ferry_error *err);
/* A dotted IPv4 literal (strictly a.b.c.d) or "localhost" to an address. */
int ferry_net_resolve_ipv4(const char *host, struct in_addr *addr, struct ferry_error *err);

int ferry_net_listen(const char *host, int port, int backlog, int *fd, struct ferry_error *err);
/* One accept; FERRY_ERR_TIMEOUT when nothing is pending (the fd is
 * non-blocking: poll it first). Sets TCP_NODELAY on the new socket. */
int ferry_net_accept(int listen_fd, int *fd, struct ferry_error *err);
/* Non-blocking connect, waited for with poll; timeout_ms 0 = no limit of
 * ours. The socket comes back non-blocking with TCP_NODELAY. */
int ferry_net_connect(const char *host, int port, int timeout_ms, int *fd,
                      struct ferry_error *err);

int ferry_net_set_nonblock(int fd, int on, struct ferry_error *err);
int ferry_net_set_nodelay(int fd, int on, struct ferry_error *err);
int ferry_net_local_port(int fd); /* -1 on error */
/* "a.b.c.d:port" of either end; "?" when unknown. */
void ferry_net_peer_str(int fd, char *out, size_t cap);
void ferry_net_local_str(int fd, char *out, size_t cap);

/* poll() for events on fd until the monotonic deadline (ms, -1: forever),
 * retrying on EINTR. FERRY_OK when ready (including POLLHUP/POLLERR: the
 * next syscall reports them), FERRY_ERR_TIMEOUT, or FERRY_ERR_IO. *polls
 * counts the poll calls made. */
int ferry_net_wait(int fd, short events, int64_t deadline, uint64_t *polls,
                   struct ferry_error *err);
int64_t ferry_net_now_ms(void);

#endif
