/* The server against hostile clients, end to end over loopback.
 *
 * One in-process server (port 0, small timeouts, 8 connections, 256 MiB)
 * serves the whole test. A healthy client connects first, allocates a
 * buffer, writes known bytes and computes a small graph into it. Then, for
 * each hostile case, a fresh attacker connection misbehaves and we check:
 * the server closed that connection (EOF or reset within a bounded wait;
 * or, for the cases the spec answers, the right answer), it logged a line,
 * the healthy client is still served with its bytes intact, and a fresh
 * client can still HELLO. At the end the statistics must show the drops and
 * every buffer of a closed connection freed.
 *
 * Only outcomes are asserted, never durations. Every wait is bounded; while
 * an attacker is waited on, the healthy client keeps talking so the short
 * idle timeout never catches it. The server's log (stderr) goes to a
 * temporary file for the run so each case can show the reason it logged;
 * the file is kept, and named, when something failed. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/server.h"
#include "ferry/types.h"
#include "proto/rpc.h"
#include "rpc_client_raw.h"
#include "testutil.h"

#if defined(__SANITIZE_ADDRESS__)
#define HOSTILE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HOSTILE_ASAN 1
#endif
#endif
#ifndef HOSTILE_ASAN
#define HOSTILE_ASAN 0
#endif
#if HOSTILE_ASAN
/* from the sanitizer runtime (gcc's and clang's); declared here because
 * gcc does not install sanitizer/allocator_interface.h */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#define HOST "127.0.0.1"
#define MAX_CONNS 8
#define MEM_LIMIT (256ull << 20)
#define HELLO_MS 500
#define IDLE_MS 1500
#define FRAME_MS 300
#define CLOSE_WAIT_MS 4000 /* how long an attacker may stay open before we call it a failure */
#define MIB (1ull << 20)

static struct ferry_server *server;
static int port;
static int expected_drops; /* cases where the server itself must have closed */
static int vanish_cases;   /* the client vanished mid-frame or mid-response: a drop or not */

/* ---- the server's log, captured ------------------------------------------------ */

static int log_fd = -1, saved_stderr = -1;
static char log_path[64];

static void log_capture_start(void) {
    snprintf(log_path, sizeof log_path, "/tmp/ferry-hostile-XXXXXX");
    log_fd = mkstemp(log_path);
    if (log_fd < 0) return;
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    dup2(log_fd, STDERR_FILENO);
    printf("server log (and any sanitizer report): %s\n", log_path);
}

static off_t log_size(void) {
    struct stat st;
    return log_fd >= 0 && fstat(log_fd, &st) == 0 ? st.st_size : 0;
}

/* Does the log, from `from` on, have a line naming `needle`? */
static bool log_has_since(off_t from, const char *needle) {
    off_t to = log_size();
    if (to <= from) return false;
    size_t n = (size_t)(to - from);
    char *buf = malloc(n + 1);
    ssize_t got = pread(log_fd, buf, n, from);
    bool found = false;
    if (got > 0) {
        buf[got] = 0;
        found = strstr(buf, needle) != NULL;
    }
    free(buf);
    return found;
}

/* Prints the log lines written since `from`, indented. */
static void log_print_since(off_t from) {
    off_t to = log_size();
    if (to <= from) return;
    size_t n = (size_t)(to - from);
    if (n > 4096) n = 4096;
    char *buf = malloc(n + 1);
    ssize_t got = pread(log_fd, buf, n, from);
    if (got > 0) {
        buf[got] = 0;
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
            printf("    log: %s\n", line);
    }
    free(buf);
}

static void log_capture_end(bool keep) {
    if (log_fd < 0) return;
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    close(log_fd);
    if (keep) {
        /* testutil reports failures on stderr, which went to the log */
        FILE *f = fopen(log_path, "r");
        char line[1024];
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, "FAIL ", 5)) fputs(line, stderr);
        if (f) fclose(f);
        printf("server log kept: %s\n", log_path);
    }
    else
        unlink(log_path);
}

/* ---- the server ------------------------------------------------------------------ */

static pthread_t server_thread;
static int server_rc;

static void *server_main(void *arg) {
    (void)arg;
    struct ferry_error err = {0};
    server_rc = ferry_server_run(server, &err);
    if (server_rc != FERRY_OK) fprintf(stderr, "server_run: %s\n", err.msg);
    return NULL;
}

static void *ferry_server_run_detached(void *arg) {
    struct ferry_error err = {0};
    ferry_server_run(arg, &err);
    return NULL;
}

static bool server_start(void) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.host = HOST;
    cfg.port = 0;
    cfg.n_threads = 2;
    cfg.cache_dir = NULL;
    cfg.mem_limit = MEM_LIMIT;
    cfg.max_conns = MAX_CONNS;
    cfg.max_conns_per_peer = MAX_CONNS; /* the per-peer case uses a server of its own */
    cfg.evict_grace_ms = 0;             /* the idle flood: every idle connection may go at once */
    cfg.hello_timeout_ms = HELLO_MS;
    cfg.idle_timeout_ms = IDLE_MS;
    cfg.frame_timeout_ms = FRAME_MS;
    cfg.max_payload = 256 * MIB; /* so a 100 MiB announcement passes the size rule */
    struct ferry_error err = {0};
    if (!CHECK(ferry_server_create(&cfg, &server, &err) == FERRY_OK, "server_create: %s", err.msg))
        return false;
    port = ferry_server_port(server);
    CHECK(port > 0, "server port %d", port);
    return CHECK(pthread_create(&server_thread, NULL, server_main, NULL) == 0, "server thread");
}

static void server_finish(void) {
    ferry_server_stop(server);
    pthread_join(server_thread, NULL);
    CHECK(server_rc == FERRY_OK, "server_run returned %d", server_rc);
    ferry_server_destroy(server);
}

static struct ferry_server_stats stats(void) {
    struct ferry_server_stats s;
    ferry_server_get_stats(server, &s);
    return s;
}

/* Waits (bounded) until the statistics satisfy `cond`. */
#define STATS_WAIT(st, cond)                                                             \
    do {                                                                                 \
        for (int i_ = 0; i_ < 300; i_++) {                                               \
            st = stats();                                                                \
            if (cond) break;                                                             \
            if (i_ % 20 == 19) healthy_ping();                                           \
            usleep(10000);                                                               \
        }                                                                                \
    } while (0)

/* ---- the healthy client ------------------------------------------------------------ */

#define HB_SIZE 65536u /* the healthy client's buffer */
enum { H_A = 0x1001, H_B = 0x1002, H_C = 0x1003, H_ALL = 0x1000 };

static struct {
    struct rpc_raw *c;
    uint64_t buf, base;
    uint8_t expect[HB_SIZE];
    uint8_t got[HB_SIZE];
} H;

/* c = a + b over f32 [8,4]: a at +0, b at +128, c at +256, in `buf` at `base`. */
static void add_graph(struct ferry_rpc_tensor r[3], uint64_t ida, uint64_t buf, uint64_t base) {
    rpc_raw_tensor_2d(&r[0], ida, FERRY_TYPE_F32, 8, 4, buf, base);
    rpc_raw_tensor_2d(&r[1], ida + 1, FERRY_TYPE_F32, 8, 4, buf, base + 128);
    rpc_raw_tensor_2d(&r[2], ida + 2, FERRY_TYPE_F32, 8, 4, buf, base + 256);
    r[0].flags = r[1].flags = FERRY_FLAG_INPUT;
    r[2].op = FERRY_OP_ADD;
    r[2].src[0] = ida;
    r[2].src[1] = ida + 1;
    r[2].flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
}

