/* ferry bench: a functional smoke test (no timing assertions). Runs
 * `ferry bench rpc` against an in-process ferry server and checks that the
 * JSON carries every figure, that the server's CPU came through ferry's
 * FERRY_STATS extension, and that against a server without the extension
 * (a ggml server, simulated) FERRY_STATS is never sent. */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cli/bench.h"
#include "ferry/client.h"
#include "ferry/log.h"
#include "ferry/server.h"
#include "proto/rpc.h"
#include "rpc_client_raw.h"
#include "testutil.h"

struct running_server {
    struct ferry_server *s;
    pthread_t thread;
    int port;
};

static void *serve(void *arg) {
    struct running_server *rs = arg;
    struct ferry_error err;
    ferry_server_run(rs->s, &err);
    return NULL;
}

static bool server_start(struct running_server *rs, bool ferry_ext) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.n_threads = 1;
    cfg.mem_limit = 64ull << 20;
    cfg.no_ferry_ext = !ferry_ext;
    struct ferry_error err;
    if (!CHECK(ferry_server_create(&cfg, &rs->s, &err) == FERRY_OK, "server: %s", err.msg)) return false;
    rs->port = ferry_server_port(rs->s);
    return CHECK(pthread_create(&rs->thread, NULL, serve, rs) == 0, "server thread");
}

static void server_finish(struct running_server *rs, struct ferry_server_stats *st) {
    ferry_server_stop(rs->s);
    pthread_join(rs->thread, NULL);
    ferry_server_get_stats(rs->s, st);
    ferry_server_destroy(rs->s);
}

/* Runs the bench entry point with its stdout in memory. */
static char *run_bench(int port, const char *extra, int *rc) {
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "127.0.0.1:%d", port);
    char *argv[16] = { "--rpc", endpoint, "--quick", "--json", "--iterations", "50", "--max-size", "1048576" };
    int argc = 8;
    if (extra) argv[argc++] = (char *)extra;
    FILE *f = tmpfile();
    if (!CHECK(f != NULL, "tmpfile")) return NULL;
    *rc = ferry_bench_rpc_main(argc, argv, f);
    long n = ftell(f);
    char *text = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    rewind(f);
    if (text && n > 0 && fread(text, 1, (size_t)n, f) != (size_t)n) text[0] = '\0';
    fclose(f);
    return text;
}

/* The value after "key": in the object that starts at `from`; -1 for null,
 * -2 when absent. Good enough for the bench's flat, known output. */
static double json_value(const char *from, const char *key) {
    char pat[80];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(from, pat);
    if (p == NULL) return -2;
    p += strlen(pat);
    if (!strncmp(p, "null", 4)) return -1;
    if (!strncmp(p, "true", 4)) return 1;
    if (!strncmp(p, "false", 5)) return 0;
    return strtod(p, NULL);
}

static const char *section(const char *text, const char *key) {
    char pat[80];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = text ? strstr(text, pat) : NULL;
    return p ? p : "";
}

static void check_rtt(const char *text, const char *name, bool rpc, bool ferry) {
    const char *s = section(text, name);
    CHECK(s[0] != '\0', "%s present", name);
    CHECK(json_value(s, "n") >= 1, "%s: n", name);
    const char *keys[] = { "min_us", "p50_us", "p99_us" };
    for (int i = 0; i < 3; i++) CHECK(json_value(s, keys[i]) > 0, "%s: %s positive", name, keys[i]);
    CHECK(json_value(s, "client_cpu_us") >= 0, "%s: client cpu", name);
    if (rpc) {
        CHECK(json_value(s, "ratio_p50") > 0 && json_value(s, "ratio_min") > 0 && json_value(s, "ratio_p99") > 0,
              "%s: ratios to bare TCP", name);
        double scpu = json_value(s, "server_cpu_us");
        CHECK(ferry ? scpu >= 0 : scpu == -1, "%s: server cpu %s (%g)", name, ferry ? "reported" : "null", scpu);
    } else {
        CHECK(json_value(s, "req_bytes") > 0 && json_value(s, "rsp_bytes") > 0, "%s: sizes", name);
    }
}

