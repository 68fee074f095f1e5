/*
 * vmigrate: live migration of QEMU virtual machines, without libvirt.
 *
 * Why: a small library an appliance can embed to start a VM, move it to another QEMU (live
 * pre-copy or paused) and know, with figures, what happened.  The source VM keeps running
 * unless the destination has taken over: a failed or cancelled migration puts it back.
 *
 * Threads: vmigrate starts none.  Call everything from the thread that created the engine.
 * vmig_engine_cancel() is the exception: it may be called from a signal handler or another
 * thread while a migration runs.
 *
 * Loops: the engine runs inside the caller's event loop (one fd, a dispatch call that never
 * blocks, a timeout: see "running the engine inside your own event loop" below).  The calls
 * documented as waiting are thin loops over the same, and every wait has a deadline.
 *
 * Errors: every fallible call takes `vmig_error **errp` last (may be NULL) and signals failure
 * by its return value (false, NULL or negative).  On success *errp is untouched; on failure it
 * receives a new error the caller frees with vmig_error_free().  The library never prints and
 * never exits.
 *
 * Ownership: the _new and _load calls return objects the caller owns and frees with the
 * matching _free call, which accepts NULL.  Pointer arguments are borrowed for the duration
 * of the call.
 */
#ifndef VMIGRATE_H
#define VMIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define VMIG_EXPORT __attribute__((visibility("default")))
#else
#define VMIG_EXPORT
#endif

#define VMIG_VERSION_STRING "0.2.0"

/* ---- errors ------------------------------------------------------------------------------ */

typedef struct vmig_error vmig_error;

typedef enum vmig_errc {
    VMIG_E_INVAL = 1, /* bad argument or input: names what is wrong */
    VMIG_E_IO,        /* a system call failed */
    VMIG_E_PROTO,     /* the peer broke the QMP protocol, or is not QMP at all */
    VMIG_E_QEMU,      /* QEMU answered with an error (its class and description follow) */
    VMIG_E_TIMEOUT,   /* a deadline passed */
    VMIG_E_CANCELLED, /* vmig_engine_cancel() was called */
    VMIG_E_STATE,     /* the object is not in a state that allows this */
    VMIG_E_CPU,       /* CPU incompatibility */
    VMIG_E_NOTFOUND,  /* no such VM, file or socket */
    VMIG_E_VERIFY,    /* the guest memory check failed */
} vmig_errc;

VMIG_EXPORT vmig_errc vmig_error_code(const vmig_error *e);
VMIG_EXPORT const char *vmig_error_message(const vmig_error *e);
VMIG_EXPORT void vmig_error_free(vmig_error *e);
/* A copy of @e (NULL for NULL), for keeping an error whose owner goes away. */
VMIG_EXPORT vmig_error *vmig_error_copy(const vmig_error *e);

/* ---- VM specs ---------------------------------------------------------------------------- */

/*
 * A VM spec is a JSON object (docs/spec.md): name, memory_mib, vcpus, machine, cpu, kernel,
 * initrd, append, disks[], extra_args[].  vmigrate turns it into a QEMU command line, and
 * starts the same VM on a destination from it.
 */
typedef struct vmig_spec vmig_spec;

/* NULL on failure; the error names the file, the field and what is wrong with it. */
VMIG_EXPORT vmig_spec *vmig_spec_load(const char *path, vmig_error **errp);
VMIG_EXPORT vmig_spec *vmig_spec_parse(const char *json, vmig_error **errp);
VMIG_EXPORT void vmig_spec_free(vmig_spec *s);
VMIG_EXPORT const char *vmig_spec_name(const vmig_spec *s);
/* The spec as JSON; the string is owned by the caller (free()). */
VMIG_EXPORT char *vmig_spec_to_json(const vmig_spec *s);

/* ---- the engine ------------------------------------------------------------------------- */

typedef struct vmig_engine vmig_engine;

typedef enum vmig_log_level {
    VMIG_LOG_ERROR,
    VMIG_LOG_WARN,
    VMIG_LOG_INFO,
    VMIG_LOG_DEBUG,
} vmig_log_level;

typedef void (*vmig_log_fn)(void *opaque, vmig_log_level level, const char *msg);

/* vmigrate's version, "MAJOR.MINOR.MICRO": the library's, not the header's. */
VMIG_EXPORT const char *vmig_version(void);

/* @state_dir holds one directory per VM (QMP sockets, pid file, logs, job state); it is
 * created when missing.  NULL picks $VMIG_STATE_DIR, else $XDG_RUNTIME_DIR/vmigrate, else
 * /tmp/vmigrate-$UID. */
VMIG_EXPORT vmig_engine *vmig_engine_new(const char *state_dir, vmig_error **errp);
/* Jobs still running are cancelled and rolled back first (this waits, at most about 30 s):
 * freeing the engine never loses a VM.  Accepts NULL. */
VMIG_EXPORT void vmig_engine_free(vmig_engine *e);
VMIG_EXPORT const char *vmig_engine_state_dir(const vmig_engine *e);
/* Debug output goes here, nowhere else.  @fn may be NULL to silence it.  The first sink set
 * hears which event loop the engine runs on. */
VMIG_EXPORT void vmig_engine_set_log(vmig_engine *e, vmig_log_fn fn, void *opaque);
/* The engine's event loop and why: "io_uring", or "epoll: ..." with the reason (io_uring_setup
 * refused, as in containers whose seccomp profile blocks it, or $VMIG_RING=epoll). */
VMIG_EXPORT const char *vmig_engine_event_loop(const vmig_engine *e);
/* The QEMU binary to run for new VMs and for destinations; default $VMIG_QEMU, else the one
 * chosen at build time (VMIG_DEFAULT_QEMU, normally "qemu-system-x86_64" from $PATH). */