static void whole_buffer(struct ferry_rpc_tensor *r, uint64_t id, uint64_t buf, uint64_t base,
                         uint32_t size) {
    rpc_raw_tensor_2d(r, id, FERRY_TYPE_I8, size, 1, buf, base);
}

/* Connects, allocates, writes a pattern with small-integer floats in the
 * graph's inputs, computes c = a + b, and reads everything back. */
static bool healthy_setup(void) {
    struct ferry_error err = {0};
    rpc_raw_close(H.c);
    H.c = NULL;
    if (!CHECK(rpc_raw_open(HOST, port, &H.c, &err) == FERRY_OK, "healthy: open: %s", err.msg))
        return false;
    uint64_t rsize = 0;
    if (!CHECK(rpc_raw_alloc_buffer(H.c, 0, HB_SIZE, &H.buf, &rsize) == FERRY_OK && H.buf &&
                   rsize == HB_SIZE,
               "healthy: alloc: %s", H.c->err.msg))
        return false;
    if (!CHECK(rpc_raw_buffer_get_base(H.c, H.buf, &H.base) == FERRY_OK && H.base, "healthy: base: %s",
               H.c->err.msg))
        return false;
    for (size_t i = 0; i < HB_SIZE; i++) H.expect[i] = (uint8_t)(i * 7u + 3u + (i >> 8));
    float *a = (float *)H.expect, *b = a + 32, *c = a + 64;
    for (int i = 0; i < 32; i++) {
        a[i] = (float)(i - 10);
        b[i] = (float)(3 * i + 1);
    }
    struct ferry_rpc_tensor all;
    whole_buffer(&all, H_ALL, H.buf, H.base, HB_SIZE);
    CHECK(rpc_raw_set_tensor(H.c, &all, 0, H.expect, HB_SIZE) == FERRY_OK, "healthy: set: %s",
          H.c->err.msg);
    struct ferry_rpc_tensor r[3];
    add_graph(r, H_A, H.buf, H.base);
    size_t len;
    uint64_t node = H_C;
    uint8_t *g = rpc_raw_graph_build(0, &node, 1, r, 3, &len);
    CHECK(rpc_raw_graph_compute(H.c, g, len) == FERRY_OK, "healthy: compute: %s", H.c->err.msg);
    free(g);
    for (int i = 0; i < 32; i++) c[i] = a[i] + b[i];
    int rc = rpc_raw_get_tensor(H.c, &all, 0, HB_SIZE, H.got);
    return CHECK(rc == FERRY_OK && memcmp(H.got, H.expect, HB_SIZE) == 0,
                 "healthy: data and graph result read back (%s)", H.c->err.msg);
}

/* A cheap request that also resets the server's idle timer for H. */
static bool healthy_ping(void) {
    uint64_t align = 0;
    return H.c && rpc_raw_get_alignment(H.c, 0, &align) == FERRY_OK && align > 0;
}

/* After each case: H's bytes are intact and a fresh client gets a HELLO.
 * If H itself was lost, it is set up again so later cases stay meaningful. */
static void healthy_check(const char *what) {
    struct ferry_rpc_tensor all;
    whole_buffer(&all, H_ALL, H.buf, H.base, HB_SIZE);
    memset(H.got, 0, HB_SIZE);
    int rc = H.c ? rpc_raw_get_tensor(H.c, &all, 0, HB_SIZE, H.got) : FERRY_ERR_CLOSED;
    bool ok = CHECK(rc == FERRY_OK, "%s: healthy client still served (%s)", what,
                    H.c ? H.c->err.msg : "gone");
    if (ok) CHECK(memcmp(H.got, H.expect, HB_SIZE) == 0, "%s: healthy client's data intact", what);
    struct rpc_raw *fresh = NULL;
    struct ferry_error err = {0};
    CHECK(rpc_raw_open(HOST, port, &fresh, &err) == FERRY_OK, "%s: a fresh client gets HELLO: %s",
          what, err.msg);
    rpc_raw_close(fresh);
    if (!ok) {
        printf("  (re-creating the healthy client)\n");
        healthy_setup();
    }
}

/* ---- attackers --------------------------------------------------------------------- */

struct attacker {
    struct rpc_raw *c;
    uint64_t buf, base; /* its own buffer, when asked for */
    off_t log_from;
    char addr[FERRY_CONN_ADDR_MAX]; /* ours, i.e. the peer the server names */
};

static bool attacker_open(struct attacker *a, bool hello, uint64_t buf_size) {
    memset(a, 0, sizeof *a);
    struct ferry_error err = {0};
    int rc = hello ? rpc_raw_open(HOST, port, &a->c, &err)
                   : rpc_raw_connect(HOST, port, 2000, &a->c, &err);
    if (!CHECK(rc == FERRY_OK, "attacker connect: %s", err.msg)) return false;
    if (buf_size) {
        uint64_t size = 0;
        if (!CHECK(rpc_raw_alloc_buffer(a->c, 0, buf_size, &a->buf, &size) == FERRY_OK && a->buf &&
                       size == buf_size,
                   "attacker alloc: %s", a->c->err.msg) ||
            !CHECK(rpc_raw_buffer_get_base(a->c, a->buf, &a->base) == FERRY_OK, "attacker base: %s",
                   a->c->err.msg)) {
            rpc_raw_close(a->c);
            a->c = NULL;
            return false;
        }
    }
    a->log_from = log_size();
    snprintf(a->addr, sizeof a->addr, "%s", rpc_raw_local(a->c));
    return true;
}

/* Heap sampling while an attacker holds a frame open: glibc serves a 100
 * MiB malloc with mmap, which mallinfo2 counts in hblkhd even untouched;
 * under ASan its own allocator tells the bytes allocated. */
static bool heap_sampling;
static size_t heap_base, heap_peak;

static size_t heap_mapped(void) {
#if HOSTILE_ASAN
    return __sanitizer_get_current_allocated_bytes();
#else
    return mallinfo2().hblkhd;
#endif
}

/* Waits for the server to close the attacker, pinging H meanwhile. */
static int wait_closed(struct attacker *a, int timeout_ms) {
    int64_t end = ferry_transport_now_ms() + timeout_ms, last_ping = ferry_transport_now_ms();
    for (int guard = 0; guard < 10000; guard++) {
        int r = rpc_raw_poll_closed(a->c, 20);
        if (heap_sampling) {
            size_t h = heap_mapped();
            if (h > heap_peak) heap_peak = h;
        }
        if (r != 0) return r;
        int64_t now = ferry_transport_now_ms();
        if (now >= end) return 0;
        if (now - last_ping >= 200) {
            if (!healthy_ping()) printf("  (healthy ping failed: %s)\n", H.c ? H.c->err.msg : "gone");
            last_ping = now;
        }
    }
    return 0;
}

/* The verdict for one case that must end with the server closing the
 * attacker: closed, a log line, then the healthy checks. */
static void expect_closed(struct attacker *a, const char *what) {
    int r = wait_closed(a, CLOSE_WAIT_MS);
    CHECK(r == 1, "%s: server closed the connection (%s)", what,
          r == 0 ? "still open" : r < 0 ? "it answered instead" : "closed");
    printf("  case: %s -> %s\n", what, r == 1 ? "closed" : r == 0 ? "STILL OPEN" : "ANSWERED");
    /* the reason is logged around the close; give the line a moment. The
     * server names its peer, which is our end of the socket. */
    char closed_line[FERRY_CONN_ADDR_MAX + 16];
    snprintf(closed_line, sizeof closed_line, "%s", a->addr);
    bool logged = false;
    for (int i = 0; i < 100 && !(logged = log_has_since(a->log_from, closed_line)); i++)
        usleep(10000);
    CHECK(logged, "%s: the server logged a line naming %s", what, a->addr);
    log_print_since(a->log_from);
    rpc_raw_close(a->c);
    a->c = NULL;
    expected_drops++;
    healthy_check(what);
}

