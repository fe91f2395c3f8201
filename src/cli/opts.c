/* ferry: the table-driven option parser (opts.h). */
#include "cli/opts.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/client.h"
#include "ferry/log.h"
#include "ferry/version.h"
#include "proto/rpc.h"

#define HELP_COL 28 /* where the help text of an option starts */

static bool is_end(const struct opt *o) { return o->names == NULL && o->help == NULL; }

/* Does `word` (its first len bytes) spell one of the names "-a|--bb|..."? */
static bool spells(const char *names, const char *word, size_t len) {
    for (const char *p = names; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && !strncmp(p, word, len)) return true;
        p = bar ? bar + 1 : NULL;
    }
    return false;
}

struct opt *opts_find(const struct opts_cmd *cmd, const char *name) {
    for (struct opt *o = cmd->opts; !is_end(o); o++)
        if (o->kind != OPT_SECTION && spells(o->names, name, strlen(name))) return o;
    return NULL;
}

int opts_usage_error(const struct opts_cmd *cmd, const char *fmt, ...) {
    fprintf(stderr, "ferry %s: ", cmd->name);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (ferry %s --help)\n", cmd->name);
    return EXIT_USAGE;
}

void opts_print_version(FILE *out) {
    fprintf(out, "ferry %s (ggml RPC protocol %d.%d.%d)\n", FERRY_VERSION_STRING, FERRY_RPC_VERSION_MAJOR,
            FERRY_RPC_VERSION_MINOR, FERRY_RPC_VERSION_PATCH);
}

static int bad_number(const struct opts_cmd *cmd, const char *name, const char *v, const char *what,
                      double lo, double hi) {
    if (hi > 0)
        return opts_usage_error(cmd, "%s: '%s' is not %s in [%.15g, %.15g]", name, v, what, lo, hi);
    return opts_usage_error(cmd, "%s: '%s' is not %s >= %.15g", name, v, what, lo);
}

/* Stores value into the option's destination; 0, or EXIT_USAGE after a message. */
static int store(const struct opts_cmd *cmd, struct opt *o, const char *name, const char *v) {
    char *end;
    errno = 0;
    switch (o->kind) {
    case OPT_INT: {
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end || x < o->lo || x > o->hi)
            return bad_number(cmd, name, v, "an integer", o->lo, o->hi);
        *(int *)o->dest = (int)x;
        return 0;
    }
    case OPT_U64: {
        bool hex = v[0] == '0' && (v[1] == 'x' || v[1] == 'X');
        unsigned long long x = strtoull(v, &end, hex ? 16 : 10);
        if (errno || end == v || *end || v[0] == '-' || (double)x < o->lo || (o->hi > 0 && (double)x > o->hi))
            return bad_number(cmd, name, v, "an integer", o->lo, o->hi);
        *(uint64_t *)o->dest = x;
        return 0;
    }
    case OPT_FLOAT: {
        double x = strtod(v, &end);
        if (errno || end == v || *end || !(x >= o->lo && x <= o->hi))
            return bad_number(cmd, name, v, "a number", o->lo, o->hi);
        *(float *)o->dest = (float)x;
        return 0;
    }
    case OPT_STRING:
        *(const char **)o->dest = v;
        return 0;
    case OPT_FN:
        return o->fn(cmd->name, name, v, o->dest) ? EXIT_USAGE : 0;
    default:
        return 0;
    }
}

int opts_parse(const struct opts_cmd *cmd, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            opts_help(cmd, stdout);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            opts_print_version(stdout);
            return 0;
        }
        /* --name=value: the name is what comes before '=' */
        const char *eq = a[0] == '-' && a[1] == '-' ? strchr(a, '=') : NULL;
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        struct opt *o = cmd->opts;
        while (!is_end(o) && (o->kind == OPT_SECTION || !spells(o->names, a, len))) o++;
        if (is_end(o)) {
            if (a[0] != '-') return opts_usage_error(cmd, "unexpected argument '%s'", a);
            return opts_usage_error(cmd, "unknown option '%.*s'", (int)len, a);
        }
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)len, a);
        o->seen++;
        if (o->kind == OPT_FLAG) {
            if (eq) return opts_usage_error(cmd, "%s takes no value", name);
            *(bool *)o->dest = true;
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!eq && i + 1 < argc) {
            const char *next = argv[i + 1];
            /* an optional value is left out when the next word is an option */
            bool is_opt = next[0] == '-' && next[1] != '\0' && !(next[1] >= '0' && next[1] <= '9');
            if (!(o->optional && is_opt)) v = argv[++i];
        }
        if (v == NULL) {
            if (o->optional) continue;
            return opts_usage_error(cmd, "%s needs a value (%s)", name, o->arg ? o->arg : "VALUE");
        }
        if (!*v && !o->allow_empty) return opts_usage_error(cmd, "%s: empty value", name);
        int rc = store(cmd, o, name, v);
        if (rc) return rc;
    }
    return -1;
}