VMIG_EXPORT void vmig_engine_set_qemu(vmig_engine *e, const char *qemu_binary);
VMIG_EXPORT const char *vmig_engine_qemu(const vmig_engine *e);
/* Starts the engine's QEMU for a moment and asks its version (query-version); waits.  Returns
 * major * 10000 + minor * 100 + micro, or -1.  @ret_package (may be NULL) receives QEMU's
 * package string, owned by the caller (free()). */
VMIG_EXPORT int vmig_engine_qemu_version(vmig_engine *e, char **ret_package, vmig_error **errp);
/* Asks every running job to stop and roll back.  Async-signal-safe. */
VMIG_EXPORT void vmig_engine_cancel(vmig_engine *e);

/* ---- running the engine inside your own event loop ------------------------------------------
 *
 * The engine has one event source, its completion ring (io_uring, or epoll where io_uring is
 * refused), and one fd that stands for it.  Poll that fd for POLLIN together with your own
 * sources; when it is readable, or when vmig_engine_timeout_ms() has passed, call
 * vmig_engine_dispatch().  Nothing else is needed: the async calls below (vmig_migrate_start,
 * vmig_vm_start_async, vmig_vm_stop_async) make progress only inside dispatch.
 *
 *     struct pollfd p = {.fd = vmig_engine_fd(e), .events = POLLIN};
 *     while (!done) {
 *         poll(&p, 1, vmig_engine_timeout_ms(e));
 *         vmig_engine_dispatch(e, NULL);
 *     }
 *
 * In a GLib program, g_unix_fd_add() on the fd and a timeout source of timeout_ms do the same
 * (examples/glib-loop.c).
 */

/* Readable (POLLIN) when vmig_engine_dispatch() has work. */
VMIG_EXPORT int vmig_engine_fd(vmig_engine *e);
/* Does what is ready and returns without waiting: >0 work was done, 0 none, <0 the ring
 * failed (then the error says why; the engine is unusable). */
VMIG_EXPORT int vmig_engine_dispatch(vmig_engine *e, vmig_error **errp);
/* When to call vmig_engine_dispatch() at the latest even if the fd stays quiet: milliseconds,
 * 0 for now, -1 for no deadline. */
VMIG_EXPORT int vmig_engine_timeout_ms(vmig_engine *e);
/* Waits on the fd and dispatches until @timeout_ms passed (-1: until no job runs). */
VMIG_EXPORT int vmig_engine_run(vmig_engine *e, int timeout_ms, vmig_error **errp);

/* ---- jobs --------------------------------------------------------------------------------
 *
 * Anything that takes time is a job: a migration, a VM starting, a VM stopping.  A job is
 * created running; its done callback runs once, from vmig_engine_dispatch(), when it has
 * reached a final state (COMPLETED, FAILED or CANCELLED).  The caller owns the job and frees
 * it with vmig_job_free(), in the done callback or later.  Freeing a job that still runs
 * cancels it; the engine finishes the roll-back on its own.
 */
typedef struct vmig_job vmig_job;

typedef enum vmig_job_kind {
    VMIG_JOB_MIGRATE,
    VMIG_JOB_VM_START,
    VMIG_JOB_VM_STOP,
} vmig_job_kind;

typedef enum vmig_job_state {
    VMIG_JOB_PREPARING,    /* checks; a destination or a VM starting */
    VMIG_JOB_MIGRATING,    /* memory moving while the source runs (or sits paused) */
    VMIG_JOB_SWITCHOVER,   /* the source has stopped; the destination loads and takes over */
    VMIG_JOB_FINISHING,    /* the destination runs; the source is being retired */
    VMIG_JOB_ROLLING_BACK, /* failed or cancelled: the source is being put back */
    VMIG_JOB_COMPLETED,
    VMIG_JOB_FAILED,
    VMIG_JOB_CANCELLED,
    VMIG_JOB_STATE_COUNT,
} vmig_job_state;

typedef void (*vmig_job_done_fn)(vmig_job *job, void *opaque);

VMIG_EXPORT vmig_job_kind vmig_job_get_kind(const vmig_job *job);
VMIG_EXPORT vmig_job_state vmig_job_get_state(const vmig_job *job);
/* "preparing", "migrating", ... */
VMIG_EXPORT const char *vmig_job_state_name(vmig_job_state s);
/* Whether the job has reached COMPLETED, FAILED or CANCELLED. */
VMIG_EXPORT bool vmig_job_finished(const vmig_job *job);
/* Why it failed or was cancelled; NULL otherwise.  Owned by the job. */
VMIG_EXPORT const vmig_error *vmig_job_error(const vmig_job *job);
/* Asks the job to stop and roll back (no effect once the destination has taken over). */
VMIG_EXPORT void vmig_job_cancel(vmig_job *job);
/* Accepts NULL.  A job that still runs is cancelled and left to the engine to finish. */
VMIG_EXPORT void vmig_job_free(vmig_job *job);

/* ---- VMs ---------------------------------------------------------------------------------- */

typedef enum vmig_accel {
    VMIG_ACCEL_TCG, /* software emulation: the default, works everywhere */
    VMIG_ACCEL_KVM,
} vmig_accel;

/* Starts QEMU for @spec, detached, with its QMP sockets under the state directory.  The job
 * completes when QEMU answers query-status with a run state; if QEMU exits first, the job
 * fails with QEMU's own message.  Fails at once when a VM of that name runs already. */
VMIG_EXPORT vmig_job *vmig_vm_start_async(vmig_engine *e, const vmig_spec *spec, vmig_accel accel,
                                          vmig_job_done_fn done, void *opaque, vmig_error **errp);
