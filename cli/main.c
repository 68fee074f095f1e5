#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "cli.h"

static const char main_help[] =
    "Usage: vmigrate [GLOBAL OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Live migration of QEMU virtual machines, without libvirt.\n"
    "\n"
    "Commands:\n"
    "  vm start [--accel tcg|kvm] SPEC    start a VM from a JSON spec\n"
    "  vm list [--json]                   list VMs in the state directory\n"
    "  vm stop [--timeout S] NAME         stop a VM and remove its state\n"
    "  vm recover NAME                    clean up after a migration whose vmigrate died\n"
    "  migrate [OPTIONS] NAME DEST        migrate VM NAME to DEST (local, local:STATE_DIR,\n"
    "                                     vmig://HOST[:PORT] through an agent)\n"
    "  jobinfo [--json] NAME              the migration running on VM NAME: state, figures\n"
    "  abort NAME                         cancel it (from another terminal); the source runs on\n"
    "  set-max-downtime NAME MS           change its downtime limit while it runs\n"
    "  set-speed NAME MIB_S               change its bandwidth cap while it runs (0: none)\n"
    "  postcopy NAME                      switch it to post-copy (armed with --postcopy)\n"
    "  dirtyrate [--seconds N] [--json] NAME\n"
    "                                     measure how fast VM NAME dirties its memory\n"
    "  agent --key FILE [--listen H:P]    serve as a destination host: one port, one key\n"
    "  key new FILE                       create a key for agents and their sources\n"
    "  demo [OPTIONS]                     start the built-in test guest, migrate it live on\n"
    "                                     this host through a local agent, check every page\n"
    "                                     of its memory\n"
    "  qmp SOCKET COMMAND [ARGS-JSON]     run one QMP command and print the reply\n"
    "  cpu host|decode|baseline|compare|models\n"
    "                                     CPU models, baselines and compatibility\n"
    "  version [--json]                   print the version, and the QEMU vmigrate runs\n"
    "  help [COMMAND]                     show help for a command\n"
    "\n"
    "Global options:\n"
    "  --state-dir DIR   where VMs keep their sockets and logs (default $VMIG_STATE_DIR,\n"
    "                    else $XDG_RUNTIME_DIR/vmigrate, else /tmp/vmigrate-$UID)\n"
    "  --qemu BINARY     QEMU to run for new VMs and destinations (default $VMIG_QEMU,\n"
    "                    else " VMIG_DEFAULT_QEMU ")\n"
    "  --debug           log every step to stderr\n"
    "\n"
    "Exit status: 0 success, 1 the operation failed, 2 the command line was wrong.\n";

static const char vm_help[] =
    "Usage: vmigrate vm start [--accel tcg|kvm] SPEC|NAME\n"
    "       vmigrate vm list [--json] [--timeout MS]\n"
    "       vmigrate vm stop [--timeout S] NAME\n"
    "       vmigrate vm define SPEC\n"
    "       vmigrate vm undefine NAME\n"
    "       vmigrate vm recover NAME\n"
    "\n"
    "start  starts QEMU for the VM spec in file SPEC (docs/spec.md), or for the defined VM\n"
    "       NAME when no such file exists, detached, with its QMP socket under the state\n"
    "       directory.  --accel picks the accelerator: tcg (the default, software\n"
    "       emulation) or kvm (real hosts).\n"
    "list   one line per VM: name, pid, QEMU run state ('shut off' for a defined VM that\n"
    "       does not run), whether it is defined (persistent), the migration running on it\n"
    "       and its progress, QMP socket.  Each QEMU's reader monitor gets MS milliseconds to\n"
    "       answer (default 100) before the VM shows as busy.\n"
    "stop   asks QEMU to quit, kills it after S seconds (default 10), removes its state.  A\n"
    "       defined VM is stopped, not forgotten: its definition stays ('vm start NAME').\n"
    "define keeps the spec in SPEC as the VM's definition (STATE_DIR/.defined/NAME.json),\n"
    "       with its UUID, while the VM is shut off; again, it replaces the definition.  A\n"
    "       running VM may be defined: its next start uses the definition.\n"
    "undefine  removes the VM's definition; a running VM runs on, until it stops.\n"
    "recover  cleans up after a migration whose vmigrate died (killed, crashed).  A\n"
    "       destination that had taken over keeps the VM and the source is retired;\n"
    "       otherwise a destination that never ran is stopped, a source migrating to nobody\n"
    "       is cancelled, and a source left paused by a finished migration is resumed.\n"
    "       'migrate' does the same before it starts.\n";

