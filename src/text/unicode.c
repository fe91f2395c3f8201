/* UTF-8 decoding, character classes and GPT-2's byte mapping.
 *
 * The classes approximate Unicode's general categories without carrying
 * the full tables: ASCII is exact; above it, the ranges below list the
 * common non-letters (Latin-1 punctuation, General Punctuation, currency,
 * arrows, math, box drawing, dingbats, CJK punctuation, fullwidth forms,
 * emoji, combining marks, private use, the usual decimal digits of major
 * scripts, superscripts, fractions, Roman and circled numerals, and every
 * White_Space character). Anything not listed is taken as a letter, which
 * is right for the bulk of every alphabet and for CJK ideographs; the
 * known misses are rarer marks inside Indic and other scripts (letters
 * here, \p{M} in Unicode) and a few letter-like symbols. A miss only moves
 * a pre-token boundary; it never loses or alters a byte. */
#include "unicode.h"

size_t ferry_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t len;
    uint32_t c, min;
    if (b >= 0xC2 && b <= 0xDF) { len = 2; c = b & 0x1F; min = 0x80; }
    else if (b >= 0xE0 && b <= 0xEF) { len = 3; c = b & 0x0F; min = 0x800; }
    else if (b >= 0xF0 && b <= 0xF4) { len = 4; c = b & 0x07; min = 0x10000; }
    else goto invalid;
    if (len > n) goto invalid;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) goto invalid;
        c = c << 6 | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) goto invalid;
    *cp = c;
    return len;
invalid:
    *cp = FERRY_UTF8_INVALID;
    return 1;
}

size_t ferry_utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

bool ferry_utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        i += ferry_utf8_decode(s + i, n - i, &cp);
        if (cp == FERRY_UTF8_INVALID) return false;
    }
    return true;
}

struct urange {
    uint32_t lo, hi;
    uint8_t cls;
};