/* Stops the VM (QMP quit, then SIGKILL after @timeout_ms) and removes its directory. */
VMIG_EXPORT vmig_job *vmig_vm_stop_async(vmig_engine *e, const char *name, int timeout_ms,
                                         vmig_job_done_fn done, void *opaque, vmig_error **errp);
/* The same, waiting (starting waits at most 30 s). */
VMIG_EXPORT bool vmig_vm_start(vmig_engine *e, const vmig_spec *spec, vmig_accel accel,
                               vmig_error **errp);
VMIG_EXPORT bool vmig_vm_stop(vmig_engine *e, const char *name, int timeout_ms, vmig_error **errp);
/* Cleans up after a migration of VM @name whose vmigrate died (a crash, SIGKILL), waiting:
 *   - a destination QEMU that had taken over keeps the VM, and the source is retired;
 *   - otherwise a destination that never ran is stopped, a source migrating to nobody is
 *     cancelled, and a source left paused by a finished migration is resumed (when it ran).
 * A destination started by vmigrate dies with it until the switchover, so most crashes leave
 * only the source.  vmig_migrate() does this too before it starts.  @ret_what (free()) says
 * what was done, "" when nothing was left over.  Probe QEMUs of vmigrate processes that are
 * gone are removed too. */
VMIG_EXPORT bool vmig_vm_recover(vmig_engine *e, const char *name, char **ret_what,
                                 vmig_error **errp);

/*
 * What vmig_vm_list() reports of one VM.  It asks each QEMU through its reader monitor (a
 * second QMP socket the engine never uses), and reads the job state file a migration keeps
 * up to date, so it answers quickly while a migration runs in another process.
 */
typedef struct vmig_vm_info {
    char name[128];
    int pid;         /* 0 when the QEMU process is gone */
    char status[32]; /* QMP run state ("running", "paused", "inmigrate", ...), "dead", or
                      * "busy" when the monitor did not answer in time */
    char qmp_path[4096];
    char job[16];        /* the job on this VM ("migrate"), "" when none */
    char job_state[16];  /* vmig_job_state_name() of that job */
    double job_progress; /* 0..1 */
    bool persistent;     /* the VM is defined (vmig_vm_define()); status is "shut off" for a
                          * defined VM that does not run */
} vmig_vm_info;

#define VMIG_VM_LIST_TIMEOUT_MS 100 /* how long vmig_vm_list() waits for each monitor */

/* Fills up to @max entries of @out, each @size bytes (the caller's sizeof(vmig_vm_info), which
 * the macros pass, so a program built against an older, smaller struct keeps working).  Every
 * VM's reader monitor is asked at once; one that has not answered within @timeout_ms shows as
 * "busy".  Returns how many VMs there are (may exceed @max), or -1. */
VMIG_EXPORT int vmig_vm_list_sized(vmig_engine *e, vmig_vm_info *out, int max, size_t size,
                                   int timeout_ms, vmig_error **errp);
#define vmig_vm_list(e, out, max, errp)                                                            \
    vmig_vm_list_sized((e), (out), (max), sizeof(vmig_vm_info), VMIG_VM_LIST_TIMEOUT_MS, (errp))
#define vmig_vm_list_wait(e, out, max, timeout_ms, errp)                                           \
    vmig_vm_list_sized((e), (out), (max), sizeof(vmig_vm_info), (timeout_ms), (errp))

/* ---- VM definitions (persistent VMs) ---- */

/*
 * A definition keeps a VM's spec, with its UUID, while the VM is shut off, as libvirt keeps a
 * persistent domain (docs/spec.md): it survives `vm stop`, vmig_vm_list() shows a defined VM
 * that does not run as "shut off", and vmig_vm_start() of vmig_vm_definition() starts it with
 * the same UUID.  An offline migration (vmig_migrate_opts.offline) moves a definition to
 * another host.  A definition and a running VM of the same name are independent: defining a
 * running VM is allowed (its next start uses the definition), undefining one leaves it running.
 */

/* Defines VM @spec->name, or replaces its definition.  A spec without a UUID keeps the one
 * defined already, else the one the VM runs with, else gets a new one; a different UUID than
 * the one defined is refused (undefine first).  Fails when another vmigrate works on the VM. */
VMIG_EXPORT bool vmig_vm_define(vmig_engine *e, const vmig_spec *spec, vmig_error **errp);
/* Removes the definition of VM @name; VMIG_E_NOTFOUND, naming the VM, when it has none. */
VMIG_EXPORT bool vmig_vm_undefine(vmig_engine *e, const char *name, vmig_error **errp);
/* The definition of VM @name (owned: vmig_spec_free()), or NULL: VMIG_E_NOTFOUND when it is
 * not defined, VMIG_E_INVAL naming the file when that cannot be read. */
VMIG_EXPORT vmig_spec *vmig_vm_definition(vmig_engine *e, const char *name, vmig_error **errp);

/* ---- migration ---------------------------------------------------------------------------- */

/*
 * Options are a plain struct that carries its own size: vmig_migrate_opts_init() (a macro)
 * records the caller's sizeof, and the library reads no further, so a program built against
 * an older header keeps working with a newer library.  New fields are only ever appended.
 */
typedef enum vmig_policy {
    VMIG_POLICY_AUTO, /* measure the dirty rate, and act when remaining bytes stop shrinking */
    VMIG_POLICY_NONE, /* do only what the options say, as virsh migrate does */
} vmig_policy;

typedef enum vmig_timeout_action {
    VMIG_TIMEOUT_ABORT,    /* cancel and roll back: the VM runs on the source */
    VMIG_TIMEOUT_SUSPEND,  /* pause the source: the migration finishes non-live */
    VMIG_TIMEOUT_POSTCOPY, /* switch to post-copy (arms it) */
} vmig_timeout_action;

