/* Small file-system helpers (util/fs.h). */
#include "util/fs.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int ferry_mkdir_p(const char *dir) {
    char tmp[4096];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(tmp, dir, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

bool ferry_pread_all(int fd, void *buf, uint64_t n, uint64_t offset) {
    uint8_t *p = buf;
    for (uint64_t done = 0; done < n;) {
        /* in slices, so one call never asks the kernel for more than it takes */
        const size_t want = n - done > (8u << 20) ? (8u << 20) : (size_t)(n - done);
        ssize_t r = pread(fd, p + done, want, (off_t)(offset + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        done += (uint64_t)r;
    }
    return true;
}
