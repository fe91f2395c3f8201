/* The transport layer (src/transport) over loopback TCP: round trips of 0 B
 * to 64 MiB through gather-send and two-step receive, discard, a peer that
 * closes mid-frame, a peer that stalls (idle, mid-header, mid-payload, not
 * reading), writes to a vanished peer (no SIGPIPE), the ephemeral listener,
 * endpoint parsing and the statistics. The two ends are threads; every wait
 * is bounded by a connection timeout, so nothing here can hang. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "transport/net.h"
#include "transport/transport.h"
#include "testutil.h"

/* A safety net for every connection in these tests: no wait lasts longer. */
static const struct ferry_conn_timeouts SAFE = {.idle_ms = 10000, .frame_ms = 10000};

struct pair {
    struct ferry_listener *l;
    struct ferry_conn *client, *server;
};

static bool pair_open(struct pair *p) {
    struct ferry_error err = {0};
    memset(p, 0, sizeof *p);
    if (!CHECK(ferry_tcp_listen("127.0.0.1", 0, &p->l, &err) == FERRY_OK, "listen: %s", err.msg))
        return false;
    int port = ferry_listener_port(p->l);
    if (!CHECK(ferry_tcp_connect("127.0.0.1", port, 2000, &p->client, &err) == FERRY_OK,
               "connect: %s", err.msg))
        return false;
    if (!CHECK(ferry_listener_accept(p->l, 2000, &p->server, &err) == FERRY_OK, "accept: %s",
               err.msg))
        return false;
    ferry_conn_set_timeouts(p->client, SAFE);
    ferry_conn_set_timeouts(p->server, SAFE);
    return true;
}

static void pair_close(struct pair *p) {
    ferry_conn_close(p->client);
    ferry_conn_close(p->server);
    ferry_listener_close(p->l);
}

