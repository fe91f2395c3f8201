/* ferry: the command-line tool. `ferry serve` runs the RPC server with a
 * command line compatible with llama.cpp's rpc-server; `ferry version`
 * prints the version. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/bench.h"
#include "cli/cli.h"
#include "ferry/engine.h"
#include "ferry/log.h"
#include "ferry/server.h"
#include "ferry/version.h"
#include "proto/rpc.h"
#include "server/cache.h"
#include "transport/transport.h"

#define MIB ((uint64_t)1024 * 1024)

static struct ferry_server *g_server; /* for the signal handler */

static void on_signal(int sig) {
    (void)sig;
    if (g_server) ferry_server_stop(g_server); /* async-signal-safe: one write(2) */
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: ferry <command> [options]\n"
            "\n"
            "commands:\n"
            "  serve      run the RPC server (ggml RPC protocol 5.x; llama.cpp --rpc HOST:PORT)\n"
            "  run        generate text with a GGUF model, layers split over servers (ferry run --help)\n"
            "  gen-model  write a llama-family GGUF model with random weights (ferry gen-model --help)\n"
            "  bench model  prompt and generation speed of a model, local or split (--help)\n"
            "  bench rpc  measure any ggml RPC server against the bare TCP link (ferry bench rpc --help)\n"
            "  bench net  the bare TCP link alone: --listen peer / --connect measure (ferry bench net --help)\n"
            "  version    print the version\n"
            "\n"
            "ferry serve options (compatible with llama.cpp's rpc-server):\n"
            "  -H, --host HOST        IPv4 address to bind (default 127.0.0.1)\n"
            "  -p, --port PORT        port to listen on (default 50052; 0 = any free port)\n"
            "  -t, --threads N        compute threads (default: cores / 2)\n"
            "  -d, --device LIST      devices to serve, comma separated (available: CPU)\n"
            "  -c, --cache [DIR]      enable the tensor cache (default dir: $LLAMA_CACHE/rpc,\n"
            "                         else $XDG_CACHE_HOME/llama.cpp/rpc, else ~/.cache/llama.cpp/rpc)\n"
            "      --cache-size MiB   cache size bound, least recently used evicted (default 10240)\n"
            "  -m, --mem MiB          memory all clients together may allocate (default: physical RAM)\n"
            "      --max-conns N      connections served at once (default 16)\n"
            "      --idle-timeout S   drop a client idle for S seconds (default 0 = never)\n"
            "      --transport T      auto | tcp | rdma (default auto: RDMA for clients that offer it;\n"
            "                         rdma: required, clients without it are refused)\n"
            "      --rdma-dev NAME    RDMA device (default $FERRY_RDMA_DEV, else the one whose GID is\n"
            "                         the address a client connected to)\n"
            "      --rdma-ip ADDR     use the RDMA GID of this IPv4 address (default $FERRY_RDMA_IP)\n"
            "      --log-level L      error | warn | info | debug (default info)\n"
            "  -v, --verbose          same as --log-level debug\n"
            "  -h, --help             this help\n"
            "\n"
            "ferry bench rpc --rpc HOST:PORT [--net HOST:PORT] [--json] [--quick] [--iterations N] [--max-size SIZE]\n"
            "  round-trip latency, SET/GET_TENSOR bandwidth (4 KiB .. 1 GiB) and CPU per operation, each\n"
            "  also as a ratio to the bare TCP link. --net names a `ferry bench net --listen` peer on the\n"
            "  server's host; without it, for a loopback server, the peer runs in a thread of the bench.\n"
            "ferry bench net --listen [-H HOST] [-p PORT]  |  ferry bench net --connect HOST:PORT [--json]\n"
            "\n"
            "Never expose the server to an open network: the protocol has no authentication.\n");
}

static int parse_u64(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
    if (s == NULL) {
        fprintf(stderr, "ferry serve: %s needs a value\n", opt);
        return -1;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr, "ferry serve: %s: '%s' is not a number in [%" PRIu64 ", %" PRIu64 "]\n", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* "CPU", or a comma list of nothing but CPU (any case). */
static int check_devices(const char *list) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    char *save = NULL;
    int n = 0;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), n++) {
        while (*tok == ' ') tok++;
        if (strcasecmp(tok, "CPU") != 0) {
            fprintf(stderr, "ferry serve: unknown device '%s'\navailable devices:\n  CPU (ferry's CPU engine)\n", tok);
            return -1;
        }
    }
    if (n == 0) {
        fprintf(stderr, "ferry serve: empty device list\navailable devices:\n  CPU (ferry's CPU engine)\n");
        return -1;
    }
    return 0;
}

