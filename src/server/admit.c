/* ferry server: the connection table's policy. A slot is taken for every
 * connection until its thread ends or it is evicted. When a new connection
 * finds no room (the table is full, or its address holds its share), the
 * connection idle the longest makes room for it: no command in flight,
 * quiet for at least evict_grace_ms, holding no buffers (or, when the
 * operator allows it, holding some: those go last). Only when none
 * qualifies is the newcomer refused.
 *
 * Evicting is safe with one thread per connection: under conns_lock (which
 * the thread takes before it closes its socket) the accept loop marks the
 * connection evicted and shuts down the reading side of its socket; the
 * blocked thread wakes, tells a ferry client why, frees its buffers and
 * exits; reap joins it. Nobody but that thread frees its state. */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "ferry/log.h"
#include "server/internal.h"

/* The better victim of two: no buffers before buffers, then idle longest. */
static bool better(uint32_t a_bufs, uint64_t a_idle, const struct server_conn *b, uint32_t b_bufs,
                   uint64_t b_idle) {
    if (b == NULL) return true;
    if ((a_bufs == 0) != (b_bufs == 0)) return a_bufs == 0;
    return a_idle < b_idle;
}

/* Data already waiting on its socket means a command is arriving. */
static bool has_input(const struct server_conn *sc) {
    struct pollfd p = { .fd = ferry_conn_fd(sc->conn), .events = POLLIN };
    return poll(&p, 1, 0) > 0;
}

/* The connection to evict (from addr only, when given), or NULL. */
static struct server_conn *pick_victim(struct ferry_server *s, const char *addr, uint64_t now) {
    uint64_t grace = (uint64_t)s->cfg.evict_grace_ms * 1000000ull;
    struct server_conn *best = NULL;
    uint32_t best_bufs = 0;
    uint64_t best_idle = 0;
    for (struct server_conn *sc = s->conns; sc; sc = sc->next) {
        if (!sc->holds_slot || sc->closing || atomic_load(&sc->busy)) continue;
        if (addr && strcmp(sc->addr, addr) != 0) continue;
        uint32_t bufs = atomic_load(&sc->n_buffers);
        uint64_t since = atomic_load(&sc->idle_since_ns);
        if (bufs > 0 && !s->cfg.evict_loaded) continue;
        if (now < since + grace) continue;
        if (!better(bufs, since, best, best_bufs, best_idle)) continue;
        if (has_input(sc)) continue;
        best = sc;
        best_bufs = bufs;
        best_idle = since;
    }
    return best;
}

static void evict(struct ferry_server *s, struct server_conn *sc, const char *newcomer, const char *why,
                  uint64_t now) {
    atomic_store(&sc->evicted, true);
    sc->holds_slot = false;
    s->slots_used--;
    /* the thread, blocked reading, wakes with an end of stream; its socket
     * can still carry an error reply to a ferry client */
    shutdown(ferry_conn_fd(sc->conn), SHUT_RD);
    atomic_fetch_add(&s->conns_evicted, 1);
    ferry_log_info("evicting %s (idle %.1f s, %u buffers) to make room for %s: %s", ferry_conn_peer(sc->conn),
                   (double)(now - atomic_load(&sc->idle_since_ns)) / 1e9, atomic_load(&sc->n_buffers), newcomer,
                   why);
}

int server_admit(struct ferry_server *s, const char *addr, uint32_t *code, char *why, size_t cap) {
    const struct ferry_server_config *cfg = &s->cfg;
    uint64_t now = server_now_ns();
    int rc = FERRY_OK;
    pthread_mutex_lock(&s->conns_lock);
    int from_peer = 0;
    for (struct server_conn *sc = s->conns; sc; sc = sc->next)
        if (sc->holds_slot && strcmp(sc->addr, addr) == 0) from_peer++;
    char reason[128];
    /* a bound as large as the table is the table's: its message says so */
    if (from_peer >= cfg->max_conns_per_peer && cfg->max_conns_per_peer < cfg->max_conns) {
        /* a host at its share makes room among its own connections only */
        snprintf(reason, sizeof reason, "%s holds %d connections (max %d per address)", addr, from_peer,
                 cfg->max_conns_per_peer);
        struct server_conn *v = pick_victim(s, addr, now);
        if (v) {
            evict(s, v, addr, reason, now);
        } else {
            *code = FERRY_RPC_ERROR_PEER_LIMIT;
            snprintf(why, cap, "%s, none idle", reason);
            rc = FERRY_ERR_REFUSED;
        }
    }
    if (rc == FERRY_OK && s->slots_used >= cfg->max_conns) {
        snprintf(reason, sizeof reason, "%d connections open (max %d)", s->slots_used, cfg->max_conns);
        struct server_conn *v = pick_victim(s, NULL, now);
        if (v) {
            evict(s, v, addr, reason, now);
        } else {
            *code = FERRY_RPC_ERROR_BUSY;
            snprintf(why, cap, "%s, none idle%s", reason,
                     cfg->evict_loaded ? "" : " without buffers");
            rc = FERRY_ERR_REFUSED;
        }
    }
    /* evicted threads take a moment to exit: bound the threads alive too */
    if (rc == FERRY_OK && s->n_conns >= 2 * cfg->max_conns + 16) {
        *code = FERRY_RPC_ERROR_BUSY;
        snprintf(why, cap, "%d connection threads still closing (max connections %d)", s->n_conns,
                 cfg->max_conns);
        rc = FERRY_ERR_REFUSED;
    }
    if (rc == FERRY_OK) s->slots_used++;
    pthread_mutex_unlock(&s->conns_lock);
    return rc;
}

void server_release(struct ferry_server *s, struct server_conn *sc) {
    pthread_mutex_lock(&s->conns_lock);
    if (sc->holds_slot) {
        sc->holds_slot = false;
        s->slots_used--;
    }
    pthread_mutex_unlock(&s->conns_lock);
}