/* Opens an attacker, sends one raw frame (announced length, n bytes), and
 * expects the close. */
static void case_frame(const char *what, bool hello, uint8_t cmd, uint64_t announced,
                       const void *payload, size_t n) {
    struct attacker a;
    if (!attacker_open(&a, hello, 0)) return;
    rpc_raw_send_frame(a.c, cmd, announced, payload, n); /* may fail if already closed */
    expect_closed(&a, what);
}

/* An attacker with its own 4 KiB buffer sends one exact-size request. */
static void case_request(const char *what, uint8_t cmd, const uint8_t *payload, size_t n,
                         struct attacker *a) {
    rpc_raw_send_frame(a->c, cmd, n, payload, n);
    expect_closed(a, what);
}

/* ---- the cases ------------------------------------------------------------------------ */

static void cases_handshake(void) {
    uint8_t p[64] = {0};
    uint8_t alloc[FERRY_RPC_ALLOC_BUFFER_SIZE];
    struct ferry_rpc_alloc_buffer ab = {.device = 0, .size = 4096};
    ferry_rpc_encode_alloc_buffer(&ab, alloc);
    case_frame("HELLO missing: ALLOC_BUFFER first", false, FERRY_RPC_CMD_ALLOC_BUFFER, sizeof alloc,
               alloc, sizeof alloc);
    case_frame("HELLO missing: DEVICE_COUNT first", false, FERRY_RPC_CMD_DEVICE_COUNT, 0, NULL, 0);
    case_frame("HELLO of 0 bytes (a pre-v4 client)", false, FERRY_RPC_CMD_HELLO, 0, NULL, 0);
    case_frame("HELLO of 23 bytes", false, FERRY_RPC_CMD_HELLO, 23, p, 23);
    case_frame("HELLO of 25 bytes", false, FERRY_RPC_CMD_HELLO, 25, p, 25);
    case_frame("HELLO announcing 2^64-1 bytes", false, FERRY_RPC_CMD_HELLO, UINT64_MAX, p, 24);
    case_frame("HELLO repeated", true, FERRY_RPC_CMD_HELLO, 24, p, 24);
    case_frame("unknown command 18 as the first frame", false, FERRY_RPC_CMD_COUNT, 0, NULL, 0);

    struct attacker a;
    if (attacker_open(&a, false, 0)) expect_closed(&a, "HELLO never sent (hello timeout)");
}

static void cases_framing(void) {
    uint8_t p[512] = {0};
    case_frame("unknown command 18", true, 18, 0, NULL, 0);
    case_frame("unknown command 255 with a payload", true, 255, 16, p, 16);
    case_frame("GET_ALIGNMENT of 5 bytes (fixed size mismatch)", true, FERRY_RPC_CMD_GET_ALIGNMENT, 5,
               p, 5);
    case_frame("DEVICE_COUNT with a payload", true, FERRY_RPC_CMD_DEVICE_COUNT, 4, p, 4);
    case_frame("GET_TENSOR announcing 2^64-1 bytes", true, FERRY_RPC_CMD_GET_TENSOR, UINT64_MAX, p,
               312);
    case_frame("SET_TENSOR announcing 2^64-1 bytes", true, FERRY_RPC_CMD_SET_TENSOR, UINT64_MAX, p,
               304);
    case_frame("GRAPH_COMPUTE announcing 2^64-1 bytes", true, FERRY_RPC_CMD_GRAPH_COMPUTE, UINT64_MAX,
               p, 12);
    case_frame("GRAPH_COMPUTE announcing 2^63 bytes", true, FERRY_RPC_CMD_GRAPH_COMPUTE, 1ull << 63, p,
               12);
    case_frame("SET_TENSOR shorter than its 304-byte header", true, FERRY_RPC_CMD_SET_TENSOR, 100, p,
               100);
    case_frame("GRAPH_COMPUTE shorter than 8 bytes", true, FERRY_RPC_CMD_GRAPH_COMPUTE, 4, p, 4);

    /* truncated frames that then stall: only the frame timeout ends them */
    struct attacker a;
    if (attacker_open(&a, true, 0)) {
        uint8_t hdr[FERRY_RPC_FRAME_HEADER_SIZE];
        ferry_rpc_encode_frame_header(FERRY_RPC_CMD_GET_ALIGNMENT, 4, hdr);
        rpc_raw_send_bytes(a.c, hdr, 5);
        expect_closed(&a, "truncated header, then silence (frame timeout)");
    }
    case_frame("truncated payload, then silence (frame timeout)", true, FERRY_RPC_CMD_ALLOC_BUFFER,
               FERRY_RPC_ALLOC_BUFFER_SIZE, p, 5);
    if (attacker_open(&a, false, 0)) {
        uint8_t hello[FERRY_RPC_FRAME_HEADER_SIZE];
        ferry_rpc_encode_frame_header(FERRY_RPC_CMD_HELLO, 24, hello);
        rpc_raw_send_bytes(a.c, hello, 3);
        expect_closed(&a, "truncated HELLO header, then silence");
    }

    /* a truncated frame and the client vanishes: nothing to observe on the
     * socket, but the server must carry on */
    if (attacker_open(&a, true, 0)) {
        uint8_t hdr[FERRY_RPC_FRAME_HEADER_SIZE];
        ferry_rpc_encode_frame_header(FERRY_RPC_CMD_SET_TENSOR, 1000, hdr);
        rpc_raw_send_bytes(a.c, hdr, sizeof hdr);
        rpc_raw_send_bytes(a.c, p, 200);
        rpc_raw_close(a.c);
        vanish_cases++;
        printf("  case: truncated SET_TENSOR, then the client vanishes\n");
        healthy_check("truncated SET_TENSOR, then the client vanishes");
    }

    /* a large, allocatable length and then nothing: the frame timeout must
     * end it and nothing of that size may be allocated up front */
    static const uint8_t cmds[] = {FERRY_RPC_CMD_SET_TENSOR, FERRY_RPC_CMD_GRAPH_COMPUTE};
    for (int i = 0; i < 2; i++) {
        char what[128];
        snprintf(what, sizeof what, "%s announcing 100 MiB, no payload", ferry_rpc_cmd_name(cmds[i]));
        if (!attacker_open(&a, true, 0)) continue;
        uint64_t before = stats().bytes_allocated;
        heap_base = heap_peak = heap_mapped();
        heap_sampling = true;
        rpc_raw_send_frame(a.c, cmds[i], 100 * MIB, NULL, 0);
        usleep(100000);
        uint64_t during = stats().bytes_allocated;
        expect_closed(&a, what);
        heap_sampling = false;
        CHECK(during == before, "%s: bytes_allocated unchanged (%llu -> %llu)", what,
              (unsigned long long)before, (unsigned long long)during);
        CHECK(heap_peak < heap_base + 50 * MIB,
              "%s: no large allocation up front (mapped heap grew by %zu MiB)", what,
              (heap_peak - heap_base) / (size_t)MIB);
    }
    /* the same with a real SET_TENSOR header into a 4 KiB buffer: the
     * region cannot hold 100 MiB, which the header alone shows */
    if (attacker_open(&a, true, 4096)) {
        struct ferry_rpc_tensor t;
        whole_buffer(&t, 1, a.buf, a.base, 4096);
        uint8_t head[FERRY_RPC_SET_TENSOR_HEADER_SIZE];
        ferry_rpc_encode_set_tensor_header(&t, 0, head);
        rpc_raw_send_frame(a.c, FERRY_RPC_CMD_SET_TENSOR, sizeof head + 100 * MIB, head, sizeof head);
        expect_closed(&a, "SET_TENSOR header for 100 MiB into a 4 KiB buffer");
    }

    /* a client trickling bytes: a valid HELLO frame, one byte at a time */
    if (attacker_open(&a, false, 0)) {
        uint8_t frame[FERRY_RPC_FRAME_HEADER_SIZE + FERRY_RPC_CONN_CAPS_SIZE] = {0};
        ferry_rpc_encode_frame_header(FERRY_RPC_CMD_HELLO, FERRY_RPC_CONN_CAPS_SIZE, frame);
        int r = 0;
        for (size_t i = 0; i < sizeof frame && r == 0; i++) {
            if (rpc_raw_send_bytes(a.c, frame + i, 1) != FERRY_OK) break;
            r = wait_closed(&a, 250);
        }
        expect_closed(&a, "one byte every 250 ms (frame timeout)");
    }
    if (attacker_open(&a, true, 0)) expect_closed(&a, "silent after HELLO (idle timeout)");
}

