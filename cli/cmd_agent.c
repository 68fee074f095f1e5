/* vmigrate agent, vmigrate key: the destination's side of the relay. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static volatile sig_atomic_t agent_stop;

static void on_stop(int sig)
{
    (void)sig;
    agent_stop = 1;
}

typedef struct agent_log {
    bool debug;
} agent_log;

/* One line per event, with the time: the agent's log is its report. */
static void log_line(void *opaque, vmig_log_level level, const char *msg)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    const agent_log *l = opaque;
    if (level == VMIG_LOG_DEBUG && !l->debug) {
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %s: %s\n", when, ts.tv_nsec / 1000000, names[level], msg);
    fflush(stderr);
}

int cmd_agent(const cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"key", required_argument, NULL, 'k'},
        {"accel", required_argument, NULL, 'a'},
        {0},
    };
    vmig_agent_opts ao;
    vmig_agent_opts_init(&ao);
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:", opts, NULL)) != -1) {
        if (c == '?' || c == ':') {
            return cli_bad_option("agent", c, argv);
        }
        if (c == 'l') {
            ao.listen = optarg;
        } else if (c == 'k') {
            ao.key_file = optarg;
        } else if (c == 'a') {
            if (strcmp(optarg, "tcg") != 0 && strcmp(optarg, "kvm") != 0) {
                cli_err("--accel: '%s' is not an accelerator: use tcg or kvm", optarg);
                return CLI_USAGE;
            }
            ao.accel = strcmp(optarg, "kvm") == 0 ? VMIG_ACCEL_KVM : VMIG_ACCEL_TCG;
        }
    }
    if (optind != argc) {
        return cli_usage_error("agent", "unexpected argument '%s'", argv[optind]);
    }
    if (!ao.key_file) {
        return cli_usage_error("agent", "--key FILE is required ('vmigrate key new FILE' "
                                        "makes one; give the source the same file)");
    }
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    if (!e) {
        return cli_fail(err);
    }
    agent_log lg = {.debug = g->debug};
    vmig_engine_set_log(e, log_line, &lg);
    vmig_agent *a = vmig_agent_new(e, &ao, &err);
    if (!a) {
        vmig_engine_free(e);
        return cli_fail(err);
    }
    /* the first line on stdout: where it listens (a caller that asked for port 0 reads it) */
    printf("listening on %s\n", vmig_agent_address(a));
    fflush(stdout);
    struct sigaction sa = {0};
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int rc = CLI_OK;
    while (!agent_stop) {
        if (vmig_engine_run(e, 500, &err) < 0) {
            rc = cli_fail(err);
            err = NULL;
            break;
        }
    }
    log_line(&lg, VMIG_LOG_INFO, "agent: stopping");
    vmig_agent_free(a);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    vmig_engine_free(e);
    return rc;
}

int cmd_key(const cli_global *g, int argc, char **argv)
{
    (void)g;
    if (argc != 3 || strcmp(argv[1], "new") != 0) {
        return cli_usage_error("key", "expected 'key new FILE'");
    }
    vmig_error *err = NULL;
    if (!vmig_key_create(argv[2], &err)) {
        return cli_fail(err);
    }
    printf("created %s: copy it to the agent's host and the source's, readable only by the "
           "user that runs vmigrate\n",
           argv[2]);
    return CLI_OK;
}