static void check_report(const char *text, bool ferry) {
    if (!CHECK(text != NULL && text[0] == '{', "JSON object printed")) return;
    CHECK(strchr(text, '\n') == strrchr(text, '\n'), "one line");
    CHECK(json_value(text, "server_is_ferry") == (ferry ? 1 : 0), "server_is_ferry %d", ferry);
    check_rtt(text, "tcp_pingpong", false, ferry);
    check_rtt(text, "get_alignment", true, ferry);
    check_rtt(text, "tcp_pingpong_graph", false, ferry);
    check_rtt(text, "graph_get64", true, ferry);
    const uint64_t sizes[] = { 4096, 65536, 1048576 };
    for (int i = 0; i < 3; i++) {
        char pat[48];
        snprintf(pat, sizeof pat, "{\"size\":%llu,", (unsigned long long)sizes[i]);
        const char *s = strstr(text, pat);
        if (!CHECK(s != NULL, "bandwidth row %llu", (unsigned long long)sizes[i])) continue;
        const char *keys[] = { "tcp_sink_gbps", "set_gbps", "set_ratio", "tcp_source_gbps", "get_gbps", "get_ratio" };
        for (int k = 0; k < 6; k++)
            CHECK(json_value(s, keys[k]) > 0, "size %llu: %s positive", (unsigned long long)sizes[i], keys[k]);
        CHECK(json_value(s, "set_client_cpu_us") >= 0 && json_value(s, "get_client_cpu_us") >= 0,
              "size %llu: client cpu", (unsigned long long)sizes[i]);
        double scpu = json_value(s, "set_server_cpu_us");
        CHECK(ferry ? scpu >= 0 : scpu == -1, "size %llu: server cpu", (unsigned long long)sizes[i]);
    }
    CHECK(strstr(text, "{\"size\":16777216,") == NULL, "--max-size caps the sizes");
    const char *acc = section(text, "acceptance");
    CHECK(json_value(acc, "small_rtt_ratio") > 0, "acceptance: small RTT ratio");
    CHECK(json_value(acc, "set_64mib_ratio") == -1 && json_value(acc, "get_64mib_ratio") == -1,
          "acceptance: 64 MiB ratios present (null below 64 MiB)");
}

static void test_util(void) {
    uint64_t v = 0;
    CHECK(bench_parse_size("64M", &v) == 0 && v == 64ull << 20, "64M");
    CHECK(bench_parse_size("1GiB", &v) == 0 && v == 1ull << 30, "1GiB");
    CHECK(bench_parse_size("4096", &v) == 0 && v == 4096, "4096");
    CHECK(bench_parse_size("x", &v) != 0 && bench_parse_size("12Q", &v) != 0, "bad sizes refused");
    char host[64];
    int port;
    CHECK(bench_parse_endpoint("127.0.0.1:50052", host, sizeof host, &port) == 0 && !strcmp(host, "127.0.0.1") &&
              port == 50052,
          "endpoint");
    CHECK(bench_parse_endpoint("nohost", host, sizeof host, &port) != 0, "endpoint without a port");
    CHECK(bench_is_loopback("localhost") && bench_is_loopback("127.0.0.2") && !bench_is_loopback("10.0.0.1"),
          "loopback");
    double s[100];
    for (int i = 0; i < 100; i++) s[i] = 100 - i;
    struct bench_latency lat;
    bench_latency_from(s, 100, &lat);
    CHECK(lat.n == 100 && lat.min_us == 1 && lat.p50_us == 50 && lat.p99_us == 99, "min/p50/p99 %g %g %g",
          lat.min_us, lat.p50_us, lat.p99_us);
}

