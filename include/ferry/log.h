/* ferry: leveled logging to stderr, one line per event, thread-safe. */
#ifndef FERRY_LOG_H
#define FERRY_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

enum ferry_log_level {
    FERRY_LOG_ERROR = 0,
    FERRY_LOG_WARN = 1,
    FERRY_LOG_INFO = 2,
    FERRY_LOG_DEBUG = 3,
};

void ferry_log_set_level(enum ferry_log_level level);
enum ferry_log_level ferry_log_get_level(void);
/* "error", "warn", "info", "debug"; false for anything else. */
int ferry_log_parse_level(const char *name, enum ferry_log_level *out);

void ferry_log(enum ferry_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ferry_log_error(...) ferry_log(FERRY_LOG_ERROR, __VA_ARGS__)
#define ferry_log_warn(...) ferry_log(FERRY_LOG_WARN, __VA_ARGS__)
#define ferry_log_info(...) ferry_log(FERRY_LOG_INFO, __VA_ARGS__)
#define ferry_log_debug(...) ferry_log(FERRY_LOG_DEBUG, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