/* Builds and sends a request whose payload the caller fills. */
static void get_tensor_req(uint8_t *p, const struct ferry_rpc_tensor *t, uint64_t offset,
                           uint64_t size) {
    struct ferry_rpc_get_tensor r = {.tensor = *t, .offset = offset, .size = size};
    ferry_rpc_encode_get_tensor(&r, p);
}

static void cases_buffers(void) {
    struct attacker a;
    uint8_t p[FERRY_RPC_COPY_TENSOR_SIZE];
    struct ferry_rpc_tensor t, u;

    if (attacker_open(&a, true, 4096)) {
        ferry_rpc_encode_buffer(0xdeadbeefcafef00dull, p);
        case_request("BUFFER_GET_BASE of an unknown handle", FERRY_RPC_CMD_BUFFER_GET_BASE, p, 8, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        ferry_rpc_encode_buffer(a.buf + 1, p);
        case_request("FREE_BUFFER of an unknown handle", FERRY_RPC_CMD_FREE_BUFFER, p, 8, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        CHECK(rpc_raw_free_buffer(a.c, a.buf) == FERRY_OK, "free own buffer: %s", a.c->err.msg);
        ferry_rpc_encode_buffer(a.buf, p);
        case_request("FREE_BUFFER twice", FERRY_RPC_CMD_FREE_BUFFER, p, 8, &a);
    }
    /* another connection's handle and addresses are unknown here */
    if (attacker_open(&a, true, 4096)) {
        struct ferry_rpc_buffer_clear bc = {.buffer = H.buf, .value = 0xAA};
        ferry_rpc_encode_buffer_clear(&bc, p);
        case_request("BUFFER_CLEAR of the healthy client's handle", FERRY_RPC_CMD_BUFFER_CLEAR, p,
                     FERRY_RPC_BUFFER_CLEAR_SIZE, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, H.buf, H.base, 256);
        uint8_t junk[256];
        memset(junk, 0x5A, sizeof junk);
        rpc_raw_set_tensor(a.c, &t, 0, junk, sizeof junk);
        expect_closed(&a, "SET_TENSOR into the healthy client's buffer");
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, H.buf, H.base, 4096);
        get_tensor_req(p, &t, 0, 4096);
        case_request("GET_TENSOR of the healthy client's buffer", FERRY_RPC_CMD_GET_TENSOR, p,
                     FERRY_RPC_GET_TENSOR_SIZE, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, H.base, 256); /* own handle, the other's address */
        get_tensor_req(p, &t, 0, 256);
        case_request("GET_TENSOR at the healthy client's address with its own handle",
                     FERRY_RPC_CMD_GET_TENSOR, p, FERRY_RPC_GET_TENSOR_SIZE, &a);
    }

    /* tensors outside their buffer */
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, a.base + 64, 4096);
        get_tensor_req(p, &t, 0, 16);
        case_request("tensor past its buffer's end", FERRY_RPC_CMD_GET_TENSOR, p,
                     FERRY_RPC_GET_TENSOR_SIZE, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, a.base - 64, 32);
        get_tensor_req(p, &t, 0, 16);
        case_request("tensor before its buffer's base", FERRY_RPC_CMD_GET_TENSOR, p,
                     FERRY_RPC_GET_TENSOR_SIZE, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, a.base, 4096);
        get_tensor_req(p, &t, 8, UINT64_MAX - 7);
        case_request("GET_TENSOR offset + size overflowing 64 bits", FERRY_RPC_CMD_GET_TENSOR, p,
                     FERRY_RPC_GET_TENSOR_SIZE, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, a.base, 4096);
        uint8_t data[16] = {0};
        rpc_raw_set_tensor(a.c, &t, UINT64_MAX - 4, data, sizeof data);
        expect_closed(&a, "SET_TENSOR offset near 2^64");
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, a.base, 4096);
        uint8_t data[16] = {0};
        rpc_raw_set_tensor(a.c, &t, 4090, data, sizeof data);
        expect_closed(&a, "SET_TENSOR region past the tensor's end");
    }
    if (attacker_open(&a, true, 4096)) {
        rpc_raw_tensor_2d(&t, 1, FERRY_TYPE_F32, 16, 2, a.buf, a.base);
        t.nb[1] = 0xFFFFFFF0u;
        t.nb[2] = t.nb[3] = 0xFFFFFFF0u;
        get_tensor_req(p, &t, 0, 16);
        case_request("huge stride", FERRY_RPC_CMD_GET_TENSOR, p, FERRY_RPC_GET_TENSOR_SIZE, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        rpc_raw_tensor_2d(&t, 1, FERRY_TYPE_F32, 16, 2, a.buf, a.base);
        for (int d = 0; d < 4; d++) t.ne[d] = t.nb[d] = 0xFFFFFFFFu;
        get_tensor_req(p, &t, 0, 16);
        case_request("extent beyond 64 bits", FERRY_RPC_CMD_GET_TENSOR, p, FERRY_RPC_GET_TENSOR_SIZE,
                     &a);
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, UINT64_MAX - 16, 64);
        get_tensor_req(p, &t, 0, 16);
        case_request("data + size wrapping 2^64", FERRY_RPC_CMD_GET_TENSOR, p,
                     FERRY_RPC_GET_TENSOR_SIZE, &a);
    }
    static const uint32_t bad_types[] = {4, 5, 31, 38, 43, UINT32_MAX};
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        if (!attacker_open(&a, true, 4096)) continue;
        whole_buffer(&t, 1, a.buf, a.base, 64);
        t.type = bad_types[i];
        get_tensor_req(p, &t, 0, 16);
        char what[64];
        snprintf(what, sizeof what, "invalid type id %u in GET_TENSOR", bad_types[i]);
        case_request(what, FERRY_RPC_CMD_GET_TENSOR, p, FERRY_RPC_GET_TENSOR_SIZE, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, a.base, 64);
        t.type = 33;
        ferry_rpc_encode_init_tensor(&t, p);
        case_request("removed type id 33 in INIT_TENSOR", FERRY_RPC_CMD_INIT_TENSOR, p,
                     FERRY_RPC_INIT_TENSOR_SIZE, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, a.base, 4096);
        struct ferry_rpc_memset_tensor m = {.tensor = t, .offset = 4000, .size = 200, .value = 1};
        ferry_rpc_encode_memset_tensor(&m, p);
        case_request("MEMSET_TENSOR past the end", FERRY_RPC_CMD_MEMSET_TENSOR, p,
                     FERRY_RPC_MEMSET_TENSOR_SIZE, &a);
    }
    if (attacker_open(&a, true, 4096)) {
        whole_buffer(&t, 1, a.buf, a.base, 4096);
        whole_buffer(&u, 2, a.buf, a.base + 2048, 2048);
        struct ferry_rpc_copy_tensor ct = {.src = t, .dst = u};
        ferry_rpc_encode_copy_tensor(&ct, p);
        case_request("COPY_TENSOR overflowing its destination buffer", FERRY_RPC_CMD_COPY_TENSOR, p,
                     FERRY_RPC_COPY_TENSOR_SIZE, &a);
    }
    if (attacker_open(&a, true, 0)) {
        ferry_rpc_encode_device(7, p);
        case_request("device index out of range", FERRY_RPC_CMD_GET_ALIGNMENT, p, 4, &a);
    }
    if (attacker_open(&a, true, 0)) {
        struct ferry_rpc_alloc_buffer ab = {.device = 1, .size = 4096};
        ferry_rpc_encode_alloc_buffer(&ab, p);
        case_request("ALLOC_BUFFER on device 1", FERRY_RPC_CMD_ALLOC_BUFFER, p,
                     FERRY_RPC_ALLOC_BUFFER_SIZE, &a);
    }

    /* allocation failure is answered, not punished (docs/rpc-protocol.md section 5.0) */
    if (attacker_open(&a, true, 0)) {
        static const uint64_t sizes[] = {MEM_LIMIT + MIB, 1ull << 62, UINT64_MAX};
        for (size_t i = 0; i < 3; i++) {
            uint64_t h = 1, s = 1;
            int rc = rpc_raw_alloc_buffer(a.c, 0, sizes[i], &h, &s);
            CHECK(rc == FERRY_OK && h == 0 && s == 0,
                  "ALLOC_BUFFER of %llu bytes answered 0/0 (rc %d, %llx/%llu: %s)",
                  (unsigned long long)sizes[i], rc, (unsigned long long)h, (unsigned long long)s,
                  a.c->err.msg);
        }
        uint64_t align = 0, h = 0;
        CHECK(rpc_raw_get_alignment(a.c, 0, &align) == FERRY_OK && align == 32,
              "connection usable after failed allocations: %s", a.c->err.msg);
        CHECK(rpc_raw_alloc_buffer(a.c, 0, 4096, &h, NULL) == FERRY_OK && h != 0,
              "a small allocation still works: %s", a.c->err.msg);
        printf("  case: ALLOC_BUFFER over mem_limit -> answered 0/0, connection kept\n");
        rpc_raw_close(a.c);
        healthy_check("ALLOC_BUFFER over mem_limit");
    }
}