typedef struct vmig_migrate_opts {
    uint32_t size;             /* set by vmig_migrate_opts_init(); do not touch */
    bool live;                 /* pre-copy while the VM runs; false pauses the VM first */
    int max_downtime_ms;       /* 0: QEMU's default (300 ms) */
    int bandwidth_mib_s;       /* 0: unlimited (QEMU 7.2 would cap at 128 MiB/s) */
    int timeout_s;             /* 0: none; else cancel and roll back after this long */
    const char *dest;          /* "local", "local:STATE_DIR" (another state directory), or
                                * "vmig://HOST[:PORT]": an agent's host, through the relay */
    bool force;                /* migrate even if the destination's CPU cannot run the VM's */
    bool unsafe;               /* migrate live although the source QEMU is known to lose guest
                                * writes doing so (QEMU < 9.0 under TCG); warns */
    int stall_timeout_s;       /* no byte moved for this long rolls back: 0 the default (60 s),
                                * -1 never */
    const char *key_file;      /* for a vmig:// destination: the agent's pre-shared key */
    int parallel_connections;  /* 0: one stream; N >= 1: multifd with N channels (1-64) */
    int relay_bandwidth_mib_s; /* vmig://: a cap the relay's channels share; 0 none */
    /* modes */
    bool suspend;          /* leave the VM paused on the destination */
    bool offline;          /* a shut-off VM: move its definition (needs persistent) */
    bool persistent;       /* keep the VM defined on the destination */
    bool undefine_source;  /* remove the VM's definition from the source */
    const char *dest_spec; /* a spec file for the destination side (other disk paths, QEMU);
                            * name, memory, vCPUs and machine must match the VM's */
    bool postcopy_resume;  /* resume a post-copy migration whose connection broke */
    /* convergence */
    vmig_policy policy;          /* VMIG_POLICY_AUTO (the default) or VMIG_POLICY_NONE */
    int downtime_steps;          /* policy auto: downtime rises to max_downtime_ms in this many
                                  * steps (0: 4); 1 sets it at once */
    bool auto_converge;          /* throttle the guest's vCPUs when pre-copy does not converge */
    int throttle_initial;        /* percent, 0: QEMU's default (20) */
    int throttle_increment;      /* percent, 0: QEMU's default (10) */
    bool postcopy;               /* arm post-copy: `vmigrate postcopy`, the policy, or
                                  * postcopy_after_precopy / VMIG_TIMEOUT_POSTCOPY switch to it */
    bool postcopy_after_precopy; /* switch to post-copy after the first full pass */
    bool postcopy_preempt;       /* a separate channel for faulted pages (QEMU >= 8.0) */
    vmig_timeout_action timeout_action; /* what timeout_s does: abort (the default), suspend
                                         * (finish non-live) or postcopy */
    int dirty_limit_mib_s; /* per-vCPU dirty-page limit (QEMU >= 8.1, KVM's dirty ring) */
    const char *compress;  /* multifd compression: NULL/"none", "zstd" or "zlib" */
    /* storage: without these, every disk must be on storage both hosts share, which the
     * pre-flight proves (a token written beside each image must be read at the destination) */
    bool copy_storage_all;     /* copy the disks: whole images, mirrored over NBD while the
                                * VM runs (with offline: copied with qemu-img) */
    bool copy_storage_inc;     /* copy only each disk's top layer: the destination has its
                                * backing file at the same path */
    const char *migrate_disks; /* the disks to copy, "disk0,disk1" or their image paths; NULL:
                                * every writable disk.  The others must be shared */
} vmig_migrate_opts;

/* Fills in the defaults for a struct of @size bytes (the caller's sizeof). */
VMIG_EXPORT void vmig_migrate_opts_init_sized(vmig_migrate_opts *o, size_t size);
#define vmig_migrate_opts_init(o) vmig_migrate_opts_init_sized((o), sizeof(vmig_migrate_opts))

typedef struct vmig_migration_stats {
    char status[24];           /* QEMU's MigrationStatus name */
    uint64_t total_ms;         /* our clock: from the start to the destination running */
    uint64_t setup_ms;         /* preparing the destination up to `migrate` */
    uint64_t downtime_ms;      /* STOP on the source to RESUME on the destination */
    uint64_t qemu_downtime_ms; /* QEMU's own figure */
    uint64_t qemu_total_ms;    /* QEMU's total-time */
    uint64_t transferred_bytes;
    uint64_t remaining_bytes;
    uint64_t total_bytes;            /* guest RAM */
    uint64_t dirty_pages_rate;       /* pages/s, as QEMU last reported */
    uint64_t passes;                 /* dirty-sync-count */
    double mbps;                     /* QEMU's last throughput figure, megabits/s */
    double progress;                 /* 0..1: 1 - remaining / total while running */
    char cpu_check[16];              /* "passed", "forced" (--force over a mismatch), or "" */
    char vm_holder[16];              /* which side holds the VM: "source" or "destination" */
    char vm_state[16];               /* its run state there at the end: "running", "paused", ... */
    char mode[12];                   /* "precopy", "postcopy" (it switched), "offline" */
    double dirty_rate_mib_s;         /* the guest's, measured before starting (policy auto) */
    uint64_t downtime_limit_ms;      /* the limit QEMU had last */
    uint32_t throttle_pct;           /* the vCPU throttle QEMU applied last (auto-converge) */
    uint64_t postcopy_at_ms;         /* when it switched to post-copy, from the start; 0: never */
    uint64_t postcopy_requests;      /* pages the destination faulted in during post-copy */
    uint64_t setup_dirty_ms;         /* of setup_ms: measuring the dirty rate */
    uint64_t disk_total_bytes;       /* storage copy: bytes of the disks being copied */
    uint64_t disk_transferred_bytes; /* copied so far (the mirrors' offsets) */
    uint64_t disk_remaining_bytes;   /* left to copy */
    uint64_t disk_ready_ms;          /* when every mirror was in step, from the start */
    uint32_t disks_copied;           /* how many disks the migration copied */
} vmig_migration_stats;

