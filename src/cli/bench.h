/* ferry bench: `ferry bench rpc` (what an RPC server costs over a link)
 * and `ferry bench net` (what the bare link can do), as library code so
 * tests can run them; src/cli only dispatches.
 *
 * The bare-TCP peer speaks a tiny bench-only protocol, never ggml's: a
 * 24-byte control message (u32 op, u32 req, u32 rsp, u32 unused, u64
 * bytes, little-endian) and then
 *   'P'  ping-pong: req-byte messages, each answered with rsp bytes, until
 *        a message whose first byte is 'E' (not answered);
 *   'S'  sink: `bytes` bytes arrive, the peer answers one ack byte;
 *   'R'  source: the peer sends `bytes` bytes.
 * Both ends set TCP_NODELAY, as the RPC path does, so ratios are fair. */
#ifndef FERRY_BENCH_H
#define FERRY_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ferry/error.h"

/* Entry points: argv[0] is the first option (after "bench rpc" / "bench
 * net"). Results go to out (table or --json), progress to stderr.
 * Return 0, 1 on a failure, 2 on bad usage. */
int ferry_bench_rpc_main(int argc, char **argv, FILE *out);
int ferry_bench_net_main(int argc, char **argv, FILE *out);

/* ---- util.c ---------------------------------------------------------------- */

double bench_now_s(void);
uint64_t bench_thread_cpu_ns(void); /* this thread's user + system time */
/* "HOST:PORT" (IPv4 literal or localhost) into host (>= 64 bytes) and port. */
int bench_parse_endpoint(const char *s, char *host, size_t host_len, int *port);
bool bench_is_loopback(const char *host);
/* "4096", "64K", "16M", "1G" (binary units). */
int bench_parse_size(const char *s, uint64_t *out);
const char *bench_size_name(uint64_t bytes, char *buf, size_t len); /* "64 MiB" */

/* Latency samples in microseconds. */
struct bench_latency {
    int n;
    double min_us, p50_us, p99_us;
};
/* Sorts samples in place. */
void bench_latency_from(double *samples_us, int n, struct bench_latency *out);

/* Whole-buffer blocking send / recv; -1 on error or EOF. */
int bench_write_full(int fd, const void *buf, size_t n);
int bench_read_full(int fd, void *buf, size_t n);

/* Bench-peer control message (see the top of this file). */
#define BENCH_CTL_SIZE 24
#define BENCH_MAX_PING 65536 /* largest ping-pong message */

/* The transfer sizes, 4 KiB .. 1 GiB. */
#define BENCH_N_SIZES 7
extern const uint64_t bench_sizes[BENCH_N_SIZES];

/* ---- net_peer.c: the echo / sink / source side ------------------------------ */

struct bench_net_peer;
/* Listens on host:port (0 = any) and serves in threads of its own. */
int bench_net_peer_start(const char *host, int port, struct bench_net_peer **out,
                         struct ferry_error *err);
int bench_net_peer_port(const struct bench_net_peer *p);
/* Stops accepting, closes every connection and joins its threads. */
void bench_net_peer_stop(struct bench_net_peer *p);

/* ---- net_probe.c: the measuring side ---------------------------------------- */

int bench_net_connect(const char *host, int port, int *fd, struct ferry_error *err);
/* warmup + up to iterations round trips of req/rsp bytes, stopping after
 * time_cap_s; samples (iterations long) get one RTT each; *n the count. */
int bench_net_pingpong(int fd, uint32_t req, uint32_t rsp, int warmup, int iterations,
                       double time_cap_s, double *samples_us, int *n, struct ferry_error *err);
/* One sink transfer of bytes from buf, timed up to the peer's ack. */
int bench_net_sink(int fd, const void *buf, uint64_t bytes, struct ferry_error *err);
/* One source transfer of bytes into buf. */
int bench_net_source(int fd, void *buf, uint64_t bytes, struct ferry_error *err);

#endif