/* ---- graphs --------------------------------------------------------------------------- */

enum { G_A = 0x2001, G_B = 0x2002, G_C = 0x2003 };

/* Builds a GRAPH_COMPUTE from records with one node and sends it. */
static void send_graph(struct attacker *a, uint64_t node, const struct ferry_rpc_tensor *r, uint32_t n) {
    size_t len;
    uint8_t *g = rpc_raw_graph_build(0, &node, 1, r, n, &len);
    rpc_raw_graph_compute(a->c, g, len);
    free(g);
}

/* The attacker's ADD graph (records r[0..n_recs), node `node`, in the
 * attacker a_'s own buffer) with one mutation, expected to be refused. The
 * mutation may use r, node, n_recs and a_. */
#define GRAPH_CASE(what, mutation)                                                       \
    do {                                                                                 \
        struct attacker a_;                                                              \
        if (!attacker_open(&a_, true, 4096)) break;                                      \
        struct ferry_rpc_tensor r[4];                                                    \
        uint64_t node = G_C;                                                             \
        uint32_t n_recs = 3;                                                             \
        add_graph(r, G_A, a_.buf, a_.base);                                              \
        mutation;                                                                        \
        send_graph(&a_, node, r, n_recs);                                                \
        expect_closed(&a_, what);                                                        \
    } while (0)

/* Sends a valid graph, then proves it ran by reading its output. */
static bool graph_ok(struct attacker *a, uint64_t node, const struct ferry_rpc_tensor *r, uint32_t n,
                     const struct ferry_rpc_tensor *out, void *dst, size_t size) {
    send_graph(a, node, r, n);
    return rpc_raw_get_tensor(a->c, out, 0, size, dst) == FERRY_OK;
}