/* The client library's side of the extension. */
static void test_client_ext(int port, bool ferry) {
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "127.0.0.1:%d", port);
    struct ferry_client *c = NULL;
    struct ferry_error err;
    if (!CHECK(ferry_client_connect(endpoint, NULL, &c, &err) == FERRY_OK, "connect: %s", err.msg)) return;
    CHECK(ferry_client_server_is_ferry(c) == ferry, "is_ferry %d", ferry);
    struct ferry_client_server_stats st;
    memset(&st, 0, sizeof st);
    int rc = ferry_client_server_stats(c, &st, &err);
    if (ferry)
        CHECK(rc == FERRY_OK && st.commands > 0 && st.bytes_in > 0 && st.cpu_user_ns + st.cpu_sys_ns > 0,
              "FERRY_STATS answered: %" PRIu64 " commands", st.commands);
    else
        CHECK(rc == FERRY_ERR_UNSUPPORTED, "not ferry: FERRY_ERR_UNSUPPORTED (%d)", rc);
    uint64_t al = 0;
    CHECK(ferry_client_alignment(c, 0, &al, &err) == FERRY_OK && !ferry_client_is_broken(c),
          "connection still good afterwards");
    ferry_client_close(c);
}

/* On the wire: the HELLO flag, and FERRY_STATS answered only with it. */
static void test_wire(int port, bool ferry) {
    struct rpc_raw *c = NULL;
    struct ferry_error err;
    if (!CHECK(rpc_raw_connect("127.0.0.1", port, 5000, &c, &err) == FERRY_OK, "raw connect")) return;
    rpc_raw_set_timeout(c, 5000);
    struct ferry_rpc_hello_rsp h;
    if (CHECK(rpc_raw_hello(c, &h) == FERRY_OK, "raw HELLO")) {
        CHECK(h.flags == (ferry ? FERRY_RPC_HELLO_FLAG_EXT_STATS : 0), "HELLO byte 3 = %u", h.flags);
        uint8_t rsp[FERRY_RPC_FERRY_STATS_RSP_SIZE];
        if (ferry) {
            struct ferry_rpc_ferry_stats st;
            CHECK(rpc_raw_request(c, FERRY_RPC_CMD_FERRY_STATS, NULL, 0, rsp, sizeof rsp) == FERRY_OK &&
                      ferry_rpc_decode_ferry_stats(rsp, sizeof rsp, &st, &err) == FERRY_OK && st.commands >= 1,
                  "FERRY_STATS answered on the wire");
            CHECK(rpc_raw_send_frame(c, FERRY_RPC_CMD_FERRY_STATS, 1, "x", 1) == FERRY_OK &&
                      rpc_raw_poll_closed(c, 5000) == 1,
                  "FERRY_STATS with a payload closes");
        } else {
            CHECK(rpc_raw_send_frame(c, FERRY_RPC_CMD_FERRY_STATS, 0, NULL, 0) == FERRY_OK &&
                      rpc_raw_poll_closed(c, 5000) == 1,
                  "without the extension, command 64 closes as ggml's server would");
        }
    }
    rpc_raw_close(c);
}

int main(void) {
    ferry_log_set_level(FERRY_LOG_ERROR);
    test_util();

    struct running_server rs;
    struct ferry_server_stats st;
    int rc = -1;
    if (server_start(&rs, true)) {
        test_client_ext(rs.port, true);
        char *text = run_bench(rs.port, NULL, &rc);
        CHECK(rc == 0, "bench against ferry: exit %d", rc);
        check_report(text, true);
        free(text);
        ferry_server_get_stats(rs.s, &st);
        CHECK(st.conns_dropped == 0, "no connection dropped");
        test_wire(rs.port, true); /* drops one connection on purpose */
        server_finish(&rs, &st);
    }

    /* a server without the extension: it drops a connection that sends
     * command 64, so conns_dropped stays 0 only if none was sent */
    if (server_start(&rs, false)) {
        test_client_ext(rs.port, false);
        char *text = run_bench(rs.port, "--quiet", &rc);
        CHECK(rc == 0, "bench against a non-ferry server: exit %d", rc);
        check_report(text, false);
        free(text);
        ferry_server_get_stats(rs.s, &st);
        CHECK(st.conns_dropped == 0, "FERRY_STATS never sent to a non-ferry server (%llu dropped)",
              (unsigned long long)st.conns_dropped);
        test_wire(rs.port, false);
        server_finish(&rs, &st);
        CHECK(st.conns_dropped == 1, "the raw command 64 was the one drop");
    }
    return test_summary();
}