static const char migrate_help[] =
    "Usage: vmigrate migrate [OPTIONS] NAME DEST\n"
    "\n"
    "Migrates the running VM NAME (a shut-off, defined one with --offline --persistent) to\n"
    "DEST and waits until it is done.  DEST is 'local'\n"
    "(a second QEMU on this host, same state directory), 'local:STATE_DIR' (a second QEMU\n"
    "on this host whose state lives in STATE_DIR, which must exist), or\n"
    "'vmig://HOST[:PORT]': the agent on HOST (port 4790 by default; see 'help agent')\n"
    "starts the destination QEMU there, and every channel of the migration goes through\n"
    "vmigrate's relay, one TCP connection each, authenticated with --key.  On failure,\n"
    "Ctrl-C or --timeout the migration is rolled back and the VM keeps running on the source,\n"
    "until it switched to post-copy: then the destination holds the VM, and a broken\n"
    "connection pauses both QEMUs for --postcopy-resume.  A live migration that does not\n"
    "converge is met by the default policy (--policy auto; see Convergence).  The summary\n"
    "says which side holds the VM and lists what the policy did and when.\n"
    "With --verbose or --json, a relayed migration reports each channel: bytes each way,\n"
    "throughput, and time spent waiting for QEMU and for the network.\n"
    "\n"
    "Options:\n";

static const char demo_help[] =
    "Usage: vmigrate demo [OPTIONS]\n"
    "\n"
    "Starts the built-in test guest as a source VM, which fills its RAM with a known\n"
    "pattern and keeps rewriting it at --dirty-mib-s; starts a destination QEMU on this\n"
    "host; migrates the VM live; checks every page of the destination's memory; tears\n"
    "everything down; prints a summary.  Exit status 0 only when the migration completed\n"
    "and the check passed.\n"
    "\n"
    "Options:\n"
    "  --mem-mib N          guest RAM in MiB (default 1024, at least 16)\n"
    "  --dirty-mib-s R      how fast the guest rewrites memory, MiB/s (default 0: idle)\n"
    "  --accel tcg|kvm      accelerator (default tcg)\n"
    "  --keep               leave the migrated VM running instead of stopping it\n"
    "  --direct             migrate QEMU to QEMU over a unix socket, not through a local\n"
    "                       agent and the relay (the default), to compare the two\n";

static const char agent_help[] =
    "Usage: vmigrate [--state-dir DIR] [--qemu BINARY] agent --key FILE\n"
    "                [--listen HOST[:PORT]] [--accel tcg|kvm]\n"
    "\n"
    "Serves this host as a migration destination on one TCP port (default 127.0.0.1:4790;\n"
    "port 0 picks a free one).  Sources that hold the key (--key, made by 'vmigrate key\n"
    "new') start destination QEMUs here, under this agent's state directory, QEMU binary\n"
    "and accelerator, and send their migration channels through it.  Anyone else is\n"
    "refused before a byte of theirs is read past the handshake, and logged.  A destination\n"
    "whose source engine goes away before the switchover is stopped and removed; when the\n"
    "agent dies, the destinations it holds die with it and the sources run on.  The first\n"
    "line on stdout is 'listening on HOST:PORT'; the log (stderr) has one line per event and\n"
    "per channel of each migration.  SIGINT or SIGTERM stops it.\n"
    "\n"
    "Usage: vmigrate key new FILE\n"
    "\n"
    "Creates FILE with a new random key (32 bytes, hex), mode 0600.  Copy it to the\n"
    "agent's host and to each source; anyone who has it can start QEMUs on the agent's host.\n";

static const char control_help[] =
    "Usage: vmigrate jobinfo [--json] NAME\n"
    "       vmigrate abort NAME\n"
    "       vmigrate set-max-downtime NAME MS\n"
    "       vmigrate set-speed NAME MIB_S\n"
    "       vmigrate postcopy NAME\n"
    "       vmigrate dirtyrate [--seconds N] [--json] NAME\n"
    "\n"
    "Control of a migration of VM NAME that a 'vmigrate migrate' runs, from another\n"
    "terminal (virsh's domjobinfo, domjobabort, migrate-setmaxdowntime, migrate-setspeed,\n"
    "migrate-postcopy, domdirtyrate-calc).  They read the job file the migration keeps in\n"
    "the VM's directory and talk to the VM's reader monitor, never to the migration's own.\n"
    "\n"
    "jobinfo           the job's state and QEMU's figures: data processed, remaining and\n"
    "                  total, bandwidth, dirty rate, pass, expected downtime, limits, and what\n"
    "                  the convergence policy did.  'Job type: none' when no job runs.\n"
    "abort             cancels the migration and waits (30 s at most) until its vmigrate has\n"
    "                  rolled it back: the VM stays on the source.  Refused in post-copy and\n"
    "                  once the destination runs the VM.\n"
    "set-max-downtime  QEMU's downtime limit, 1-2000000 ms (policy auto may raise it again)\n"
    "set-speed         QEMU's bandwidth cap, MiB/s; 0 lifts it\n"
    "postcopy          switches to post-copy: the destination runs the VM from then on and\n"
    "                  pulls the pages it lacks; the migration must have been started with\n"
    "                  --postcopy\n"
    "dirtyrate         measures how fast the guest dirties its memory over N seconds\n"
    "                  (1-60, default 1) by sampling pages, whether or not it migrates\n"
    "\n"
    "Exit status: 0 done, 1 refused or failed (no migration runs, post-copy, ...), 2 the\n"
    "command line was wrong.\n";

