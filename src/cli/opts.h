/* ferry: the one option parser of every command. A command describes its
 * options in a table; the parser fills the destinations, refuses what it
 * cannot read with a message that names the command and the option, and
 * prints the command's help from the same table, so the help cannot drift
 * from what is accepted.
 *
 * Every command also takes -h/--help and --version. Long options take
 * their value as the next word or after '=' (--threads=4). Exit statuses
 * are the tool's: 0 success, 1 a runtime failure, 2 a usage error. */
#ifndef FERRY_CLI_OPTS_H
#define FERRY_CLI_OPTS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

enum opt_kind {
    OPT_FLAG,    /* bool *: set to true */
    OPT_INT,     /* int *, within [lo, hi] */
    OPT_U64,     /* uint64_t *, within [lo, hi] (hi 0: no bound); 0x.. is hex */
    OPT_FLOAT,   /* float *, within [lo, hi] */
    OPT_STRING,  /* const char **: the word itself (argv outlives the command) */
    OPT_FN,      /* fn(cmd, name, value, dest) reads it */
    OPT_SECTION, /* no option: a heading in the help (help is the heading) */
};

/* Reads value into dest; prints "ferry CMD: NAME ..." and returns -1 when
 * it cannot. */
typedef int (*opt_fn)(const char *cmd, const char *name, const char *value, void *dest);

struct opt {
    const char *names; /* "-t|--threads": every spelling, short ones first */
    enum opt_kind kind;
    void *dest;
    const char *arg;  /* the value in the help ("N", "FILE"); NULL for flags */
    const char *help; /* '\n' continues on a new line of the help */
    double lo, hi;
    opt_fn fn;
    bool optional;    /* the value may be left out (next word starts with '-') */
    bool allow_empty; /* "" is a value (else refused) */
    int seen;         /* set by the parser: how many times given */
};

struct opts_cmd {
    const char *name;  /* "run", "bench model" */
    const char *usage; /* after "usage: ferry " */
    const char *about; /* a paragraph under the usage line; may be NULL */
    struct opt *opts;  /* ends with an entry whose names and help are NULL */
    const char *notes; /* after the options; may be NULL */
};

/* Parses argv[0..argc) (argv[0] is the first option). Returns -1 when the
 * command should go on, else the status to exit with: 0 after --help or
 * --version, EXIT_USAGE after a message on stderr. */
int opts_parse(const struct opts_cmd *cmd, int argc, char **argv);
void opts_help(const struct opts_cmd *cmd, FILE *out);
/* The option's entry by any of its spellings (for `seen`). */
struct opt *opts_find(const struct opts_cmd *cmd, const char *name);
/* A usage error: "ferry CMD: MESSAGE (ferry CMD --help)" on stderr; returns EXIT_USAGE. */
int opts_usage_error(const struct opts_cmd *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void opts_print_version(FILE *out);

/* Shared readers for OPT_FN. */
int opt_read_transport(const char *cmd, const char *name, const char *value, void *dest); /* int * */
int opt_read_log_level(const char *cmd, const char *name, const char *value, void *dest); /* applies it */

#endif
