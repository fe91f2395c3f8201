/* ferry: entry points of the command-line tool's subcommands, one per
 * line. Each takes its own argc/argv (argv[0] is the subcommand's name) and
 * returns the process exit status. */
#ifndef FERRY_CLI_H
#define FERRY_CLI_H

int ferry_cli_gen_model(int argc, char **argv);
int ferry_cli_run(int argc, char **argv);
int ferry_cli_bench_model(int argc, char **argv);

#endif