/* What the convergence policy (or a timeout) did during a migration, in order. */
typedef struct vmig_policy_action {
    uint64_t at_ms; /* from the start of the migration */
    char what[120]; /* "downtime limit 150 ms: remaining stopped shrinking (pass 3, 41 MiB)" */
} vmig_policy_action;

/* The actions of migration @job so far into @ret (up to @max of @size bytes each: use the
 * macro); how many there are. */
VMIG_EXPORT size_t vmig_job_actions_sized(const vmig_job *job, vmig_policy_action *ret, size_t max,
                                          size_t size);
#define vmig_job_actions(job, ret, max)                                                            \
    vmig_job_actions_sized((job), (ret), (max), sizeof(vmig_policy_action))

/* @st is the library's own struct, borrowed for the call; read only the fields you know. */
typedef void (*vmig_progress_fn)(void *opaque, const vmig_migration_stats *st);

/*
 * Starts migrating VM @name to @o->dest (NULL: defaults) and returns at once.  The job moves
 * through PREPARING, MIGRATING, SWITCHOVER and FINISHING to COMPLETED: the destination runs
 * and the source is gone.  On failure or cancel it goes through ROLLING_BACK to FAILED or
 * CANCELLED, and the source runs as before (or stays paused if it was paused).  @progress
 * (may be NULL) is called about four times a second while memory moves.
 */
VMIG_EXPORT vmig_job *vmig_migrate_start(vmig_engine *e, const char *name,
                                         const vmig_migrate_opts *o, vmig_progress_fn progress,
                                         void *progress_opaque, vmig_job_done_fn done, void *opaque,
                                         vmig_error **errp);
/* The job's figures so far (final ones once it finished) into @ret of @size bytes (the
 * caller's sizeof: use the macro).  False when @job is not a migration. */
VMIG_EXPORT bool vmig_job_stats_sized(const vmig_job *job, vmig_migration_stats *ret, size_t size);
#define vmig_job_stats(job, ret) vmig_job_stats_sized((job), (ret), sizeof(vmig_migration_stats))

/* One channel of a migration through the relay (a vmig:// destination), as the source's end
 * of the relay counted it. */
typedef struct vmig_channel_stats {
    char kind[12];          /* "main", "multifd" or "preempt" */
    uint32_t index;         /* the multifd channel's id; 0 for the others */
    uint64_t bytes_out;     /* towards the destination */
    uint64_t bytes_in;      /* back from it (the return path) */
    double seconds;         /* from its first byte relayed to its end */
    double mbit_s;          /* bytes_out over seconds */
    uint64_t recv_wait_us;  /* waiting for the source QEMU to send */
    uint64_t send_wait_us;  /* waiting for the network to take it */
    uint64_t limit_wait_us; /* held back by the bandwidth cap */
    bool failed;
} vmig_channel_stats;

/* The relay's channels of migration @job (main first, then multifd by id) into @ret, up to
 * @max entries of @size bytes each (the caller's sizeof: use the macro); how many there are.
 * 0 for a migration that does not go through the relay. */
VMIG_EXPORT size_t vmig_job_channels_sized(const vmig_job *job, vmig_channel_stats *ret, size_t max,
                                           size_t size);
#define vmig_job_channels(job, ret, max)                                                           \
    vmig_job_channels_sized((job), (ret), (max), sizeof(vmig_channel_stats))

/* vmig_migrate_start() and a loop until the job finishes.  @ret_stats (may be NULL) receives
 * the final figures, on failure too. */
VMIG_EXPORT bool vmig_migrate_sized(vmig_engine *e, const char *name, const vmig_migrate_opts *o,
                                    vmig_progress_fn progress, void *opaque,
                                    vmig_migration_stats *ret_stats, size_t stats_size,
                                    vmig_error **errp);
#define vmig_migrate(e, name, o, progress, opaque, ret_stats, errp)                                \
    vmig_migrate_sized((e), (name), (o), (progress), (opaque), (ret_stats),                        \
                       sizeof(vmig_migration_stats), (errp))

/* ---- control of a running migration, from any process ---- */

/*
 * A migration runs in one process, its engine, which holds the VM's main monitor.  These calls
 * work from any process on the same state directory, as virsh's domjobinfo, domjobabort,
 * migrate-setmaxdowntime, migrate-setspeed, migrate-postcopy and domdirtyrate-calc do: they
 * read the job state file the engine keeps in the VM's directory (job.json, rewritten every
 * 250 ms) and talk to the VM's reader monitor (qmp-read.sock), never to the engine's.  They
 * wait (each QMP command at most 10 s).  @name is the VM's name in the engine's state
 * directory.  The calls that change a migration fail with VMIG_E_STATE, saying why, when no
 * migration of the VM runs, or its engine is gone (then vmig_vm_recover() cleans up).
 */
#define VMIG_JOBINFO_ACTIONS_MAX 16

/* What vmig_jobinfo_get() reports: the fields of `virsh domjobinfo`.  Figures come from QEMU
 * (query-migrate, query-migrate-parameters on the reader monitor) where it says, else from
 * the job state file; -1 (or "") when neither says. */
