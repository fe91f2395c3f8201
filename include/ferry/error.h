/* ferry: error codes and the error value every fallible call fills in.
 *
 * Nothing in ferry aborts on bad input: a call returns a negative code and,
 * when the caller passes a struct ferry_error, a one-line reason. */
#ifndef FERRY_ERROR_H
#define FERRY_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

enum ferry_status {
    FERRY_OK = 0,
    FERRY_ERR_INVALID = -1,     /* malformed input: shapes, sizes, ids, indices */
    FERRY_ERR_UNSUPPORTED = -2, /* well-formed, but this engine cannot do it */
    FERRY_ERR_NOMEM = -3,
    FERRY_ERR_IO = -4,
    FERRY_ERR_PROTOCOL = -5,
    FERRY_ERR_TIMEOUT = -6,
    FERRY_ERR_CLOSED = -7,
    FERRY_ERR_REFUSED = -8,
};

struct ferry_error {
    int code;
    char msg[256];
};

/* Records code and a printf-style reason in err (which may be NULL) and
 * returns code, so callers can write `return ferry_fail(err, ...)`. */
int ferry_fail(struct ferry_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void ferry_error_clear(struct ferry_error *err);
const char *ferry_status_name(int code);

#ifdef __cplusplus
}
#endif
#endif
