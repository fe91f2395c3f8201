/* Small file-system helpers shared by the layers above. */
#ifndef FERRY_UTIL_FS_H
#define FERRY_UTIL_FS_H

#include <stdbool.h>
#include <stdint.h>

/* mkdir -p: creates dir and its missing parents (mode 0755). 0, or -1 with
 * errno set. */
int ferry_mkdir_p(const char *dir);

/* Reads n bytes at offset of fd into buf, through short reads and EINTR;
 * false on an error or end of file first. */
bool ferry_pread_all(int fd, void *buf, uint64_t n, uint64_t offset);

#endif
