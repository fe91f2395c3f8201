/* ferry bench: the measuring side of the bare-TCP link, and `ferry bench
 * net` itself (--listen runs the peer, --connect measures against one). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli/bench.h"
#include "cli/opts.h"
#include "proto/rpc.h"

int bench_net_connect(const char *host, int port, int *fd, struct ferry_error *err) {
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (!strcmp(host, "localhost")) host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "bench net: '%s' is not an IPv4 address", host);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        if (s >= 0) close(s);
        return ferry_fail(err, e == ECONNREFUSED ? FERRY_ERR_REFUSED : FERRY_ERR_IO,
                          "bench net: connect %s:%d: %s", host, port, strerror(e));
    }
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as the RPC transport */
    *fd = s;
    return FERRY_OK;
}

static int send_ctl(int fd, uint32_t op, uint32_t req, uint32_t rsp, uint64_t bytes,
                    struct ferry_error *err) {
    uint8_t ctl[BENCH_CTL_SIZE] = { 0 };
    ferry_put_le32(ctl, op);
    ferry_put_le32(ctl + 4, req);
    ferry_put_le32(ctl + 8, rsp);
    ferry_put_le64(ctl + 16, bytes);
    if (bench_write_full(fd, ctl, sizeof ctl))
        return ferry_fail(err, FERRY_ERR_IO, "bench net: peer gone: %s", strerror(errno));
    return FERRY_OK;
}

static int io_fail(struct ferry_error *err, const char *what) {
    return ferry_fail(err, FERRY_ERR_IO, "bench net: %s: %s", what, errno ? strerror(errno) : "peer closed");
}

int bench_net_pingpong(int fd, uint32_t req, uint32_t rsp, int warmup, int iterations,
                       double time_cap_s, double *samples_us, int *n, struct ferry_error *err) {
    *n = 0;
    if (req == 0 || req > BENCH_MAX_PING || rsp > BENCH_MAX_PING)
        return ferry_fail(err, FERRY_ERR_INVALID, "bench net: ping-pong sizes %u/%u", req, rsp);
    int rc = send_ctl(fd, 'P', req, rsp, 0, err);
    if (rc) return rc;
    uint8_t *out = calloc(1, req), *in = malloc(rsp ? rsp : 1);
    if (!out || !in) {
        free(out);
        free(in);
        return ferry_fail(err, FERRY_ERR_NOMEM, "bench net: out of memory");
    }
    double t_end = bench_now_s() + time_cap_s;
    for (int i = 0; i < warmup + iterations && rc == FERRY_OK; i++) {
        double t0 = bench_now_s();
        if (bench_write_full(fd, out, req) || bench_read_full(fd, in, rsp)) {
            rc = io_fail(err, "ping-pong");
            break;
        }
        double t1 = bench_now_s();
        if (i >= warmup) samples_us[(*n)++] = (t1 - t0) * 1e6;
        if (t1 > t_end) break;
    }
    out[0] = 'E'; /* ends the peer's loop, unanswered */
    if (rc == FERRY_OK && bench_write_full(fd, out, req)) rc = io_fail(err, "ping-pong end");
    free(out);
    free(in);
    return rc;
}

int bench_net_sink(int fd, const void *buf, uint64_t bytes, struct ferry_error *err) {
    int rc = send_ctl(fd, 'S', 0, 0, bytes, err);
    if (rc) return rc;
    uint8_t ack;
    if (bench_write_full(fd, buf, (size_t)bytes) || bench_read_full(fd, &ack, 1))
        return io_fail(err, "sink");
    return FERRY_OK;
}

int bench_net_source(int fd, void *buf, uint64_t bytes, struct ferry_error *err) {
    int rc = send_ctl(fd, 'R', 0, 0, bytes, err);
    if (rc) return rc;
    if (bench_read_full(fd, buf, (size_t)bytes)) return io_fail(err, "source");
    return FERRY_OK;
}

