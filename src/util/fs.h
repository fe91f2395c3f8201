/* Small file-system helpers shared by the layers above. */
#ifndef FERRY_UTIL_FS_H
#define FERRY_UTIL_FS_H

/* mkdir -p: creates dir and its missing parents (mode 0755). 0, or -1 with
 * errno set. */
int ferry_mkdir_p(const char *dir);

#endif