static void cases_graphs(void) {
    GRAPH_CASE("graph: node id 0", node = 0);
    GRAPH_CASE("graph: unknown node id", node = 0x9999);
    GRAPH_CASE("graph: dangling src id", r[2].src[1] = 0x7777);
    GRAPH_CASE("graph: dangling view_src id", r[0].view_src = 0x7777);
    GRAPH_CASE("graph: self cycle", r[2].src[0] = G_C);
    GRAPH_CASE("graph: two-tensor cycle", r[0].src[0] = G_C);
    GRAPH_CASE("graph: three-tensor cycle", (r[0].src[3] = G_B, r[1].src[0] = G_C));
    GRAPH_CASE("graph: duplicate record ids", r[1].id = G_A);
    GRAPH_CASE("graph: record id 0", r[1].id = 0);
    for (uint32_t op = FERRY_OP_MAP_CUSTOM1; op <= FERRY_OP_CUSTOM; op++) {
        char what[96];
        snprintf(what, sizeof what, "graph: custom op %u carrying a function pointer", op);
        GRAPH_CASE(what, (r[2].op = op, r[2].op_params[0] = 0x401000, r[2].op_params[1] = 0x7fff,
                          r[2].op_params[2] = 1, r[2].op_params[4] = 0x1234));
    }
    GRAPH_CASE("graph: custom op on a leaf", r[0].op = FERRY_OP_MAP_CUSTOM2);
    GRAPH_CASE("graph: op 101", r[2].op = FERRY_OP_COUNT);
    GRAPH_CASE("graph: removed type 4 on a leaf", r[1].type = 4);
    GRAPH_CASE("graph: type 43 on the node", r[2].type = 43);
    GRAPH_CASE("graph: tensor past its buffer's end", r[2].data = a_.base + 4096 - 64);
    GRAPH_CASE("graph: huge stride", r[1].nb[1] = 0xFFFFFFF0u);
    GRAPH_CASE("graph: extent beyond 64 bits",
               (r[1].ne[1] = r[1].ne[2] = r[1].ne[3] = 0xFFFFFFFFu,
                r[1].nb[1] = r[1].nb[2] = r[1].nb[3] = 0xFFFFFFFFu));
    GRAPH_CASE("graph: unknown buffer handle", r[1].buffer ^= 0x5555);
    GRAPH_CASE("graph: the healthy client's buffer", (r[1].buffer = H.buf, r[1].data = H.base));
    GRAPH_CASE("graph: memory without a buffer", r[1].buffer = 0);
    GRAPH_CASE("graph: misaligned f32 data", r[1].data = a_.base + 130);
    GRAPH_CASE("graph: ADD of mismatched shapes", r[1].ne[0] = 7);
    {
        struct attacker a;
        if (attacker_open(&a, true, 4096)) {
            struct ferry_rpc_tensor r[3];
            uint64_t node = G_C;
            add_graph(r, G_A, a.buf, a.base);
            size_t len;
            uint8_t *g = rpc_raw_graph_build(3, &node, 1, r, 3, &len);
            rpc_raw_graph_compute(a.c, g, len);
            free(g);
            expect_closed(&a, "graph: device 3");
        }
    }
    {
        struct attacker a;
        if (attacker_open(&a, true, 0)) {
            uint8_t g[12] = {0};
            ferry_put_le32(g + 4, UINT32_MAX); /* n_nodes 2^32-1 in a 12-byte payload */
            rpc_raw_graph_compute(a.c, g, sizeof g);
            expect_closed(&a, "graph: n_nodes 2^32-1 in 12 bytes");
        }
    }

    /* GET_ROWS with an index out of range: first a valid one (control) */
    struct attacker a;
    if (attacker_open(&a, true, 4096)) {
        struct ferry_rpc_tensor r[3];
        rpc_raw_tensor_2d(&r[0], 0x3001, FERRY_TYPE_F32, 8, 4, a.buf, a.base);       /* table */
        rpc_raw_tensor_2d(&r[1], 0x3002, FERRY_TYPE_I32, 2, 1, a.buf, a.base + 128); /* rows */
        rpc_raw_tensor_2d(&r[2], 0x3003, FERRY_TYPE_F32, 8, 2, a.buf, a.base + 256); /* out */
        r[2].op = FERRY_OP_GET_ROWS;
        r[2].src[0] = 0x3001;
        r[2].src[1] = 0x3002;
        r[2].flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
        int32_t idx[2] = {1, 3};
        rpc_raw_set_tensor(a.c, &r[1], 0, idx, sizeof idx);
        float out[16];
        bool ok = graph_ok(&a, 0x3003, r, 3, &r[2], out, sizeof out);
        if (CHECK(ok, "GET_ROWS control graph runs: %s", a.c->err.msg)) {
            idx[1] = 7;
            rpc_raw_set_tensor(a.c, &r[1], 0, idx, sizeof idx);
            send_graph(&a, 0x3003, r, 3);
            expect_closed(&a, "GET_ROWS index 7 of 4 rows");
        } else {
            rpc_raw_close(a.c);
        }
    }
    if (attacker_open(&a, true, 4096)) {
        struct ferry_rpc_tensor r[3];
        rpc_raw_tensor_2d(&r[0], 0x3001, FERRY_TYPE_F32, 8, 4, a.buf, a.base);
        rpc_raw_tensor_2d(&r[1], 0x3002, FERRY_TYPE_I32, 2, 1, a.buf, a.base + 128);
        rpc_raw_tensor_2d(&r[2], 0x3003, FERRY_TYPE_F32, 8, 2, a.buf, a.base + 256);
        r[2].op = FERRY_OP_GET_ROWS;
        r[2].src[0] = 0x3001;
        r[2].src[1] = 0x3002;
        r[2].flags = FERRY_FLAG_COMPUTE;
        int32_t idx[2] = {0, -1};
        rpc_raw_set_tensor(a.c, &r[1], 0, idx, sizeof idx);
        send_graph(&a, 0x3003, r, 3);
        expect_closed(&a, "GET_ROWS index -1");
    }
    /* SET_ROWS: the node is a view of the destination a, src2 = a */
    if (attacker_open(&a, true, 4096)) {
        struct ferry_rpc_tensor r[4];
        rpc_raw_tensor_2d(&r[0], 0x4001, FERRY_TYPE_F32, 8, 2, a.buf, a.base);       /* rows */
        rpc_raw_tensor_2d(&r[1], 0x4002, FERRY_TYPE_I64, 2, 1, a.buf, a.base + 128); /* indices */
        rpc_raw_tensor_2d(&r[2], 0x4003, FERRY_TYPE_F32, 8, 4, a.buf, a.base + 256); /* dst */
        rpc_raw_tensor_2d(&r[3], 0x4004, FERRY_TYPE_F32, 8, 4, a.buf, a.base + 256); /* node */
        r[3].op = FERRY_OP_SET_ROWS;
        r[3].src[0] = 0x4001;
        r[3].src[1] = 0x4002;
        r[3].src[2] = 0x4003;
        r[3].view_src = 0x4003;
        r[3].view_offs = 0;
        r[3].flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
        int64_t idx[2] = {0, 3};
        rpc_raw_set_tensor(a.c, &r[1], 0, idx, sizeof idx);
        float out[32];
        bool ok = graph_ok(&a, 0x4004, r, 4, &r[2], out, sizeof out);
        if (CHECK(ok, "SET_ROWS control graph runs: %s", a.c->err.msg)) {
            idx[1] = 9;
            rpc_raw_set_tensor(a.c, &r[1], 0, idx, sizeof idx);
            send_graph(&a, 0x4004, r, 4);
            expect_closed(&a, "SET_ROWS index 9 of 4 rows");
        } else {
            rpc_raw_close(a.c);
        }
    }

    /* recompute: without a stored graph, after its buffer was freed, and
     * on a device that does not exist */
    if (attacker_open(&a, true, 0)) {
        rpc_raw_graph_recompute(a.c, 0);
        expect_closed(&a, "GRAPH_RECOMPUTE without a stored graph");
    }
    if (attacker_open(&a, true, 4096)) {
        struct ferry_rpc_tensor r[3];
        add_graph(r, G_A, a.buf, a.base);
        float out[32];
        bool ok = graph_ok(&a, G_C, r, 3, &r[2], out, sizeof out);
        if (CHECK(ok, "recompute control graph runs: %s", a.c->err.msg)) {
            rpc_raw_graph_recompute(a.c, 0); /* valid: still has its buffer */
            ok = rpc_raw_get_tensor(a.c, &r[2], 0, sizeof out, out) == FERRY_OK;
            CHECK(ok, "GRAPH_RECOMPUTE of a live graph runs: %s", a.c->err.msg);
            ok = ok && rpc_raw_free_buffer(a.c, a.buf) == FERRY_OK;
            CHECK(ok, "free the graph's buffer: %s", a.c->err.msg);
        }
        if (ok) {
            rpc_raw_graph_recompute(a.c, 0);
            expect_closed(&a, "GRAPH_RECOMPUTE after FREE_BUFFER");
        } else {
            rpc_raw_close(a.c);
        }
    }
    if (attacker_open(&a, true, 0)) {
        rpc_raw_graph_recompute(a.c, 5);
        expect_closed(&a, "GRAPH_RECOMPUTE on device 5");
    }
}

/* ---- vanishing clients and too many clients ----------------------------------------- */

static void cases_vanish(void) {
    struct attacker a;
    for (int rep = 0; rep < 2; rep++) {
        if (!attacker_open(&a, true, 64 * MIB)) continue;
        struct ferry_rpc_tensor t;
        whole_buffer(&t, 1, a.buf, a.base, (uint32_t)(64 * MIB));
        uint8_t p[FERRY_RPC_GET_TENSOR_SIZE];
        get_tensor_req(p, &t, 0, 64 * MIB);
        rpc_raw_send_frame(a.c, FERRY_RPC_CMD_GET_TENSOR, sizeof p, p, sizeof p);
        if (rep == 1) usleep(20000); /* let the server be mid-write */
        rpc_raw_close(a.c);
        vanish_cases++;
        printf("  case: GET_TENSOR of 64 MiB, then the client vanishes (%d)\n", rep);
        healthy_check("GET_TENSOR of 64 MiB, then the client vanishes");
    }
    if (attacker_open(&a, true, MIB)) {
        struct ferry_rpc_tensor t;
        whole_buffer(&t, 1, a.buf, a.base, (uint32_t)MIB);
        uint8_t head[FERRY_RPC_SET_TENSOR_HEADER_SIZE];
        ferry_rpc_encode_set_tensor_header(&t, 0, head);
        uint8_t *half = calloc(1, MIB / 2);
        rpc_raw_send_frame(a.c, FERRY_RPC_CMD_SET_TENSOR, sizeof head + MIB, head, sizeof head);
        rpc_raw_send_bytes(a.c, half, MIB / 2);
        free(half);
        rpc_raw_close(a.c);
        vanish_cases++;
        printf("  case: SET_TENSOR of 1 MiB, the client vanishes halfway\n");
        healthy_check("SET_TENSOR of 1 MiB, the client vanishes halfway");
    }
    /* the vanished clients' buffers come back */
    struct ferry_server_stats st;
    STATS_WAIT(st, st.conns_open == 1 && st.bytes_allocated == HB_SIZE);
    CHECK(st.conns_open == 1 && st.bytes_allocated == HB_SIZE,
          "vanished clients cleaned up: %llu open, %llu bytes allocated",
          (unsigned long long)st.conns_open, (unsigned long long)st.bytes_allocated);
}