/* "-t|--threads" and "N" as "-t, --threads N"; a name without a short
 * spelling is indented to line up with the long ones. */
static int format_names(const struct opt *o, char *buf, size_t cap) {
    size_t n = 0;
    bool first = true;
    for (const char *p = o->names; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (first && p[1] == '-') n += (size_t)snprintf(buf + n, cap - n, "    ");
        n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "%s%.*s", first ? "" : ", ", (int)len, p);
        first = false;
        p = bar ? bar + 1 : NULL;
        if (n >= cap) break;
    }
    if (o->arg && n < cap) n += (size_t)snprintf(buf + n, cap - n, o->optional ? " [%s]" : " %s", o->arg);
    return n < cap ? (int)n : (int)cap - 1;
}

static void print_help_text(FILE *out, const char *help, int col) {
    for (const char *p = help; p && *p;) {
        const char *nl = strchr(p, '\n');
        int len = nl ? (int)(nl - p) : (int)strlen(p);
        fprintf(out, "%.*s\n", len, p);
        if (!nl) break;
        p = nl + 1;
        fprintf(out, "%*s", col, "");
    }
}

void opts_help(const struct opts_cmd *cmd, FILE *out) {
    fprintf(out, "usage: ferry %s\n", cmd->usage);
    if (cmd->about) fprintf(out, "%s\n", cmd->about);
    fprintf(out, "\n");
    for (const struct opt *o = cmd->opts; !is_end(o); o++) {
        if (o->kind == OPT_SECTION) {
            fprintf(out, "%s%s:\n", o == cmd->opts ? "" : "\n", o->help);
            continue;
        }
        char names[96];
        int n = format_names(o, names, sizeof names);
        fprintf(out, "  %s", names);
        if (n + 2 >= HELP_COL - 1) fprintf(out, "\n%*s", HELP_COL, "");
        else fprintf(out, "%*s", HELP_COL - 2 - n, "");
        print_help_text(out, o->help, HELP_COL);
    }
    fprintf(out, "  -h, --help%*s%s\n", HELP_COL - 12, "", "this help");
    fprintf(out, "      --version%*s%s\n", HELP_COL - 15, "", "print the version");
    if (cmd->notes) fprintf(out, "\n%s\n", cmd->notes);
    fprintf(out, "\nexit status: 0 success, 1 runtime error, 2 usage error\n");
}

int opt_read_transport(const char *cmd, const char *name, const char *value, void *dest) {
    int *t = dest;
    if (!strcmp(value, "auto")) *t = FERRY_TRANSPORT_AUTO;
    else if (!strcmp(value, "tcp")) *t = FERRY_TRANSPORT_TCP;
    else if (!strcmp(value, "rdma")) *t = FERRY_TRANSPORT_RDMA;
    else {
        fprintf(stderr, "ferry %s: %s takes auto, tcp or rdma, not '%s'\n", cmd, name, value);
        return -1;
    }
    return 0;
}

int opt_read_log_level(const char *cmd, const char *name, const char *value, void *dest) {
    enum ferry_log_level lv;
    if (!ferry_log_parse_level(value, &lv)) {
        fprintf(stderr, "ferry %s: %s takes error, warn, info or debug, not '%s'\n", cmd, name, value);
        return -1;
    }
    if (dest) *(enum ferry_log_level *)dest = lv;
    else ferry_log_set_level(lv);
    return 0;
}