static const char qmp_help[] =
    "Usage: vmigrate qmp SOCKET COMMAND [ARGS-JSON]\n"
    "\n"
    "Connects to the QMP monitor at unix socket SOCKET, negotiates capabilities, runs\n"
    "COMMAND with the JSON object ARGS-JSON as its arguments, and prints the reply.\n"
    "Example: vmigrate qmp /tmp/vm/qmp.sock query-status\n";

static const char cpu_help[] =
    "Usage: vmigrate cpu host [--guest] [--export xml|json | --qemu-model [--accel tcg|kvm]]\n"
    "                         [OUTPUT]\n"
    "       vmigrate cpu decode [--guest] [OUTPUT] FILE\n"
    "       vmigrate cpu baseline [--features] [--migratable] [--explain] [OUTPUT] INPUT...\n"
    "       vmigrate cpu compare [--json] [--index N] HOST_CPU VM_CPU\n"
    "       vmigrate cpu models [--json] [--from-qemu [--accel tcg|kvm]]\n"
    "\n"
    "FILE, INPUT, HOST_CPU, VM_CPU: libvirt <cpu> XML (virsh capabilities' host <cpu>,\n"
    "domcapabilities' or a domain's guest <cpu>; one or several blocks, as virsh\n"
    "hypervisor-cpu-baseline takes), or a raw CPUID dump: libvirt cpudata XML, InstLatx64/\n"
    "AIDA64 text, a libcpuid test file, or 'cpu host --export' output.  A host's CPU lists\n"
    "every bit the silicon has; a guest's what a guest is given.  Features libvirt knows and no\n"
    "guest can have (osxsave, cmt, ...) are read, named once on stderr, and never written for\n"
    "a guest.  Models and feature names are QEMU's: the built-in table generated from QEMU 7.2,\n"
    "or with --from-qemu [--accel tcg|kvm] (any command) those of a QEMU started on this host.\n"
    "\n"
    "host      this host's CPUID, decoded; --export writes the raw data to compute elsewhere;\n"
    "          --qemu-model: what QEMU here can give a guest (host under KVM, max under TCG)\n"
    "decode    the model, required and disabled features that describe each CPU in FILE:\n"
    "          a host's CPU as a host's; with --guest (implied by --qemu) as the CPU a guest\n"
    "          can have on that host under KVM\n"
    "baseline  the largest guest CPU all the inputs can run; mixed vendors are refused.\n"
    "          agent://HOST is refused until the destination agent exists\n"
    "          --features    list every feature, not only the difference from the model\n"
    "          --migratable  drop features that block migration (invtsc)\n"
    "          --explain     say, for each input, which features it removed\n"
    "compare   whether VM_CPU runs on HOST_CPU: exit 0 identical, 3 superset (runs, host\n"
    "          has more), 4 incompatible (the missing features are named); a host's CPU\n"
    "          offers what KVM gives on it.  A file of several <cpu> blocks needs --index N\n"
    "models    QEMU's named models, newest first, with their aliases\n"
    "\n"
    "OUTPUT: default libvirt <cpu mode='custom' match='exact'>; --json {model, vendor,\n"
    "require, disable}; --qemu a -cpu argument (Model,+feat,-feat), which implies --guest.\n";

