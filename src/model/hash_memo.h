/* The client's memory of its model files' tensor hashes.
 *
 * Uploading through a server's cache means sending each weight's FNV-1a
 * first, and hashing a model costs about a second per GB. The hashes of a
 * file do not change while the file does not, so they are kept in
 * $XDG_CACHE_HOME/ferry/hashes (else ~/.cache/ferry/hashes), one small file
 * per model file, valid while the model's device, inode, size, mtime and
 * ctime are those recorded: a second load hashes nothing. A memo that is missing,
 * stale or damaged costs only the hashing. */
#ifndef FERRY_MODEL_HASH_MEMO_H
#define FERRY_MODEL_HASH_MEMO_H

#include <stdbool.h>
#include <stdint.h>

struct hash_memo;

/* The memo of the file at path (empty when there is none or it is stale);
 * NULL only without memory. */
struct hash_memo *hash_memo_open(const char *path);
/* The hash recorded for size bytes at offset of the file. */
bool hash_memo_get(const struct hash_memo *m, uint64_t offset, uint64_t size, uint64_t *hash);
void hash_memo_put(struct hash_memo *m, uint64_t offset, uint64_t size, uint64_t hash);
/* Writes the memo back if it gained entries (temp file and rename), frees it. */
void hash_memo_close(struct hash_memo *m);

#endif
