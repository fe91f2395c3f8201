/* ferry's error replies: the HELLO caps mark that asks for them and the
 * reply itself (docs/protocol-extensions.md, FERRY_EXT_ERRORS). */
#include <stdbool.h>
#include <string.h>

#include "proto/rpc.h"

static const uint8_t caps_magic[4] = { 'F', 'R', 'R', 'Y' };

void ferry_rpc_caps_mark(uint8_t caps[FERRY_RPC_CONN_CAPS_SIZE], uint32_t features) {
    if (ferry_get_le32(caps) != 0) return; /* an RDMA offer: bytes 8..23 are its GID */
    memcpy(caps + 8, caps_magic, sizeof caps_magic);
    ferry_put_le32(caps + 12, features);
}

uint32_t ferry_rpc_caps_features(const uint8_t caps[FERRY_RPC_CONN_CAPS_SIZE]) {
    if (ferry_get_le32(caps) != 0 || memcmp(caps + 8, caps_magic, sizeof caps_magic) != 0) return 0;
    return ferry_get_le32(caps + 12);
}

void ferry_rpc_printable(const uint8_t *in, size_t n, char *out, size_t cap) {
    if (cap == 0) return;
    size_t o = 0, i = 0;
    for (; i < n && in[i] != '\r' && in[i] != '\n' && o + 1 < cap; i++)
        out[o++] = in[i] >= 0x20 && in[i] < 0x7f ? (char)in[i] : '.';
    out[o] = '\0';
    bool cut = i < n && in[i] != '\r' && in[i] != '\n';
    if (cut && o >= 3) memcpy(out + o - 3, "...", 4);
}

size_t ferry_rpc_encode_error(uint32_t code, const char *reason, uint8_t *out, size_t cap) {
    if (cap < FERRY_RPC_ERROR_HEADER_SIZE) return 0;
    size_t room = cap - FERRY_RPC_ERROR_HEADER_SIZE;
    if (room > FERRY_RPC_ERROR_MAX_REASON) room = FERRY_RPC_ERROR_MAX_REASON;
    char text[FERRY_RPC_ERROR_MAX_REASON + 1];
    size_t n = reason ? strlen(reason) : 0;
    ferry_rpc_printable((const uint8_t *)(reason ? reason : ""), n, text, room + 1 < sizeof text ? room + 1 : sizeof text);
    size_t len = strlen(text);
    ferry_put_le64(out, FERRY_RPC_ERROR_MARK);
    ferry_put_le32(out + 8, code);
    ferry_put_le32(out + 12, (uint32_t)len);
    memcpy(out + FERRY_RPC_ERROR_HEADER_SIZE, text, len);
    return FERRY_RPC_ERROR_HEADER_SIZE + len;
}

int ferry_rpc_decode_error(const uint8_t p[8], uint32_t *code, uint32_t *len, struct ferry_error *err) {
    *code = ferry_get_le32(p);
    *len = ferry_get_le32(p + 4);
    if (*len > FERRY_RPC_ERROR_MAX_REASON)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "error reply with a %u-byte reason (max %d)", *len,
                          FERRY_RPC_ERROR_MAX_REASON);
    return FERRY_OK;
}

const char *ferry_rpc_error_name(uint32_t code) {
    switch (code) {
    case FERRY_RPC_ERROR_BUSY: return "busy";
    case FERRY_RPC_ERROR_PEER_LIMIT: return "peer limit";
    case FERRY_RPC_ERROR_REQUEST: return "request refused";
    case FERRY_RPC_ERROR_EVICTED: return "evicted";
    case FERRY_RPC_ERROR_TIMEOUT: return "idle timeout";
    default: return "error";
    }
}
