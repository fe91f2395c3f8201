/* Each line is formatted whole and written with one write(2), so lines
 * from different threads never interleave. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ferry/log.h"

static atomic_int current_level = FERRY_LOG_INFO;

void ferry_log_set_level(enum ferry_log_level level) { atomic_store(&current_level, (int)level); }
enum ferry_log_level ferry_log_get_level(void) { return (enum ferry_log_level)atomic_load(&current_level); }

static const char *const names[] = { "error", "warn", "info", "debug" };

int ferry_log_parse_level(const char *name, enum ferry_log_level *out) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) {
            *out = (enum ferry_log_level)i;
            return 1;
        }
    return 0;
}

void ferry_log(enum ferry_log_level level, const char *fmt, ...) {
    if ((int)level > atomic_load(&current_level)) return;
    char line[1024];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %-5s ", tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, names[level < 0 || level > 3 ? 0 : level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
