/* ferry: entry points of the command-line tool's subcommands, and what
 * they share. Each entry point takes the words after its name (argv[0] is
 * the first option) and returns the process exit status (opts.h). */
#ifndef FERRY_CLI_H
#define FERRY_CLI_H

#include <stddef.h>
#include <stdio.h>

int ferry_cli_gen_model(int argc, char **argv);
int ferry_cli_run(int argc, char **argv);
int ferry_cli_bench_model(int argc, char **argv);

/* ---- threads.c ---------------------------------------------------------------- */

/* CPUs this process may run on (its affinity mask; else the online CPUs). */
int cli_cpus_allowed(void);
/* Physical cores among those CPUs: the default thread count. */
int cli_default_threads(void);
/* Refuses (EXIT_USAGE, with a message) more than 512 threads or more than
 * 4 per allowed CPU; warns on stderr when there are more than CPUs. */
int cli_check_threads(const char *cmd, const char *opt, int n);

/* ---- json.c ------------------------------------------------------------------- */

/* s[0..n) as a JSON string, quotes included; bytes that are not UTF-8 become U+FFFD. */
void cli_json_str(FILE *out, const char *s, size_t n);

#endif