typedef struct vmig_jobinfo {
    char job[16];         /* "migrate"; "" when no job runs on the VM */
    char state[16];       /* vmig_job_state_name() of the job; "none" when no job runs */
    char last_state[16];  /* no job runs: how the last one ended ("cancelled", ...), or "" */
    char holder[16];      /* which side holds the VM: "source" or "destination" */
    char qemu_status[24]; /* QEMU's migration status on the VM ("active", "postcopy-active") */
    char mode[12];        /* "precopy" or "postcopy" */
    char policy[8];       /* the convergence policy: "auto" or "none" */
    int engine_pid;       /* the process that runs the job; -1 unknown */
    bool engine_alive;    /* false: it died (vmig_vm_recover() cleans up) */
    int postcopy_armed;   /* 1 when post-copy can be started (postcopy-ram), 0 not, -1 unknown */
    double progress;      /* 0..1 */
    int64_t elapsed_ms;   /* since the job started (QEMU's total-time if the job says none) */
    int64_t processed_bytes;
    int64_t remaining_bytes;
    int64_t total_bytes;      /* guest RAM */
    double mbit_s;            /* memory bandwidth, QEMU's last figure */
    double mib_s;             /* the same in MiB/s */
    int64_t dirty_pages_rate; /* pages/s */
    double dirty_mib_s;       /* the same in MiB/s */
    int64_t page_size;        /* bytes */
    int64_t iteration;        /* passes over memory (dirty-sync-count) */
    int64_t expected_downtime_ms;
    int64_t downtime_limit_ms;
    int64_t max_bandwidth_mib_s; /* QEMU's cap; 0 unlimited */
    int64_t throttle_pct;        /* cpu-throttle-percentage (auto-converge) */
    int64_t postcopy_requests;   /* pages the destination asked for in post-copy */
    int64_t downtime_ms;         /* once the job says */
    double measured_dirty_mib_s; /* the guest's dirty rate the engine measured before starting */
    char error[256];             /* the job's error (or QEMU's error-desc), "" none */
    size_t n_actions;            /* what the convergence policy did, the last ones, in order */
    vmig_policy_action actions[VMIG_JOBINFO_ACTIONS_MAX];
} vmig_jobinfo;

/* The job on VM @name into @ret of @size bytes (the caller's sizeof: use the macro).  A VM
 * without a running job is not an error: state "none". */
VMIG_EXPORT bool vmig_jobinfo_get_sized(vmig_engine *e, const char *name, vmig_jobinfo *ret,
                                        size_t size, vmig_error **errp);
#define vmig_jobinfo_get(e, name, ret, errp)                                                       \
    vmig_jobinfo_get_sized((e), (name), (ret), sizeof(vmig_jobinfo), (errp))

/* Cancels the migration of VM @name (migrate_cancel), then waits (at most 30 s) for its engine
 * to roll it back.  Refused in post-copy and once the destination holds the VM: only the
 * destination has it whole then.  @ret_what (may be NULL; free()) says how it ended: "migration
 * of VM 'web' cancelled; VM 'web' is running on the source".  False when it completed first. */
VMIG_EXPORT bool vmig_migration_abort(vmig_engine *e, const char *name, char **ret_what,
                                      vmig_error **errp);
/* QEMU's downtime-limit for the running migration, 1-2000000 ms.  Policy auto may raise it
 * again. */
VMIG_EXPORT bool vmig_migration_set_max_downtime(vmig_engine *e, const char *name, int ms,
                                                 vmig_error **errp);
/* QEMU's bandwidth cap for the running migration, MiB/s; 0 lifts it. */
VMIG_EXPORT bool vmig_migration_set_speed(vmig_engine *e, const char *name, int mib_s,
                                          vmig_error **errp);
/* Switches the running migration to post-copy (migrate-start-postcopy): the destination runs
 * the VM from then on and pulls the pages it lacks.  The migration must have armed it
 * (vmig_migrate_opts.postcopy). */
VMIG_EXPORT bool vmig_migration_postcopy(vmig_engine *e, const char *name, vmig_error **errp);

#define VMIG_DIRTYRATE_SECONDS_MAX 60

typedef struct vmig_dirtyrate_info {
    double mib_s;         /* the guest's dirty rate: QEMU's dirty-rate (it counts MiB) */
    int calc_time_s;      /* over how long it was measured */
    int64_t sample_pages; /* pages sampled per GiB of RAM */
    char mode[16];        /* "page-sampling" */
    int64_t start_time;   /* when it began, QEMU's clock: seconds since the epoch */
} vmig_dirtyrate_info;

/* Measures how fast VM @name dirties its memory, over @seconds (1-60), by sampling pages
 * (calc-dirty-rate, then query-dirty-rate until measured), waiting.  Works whether or not a
 * migration runs.  QEMU measures one at a time: VMIG_E_STATE when another is under way. */
VMIG_EXPORT bool vmig_dirtyrate_sized(vmig_engine *e, const char *name, int seconds,
                                      vmig_dirtyrate_info *ret, size_t size, vmig_error **errp);
#define vmig_dirtyrate(e, name, seconds, ret, errp)                                                \
    vmig_dirtyrate_sized((e), (name), (seconds), (ret), sizeof(vmig_dirtyrate_info), (errp))

/* ---- the destination agent ----
 *
 * `vmigrate agent` on a destination host: one TCP port through which source engines start
 * destination QEMUs there and carry their migration streams (docs/transport.md).  It runs on
 * the engine's event loop and state directory; only holders of the pre-shared key get in.
 */
typedef struct vmig_agent vmig_agent;
#define VMIG_AGENT_PORT 4790 /* when an address gives none */

typedef struct vmig_agent_opts {
    uint32_t size;        /* set by vmig_agent_opts_init(); do not touch */
    const char *listen;   /* "HOST[:PORT]" (port 0: any free one); NULL: 127.0.0.1:4790 */
    const char *key_file; /* the pre-shared key (vmig_key_create()); required */
    vmig_accel accel;     /* what guests run under here: every request must match */
} vmig_agent_opts;