/* ---- ferry bench net ---------------------------------------------------------- */

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static int net_listen(const char *host, int port) {
    struct ferry_error err;
    struct bench_net_peer *p;
    if (bench_net_peer_start(host, port, &p, &err) != FERRY_OK) {
        fprintf(stderr, "ferry bench net: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "ferry bench net: peer listening on %s:%d (echo / sink / source)\n", host,
            bench_net_peer_port(p));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    while (!g_stop) pause();
    bench_net_peer_stop(p);
    fprintf(stderr, "ferry bench net: stopped\n");
    return 0;
}

struct net_opts {
    bool json, quick;
    int iterations;
    uint64_t max_size;
};

static int net_connect(const char *endpoint, const struct net_opts *o, FILE *out) {
    char host[64];
    int port;
    if (bench_parse_endpoint(endpoint, host, sizeof host, &port) || port == 0) {
        fprintf(stderr, "ferry bench net: --connect wants HOST:PORT, got '%s'\n", endpoint);
        return 2;
    }
    struct ferry_error err;
    int fd = -1;
    if (bench_net_connect(host, port, &fd, &err)) {
        fprintf(stderr, "ferry bench net: %s\n", err.msg);
        return 1;
    }
    double *samples = malloc(sizeof(double) * (size_t)o->iterations);
    uint64_t max = o->max_size;
    uint8_t *buf = NULL;
    int rc = 1;
    struct bench_latency lat;
    int n = 0;
    if (!samples) goto out;
    fprintf(stderr, "bench net: ping-pong 13/16 bytes x %d\n", o->iterations);
    if (bench_net_pingpong(fd, 13, 16, o->iterations / 10 + 1, o->iterations, 10.0, samples, &n, &err)) goto fail;
    bench_latency_from(samples, n, &lat);
    buf = malloc((size_t)max);
    if (!buf) {
        fprintf(stderr, "ferry bench net: no memory for %llu bytes\n", (unsigned long long)max);
        goto out;
    }
    memset(buf, 0x5a, (size_t)max); /* fault the pages in before timing */
    if (o->json)
        fprintf(out, "{\"tool\":\"ferry bench net\",\"peer\":\"%s:%d\",\"pingpong\":{\"req_bytes\":13,"
                     "\"rsp_bytes\":16,\"n\":%d,\"min_us\":%.3f,\"p50_us\":%.3f,\"p99_us\":%.3f},\"stream\":[",
                host, port, lat.n, lat.min_us, lat.p50_us, lat.p99_us);
    else
        fprintf(out, "bare TCP to %s:%d\n  ping-pong 13/16 B  n %d  min %.1f us  p50 %.1f us  p99 %.1f us\n"
                     "  %-9s %12s %12s\n",
                host, port, lat.n, lat.min_us, lat.p50_us, lat.p99_us, "size", "sink GB/s", "source GB/s");
    double target = o->quick ? 0.1 : 0.5;
    bool first = true;
    for (int i = 0; i < BENCH_N_SIZES && bench_sizes[i] <= max; i++) {
        uint64_t sz = bench_sizes[i];
        double gbps[2];
        for (int dir = 0; dir < 2; dir++) {
            int reps = 0;
            if ((dir ? bench_net_source(fd, buf, sz, &err) : bench_net_sink(fd, buf, sz, &err))) goto fail;
            double t0 = bench_now_s(), t = t0;
            while (reps < 2 || (t - t0 < target && reps < 10000)) {
                if ((dir ? bench_net_source(fd, buf, sz, &err) : bench_net_sink(fd, buf, sz, &err))) goto fail;
                reps++;
                t = bench_now_s();
            }
            gbps[dir] = (double)sz * reps / (t - t0) / 1e9;
        }
        char name[32];
        fprintf(stderr, "bench net: %s done\n", bench_size_name(sz, name, sizeof name));
        if (o->json)
            fprintf(out, "%s{\"size\":%llu,\"sink_gbps\":%.4f,\"source_gbps\":%.4f}", first ? "" : ",",
                    (unsigned long long)sz, gbps[0], gbps[1]);
        else
            fprintf(out, "  %-9s %12.3f %12.3f\n", name, gbps[0], gbps[1]);
        first = false;
    }
    if (o->json) fprintf(out, "]}\n");
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "ferry bench net: %s\n", err.msg);
out:
    free(buf);
    free(samples);
    close(fd);
    return rc;
}

static int read_max_size(const char *cmd, const char *name, const char *v, void *dest) {
    uint64_t x;
    if (bench_parse_size(v, &x) || x < bench_sizes[0]) {
        fprintf(stderr, "ferry %s: %s '%s': a size of at least 4K (e.g. 64M)\n", cmd, name, v);
        return -1;
    }
    *(uint64_t *)dest = x;
    return 0;
}

int ferry_bench_net_main(int argc, char **argv, FILE *out) {
    const char *host = "127.0.0.1", *connect_to = NULL;
    int port = 50053;
    bool listen_mode = false;
    struct net_opts o = { false, false, 2000, 1ull << 30 };
    struct opt opts[] = {
        { .names = "--listen", .kind = OPT_FLAG, .dest = &listen_mode, .help = "run the peer until SIGINT/SIGTERM" },
        { .names = "-H|--host", .kind = OPT_STRING, .dest = &host, .arg = "HOST",
          .help = "--listen: address to bind (default 127.0.0.1)" },
        { .names = "-p|--port", .kind = OPT_INT, .dest = &port, .arg = "PORT", .help = "--listen: port (default 50053)",
          .lo = 0, .hi = 65535 },
        { .names = "--connect", .kind = OPT_STRING, .dest = &connect_to, .arg = "HOST:PORT",
          .help = "measure the link to a --listen peer" },
        { .names = "--json", .kind = OPT_FLAG, .dest = &o.json, .help = "one JSON object on stdout" },
        { .names = "--quick", .kind = OPT_FLAG, .dest = &o.quick, .help = "up to 64 MiB" },
        { .names = "--iterations", .kind = OPT_INT, .dest = &o.iterations, .arg = "N",
          .help = "ping-pong round trips (default 2000)", .lo = 1, .hi = 10000000 },
        { .names = "--max-size", .kind = OPT_FN, .dest = &o.max_size, .arg = "SIZE", .fn = read_max_size,
          .help = "largest transfer (default 1G)" },
        { 0 },
    };
    const struct opts_cmd cmd = {
        "bench net", "bench net --listen [-H HOST] [-p PORT] | --connect HOST:PORT [options]",
        "The bare TCP link, the limit `ferry bench rpc` compares against: --listen runs\n"
        "an echo / sink / source peer (default 127.0.0.1:50053) until SIGINT/SIGTERM;\n"
        "--connect measures ping-pong RTT (13/16 bytes, GET_ALIGNMENT's frames) and\n"
        "one-way streams of 4 KiB .. 1 GiB (sink timed up to a 1-byte ack; source).",
        opts, NULL,
    };
    int st = opts_parse(&cmd, argc, argv);
    if (st >= 0) return st;
    if (o.quick && o.max_size > (64ull << 20)) o.max_size = 64ull << 20;
    if (listen_mode == (connect_to != NULL)) return opts_usage_error(&cmd, "give either --listen or --connect HOST:PORT");
    return listen_mode ? net_listen(host, port) : net_connect(connect_to, &o, out);
}
