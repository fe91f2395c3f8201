/* ferry: the command-line tool. `ferry serve` runs the RPC server with a
 * command line compatible with llama.cpp's rpc-server; `ferry version`
 * prints the version. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli/bench.h"
#include "cli/cli.h"
#include "cli/opts.h"
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
            "commands (each takes --help and --version):\n"
            "  serve        run the RPC server (ggml RPC protocol 5.x; llama.cpp --rpc HOST:PORT)\n"
            "  run          generate text with a GGUF model, layers split over servers\n"
            "  gen-model    write a llama-family GGUF model with random weights\n"
            "  bench model  prompt and generation speed of a model, local or split\n"
            "  bench rpc    measure any ggml RPC server against the bare TCP link\n"
            "  bench net    the bare TCP link alone: --listen peer / --connect measure\n"
            "  version      print the version\n"
            "\n"
            "exit status: 0 success, 1 runtime error, 2 usage error\n"
            "Never expose the server to an open network: the protocol has no authentication.\n");
}

/* "CPU", or a comma list of nothing but CPU (any case). */
static int read_devices(const char *cmd, const char *name, const char *list, void *dest) {
    (void)dest;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    char *save = NULL;
    int n = 0;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), n++) {
        while (*tok == ' ') tok++;
        if (strcasecmp(tok, "CPU") != 0) {
            fprintf(stderr, "ferry %s: %s: unknown device '%s'\navailable devices:\n  CPU (ferry's CPU engine)\n",
                    cmd, name, tok);
            return -1;
        }
    }
    if (n == 0) {
        fprintf(stderr, "ferry %s: %s: empty device list\navailable devices:\n  CPU (ferry's CPU engine)\n", cmd,
                name);
        return -1;
    }
    return 0;
}

static bool is_loopback(const char *host) {
    return !strcmp(host, "localhost") || !strncmp(host, "127.", 4);
}

/* --model, repeatable: the paths in order. */
struct model_list {
    const char *path[64];
    int n;
};

static int read_model(const char *cmd, const char *name, const char *value, void *dest) {
    struct model_list *l = dest;
    if (l->n == (int)(sizeof l->path / sizeof l->path[0])) {
        fprintf(stderr, "ferry %s: %s: at most %d paths (name a directory instead)\n", cmd, name, l->n);
        return -1;
    }
    l->path[l->n++] = value;
    return 0;
}