VMIG_EXPORT void vmig_agent_opts_init_sized(vmig_agent_opts *o, size_t size);
#define vmig_agent_opts_init(o) vmig_agent_opts_init_sized((o), sizeof(vmig_agent_opts))
/* Listens at once; serves from vmig_engine_dispatch() on. */
VMIG_EXPORT vmig_agent *vmig_agent_new(vmig_engine *e, const vmig_agent_opts *o, vmig_error **errp);
/* "HOST:PORT" it listens on (the real port when 0 was asked for). */
VMIG_EXPORT const char *vmig_agent_address(const vmig_agent *a);
/* Stops every QEMU it started that has not taken over a VM (waits a few seconds at most). */
VMIG_EXPORT void vmig_agent_free(vmig_agent *a);
/* Creates key file @path (32 random bytes as hex, mode 0600); never overwrites one. */
VMIG_EXPORT bool vmig_key_create(const char *path, vmig_error **errp);

/* ---- CPUs ---- */

/* x86 CPUs as QEMU's -cpu names them (model, vendor, features required or disabled): libvirt's
 * CPU decode, baseline and compare without libvirt.  A CPU is a host's (raw CPUID, virsh
 * capabilities: every bit the silicon has) or a guest's (custom, host-model: what a guest is
 * given); what a guest can have on a host is what KVM gives there (docs/cpu.md).  Only the
 * _from_qemu calls start a QEMU (they wait).  Returned strings are owned: free() them. */
typedef struct vmig_cpu vmig_cpu;               /* one CPU definition */
typedef struct vmig_cpu_list vmig_cpu_list;     /* CPUs read from files, in order */
typedef struct vmig_cpu_models vmig_cpu_models; /* a table of named models */
typedef enum vmig_cpu_fmt {
    VMIG_CPU_FMT_LIBVIRT,
    VMIG_CPU_FMT_JSON,
    VMIG_CPU_FMT_QEMU /* see vmig_cpu_format() */
} vmig_cpu_fmt;
typedef enum vmig_cpu_dump { VMIG_CPU_DUMP_XML, VMIG_CPU_DUMP_JSON } vmig_cpu_dump;
enum {
    VMIG_CPU_MIGRATABLE = 1u << 0,   /* decode, baseline: drop what blocks migration (invtsc) */
    VMIG_CPU_ALL_FEATURES = 1u << 1, /* format: list the model's features too, where known */
    VMIG_CPU_GUEST = 1u << 2,        /* decode: what a guest can have on that host (KVM) */
};
typedef enum vmig_cpu_cmp {
    VMIG_CPU_CMP_ERROR = -1,
    VMIG_CPU_CMP_INCOMPATIBLE,
    VMIG_CPU_CMP_IDENTICAL,
    VMIG_CPU_CMP_SUPERSET, /* the host runs the guest's CPU and has more */
} vmig_cpu_cmp;

/* This host's CPU from CPUID: vendor, signature, all features required; NULL on failure. */
VMIG_EXPORT vmig_cpu *vmig_cpu_host(vmig_error **errp);
/* QEMU's host (KVM) or max (TCG) model, fully expanded by a QEMU it starts; NULL on failure. */
VMIG_EXPORT vmig_cpu *vmig_cpu_host_from_qemu(vmig_engine *e, vmig_accel a, vmig_error **errp);
VMIG_EXPORT void vmig_cpu_free(vmig_cpu *cpu);
/* libvirt <cpu> XML, JSON {model, vendor, require, disable}, or a -cpu argument; never NULL. */
VMIG_EXPORT char *vmig_cpu_format(const vmig_cpu *cpu, vmig_cpu_fmt fmt, unsigned flags);
/* The raw CPUID it was read from, as libvirt cpudata XML or vmigrate JSON; NULL if none. */
VMIG_EXPORT char *vmig_cpu_export(const vmig_cpu *cpu, vmig_cpu_dump fmt, vmig_error **errp);
/* True for a host's CPU (raw CPUID, a host decode, virsh capabilities' <cpu>). */
VMIG_EXPORT bool vmig_cpu_is_host(const vmig_cpu *cpu);
/* Its host-only features (libvirt names them, no guest gets them: osxsave, cmt, ...), which
 * never migrate; "" if none.  @ret_nested (may be NULL): vmx-* features read and ignored. */
VMIG_EXPORT char *vmig_cpu_host_only(const vmig_cpu *cpu, int *ret_nested);
/* Files: libvirt <cpu> XML (1+ blocks) or raw CPUID (libvirt cpudata, InstLatx64/AIDA64,
 * libcpuid, vmigrate JSON).  NULL or false on failure (the list unchanged); _get borrows. */
VMIG_EXPORT vmig_cpu_list *vmig_cpu_list_new(void);
VMIG_EXPORT vmig_cpu_list *vmig_cpu_list_load(const char *path, vmig_error **errp);
VMIG_EXPORT bool vmig_cpu_list_add_file(vmig_cpu_list *l, const char *path, vmig_error **errp);
VMIG_EXPORT bool vmig_cpu_list_add_text(vmig_cpu_list *l, const char *text, size_t len,
                                        const char *origin, vmig_error **errp);
