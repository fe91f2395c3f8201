/* UTF-8 and the few Unicode facts the tokenizers need: decoding, the
 * letter / number / whitespace classes of the BPE pre-tokenizers, and
 * GPT-2's byte <-> printable-character mapping. */
#ifndef FERRY_UNICODE_H
#define FERRY_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Character classes as the pre-tokenizer regexes see them. */
enum ferry_uclass {
    FERRY_UC_OTHER = 0,  /* punctuation, symbols, marks, controls, invalid bytes */
    FERRY_UC_LETTER = 1, /* \p{L} */
    FERRY_UC_NUMBER = 2, /* \p{N} */
    FERRY_UC_SPACE = 3,  /* \s (the White_Space property) */
};

#define FERRY_UTF8_INVALID 0xFFFFFFFFu

/* Decodes the character at s[0..n) (n >= 1). Returns its length in bytes;
 * an invalid or truncated sequence (overlong, surrogate, > U+10FFFF)
 * counts as one byte with *cp = FERRY_UTF8_INVALID. */
size_t ferry_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
/* Writes cp (<= U+10FFFF) as UTF-8; returns 1..4. */
size_t ferry_utf8_encode(uint32_t cp, uint8_t out[4]);
bool ferry_utf8_valid(const uint8_t *s, size_t n);

/* Exact for ASCII; beyond it a table of common number, whitespace and
 * punctuation/symbol/mark ranges, everything else counted as a letter
 * (see unicode.c). FERRY_UTF8_INVALID is OTHER, like U+FFFD. */
enum ferry_uclass ferry_unicode_class(uint32_t cp);

/* GPT-2's bytes_to_unicode: every byte as one printable code point
 * (< 0x144). ferry_unicode_to_byte inverts it: -1 for other code points. */
uint32_t ferry_byte_to_unicode(uint8_t b);
int ferry_unicode_to_byte(uint32_t cp);

#endif