static int cmd_serve(int argc, char **argv) {
    struct model_list models = { .n = 0 };
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    const char *cache_dir = NULL;
    char default_dir[4096];
    enum ferry_log_level level = FERRY_LOG_INFO;
    uint64_t cache_mib = cfg.cache_max_bytes / MIB, mem_mib = 0, idle_s = 0;
    bool verbose = false;
    struct opt opts[] = {
        { .names = "-H|--host", .kind = OPT_STRING, .dest = &cfg.host, .arg = "HOST", .help = "IPv4 address to bind (default 127.0.0.1)" },
        { .names = "-p|--port", .kind = OPT_INT, .dest = &cfg.port, .arg = "PORT", .help = "port to listen on (default 50052; 0 = any free port)", .lo = 0, .hi = 65535 },
        { .names = "-t|--threads", .kind = OPT_INT, .dest = &cfg.n_threads, .arg = "N", .help = "compute threads (default: cores / 2)", .lo = 1, .hi = 1 << 20 },
        { .names = "-d|--device", .kind = OPT_FN, .dest = NULL, .arg = "LIST", .help = "devices to serve, comma separated (available: CPU)", .fn = read_devices },
        { .names = "-c|--cache", .kind = OPT_STRING, .dest = &cache_dir, .arg = "DIR",
          .help = "enable the tensor cache (default dir: $LLAMA_CACHE/rpc,\n"
          "else $XDG_CACHE_HOME/llama.cpp/rpc, else ~/.cache/llama.cpp/rpc);\n"
          "checked writable at start",
          .optional = true },
        { .names = "--model", .kind = OPT_FN, .dest = &models, .arg = "PATH",
          .help = "a GGUF file, or a directory of them, whose tensors clients get from\n"
          "this disk instead of the network (repeatable; indexed at start)", .fn = read_model },
        { .names = "--cache-size", .kind = OPT_U64, .dest = &cache_mib, .arg = "MiB", .help = "cache size bound, least recently used evicted (default 10240)", .lo = 1,
          .hi = (double)(UINT64_MAX / MIB) },
        { .names = "-m|--mem", .kind = OPT_U64, .dest = &mem_mib, .arg = "MiB", .help = "memory all clients together may allocate (default: physical RAM)", .lo = 1,
          .hi = (double)(UINT64_MAX / MIB) },
        { .names = "--max-conns", .kind = OPT_INT, .dest = &cfg.max_conns, .arg = "N",
          .help = "connections served at once (default: min(1024, RAM / 8 MiB, fd limit));\n"
          "when full, the connection idle the longest is evicted", .lo = 1, .hi = 1 << 20 },
        { .names = "--max-conns-per-peer", .kind = OPT_INT, .dest = &cfg.max_conns_per_peer, .arg = "N",
          .help = "connections one IP address may hold (default: half of --max-conns)", .lo = 1, .hi = 1 << 20 },
        { .names = "--idle-timeout", .kind = OPT_U64, .dest = &idle_s, .arg = "S",
          .help = "close connections holding no buffers after S idle seconds\n"
          "(default 60; 0 = never); a loaded model is never closed for idleness", .lo = 0,
          .hi = 86400.0 * 365 },
        { .names = "--evict-grace", .kind = OPT_INT, .dest = &cfg.evict_grace_ms, .arg = "MS",
          .help = "an idle connection may be evicted only after MS ms without a\n"
          "command (default 1000)", .lo = 0, .hi = 86400000 },
        { .names = "--evict-loaded", .kind = OPT_FLAG, .dest = &cfg.evict_loaded,
          .help = "under pressure, idle connections holding buffers may be evicted\n"
          "too (default: never)" },
        { .names = "--transport", .kind = OPT_FN, .dest = &cfg.transport, .arg = "T",
          .help = "auto | tcp | rdma (default auto: RDMA for clients that offer it;\n"
          "rdma: required, clients without it are refused)",
          .fn = opt_read_transport },
        { .names = "--rdma-dev", .kind = OPT_STRING, .dest = &cfg.rdma_dev, .arg = "NAME",
          .help = "RDMA device (default $FERRY_RDMA_DEV, else the one whose GID is\n"
          "the address a client connected to)" },
        { .names = "--rdma-ip", .kind = OPT_STRING, .dest = &cfg.rdma_ip, .arg = "ADDR", .help = "use the RDMA GID of this IPv4 address (default $FERRY_RDMA_IP)" },
        { .names = "--log-level", .kind = OPT_FN, .dest = &level, .arg = "L", .help = "error | warn | info | debug (default info)", .fn = opt_read_log_level },
        { .names = "-v|--verbose", .kind = OPT_FLAG, .dest = &verbose, .arg = NULL, .help = "same as --log-level debug" },
        { 0 },
    };
    const struct opts_cmd cmd = {
        "serve", "serve [options]",
        "Runs a ggml RPC server on ferry's CPU engine; the options are llama.cpp rpc-server's, and more.",
        opts,
        "Never expose the server to an open network: the protocol has no authentication.",
    };
    int parsed = opts_parse(&cmd, argc, argv);
    if (parsed >= 0) return parsed;
    if (verbose) level = FERRY_LOG_DEBUG;
    if (opts_find(&cmd, "-t")->seen && cli_check_threads("serve", "-t", cfg.n_threads)) return EXIT_USAGE;
    if (opts_find(&cmd, "--cache-size")->seen) cfg.cache_max_bytes = cache_mib * MIB;
    if (mem_mib) {
        cfg.mem_limit = mem_mib * MIB;
        cfg.max_payload = cfg.mem_limit;
    }
    if (opts_find(&cmd, "--idle-timeout")->seen)
        cfg.idle_timeout_ms = idle_s * 1000 > INT32_MAX ? INT32_MAX : (int)(idle_s * 1000);
    bool cache = opts_find(&cmd, "-c")->seen > 0;
    ferry_log_set_level(level);
    if (cache && cache_dir == NULL) {
        if (ferry_cache_default_dir(default_dir, sizeof default_dir) != 0) {
            fprintf(stderr, "ferry serve: no default cache dir (set LLAMA_CACHE or HOME, or pass -c DIR)\n");
            return EXIT_USAGE;
        }
        cache_dir = default_dir;
    }
    cfg.cache_dir = cache ? cache_dir : NULL;
    cfg.model_paths = models.path;
    cfg.n_model_paths = models.n;

    signal(SIGPIPE, SIG_IGN); /* the transport uses MSG_NOSIGNAL; this is a second belt */
    struct ferry_server *s = NULL;
    struct ferry_error err;
    if (ferry_server_create(&cfg, &s, &err) != FERRY_OK) {
        fprintf(stderr, "ferry serve: %s\n", err.msg);
        return EXIT_RUNTIME;
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
    struct ferry_server_stats st0;
    ferry_server_get_stats(s, &st0);
    if (st0.local_files)
        fprintf(stderr, "  models     : %" PRIu64 " file%s, %" PRIu64 " tensors, %.2f GiB served from this disk\n",
                st0.local_files, st0.local_files == 1 ? "" : "s", st0.local_tensors,
                (double)st0.local_indexed_bytes / (1024.0 * MIB));
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
    char limits[512];
    ferry_server_describe_limits(s, limits, sizeof limits);
    fprintf(stderr, "  max conns  : %s\n", limits);

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
                   " commands, %" PRIu64 " graphs, cache %" PRIu64 " hits / %" PRIu64 " misses, %" PRIu64
                   " tensors from local models (%" PRIu64 " MiB mapped)",
                   st.conns_accepted, st.conns_refused, st.conns_dropped, st.commands, st.graphs_computed,
                   st.cache_hits, st.cache_misses, st.local_hits, st.local_bytes_mapped / MIB);
    g_server = NULL;
    ferry_server_destroy(s);
    if (rc != FERRY_OK) {
        fprintf(stderr, "ferry serve: %s\n", err.msg);
        return EXIT_RUNTIME;
    }
    return 0;
}