VMIG_EXPORT void vmig_cpu_list_add(vmig_cpu_list *l, const vmig_cpu *cpu); /* a copy */
VMIG_EXPORT size_t vmig_cpu_list_count(const vmig_cpu_list *l);
VMIG_EXPORT const vmig_cpu *vmig_cpu_list_get(const vmig_cpu_list *l, size_t i); /* NULL: end */
VMIG_EXPORT void vmig_cpu_list_free(vmig_cpu_list *l);
/* The built-in table (never NULL), generated from QEMU _builtin_version() ("7.2.22"). */
VMIG_EXPORT vmig_cpu_models *vmig_cpu_models_builtin(void);
VMIG_EXPORT const char *vmig_cpu_models_builtin_version(void);
/* A live QEMU's models with @a's defaults, from a QEMU it starts; NULL on failure. */
VMIG_EXPORT vmig_cpu_models *vmig_cpu_models_from_qemu(vmig_engine *e, vmig_accel a,
                                                       vmig_error **errp);
VMIG_EXPORT void vmig_cpu_models_free(vmig_cpu_models *m);
VMIG_EXPORT size_t vmig_cpu_models_count(const vmig_cpu_models *m);
/* Model @i's name (IvyBridge-IBRS; NULL past the end), most features first, and its versioned
 * name (IvyBridge-v2), CPUID vendor and features (space-separated, owned); each may be NULL. */
VMIG_EXPORT const char *vmig_cpu_models_get(const vmig_cpu_models *m, size_t i,
                                            const char **ret_versioned, const char **ret_vendor,
                                            char **ret_features);
/* Alias @k of model @i (IvyBridge-IBRS for IvyBridge-v2); NULL past the last. */
VMIG_EXPORT const char *vmig_cpu_models_alias(const vmig_cpu_models *m, size_t i, size_t k);
/* @cpu as the cheapest model plus features (libvirt's decode); NULL on failure (VMIG_E_CPU:
 * none fits).  A host CPU decodes as a host's, nothing disabled; with VMIG_CPU_GUEST, or for a
 * guest's CPU, as what a guest can have, where disabling model features is allowed. */
VMIG_EXPORT vmig_cpu *vmig_cpu_decode(const vmig_cpu_models *m, const vmig_cpu *cpu, unsigned flags,
                                      vmig_error **errp);
/* The largest guest CPU every one of @cpus can run (host CPUs count as what KVM gives on
 * them); NULL on failure (VMIG_E_CPU: mixed vendors, ...). */
VMIG_EXPORT vmig_cpu *vmig_cpu_baseline(const vmig_cpu_models *m, const vmig_cpu_list *cpus,
                                        unsigned flags, vmig_error **errp);
/* For @base from vmig_cpu_baseline(): the features input @i took out, those every other input
 * has (@ret_alone) and those some other lacks too (@ret_shared), and, for a host CPU, its bits
 * no guest gets (@ret_not_guest).  Owned strings; false past the last input. */
VMIG_EXPORT bool vmig_cpu_baseline_explain(const vmig_cpu *base, size_t i, char **ret_alone,
                                           char **ret_shared, char **ret_not_guest);
/* Can @host run @guest?  _ERROR on failure; @ret_missing (features, "" if none) and @ret_why (a
 * sentence if incompatible, else NULL) may be NULL. */
VMIG_EXPORT vmig_cpu_cmp vmig_cpu_compare(const vmig_cpu_models *m, const vmig_cpu *host,
                                          const vmig_cpu *guest, char **ret_missing, char **ret_why,
                                          vmig_error **errp);
/* "incompatible", "identical", "superset" or "error"; libvirt's "Intel" for "GenuineIntel". */
VMIG_EXPORT const char *vmig_cpu_cmp_name(vmig_cpu_cmp r);
VMIG_EXPORT const char *vmig_cpu_vendor_name(const char *cpuid_vendor);

/* ---- QMP ------------------------------------------------------------------------------------ */

/* Runs one QMP command on the monitor at @socket_path (greeting, capabilities, the command),
 * waiting up to @timeout_ms for each.  @args_json is a JSON object or NULL.  Returns the
 * reply's "return" value as pretty JSON (free()), or NULL with an error. */
VMIG_EXPORT char *vmig_qmp_call(const char *socket_path, const char *cmd, const char *args_json,
                                int timeout_ms, vmig_error **errp);

/* ---- the built-in test guest --------------------------------------------------------------- */

/* Path of the built-in test guest kernel, or NULL when it cannot be found ($VMIG_GUEST, then
 * next to the program, then the install prefix). */
VMIG_EXPORT const char *vmig_guest_kernel(void);

/* Waits up to @timeout_ms for the test guest in VM @name to have filled its memory. */
VMIG_EXPORT bool vmig_guest_wait_ready(vmig_engine *e, const char *name, int timeout_ms,
                                       vmig_error **errp);

/* Pauses VM @name if running, checks every page the test guest wrote, and resumes it if it
 * was running.  @ret_pages receives the number of pages checked. */
VMIG_EXPORT bool vmig_guest_verify(vmig_engine *e, const char *name, uint64_t *ret_pages,
                                   vmig_error **errp);

/* The same for the disk the test guest writes (booted with vmig.disk_mib=N; its first IDE
 * disk): pauses VM @name if running, reads the image (qemu-img converts one not raw) and
 * checks every sector of the pattern; a lost or stale sector fails the check and is named.
 * @ret_sectors receives the number of sectors checked. */
VMIG_EXPORT bool vmig_guest_verify_disk(vmig_engine *e, const char *name, uint64_t *ret_sectors,
                                        vmig_error **errp);

/* ---- cleanup helper ------------------------------------------------------------------------ */

/* NOLINTBEGIN(bugprone-macro-parentheses): @type is a type name, which takes none */
#define VMIG_DEFINE_CLEANUP(type, fn)                                                              \
    static inline void type##_cleanupp(type **p)                                                   \
    {                                                                                              \
        fn(*p);                                                                                    \
    }
#define VMIG_CLEANUP(type) __attribute__((cleanup(type##_cleanupp))) type *
/* NOLINTEND(bugprone-macro-parentheses) */

#ifdef __cplusplus
}
#endif

#endif