/* vmigrate's version, and the QEMU it would run with that QEMU's own version. */
static int cmd_version(const cli_global *g, int argc, char **argv)
{
    bool json = argc == 2 && strcmp(argv[1], "--json") == 0;
    if (argc > 2 || (argc == 2 && !json)) {
        return cli_usage_error("version", "unexpected argument '%s'", argv[1]);
    }
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    if (!e) {
        return cli_fail(err);
    }
    const char *qemu = vmig_engine_qemu(e);
    g_autofree char *path = g_find_program_in_path(qemu);
    char *package = NULL;
    int v = vmig_engine_qemu_version(e, &package, &err);
    g_autofree char *qv = v < 0 ? NULL
                                : g_strdup_printf("%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    if (json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "vmigrate", json_object_new_string(vmig_version()));
        json_object_object_add(o, "qemu", json_object_new_string(path ? path : qemu));
        json_object_object_add(o, "qemu_version", qv ? json_object_new_string(qv) : NULL);
        json_object_object_add(o, "qemu_package", package ? json_object_new_string(package) : NULL);
        json_object_object_add(o, "event_loop", json_object_new_string(vmig_engine_event_loop(e)));
        cli_print_json(o);
        json_object_put(o);
    } else {
        printf("vmigrate %s (event loop: %s)\n", vmig_version(), vmig_engine_event_loop(e));
        if (qv) {
            printf("QEMU %s %s%s%s%s\n", qv, path ? path : qemu, *package ? " (" : "", package,
                   *package ? ")" : "");
        }
    }
    free(package);
    vmig_engine_free(e);
    return v < 0 ? cli_fail(err) : CLI_OK;
}

static bool is_control(const char *cmd)
{
    static const char *const cmds[] = {"jobinfo",   "abort",    "set-max-downtime",
                                       "set-speed", "postcopy", "dirtyrate"};
    for (size_t i = 0; i < G_N_ELEMENTS(cmds); i++) {
        if (strcmp(cmd, cmds[i]) == 0) {
            return true;
        }
    }
    return false;
}

static int help(const char *topic)
{
    if (!topic) {
        fputs(main_help, stdout);
    } else if (strcmp(topic, "vm") == 0) {
        fputs(vm_help, stdout);
    } else if (strcmp(topic, "migrate") == 0) {
        fputs(migrate_help, stdout);
        fputs(cli_migrate_opts_help, stdout);
    } else if (strcmp(topic, "demo") == 0) {
        fputs(demo_help, stdout);
        fputs("\nand every migrate option:\n", stdout);
        fputs(cli_migrate_opts_help, stdout);
    } else if (strcmp(topic, "agent") == 0 || strcmp(topic, "key") == 0) {
        fputs(agent_help, stdout);
    } else if (is_control(topic)) {
        fputs(control_help, stdout);
    } else if (strcmp(topic, "qmp") == 0) {
        fputs(qmp_help, stdout);
    } else if (strcmp(topic, "cpu") == 0) {
        fputs(cpu_help, stdout);
    } else {
        return cli_usage_error(NULL, "no help for unknown command '%s'", topic);
    }
    return CLI_OK;
}

int main(int argc, char **argv)
{
    /* clang-format off */
    static const struct option opts[] = {
        {"state-dir", required_argument, NULL, 's'},
        {"qemu", required_argument, NULL, 'q'},
        {"debug", no_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {0},
    };
    /* clang-format on */
    cli_global g = {0};
    int c;
    opterr = 0;
    /* '+': stop at the command, its options are its own */
    while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            g.state_dir = optarg;
            break;
        case 'q':
            g.qemu = optarg;
            break;
        case 'd':
            g.debug = true;
            break;
        case 'h':
            return help(NULL);
        case 'V':
            printf("vmigrate %s\n", vmig_version());
            return CLI_OK;
        default:
            return cli_bad_option(NULL, c, argv);
        }
    }
    if (optind >= argc) {
        return cli_usage_error(NULL, "no command given");
    }
    char **cargv = argv + optind;
    int cargc = argc - optind;
    const char *cmd = cargv[0];
    optind = 1; /* each command parses its own options from its own argv */
    if (strcmp(cmd, "help") == 0) {
        return help(cargc > 1 ? cargv[1] : NULL);
    }
    if (strcmp(cmd, "version") == 0) {
        return cmd_version(&g, cargc, cargv);
    }
    if (strcmp(cmd, "vm") == 0) {
        return cmd_vm(&g, cargc, cargv);
    }
    if (strcmp(cmd, "migrate") == 0) {
        return cmd_migrate(&g, cargc, cargv);
    }
    if (strcmp(cmd, "demo") == 0) {
        return cmd_demo(&g, cargc, cargv);
    }
    if (strcmp(cmd, "qmp") == 0) {
        return cmd_qmp(&g, cargc, cargv);
    }
    if (strcmp(cmd, "agent") == 0) {
        return cmd_agent(&g, cargc, cargv);
    }
    if (strcmp(cmd, "key") == 0) {
        return cmd_key(&g, cargc, cargv);
    }
    if (strcmp(cmd, "cpu") == 0) {
        return cmd_cpu(&g, cargc, cargv);
    }
    if (is_control(cmd)) {
        return cmd_control(&g, cargc, cargv);
    }
    return cli_usage_error(NULL, "unknown command '%s'", cmd);
}