static void case_max_conns(void) {
    struct ferry_server_stats st;
    STATS_WAIT(st, st.conns_open == 1);
    CHECK(st.conns_open == 1, "only the healthy client is open (%llu)", (unsigned long long)st.conns_open);
    uint64_t refused_before = st.conns_refused;
    struct rpc_raw *extra[MAX_CONNS] = {0};
    int n = 0;
    struct ferry_error err = {0};
    for (int i = 1; i < MAX_CONNS; i++) {
        if (!CHECK(rpc_raw_open(HOST, port, &extra[n], &err) == FERRY_OK,
                   "connection %d of %d served: %s", i + 1, MAX_CONNS, err.msg))
            break;
        /* holding a buffer: never evicted, so the next one must be refused */
        uint64_t h = 0, rs = 0;
        CHECK(rpc_raw_alloc_buffer(extra[n], 0, 4096, &h, &rs) == FERRY_OK && h, "connection %d: alloc", i + 1);
        n++;
    }
    /* one more: the server must refuse it, and say so */
    off_t log_from = log_size();
    struct rpc_raw *over = NULL;
    int rc = rpc_raw_connect(HOST, port, 2000, &over, &err);
    if (rc == FERRY_OK) {
        rpc_raw_set_timeout(over, 2000);
        rc = rpc_raw_hello(over, NULL);
        CHECK(rc == FERRY_ERR_CLOSED || rc == FERRY_ERR_IO,
              "connection %d of %d refused with a close (rc %s: %s)", MAX_CONNS + 1, MAX_CONNS,
              ferry_status_name(rc), over->err.msg);
        rpc_raw_close(over);
    } else {
        CHECK(rc == FERRY_ERR_REFUSED, "connect past the limit: %s", err.msg);
    }
    STATS_WAIT(st, st.conns_refused > refused_before);
    CHECK(st.conns_refused == refused_before + 1, "conns_refused counted (%llu -> %llu)",
          (unsigned long long)refused_before, (unsigned long long)st.conns_refused);
    for (int i = 0; i < 100 && log_size() <= log_from; i++) usleep(10000);
    CHECK(log_size() > log_from, "the refusal is logged");
    printf("  case: connection %d of %d -> %s\n", MAX_CONNS + 1, MAX_CONNS,
           rc == FERRY_ERR_CLOSED || rc == FERRY_ERR_IO ? "refused" : "NOT refused");
    log_print_since(log_from);
    /* the extra clients are still served */
    int served = 0;
    for (int i = 0; i < n; i++) {
        uint32_t count = 0;
        served += rpc_raw_device_count(extra[i], &count) == FERRY_OK && count >= 1;
    }
    CHECK(served == n, "all %d clients within the limit still served (%d)", n, served);
    for (int i = 0; i < n; i++) rpc_raw_close(extra[i]);
    STATS_WAIT(st, st.conns_open == 1);
    healthy_check("max_conns");
}

/* 64 connections complete HELLO and sit idle, holding nothing, against 8
 * slots: each newcomer evicts the one idle longest, so a working client
 * arriving after them is served, and the healthy client (holding a
 * buffer) is never touched. */
#define FLOOD 64
static void case_idle_flood(void) {
    struct ferry_server_stats st;
    STATS_WAIT(st, st.conns_open == 1);
    uint64_t evicted0 = st.conns_evicted, dropped0 = st.conns_dropped;
    off_t log_from = log_size();
    struct rpc_raw *idle[FLOOD] = {0};
    int opened = 0;
    struct ferry_error err = {0};
    for (int i = 0; i < FLOOD; i++) opened += rpc_raw_open(HOST, port, &idle[i], &err) == FERRY_OK;
    CHECK(opened == FLOOD, "every idle-after-HELLO connection got its HELLO (%d of %d; %s)", opened, FLOOD,
          err.msg);
    /* the working client: HELLO, a buffer, data in and out, a graph */
    struct rpc_raw *w = NULL;
    bool served = rpc_raw_open(HOST, port, &w, &err) == FERRY_OK;
    uint64_t buf = 0, rs = 0, base = 0;
    served = served && rpc_raw_alloc_buffer(w, 0, 4096, &buf, &rs) == FERRY_OK && buf &&
             rpc_raw_buffer_get_base(w, buf, &base) == FERRY_OK;
    float in[64], out[32];
    for (int i = 0; i < 64; i++) in[i] = (float)i;
    struct ferry_rpc_tensor r[3];
    add_graph(r, 0x2001, buf, base);
    size_t len = 0;
    uint64_t node = 0x2003;
    uint8_t *g = served ? rpc_raw_graph_build(0, &node, 1, r, 3, &len) : NULL;
    served = served && rpc_raw_set_tensor(w, &r[0], 0, in, 128) == FERRY_OK &&
             rpc_raw_set_tensor(w, &r[1], 0, in + 32, 128) == FERRY_OK && rpc_raw_graph_compute(w, g, len) == FERRY_OK &&
             rpc_raw_get_tensor(w, &r[2], 0, 128, out) == FERRY_OK;
    free(g);
    bool right = served;
    for (int i = 0; i < 32 && right; i++) right = out[i] == in[i] + in[32 + i];
    CHECK(served && right, "after %d idle connections, a working client is served (%s)", FLOOD,
          w ? w->err.msg : err.msg);
    STATS_WAIT(st, st.conns_evicted - evicted0 >= FLOOD - MAX_CONNS + 2);
    CHECK(st.conns_evicted - evicted0 >= FLOOD - MAX_CONNS + 2, "idle connections evicted to make room (%llu)",
          (unsigned long long)(st.conns_evicted - evicted0));
    CHECK(st.conns_dropped == dropped0, "evictions are not drops");
    CHECK(log_has_since(log_from, "evicting 127.0.0.1:"), "each eviction is logged, naming the connection");
    int closed = 0;
    for (int i = 0; i < FLOOD; i++) closed += rpc_raw_poll_closed(idle[i], 0) == 1;
    printf("  case: %d idle connections after HELLO, max %d -> %llu evicted, working client %s\n", FLOOD,
           MAX_CONNS, (unsigned long long)(st.conns_evicted - evicted0), served && right ? "served" : "NOT served");
    for (int i = 0; i < FLOOD; i++) rpc_raw_close(idle[i]);
    rpc_raw_close(w);
    CHECK(closed >= FLOOD - MAX_CONNS, "the evicted connections were closed (%d)", closed);
    STATS_WAIT(st, st.conns_open == 1);
    healthy_check("idle flood");
}

/* ---- the per-peer bound: a server of its own, clients from 127.0.0.2 and .3 ---- */