static void le_put(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t le_get(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void fill_pattern(uint8_t *p, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)((i * 131u + seed * 7u + (i >> 11)) & 0xff);
}

/* ---- a sending thread ------------------------------------------------------ */

/* Sends `count` request-shaped messages (cmd byte, u64 length, payload split
 * in two gather segments) or response-shaped ones. */
struct sender {
    struct ferry_conn *conn;
    const uint8_t *payload;
    size_t size;
    int count;
    uint8_t cmd;
    bool response; /* 8-byte length + one segment instead of a request */
    int rc;
    struct ferry_error err;
    pthread_t thread;
};

static int send_request(struct ferry_conn *c, uint8_t cmd, const uint8_t *payload, size_t size,
                        struct ferry_error *err) {
    uint8_t len[8];
    le_put(len, size, 8);
    struct iovec hdr[2] = {{&cmd, 1}, {len, 8}};
    size_t half = size / 2;
    struct iovec body[2] = {{(void *)payload, half}, {(void *)(payload + half), size - half}};
    return ferry_conn_send(c, hdr, 2, body, 2, err);
}

static int send_response(struct ferry_conn *c, const uint8_t *payload, size_t size,
                         struct ferry_error *err) {
    uint8_t len[8];
    le_put(len, size, 8);
    struct iovec hdr = {len, 8}, body = {(void *)payload, size};
    return ferry_conn_send(c, &hdr, 1, &body, 1, err);
}

static void *sender_main(void *arg) {
    struct sender *s = arg;
    s->rc = FERRY_OK;
    for (int i = 0; i < s->count && s->rc == FERRY_OK; i++)
        s->rc = s->response ? send_response(s->conn, s->payload, s->size, &s->err)
                            : send_request(s->conn, s->cmd, s->payload, s->size, &s->err);
    return NULL;
}

static void sender_start(struct sender *s) { pthread_create(&s->thread, NULL, sender_main, s); }
static void sender_join(struct sender *s) { pthread_join(s->thread, NULL); }

/* ---- round trips ----------------------------------------------------------- */

static void test_round_trip(size_t size) {
    struct pair p;
    if (!pair_open(&p)) return;
    uint8_t *src = malloc(size ? size : 1), *dst = malloc(size ? size : 1);
    fill_pattern(src, size, size);
    memset(dst, 0xEE, size);

    struct sender s = {.conn = p.client, .payload = src, .size = size, .count = 1, .cmd = 6};
    sender_start(&s);
    struct ferry_error err = {0};
    uint8_t hdr[9];
    int rc = ferry_conn_recv_header(p.server, hdr, sizeof hdr, &err);
    CHECK(rc == FERRY_OK, "size %zu: recv_header: %s", size, err.msg);
    if (rc == FERRY_OK) {
        CHECK(hdr[0] == 6, "size %zu: cmd %d", size, hdr[0]);
        CHECK(le_get(hdr + 1, 8) == size, "size %zu: length %llu", size,
              (unsigned long long)le_get(hdr + 1, 8));
        rc = ferry_conn_recv_payload(p.server, dst, size, &err);
        CHECK(rc == FERRY_OK, "size %zu: recv_payload: %s", size, err.msg);
        size_t bad = 0;
        for (size_t i = 0; i < size; i++) bad += src[i] != dst[i];
        CHECK(bad == 0, "size %zu: %zu bytes differ", size, bad);
    }
    sender_join(&s);
    CHECK(s.rc == FERRY_OK, "size %zu: send: %s", size, s.err.msg);

    /* and back: a response-shaped message (8-byte length, one segment),
     * received straight into a fresh buffer */
    struct sender back = {.conn = p.server, .payload = dst, .size = size, .count = 1,
                          .response = true};
    sender_start(&back);
    uint8_t got[8];
    uint8_t *echo = malloc(size ? size : 1);
    rc = ferry_conn_recv_header(p.client, got, 8, &err);
    CHECK(rc == FERRY_OK && le_get(got, 8) == size, "size %zu: response header: %s", size,
          err.msg);
    if (rc == FERRY_OK) {
        rc = ferry_conn_recv_payload(p.client, echo, size, &err);
        CHECK(rc == FERRY_OK && memcmp(echo, src, size) == 0, "size %zu: response payload: %s",
              size, err.msg);
    }
    sender_join(&back);
    CHECK(back.rc == FERRY_OK, "size %zu: response send: %s", size, back.err.msg);
    free(echo);
    free(src);
    free(dst);
    pair_close(&p);
}

/* ---- discard --------------------------------------------------------------- */

static void test_discard(void) {
    struct pair p;
    if (!pair_open(&p)) return;
    enum { N = 100000 };
    uint8_t *a = malloc(N), *b = malloc(N);
    fill_pattern(a, N, 1);
    struct ferry_error err = {0};
    struct sender s = {.conn = p.client, .payload = a, .size = N, .count = 2, .cmd = 3};
    sender_start(&s);
    uint8_t hdr[9];
    CHECK(ferry_conn_recv_header(p.server, hdr, 9, &err) == FERRY_OK, "hdr 1: %s", err.msg);
    CHECK(ferry_conn_discard(p.server, N, N - 1, &err) == FERRY_ERR_INVALID,
          "discard above its bound is refused");
    CHECK(ferry_conn_discard(p.server, N, N, &err) == FERRY_OK, "discard: %s", err.msg);
    CHECK(ferry_conn_recv_header(p.server, hdr, 9, &err) == FERRY_OK, "hdr 2: %s", err.msg);
    CHECK(hdr[0] == 3 && le_get(hdr + 1, 8) == N, "second header intact after discard");
    CHECK(ferry_conn_recv_payload(p.server, b, N, &err) == FERRY_OK, "payload 2: %s", err.msg);
    CHECK(memcmp(a, b, N) == 0, "payload after discard intact");
    sender_join(&s);
    CHECK(s.rc == FERRY_OK, "send: %s", s.err.msg);
    free(a);
    free(b);
    pair_close(&p);
}

/* ---- peers that close or stall ---------------------------------------------- */

static int send_raw(struct ferry_conn *c, const void *p, size_t n) {
    struct iovec v = {(void *)p, n};
    struct ferry_error err;
    return ferry_conn_send(c, &v, 1, NULL, 0, &err);
}

static void test_closed_mid_frame(void) {
    uint8_t hdr[9] = {6}, buf[100];
    le_put(hdr + 1, 100, 8);
    struct ferry_error err = {0};
    struct pair p;

    /* header complete, payload cut short */
    if (!pair_open(&p)) return;
    send_raw(p.client, hdr, 9);
    send_raw(p.client, buf, 10);
    ferry_conn_close(p.client);
    p.client = NULL;
    CHECK(ferry_conn_recv_header(p.server, hdr, 9, &err) == FERRY_OK, "hdr: %s", err.msg);
    int rc = ferry_conn_recv_payload(p.server, buf, 100, &err);
    CHECK(rc == FERRY_ERR_CLOSED, "closed mid-payload: got %s (%s)", ferry_status_name(rc),
          err.msg);
    pair_close(&p);

    /* header cut short */
    if (!pair_open(&p)) return;
    send_raw(p.client, hdr, 4);
    ferry_conn_close(p.client);
    p.client = NULL;
    rc = ferry_conn_recv_header(p.server, hdr, 9, &err);
    CHECK(rc == FERRY_ERR_CLOSED, "closed mid-header: got %s", ferry_status_name(rc));
    pair_close(&p);

    /* closed between frames */
    if (!pair_open(&p)) return;
    ferry_conn_close(p.client);
    p.client = NULL;
    rc = ferry_conn_recv_header(p.server, hdr, 9, &err);
    CHECK(rc == FERRY_ERR_CLOSED, "closed between frames: got %s", ferry_status_name(rc));
    pair_close(&p);
}

static void test_stalls(void) {
    const struct ferry_conn_timeouts quick = {.idle_ms = 200, .frame_ms = 200};
    uint8_t hdr[9] = {6}, buf[100];
    le_put(hdr + 1, 100, 8);
    struct ferry_error err = {0};
    struct pair p;

    /* nothing at all: the idle timeout */
    if (!pair_open(&p)) return;
    ferry_conn_set_timeouts(p.server, quick);
    int rc = ferry_conn_recv_header(p.server, hdr, 9, &err);
    CHECK(rc == FERRY_ERR_TIMEOUT, "idle: got %s", ferry_status_name(rc));
    pair_close(&p);

    /* a payload read with no header before it is bounded by the frame timeout */
    if (!pair_open(&p)) return;
    ferry_conn_set_timeouts(p.server, (struct ferry_conn_timeouts){.idle_ms = 0, .frame_ms = 200});
    rc = ferry_conn_recv_payload(p.server, buf, 10, &err);
    CHECK(rc == FERRY_ERR_TIMEOUT, "payload without header: got %s", ferry_status_name(rc));
    pair_close(&p);

    /* header, then silence: the frame timeout */
    if (!pair_open(&p)) return;
    ferry_conn_set_timeouts(p.server, (struct ferry_conn_timeouts){.idle_ms = 0, .frame_ms = 200});
    send_raw(p.client, hdr, 9);
    send_raw(p.client, buf, 10);
    CHECK(ferry_conn_recv_header(p.server, hdr, 9, &err) == FERRY_OK, "hdr: %s", err.msg);
    rc = ferry_conn_recv_payload(p.server, buf, 100, &err);
    CHECK(rc == FERRY_ERR_TIMEOUT, "stalled payload: got %s", ferry_status_name(rc));
    pair_close(&p);

    /* half a header, then silence: the frame clock runs from its first byte */
    if (!pair_open(&p)) return;
    ferry_conn_set_timeouts(p.server, (struct ferry_conn_timeouts){.idle_ms = 0, .frame_ms = 200});
    send_raw(p.client, hdr, 3);
    rc = ferry_conn_recv_header(p.server, hdr, 9, &err);
    CHECK(rc == FERRY_ERR_TIMEOUT, "stalled header: got %s", ferry_status_name(rc));
    pair_close(&p);

    /* a peer that never reads: the send gives up at the frame timeout */
    if (!pair_open(&p)) return;
    ferry_conn_set_timeouts(p.client, quick);
    size_t big = (size_t)64 << 20;
    uint8_t *src = calloc(1, big);
    rc = send_request(p.client, 6, src, big, &err);
    CHECK(rc == FERRY_ERR_TIMEOUT, "send to a non-reader: got %s", ferry_status_name(rc));
    free(src);
    pair_close(&p);
}

static void test_vanished_peer(void) {
    /* SIGPIPE at its default (kill) disposition: only MSG_NOSIGNAL saves us */
    signal(SIGPIPE, SIG_DFL);
    struct pair p;
    if (!pair_open(&p)) return;
    ferry_conn_close(p.server);
    p.server = NULL;
    static uint8_t chunk[65536];
    int rc = FERRY_OK;
    struct ferry_error err = {0};
    /* the first writes may still be accepted locally; the RST ends it */
    for (int i = 0; i < 200 && rc == FERRY_OK; i++) {
        rc = send_request(p.client, 6, chunk, sizeof chunk, &err);
        if (rc == FERRY_OK) usleep(1000);
    }
    CHECK(rc == FERRY_ERR_CLOSED || rc == FERRY_ERR_IO, "write to vanished peer: got %s (%s)",
          ferry_status_name(rc), err.msg);
    pair_close(&p);
}

/* ---- listener, connect, endpoints ------------------------------------------ */

static void test_listener(void) {
    struct ferry_error err = {0};
    struct ferry_listener *l = NULL;
    CHECK(ferry_tcp_listen("localhost", 0, &l, &err) == FERRY_OK, "listen localhost: %s",
          err.msg);
    if (!l) return;
    int port = ferry_listener_port(l);
    CHECK(port > 0 && port < 65536, "ephemeral port %d", port);
    CHECK(ferry_listener_fd(l) >= 0, "listener fd");
    struct ferry_conn *c = NULL;
    int rc = ferry_listener_accept(l, 0, &c, &err);
    CHECK(rc == FERRY_ERR_TIMEOUT, "accept with no client: %s", ferry_status_name(rc));
    rc = ferry_listener_accept(l, 50, &c, &err);
    CHECK(rc == FERRY_ERR_TIMEOUT, "accept(50 ms) with no client: %s", ferry_status_name(rc));

    /* several clients queue in the backlog (ggml's is 1) */
    struct ferry_conn *cl[4] = {0}, *sv[4] = {0};
    for (int i = 0; i < 4; i++)
        CHECK(ferry_tcp_connect("127.0.0.1", port, 2000, &cl[i], &err) == FERRY_OK,
              "connect %d: %s", i, err.msg);
    for (int i = 0; i < 4; i++)
        CHECK(ferry_listener_accept(l, 2000, &sv[i], &err) == FERRY_OK, "accept %d: %s", i,
              err.msg);
    if (cl[0] && sv[0]) {
        CHECK(strncmp(ferry_conn_name(sv[0]), "tcp 127.0.0.1:", 14) == 0, "name '%s'",
              ferry_conn_name(sv[0]));
        CHECK(strcmp(ferry_conn_peer(sv[0]), ferry_conn_local(cl[0])) == 0,
              "server's peer %s is the client's local %s", ferry_conn_peer(sv[0]),
              ferry_conn_local(cl[0]));
        char want[32];
        snprintf(want, sizeof want, "127.0.0.1:%d", port);
        CHECK(strcmp(ferry_conn_peer(cl[0]), want) == 0, "client's peer %s",
              ferry_conn_peer(cl[0]));
        CHECK(ferry_conn_fd(cl[0]) >= 0, "conn fd");
        void *h = (void *)1;
        uint8_t caps[24];
        size_t n = 99;
        CHECK(ferry_conn_reg_mem(cl[0], caps, sizeof caps, &h, &err) == FERRY_OK && h == NULL,
              "tcp reg_mem is a no-op");
        ferry_conn_unreg_mem(cl[0], h);
        CHECK(ferry_conn_local_caps(cl[0], caps, sizeof caps, &n, &err) == FERRY_OK && n == 0,
              "tcp offers no capability bytes");
        CHECK(ferry_conn_peer_caps(cl[0], caps, sizeof caps, &err) == FERRY_OK, "peer_caps");
        CHECK(ferry_conn_confirm(cl[0], false, &err) == FERRY_OK, "confirm");
    }
    for (int i = 0; i < 4; i++) {
        ferry_conn_close(cl[i]);
        ferry_conn_close(sv[i]);
    }
    ferry_listener_close(l);

    /* the port is free now: nobody listens there */
    rc = ferry_tcp_connect("127.0.0.1", port, 2000, &c, &err);
    CHECK(rc == FERRY_ERR_REFUSED, "connect to a closed port: %s (%s)", ferry_status_name(rc),
          err.msg);
    rc = ferry_tcp_connect("127.0.0.1", 0, 2000, &c, &err);
    CHECK(rc == FERRY_ERR_INVALID, "connect to port 0: %s", ferry_status_name(rc));
    rc = ferry_tcp_listen("example.com", 0, &l, &err);
    CHECK(rc == FERRY_ERR_INVALID, "listen on a hostname: %s", ferry_status_name(rc));
    rc = ferry_tcp_connect("my-server", 50052, 2000, &c, &err);
    CHECK(rc == FERRY_ERR_INVALID, "connect to a hostname: %s", ferry_status_name(rc));
}

static void test_endpoints(void) {
    struct ferry_error err = {0};
    char host[64];
    int port = -1;
    CHECK(ferry_net_parse_endpoint("127.0.0.1:50052", host, sizeof host, &port, &err) == FERRY_OK &&
              strcmp(host, "127.0.0.1") == 0 && port == 50052,
          "plain endpoint: %s", err.msg);
    CHECK(ferry_net_parse_endpoint("localhost:0", host, sizeof host, &port, &err) == FERRY_OK &&
              strcmp(host, "localhost") == 0 && port == 0,
          "localhost:0: %s", err.msg);
    CHECK(ferry_net_parse_endpoint("0.0.0.0:65535", host, sizeof host, &port, &err) == FERRY_OK &&
              port == 65535,
          "0.0.0.0:65535: %s", err.msg);
    static const char *bad[] = {
        "", "127.0.0.1", ":50052", "127.0.0.1:", "127.0.0.1:abc", "127.0.0.1:65536",
        "127.0.0.1:-1", "127.0.0.1:5 ", "example.com:50052", "1.2.3:5", "256.1.1.1:5",
        "1.2.3.4.5:6", "::1:50052", "[::1]:50052", "1..2.3:4", "01234.1.1.1:5",
        "127.0.0.1:99999999999999999999",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.msg[0] = '\0';
        int rc = ferry_net_parse_endpoint(bad[i], host, sizeof host, &port, &err);
        CHECK(rc == FERRY_ERR_INVALID && err.msg[0] != '\0', "'%s' refused with a reason: %s",
              bad[i], err.msg);
    }
    ferry_net_parse_endpoint("example.com:1", host, sizeof host, &port, &err);
    CHECK(strstr(err.msg, "example.com") != NULL, "reason names the host: %s", err.msg);
}

/* ---- arguments and statistics ---------------------------------------------- */

static void test_stats(void) {
    struct pair p;
    if (!pair_open(&p)) return;
    struct ferry_error err = {0};
    ferry_conn_reset_stats(p.client);
    ferry_conn_reset_stats(p.server);
    enum { N = 5, SIZE = 3000 };
    uint8_t payload[SIZE], in[SIZE], hdr[9];
    fill_pattern(payload, SIZE, 9);
    for (int i = 0; i < N; i++)
        CHECK(send_request(p.client, 1, payload, SIZE, &err) == FERRY_OK, "send %d: %s", i,
              err.msg);
    for (int i = 0; i < N; i++) {
        CHECK(ferry_conn_recv_header(p.server, hdr, 9, &err) == FERRY_OK, "hdr %d", i);
        CHECK(ferry_conn_recv_payload(p.server, in, SIZE, &err) == FERRY_OK, "payload %d", i);
    }
    const struct ferry_conn_stats *cs = ferry_conn_stats(p.client);
    const struct ferry_conn_stats *ss = ferry_conn_stats(p.server);
    CHECK(cs->msgs_sent == N && cs->msgs_recv == 0, "client msgs %llu/%llu",
          (unsigned long long)cs->msgs_sent, (unsigned long long)cs->msgs_recv);
    CHECK(cs->bytes_out == N * (9 + SIZE) && cs->bytes_in == 0, "client bytes out %llu",
          (unsigned long long)cs->bytes_out);
    CHECK(cs->syscalls >= N && cs->syscalls <= 4 * N, "one write per small message: %llu",
          (unsigned long long)cs->syscalls);
    CHECK(ss->msgs_recv == N && ss->msgs_sent == 0, "server msgs %llu",
          (unsigned long long)ss->msgs_recv);
    CHECK(ss->bytes_in == N * (9 + SIZE) && ss->bytes_out == 0, "server bytes in %llu",
          (unsigned long long)ss->bytes_in);
    /* the only bytes copied are the few a header read took ahead of time */
    CHECK(cs->copies == 0 && ss->copies <= (uint64_t)N * FERRY_CONN_READAHEAD, "copies: client %llu, server %llu",
          (unsigned long long)cs->copies, (unsigned long long)ss->copies);
    CHECK(ss->syscalls >= 2 * N, "server syscalls %llu", (unsigned long long)ss->syscalls);

    /* small requests already there: header and payload come from one receive */
    ferry_conn_reset_stats(p.server);
    for (int i = 0; i < N; i++)
        CHECK(send_request(p.client, 2, payload, 4, &err) == FERRY_OK, "small send %d", i);
    for (int i = 0; i < N; i++) {
        CHECK(ferry_conn_recv_header(p.server, hdr, 9, &err) == FERRY_OK, "small hdr %d", i);
        CHECK(ferry_conn_recv_payload(p.server, in, 4, &err) == FERRY_OK && !memcmp(in, payload, 4),
              "small payload %d", i);
    }
    CHECK(ss->syscalls <= N && ss->msgs_recv == N, "small requests: %llu receive calls for %d",
          (unsigned long long)ss->syscalls, N);

    /* too many segments is an argument error, and nothing is sent */
    struct iovec many[FERRY_CONN_MAX_IOV + 1];
    for (int i = 0; i <= FERRY_CONN_MAX_IOV; i++) many[i] = (struct iovec){payload, 1};
    CHECK(ferry_conn_send(p.client, many, 1, many + 1, FERRY_CONN_MAX_IOV, &err) ==
              FERRY_ERR_INVALID,
          "too many segments refused");
    CHECK(cs->msgs_sent == 2 * N, "refused send not counted");
    /* empty segments and an empty message are fine */
    struct iovec empties[3] = {{payload, 0}, {payload, 2}, {payload, 0}};
    CHECK(ferry_conn_send(p.client, empties, 3, NULL, 0, &err) == FERRY_OK, "empty segments");
    CHECK(ferry_conn_recv_header(p.server, in, 2, &err) == FERRY_OK, "2-byte header");
    pair_close(&p);
}

int main(void) {
    test_endpoints();
    test_listener();
    static const size_t sizes[] = {0, 1, 8192, (size_t)1 << 20, (size_t)64 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) test_round_trip(sizes[i]);
    test_discard();
    test_closed_mid_frame();
    test_stalls();
    test_vanished_peer();
    test_stats();
    return test_summary();
}
