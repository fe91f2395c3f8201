/* remote_add: adds two vectors on a ggml RPC server (ferry serve, or
 * llama.cpp's rpc-server) with libferry.   usage: remote_add HOST:PORT */
#include <ferry/client.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 2) return fprintf(stderr, "usage: remote_add HOST:PORT\n"), 2;
    struct ferry_client *c = NULL;
    struct ferry_error err;
    if (ferry_client_connect(argv[1], NULL, &c, &err) != FERRY_OK)
        return fprintf(stderr, "remote_add: %s\n", err.msg), 1;
    int64_t n = 8;
    float a[8], b[8], sum[8];
    for (int i = 0; i < n; i++) a[i] = i + 1, b[i] = 10 * (i + 1);
    struct ferry_tensor ta, tb, tsum, *graph[] = { &tsum };
    ferry_tensor_init(&ta, FERRY_TYPE_F32, 1, &n, NULL);
    ferry_tensor_init(&tb, FERRY_TYPE_F32, 1, &n, NULL);
    ferry_tensor_init(&tsum, FERRY_TYPE_F32, 1, &n, NULL);
    tsum.op = FERRY_OP_ADD, tsum.src[0] = &ta, tsum.src[1] = &tb;
    tsum.flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
    struct ferry_remote_buffer buf; /* one buffer, a tensor every 256 bytes */
    int rc = ferry_client_alloc_buffer(c, 0, 3 * 256, &buf, &err);
    if (!rc) rc = ferry_remote_tensor_place(&ta, &buf, 0, &err);
    if (!rc) rc = ferry_remote_tensor_place(&tb, &buf, 256, &err);
    if (!rc) rc = ferry_remote_tensor_place(&tsum, &buf, 512, &err);
    if (!rc) rc = ferry_client_set_tensor(c, &ta, 0, a, sizeof a, &err);
    if (!rc) rc = ferry_client_set_tensor(c, &tb, 0, b, sizeof b, &err);
    if (!rc) rc = ferry_client_graph_compute(c, 0, graph, 1, &err);
    if (!rc) rc = ferry_client_get_tensor(c, &tsum, 0, sum, sizeof sum, &err);
    int bad = rc != FERRY_OK;
    if (bad) fprintf(stderr, "remote_add: %s\n", err.msg);
    else printf("a + b =");
    for (int i = 0; i < n && !bad; i++) printf(" %g", sum[i]), bad |= sum[i] != a[i] + b[i];
    if (!rc) printf("%s\n", bad ? " WRONG" : " ok");
    ferry_client_close(c); /* frees the server's buffer with the connection */
    return bad;
}