static bool is_loopback(const char *host) {
    return !strcmp(host, "localhost") || !strncmp(host, "127.", 4);
}

static int cmd_serve(int argc, char **argv) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    bool cache = false;
    const char *cache_dir = NULL;
    char default_dir[4096];
    enum ferry_log_level level = FERRY_LOG_INFO;
    uint64_t v;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
#define IS(s, l) (!strcmp(a, s) || !strcmp(a, l))
        if (IS("-h", "--help")) {
            usage(stdout);
            return 0;
        } else if (IS("-H", "--host")) {
            if (next == NULL) return fprintf(stderr, "ferry serve: %s needs a value\n", a), 2;
            cfg.host = argv[++i];
        } else if (IS("-p", "--port")) {
            if (parse_u64(a, next, 0, 65535, &v)) return 2;
            cfg.port = (int)v;
            i++;
        } else if (IS("-t", "--threads")) {
            if (parse_u64(a, next, 1, 1024, &v)) return 2;
            cfg.n_threads = (int)v;
            i++;
        } else if (IS("-d", "--device")) {
            if (next == NULL) return fprintf(stderr, "ferry serve: %s needs a value\n", a), 2;
            if (check_devices(next)) return 2;
            i++;
        } else if (IS("-c", "--cache")) {
            cache = true;
            if (next && next[0] != '-') { /* the directory is optional */
                cache_dir = next;
                i++;
            }
        } else if (!strcmp(a, "--cache-size")) {
            if (parse_u64(a, next, 1, UINT64_MAX / MIB, &v)) return 2;
            cfg.cache_max_bytes = v * MIB;
            i++;
        } else if (IS("-m", "--mem")) {
            if (parse_u64(a, next, 1, UINT64_MAX / MIB, &v)) return 2;
            cfg.mem_limit = v * MIB;
            cfg.max_payload = cfg.mem_limit;
            i++;
        } else if (!strcmp(a, "--max-conns")) {
            if (parse_u64(a, next, 1, 4096, &v)) return 2;
            cfg.max_conns = (int)v;
            i++;
        } else if (!strcmp(a, "--idle-timeout")) {
            if (parse_u64(a, next, 0, 86400 * 365, &v)) return 2;
            cfg.idle_timeout_ms = v * 1000 > INT32_MAX ? INT32_MAX : (int)(v * 1000);
            i++;
        } else if (!strcmp(a, "--transport")) {
            struct ferry_error terr;
            if (ferry_transport_parse(next, &cfg.transport, &terr) != FERRY_OK)
                return fprintf(stderr, "ferry serve: --transport takes auto, tcp or rdma\n"), 2;
            i++;
        } else if (!strcmp(a, "--rdma-dev") || !strcmp(a, "--rdma-ip")) {
            if (next == NULL) return fprintf(stderr, "ferry serve: %s needs a value\n", a), 2;
            if (!strcmp(a, "--rdma-dev")) cfg.rdma_dev = next;
            else cfg.rdma_ip = next;
            i++;
        } else if (!strcmp(a, "--log-level")) {
            if (next == NULL || !ferry_log_parse_level(next, &level))
                return fprintf(stderr, "ferry serve: --log-level takes error, warn, info or debug\n"), 2;
            i++;
        } else if (IS("-v", "--verbose")) {
            level = FERRY_LOG_DEBUG;
        } else {
            fprintf(stderr, "ferry serve: unknown option '%s' (see ferry serve --help)\n", a);
            return 2;
        }
