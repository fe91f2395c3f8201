#include <stdarg.h>
#include <stdio.h>

#include "ferry/error.h"

int ferry_fail(struct ferry_error *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void ferry_error_clear(struct ferry_error *err) {
    if (err) {
        err->code = FERRY_OK;
        err->msg[0] = '\0';
    }
}

const char *ferry_status_name(int code) {
    switch (code) {
    case FERRY_OK: return "ok";
    case FERRY_ERR_INVALID: return "invalid";
    case FERRY_ERR_UNSUPPORTED: return "unsupported";
    case FERRY_ERR_NOMEM: return "out of memory";
    case FERRY_ERR_IO: return "i/o error";
    case FERRY_ERR_PROTOCOL: return "protocol error";
    case FERRY_ERR_TIMEOUT: return "timeout";
    case FERRY_ERR_CLOSED: return "connection closed";
    case FERRY_ERR_REFUSED: return "refused";
    default: return "unknown error";
    }
}