static void bench_usage(FILE *out) {
    fprintf(out,
            "usage: ferry bench model|rpc|net [options]\n"
            "  model  prompt and generation speed of a model, local or split (ferry bench model --help)\n"
            "  rpc    measure any ggml RPC server against the bare TCP link (ferry bench rpc --help)\n"
            "  net    the bare TCP link alone: --listen peer / --connect measure (ferry bench net --help)\n"
            "\nexit status: 0 success, 1 runtime error, 2 usage error\n");
}

static bool is_help(const char *a) { return !strcmp(a, "-h") || !strcmp(a, "--help") || !strcmp(a, "help"); }

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench")) {
        signal(SIGPIPE, SIG_IGN);
        const char *what = argc > 2 ? argv[2] : "";
        if (!strcmp(what, "rpc")) return ferry_bench_rpc_main(argc - 3, argv + 3, stdout);
        if (!strcmp(what, "net")) return ferry_bench_net_main(argc - 3, argv + 3, stdout);
        if (!strcmp(what, "model")) return ferry_cli_bench_model(argc - 3, argv + 3);
        if (is_help(what)) {
            bench_usage(stdout);
            return 0;
        }
        if (!strcmp(what, "--version")) {
            opts_print_version(stdout);
            return 0;
        }
        if (*what) fprintf(stderr, "ferry bench: unknown benchmark '%s'\n", what);
        else fprintf(stderr, "ferry bench: which benchmark?\n");
        bench_usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(cmd, "run")) return ferry_cli_run(argc - 2, argv + 2);
    if (!strcmp(cmd, "gen-model")) return ferry_cli_gen_model(argc - 2, argv + 2);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        opts_print_version(stdout);
        return 0;
    }
    if (is_help(cmd)) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "ferry: unknown command '%s'\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