/* A blocking socket from `from` (any port) to the server, 5 s timeouts. */
static int peer_socket(const char *from, int to_port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = { .sin_family = AF_INET };
    inet_pton(AF_INET, from, &a.sin_addr);
    struct sockaddr_in b = { .sin_family = AF_INET, .sin_port = htons((uint16_t)to_port) };
    inet_pton(AF_INET, HOST, &b.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || connect(fd, (struct sockaddr *)&b, sizeof b) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool read_full(int fd, void *p, size_t n) {
    for (size_t got = 0; got < n;) {
        ssize_t r = recv(fd, (uint8_t *)p + got, n - got, 0);
        if (r <= 0) return false;
        got += (size_t)r;
    }
    return true;
}

/* One request and its response of rsp_n bytes (0: none expected). */
static bool peer_call(int fd, uint8_t cmd, const void *req, size_t n, void *rsp, size_t rsp_n) {
    uint8_t frame[64];
    frame[0] = cmd;
    ferry_put_le64(frame + 1, n);
    if (n) memcpy(frame + 9, req, n);
    if (send(fd, frame, 9 + n, MSG_NOSIGNAL) != (ssize_t)(9 + n)) return false;
    uint8_t len[8];
    return read_full(fd, len, 8) && ferry_get_le64(len) == rsp_n && read_full(fd, rsp, rsp_n);
}

/* Connects from `from` and HELLOs; -1 when the server closed instead. */
static int peer_open(const char *from, int to_port) {
    int fd = peer_socket(from, to_port);
    uint8_t caps[24] = {0}, rsp[28];
    if (fd >= 0 && !peer_call(fd, FERRY_RPC_CMD_HELLO, caps, 24, rsp, 28)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static uint64_t peer_alloc(int fd) {
    uint8_t req[12], rsp[16];
    struct ferry_rpc_alloc_buffer a = { 0, 4096 };
    ferry_rpc_encode_alloc_buffer(&a, req);
    return peer_call(fd, FERRY_RPC_CMD_ALLOC_BUFFER, req, 12, rsp, 16) ? ferry_get_le64(rsp) : 0;
}

static void case_per_peer(void) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.host = HOST;
    cfg.port = 0;
    cfg.n_threads = 1;
    cfg.mem_limit = 16 * MIB;
    cfg.max_conns = 8; /* per peer: the default, half of it */
    cfg.evict_grace_ms = 0;
    struct ferry_server *ps = NULL;
    struct ferry_error err = {0};
    if (!CHECK(ferry_server_create(&cfg, &ps, &err) == FERRY_OK, "per-peer server: %s", err.msg)) return;
    int pport = ferry_server_port(ps);
    pthread_t th;
    pthread_create(&th, NULL, ferry_server_run_detached, ps);
    char line[256];
    ferry_server_describe_limits(ps, line, sizeof line);
    printf("  case: per-peer bound, server limits: %s\n", line);
    CHECK(strstr(line, "4 per peer") != NULL, "the default per-peer bound is half of max_conns");

    off_t log_from = log_size();
    int a[5];
    uint64_t h[5] = {0};
    int n = 0;
    for (int i = 0; i < 4; i++) {
        a[i] = peer_open("127.0.0.2", pport);
        if (a[i] >= 0) h[i] = peer_alloc(a[i]);
        n += a[i] >= 0 && h[i] != 0;
    }
    CHECK(n == 4, "127.0.0.2 opens its 4 connections, each holding a buffer (%d)", n);
    a[4] = peer_open("127.0.0.2", pport);
    CHECK(a[4] < 0, "its 5th is refused: its share is taken and none is idle without buffers");
    if (a[4] >= 0) close(a[4]);
    for (int i = 0; i < 100 && !log_has_since(log_from, "per address"); i++) usleep(10000);
    CHECK(log_has_since(log_from, "127.0.0.2 holds 4 connections (max 4 per address)"), "the reason is logged");
    int b = peer_open("127.0.0.3", pport);
    CHECK(b >= 0, "another address is still served");
    /* one of 127.0.0.2's connections lets go of its buffer: the next from
     * 127.0.0.2 takes its place (evicted), nobody else's */
    uint8_t req[8];
    ferry_rpc_encode_buffer(h[0], req);
    uint8_t none[1];
    CHECK(a[0] >= 0 && peer_call(a[0], FERRY_RPC_CMD_FREE_BUFFER, req, 8, none, 0), "free one buffer");
    int again = -1;
    for (int i = 0; i < 50 && again < 0; i++) {
        again = peer_open("127.0.0.2", pport);
        if (again < 0) usleep(20000);
    }
    CHECK(again >= 0, "127.0.0.2 is served again, in place of its own idle connection");
    uint8_t byte;
    CHECK(a[0] >= 0 && recv(a[0], &byte, 1, 0) <= 0, "that idle connection was evicted");
    uint8_t cnt[4];
    CHECK(b >= 0 && peer_call(b, FERRY_RPC_CMD_DEVICE_COUNT, NULL, 0, cnt, 4), "127.0.0.3 untouched");
    for (int i = 0; i < 4; i++)
        if (a[i] >= 0) close(a[i]);
    if (b >= 0) close(b);
    if (again >= 0) close(again);
    ferry_server_stop(ps);
    pthread_join(th, NULL);
    ferry_server_destroy(ps);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    setvbuf(stdout, NULL, _IOLBF, 0);
    ferry_log_set_level(FERRY_LOG_INFO);
    log_capture_start();
    if (!server_start()) {
        log_capture_end(true);
        return test_summary();
    }
    if (!healthy_setup()) {
        printf("the healthy client cannot even start; nothing else is meaningful\n");
        server_finish();
        log_capture_end(true);
        return test_summary();
    }
    struct ferry_server_stats st0 = stats();

    cases_handshake();
    cases_framing();
    cases_buffers();
    cases_graphs();
    cases_vanish();
    case_max_conns();
    case_idle_flood();
    case_per_peer();

    /* every attacker is gone: their buffers are freed, the drops counted */
    struct ferry_server_stats st;
    STATS_WAIT(st, st.conns_open == 1 && st.buffers_open == 1 && st.bytes_allocated == HB_SIZE);
    CHECK(st.conns_open == 1, "only the healthy connection is open (%llu)", (unsigned long long)st.conns_open);
    CHECK(st.buffers_open == 1 && st.bytes_allocated == HB_SIZE,
          "only the healthy buffer is allocated (%llu buffers, %llu bytes)",
          (unsigned long long)st.buffers_open, (unsigned long long)st.bytes_allocated);
    CHECK(st.conns_dropped - st0.conns_dropped >= (uint64_t)expected_drops,
          "conns_dropped grew by at least %d (by %llu)", expected_drops,
          (unsigned long long)(st.conns_dropped - st0.conns_dropped));
    /* clients that simply hang up between requests (every healthy check's
     * fresh client, the extra clients of max_conns) are not drops */
    CHECK(st.conns_dropped - st0.conns_dropped <= (uint64_t)(expected_drops + vanish_cases),
          "conns_dropped grew by at most %d: normal closes are not drops (grew by %llu)",
          expected_drops + vanish_cases, (unsigned long long)(st.conns_dropped - st0.conns_dropped));
    printf("stats: accepted %llu, refused %llu, dropped %llu (expected >= %d), commands %llu, "
           "graphs %llu\n",
           (unsigned long long)st.conns_accepted, (unsigned long long)st.conns_refused,
           (unsigned long long)(st.conns_dropped - st0.conns_dropped), expected_drops,
           (unsigned long long)st.commands, (unsigned long long)st.graphs_computed);

    /* and the healthy client, after all that, frees its buffer cleanly */
    CHECK(rpc_raw_free_buffer(H.c, H.buf) == FERRY_OK, "healthy: free: %s", H.c->err.msg);
    rpc_raw_close(H.c);
    H.c = NULL;
    STATS_WAIT(st, st.conns_open == 0 && st.bytes_allocated == 0);
    CHECK(st.conns_open == 0 && st.bytes_allocated == 0 && st.buffers_open == 0,
          "all closed and freed at the end");
    server_finish();
    log_capture_end(test_failed > 0);
    return test_summary();
}