#undef IS
    }
    ferry_log_set_level(level);
    if (cache && cache_dir == NULL) {
        if (ferry_cache_default_dir(default_dir, sizeof default_dir) != 0) {
            fprintf(stderr, "ferry serve: no default cache dir (set LLAMA_CACHE or HOME, or pass -c DIR)\n");
            return 2;
        }
        cache_dir = default_dir;
    }
    cfg.cache_dir = cache ? cache_dir : NULL;

    signal(SIGPIPE, SIG_IGN); /* the transport uses MSG_NOSIGNAL; this is a second belt */
    struct ferry_server *s = NULL;
    struct ferry_error err;
    if (ferry_server_create(&cfg, &s, &err) != FERRY_OK) {
        fprintf(stderr, "ferry serve: %s\n", err.msg);
        return 1;
    }
    if (!is_loopback(cfg.host))
        fprintf(stderr,
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
                "WARNING: host (%s) is not a loopback address.\n"
                "         Never expose the RPC server to an open network!\n"
                "         The protocol has no authentication and no encryption.\n"
                "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n",
                cfg.host);
    fprintf(stderr, "ferry %s: ggml RPC server, protocol v%d.%d.%d advertised (implements v%d.%d.%d)\n",
            FERRY_VERSION_STRING, FERRY_RPC_ADVERTISED_MAJOR, FERRY_RPC_ADVERTISED_MINOR,
            FERRY_RPC_ADVERTISED_PATCH, FERRY_RPC_VERSION_MAJOR, FERRY_RPC_VERSION_MINOR,
            FERRY_RPC_VERSION_PATCH);
    fprintf(stderr, "  endpoint   : %s:%d\n", cfg.host, ferry_server_port(s));
    fprintf(stderr, "  devices    : CPU (%d threads, mem limit %" PRIu64 " MiB)\n", cfg.n_threads,
            cfg.mem_limit / MIB);
    if (cfg.cache_dir)
        fprintf(stderr, "  cache      : %s (bound %" PRIu64 " MiB)\n", cfg.cache_dir, cfg.cache_max_bytes / MIB);
    else
        fprintf(stderr, "  cache      : n/a\n");
    char why[256], devs[2048];
    bool rdma = cfg.transport != FERRY_TRANSPORT_TCP && ferry_rdma_available(why, sizeof why);
    if (cfg.transport == FERRY_TRANSPORT_TCP) snprintf(why, sizeof why, "off (--transport tcp)");
    fprintf(stderr, "  transports : TCP%s (--transport %s)\n", rdma ? ", RDMA" : "",
            ferry_transport_name(cfg.transport));
    if (rdma && ferry_rdma_list_devices(devs, sizeof devs) > 0) {
        for (char *line = strtok(devs, "\n"); line; line = strtok(NULL, "\n"))
            fprintf(stderr, "  rdma       : %s\n", line);
        if (cfg.rdma_dev || cfg.rdma_ip)
            fprintf(stderr, "  rdma choice: %s%s%s%s\n", cfg.rdma_dev ? "device " : "", cfg.rdma_dev ? cfg.rdma_dev : "",
                    cfg.rdma_ip ? " ip " : "", cfg.rdma_ip ? cfg.rdma_ip : "");
    } else if (!rdma) {
        fprintf(stderr, "  rdma       : %s\n", why);
    }
    int n_checked = 0;
    ferry_engine_self_check(&n_checked, NULL);
    fprintf(stderr, "  simd       : %s (self-check: %d dot-product kernel sets, ok)\n", ferry_engine_simd_name(),
            n_checked);
    fprintf(stderr, "  max conns  : %d\n", cfg.max_conns);

    g_server = s;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int rc = ferry_server_run(s, &err);
    struct ferry_server_stats st;
    ferry_server_get_stats(s, &st);
    ferry_log_info("stopped: %" PRIu64 " connections (%" PRIu64 " refused, %" PRIu64 " dropped), %" PRIu64
                   " commands, %" PRIu64 " graphs, cache %" PRIu64 " hits / %" PRIu64 " misses",
                   st.conns_accepted, st.conns_refused, st.conns_dropped, st.commands, st.graphs_computed,
                   st.cache_hits, st.cache_misses);
    g_server = NULL;
    ferry_server_destroy(s);
    if (rc != FERRY_OK) {
        fprintf(stderr, "ferry serve: %s\n", err.msg);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench")) {
        signal(SIGPIPE, SIG_IGN);
        const char *what = argc > 2 ? argv[2] : "";
        if (!strcmp(what, "rpc")) return ferry_bench_rpc_main(argc - 3, argv + 3, stdout);
        if (!strcmp(what, "net")) return ferry_bench_net_main(argc - 3, argv + 3, stdout);
        if (!strcmp(what, "model")) return ferry_cli_bench_model(argc - 2, argv + 2);
        fprintf(stderr, "ferry bench: expected 'rpc', 'net' or 'model'\n");
        return 2;
    }
    if (!strcmp(cmd, "run")) return ferry_cli_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "gen-model")) return ferry_cli_gen_model(argc - 1, argv + 1);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("ferry %s (ggml RPC protocol %d.%d.%d)\n", FERRY_VERSION_STRING, FERRY_RPC_VERSION_MAJOR,
               FERRY_RPC_VERSION_MINOR, FERRY_RPC_VERSION_PATCH);
        return 0;
    }
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "ferry: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
