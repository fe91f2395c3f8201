/* ferry server: how many connections fit. Each connection is a thread
 * (its stack reservation) plus socket buffers that the kernel may grow to
 * several MiB under bulk transfers, and one file descriptor (more with
 * RDMA): so the default bound follows memory and the open-file limit. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ferry/log.h"
#include "server/internal.h"

#define CONN_BUDGET (8ull << 20) /* bytes per connection: thread stack + socket buffers */
#define CONN_CAP 1024
#define FD_RESERVE 64 /* listener, log, cache files, engine, refusals in progress */

int server_default_max_conns(char *why, size_t cap) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t ram = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 8ull << 30;
    uint64_t by_mem = ram / CONN_BUDGET;
    struct rlimit rl;
    uint64_t by_fd = CONN_CAP;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY)
        by_fd = rl.rlim_max > FD_RESERVE + 1 ? (uint64_t)rl.rlim_max - FD_RESERVE : 1;
    uint64_t n = CONN_CAP;
    if (by_mem < n) n = by_mem;
    if (by_fd < n) n = by_fd;
    if (n < 1) n = 1;
    if (why)
        snprintf(why, cap, "min of %d, %" PRIu64 " MiB RAM / %llu MiB, %" PRIu64 " fds", CONN_CAP, ram >> 20,
                 CONN_BUDGET >> 20, by_fd);
    return (int)n;
}

void server_fit_fd_limit(struct ferry_server *s) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = (rlim_t)s->cfg.max_conns + FD_RESERVE + SERVER_MAX_REFUSALS;
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want) return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        ferry_log_warn("cannot raise the open-file limit from %llu to %llu: %s", (unsigned long long)was,
                       (unsigned long long)rl.rlim_cur, strerror(errno));
        return;
    }
    if (rl.rlim_cur < want)
        ferry_log_warn("open-file limit %llu (hard) is below what %d connections need (%llu): accept may fail "
                       "with EMFILE; raise it with ulimit -n",
                       (unsigned long long)rl.rlim_cur, s->cfg.max_conns, (unsigned long long)want);
    else
        ferry_log_debug("open-file limit raised from %llu to %llu for %d connections", (unsigned long long)was,
                        (unsigned long long)rl.rlim_cur, s->cfg.max_conns);
}

void ferry_server_describe_limits(const struct ferry_server *s, char *out, size_t cap) {
    const struct ferry_server_config *c = &s->cfg;
    char idle[48];
    if (c->idle_timeout_ms > 0) snprintf(idle, sizeof idle, "%.3g s", (double)c->idle_timeout_ms / 1e3);
    else snprintf(idle, sizeof idle, "none");
    snprintf(out, cap, "%d%s%s%s, %d per peer, idle timeout %s without buffers, evicting idle %s", c->max_conns,
             s->limits[0] ? " (" : "", s->limits, s->limits[0] ? ")" : "", c->max_conns_per_peer, idle,
             c->evict_loaded ? "connections, also with buffers" : "connections without buffers");
}