#define O FERRY_UC_OTHER
#define N FERRY_UC_NUMBER
#define S FERRY_UC_SPACE
/* Non-letter ranges above ASCII, sorted and disjoint. */
static const struct urange ranges[] = {
    { 0x80, 0x84, O }, { 0x85, 0x85, S }, { 0x86, 0x9F, O }, { 0xA0, 0xA0, S }, { 0xA1, 0xA9, O },
    { 0xAB, 0xB1, O }, { 0xB2, 0xB3, N }, { 0xB4, 0xB4, O }, { 0xB6, 0xB8, O }, { 0xB9, 0xB9, N },
    { 0xBB, 0xBB, O }, { 0xBC, 0xBE, N }, { 0xBF, 0xBF, O }, { 0xD7, 0xD7, O }, { 0xF7, 0xF7, O },
    { 0x2C2, 0x2C5, O }, { 0x2D2, 0x2DF, O }, { 0x2E5, 0x2EB, O }, { 0x2ED, 0x2ED, O },
    { 0x2EF, 0x36F, O }, /* modifier symbols, combining diacritics */
    { 0x375, 0x375, O }, { 0x37E, 0x37E, O }, { 0x384, 0x385, O }, { 0x387, 0x387, O },
    { 0x483, 0x489, O }, { 0x55A, 0x55F, O }, { 0x589, 0x58A, O }, { 0x591, 0x5C7, O },
    { 0x5F3, 0x5F4, O }, { 0x600, 0x61F, O }, { 0x64B, 0x65F, O }, { 0x660, 0x669, N },
    { 0x66A, 0x66D, O }, { 0x670, 0x670, O }, { 0x6D4, 0x6D4, O }, { 0x6D6, 0x6ED, O },
    { 0x6F0, 0x6F9, N }, { 0x7C0, 0x7C9, N }, { 0x900, 0x903, O }, { 0x93A, 0x93C, O },
    { 0x93E, 0x94F, O }, { 0x951, 0x957, O }, { 0x962, 0x965, O }, { 0x966, 0x96F, N },
    { 0x970, 0x970, O }, { 0x9E6, 0x9EF, N }, { 0xA66, 0xA6F, N }, { 0xAE6, 0xAEF, N },
    { 0xB66, 0xB6F, N }, { 0xBE6, 0xBF2, N }, { 0xC66, 0xC6F, N }, { 0xCE6, 0xCEF, N },
    { 0xD66, 0xD78, N }, { 0xE31, 0xE31, O }, { 0xE34, 0xE3A, O }, { 0xE3F, 0xE3F, O },
    { 0xE47, 0xE4F, O }, { 0xE50, 0xE59, N }, { 0xE5A, 0xE5B, O }, { 0xED0, 0xED9, N },
    { 0xF20, 0xF33, N }, { 0x1040, 0x1049, N }, { 0x1680, 0x1680, S }, { 0x17E0, 0x17E9, N },
    { 0x1810, 0x1819, N }, { 0x2000, 0x200A, S }, { 0x200B, 0x2027, O }, { 0x2028, 0x2029, S },
    { 0x202A, 0x202E, O }, { 0x202F, 0x202F, S }, { 0x2030, 0x205E, O }, { 0x205F, 0x205F, S },
    { 0x2060, 0x206F, O }, { 0x2070, 0x2070, N }, { 0x2074, 0x2079, N }, { 0x207A, 0x207E, O },
    { 0x2080, 0x2089, N }, { 0x208A, 0x208E, O }, { 0x20A0, 0x214F, O }, /* currency, letterlike */
    { 0x2150, 0x2182, N }, { 0x2185, 0x2189, N }, { 0x218A, 0x218B, O },
    { 0x2190, 0x245F, O }, /* arrows, math, technical */
    { 0x2460, 0x249B, N }, { 0x249C, 0x24E9, O }, { 0x24EA, 0x24FF, N },
    { 0x2500, 0x2775, O }, /* box drawing, shapes, dingbats */
    { 0x2776, 0x2793, N }, { 0x2794, 0x2BFF, O }, { 0x2CE5, 0x2CEA, O }, { 0x2CF9, 0x2CFF, O },
    { 0x2E00, 0x2FFF, O }, /* punctuation, CJK radicals */
    { 0x3000, 0x3000, S }, { 0x3001, 0x3004, O }, { 0x3007, 0x3007, N }, { 0x3008, 0x3020, O },
    { 0x3021, 0x3029, N }, { 0x302A, 0x3030, O }, { 0x3036, 0x3037, O }, { 0x3038, 0x303A, N },
    { 0x303D, 0x303F, O }, { 0x3099, 0x309C, O }, { 0x30A0, 0x30A0, O }, { 0x30FB, 0x30FB, O },
    { 0x3190, 0x3191, O }, { 0x3192, 0x3195, N }, { 0x3196, 0x319F, O }, { 0x31C0, 0x31E3, O },
    { 0x3200, 0x321E, O }, { 0x3220, 0x3229, N }, { 0x322A, 0x3247, O }, { 0x3248, 0x324F, N },
    { 0x3250, 0x3250, O }, { 0x3251, 0x325F, N }, { 0x3260, 0x327F, O }, { 0x3280, 0x3289, N },
    { 0x328A, 0x32B0, O }, { 0x32B1, 0x32BF, N }, { 0x32C0, 0x33FF, O }, { 0x4DC0, 0x4DFF, O },
    { 0xA490, 0xA4C6, O }, { 0xD800, 0xF8FF, O }, /* surrogates, private use */
    { 0xFB29, 0xFB29, O }, { 0xFD3E, 0xFD3F, O }, { 0xFE00, 0xFE6B, O }, /* selectors, small forms */
    { 0xFEFF, 0xFEFF, O }, { 0xFF01, 0xFF0F, O }, { 0xFF10, 0xFF19, N }, { 0xFF1A, 0xFF20, O },
    { 0xFF3B, 0xFF40, O }, { 0xFF5B, 0xFF65, O }, { 0xFFE0, 0xFFEE, O }, { 0xFFF9, 0xFFFD, O },
    { 0x1D7CE, 0x1D7FF, N }, { 0x1F000, 0x1FBFF, O }, /* emoji, symbols */
    { 0xE0000, 0xE01EF, O }, { 0xF0000, 0x10FFFF, O },
};
#undef O
#undef N
#undef S

enum ferry_uclass ferry_unicode_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return FERRY_UC_LETTER;
        if (cp >= '0' && cp <= '9') return FERRY_UC_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return FERRY_UC_SPACE;
        return FERRY_UC_OTHER;
    }
    if (cp > 0x10FFFF) return FERRY_UC_OTHER; /* invalid bytes, like U+FFFD */
    size_t lo = 0, hi = sizeof ranges / sizeof ranges[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < ranges[mid].lo) hi = mid;
        else if (cp > ranges[mid].hi) lo = mid + 1;
        else return (enum ferry_uclass)ranges[mid].cls;
    }
    return FERRY_UC_LETTER;
}

/* GPT-2 keeps '!'..'~', '¡'..'¬' and '®'..'ÿ' as themselves and moves the
 * 68 other bytes, in order, to U+0100.. so that every byte is printable. */
static bool byte_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

uint32_t ferry_byte_to_unicode(uint8_t b) {
    if (byte_printable(b)) return b;
    if (b <= 0x20) return 0x100u + b;
    if (b >= 0x7F && b <= 0xA0) return 0x100u + 0x21 + (b - 0x7Fu);
    return 0x143; /* 0xAD */
}

int ferry_unicode_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_printable(cp) ? (int)cp : -1;
    if (cp <= 0x120) return (int)(cp - 0x100);
    if (cp <= 0x142) return (int)(0x7F + (cp - 0x121));
    if (cp == 0x143) return 0xAD;
    return -1;
}
