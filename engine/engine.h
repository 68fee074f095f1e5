/* Internals shared by the engine's files.  Not installed. */
#ifndef VMIG_ENGINE_H
#define VMIG_ENGINE_H

#include <glib.h>
#include <json-c/json.h>
#include <signal.h>
#include <sys/socket.h>

#include "common/error.h"
#include "guest/guest-abi.h"
#include "qmp/qmp.h"
#include "vmigrate.h"

#define ENG_QMP_TIMEOUT_MS 10000 /* one monitor command */
#define ENG_CONNECT_TIMEOUT_MS 5000
#define ENG_START_TIMEOUT_MS 30000 /* QEMU up and its monitor answering */
#define ENG_INCOMING_SUFFIX ".incoming"
#define ENG_READER_SOCK "qmp-read.sock" /* the monitor left to readers (vm list) */
#define ENG_JOB_FILE "job.json"         /* a job's state, for other processes */

struct vmig_engine {
    char *state_dir;
    char *qemu;
    ring *ring;
    int cancel_fd; /* eventfd written by vmig_engine_cancel() */
    int64_t cancel_op;
    uint64_t cancel_buf;
    volatile sig_atomic_t cancel_requested;
    GPtrArray *jobs; /* every job not yet released, running or not */
    vmig_log_fn log_fn;
    void *log_opaque;
    bool loop_logged;
};

void eng_log(vmig_engine *e, vmig_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A state directory vmigrate may trust: a real directory (not a link) owned by this user, that
 * no one else may write.  The error says which rule failed and what to do. */
bool eng_state_dir_check(const char *dir, vmig_error **errp);
/* Runs the ring until @pred(@opaque) holds (waiting, for the blocking calls). */
bool eng_run_until(vmig_engine *e, bool (*pred)(void *), void *opaque, vmig_error **errp);

/* ---- job.c: what every job shares ---------------------------------------------------------
 *
 * A job runs as a chain of steps.  A step starts asynchronous work (QMP calls, a QEMU
 * starting or stopping) and names the step to run when all of it has finished: a fork and a
 * join.  A failure anywhere ends the chain: once nothing is in flight, the job's fail step
 * runs (a migration rolls back).  A step may also wait for a condition that events make true,
 * with a deadline.  Every change of state goes through eng_job_set_state(from, to).
 */
typedef void (*eng_step_fn)(vmig_job *j);
/* A QMP reply for the job: @ret borrowed; return false with an error to fail the job. */
typedef bool (*eng_reply_fn)(vmig_job *j, json_object *ret, vmig_error **errp);
/* The same for calls whose failure is not the job's: @err says why (borrowed), @ret NULL. */
typedef void (*eng_reply_opt_fn)(vmig_job *j, json_object *ret, const vmig_error *err);
typedef bool (*eng_pred_fn)(vmig_job *j);

typedef struct eng_job_ops {
    const char *name;                /* "migrate", "vm-start", ... */
    const char *what;                /* "migration", in "migration cancelled" */
    bool (*may_cancel)(vmig_job *j); /* NULL: always */
    eng_step_fn fail;          /* runs once when the job fails: roll back, then eng_job_end() */
    void (*free)(vmig_job *j); /* the kind's own data */
} eng_job_ops;

struct vmig_job {
    vmig_engine *e;
    vmig_job_kind kind;
    const eng_job_ops *ops;
    vmig_job_state state;
    vmig_error *err;
    vmig_job_done_fn done;
    void *done_opaque;
    bool orphan;    /* the caller let go: the engine frees it when it ends */
    bool cancelled; /* vmig_job_cancel() or vmig_engine_cancel() */
    bool failing;   /* the fail step has been scheduled or runs */
    bool ended;
    bool advancing;       /* advance() runs: steps run from its loop, never nested */
    bool release_pending; /* freed while advancing: released when the loop is done */
    int pending;          /* asynchronous work the current step waits for */
    eng_step_fn next;
    eng_pred_fn wait_pred;
    eng_step_fn wait_next;
    int64_t wait_timer;
    char *wait_what; /* names the condition in a timeout error */
    int wait_ms;
    int64_t tick_timer;
    int tick_ms;
    eng_step_fn tick;
    char *state_file; /* where the job's state is kept for other processes, or NULL */
    int locks[2];     /* eng_job_lock(): held until the job ends; -1 when unused */
    char *lock_paths[2];
    int64_t state_written_ms;
    bool state_write_failed; /* warned once until a write succeeds again */
    void *data;              /* the kind's own state */
};

vmig_job *eng_job_new(vmig_engine *e, vmig_job_kind kind, const eng_job_ops *ops, void *data,
                      vmig_job_done_fn done, void *opaque);
/* Compare-and-set: false (and a logged bug) when the job is not in @from. */
bool eng_job_set_state(vmig_job *j, vmig_job_state from, vmig_job_state to);
/* Runs @next once nothing the current step started is in flight. */
void eng_job_then(vmig_job *j, eng_step_fn next);
/* Starts a QMP call the step waits for; @fn stores what it needs from the reply. */
void eng_job_call(vmig_job *j, qmp_conn *c, const char *cmd, json_object *args, eng_reply_fn fn);
/* The same, for a call whose failure is left to @fn. */
void eng_job_call_opt(vmig_job *j, qmp_conn *c, const char *cmd, json_object *args,
                      eng_reply_opt_fn fn);
/* Asynchronous work of another kind: begin before starting it, end when it finished. */
void eng_job_hold(vmig_job *j);
void eng_job_release(vmig_job *j);
/* Fails the job with @err (stolen); the first error wins.  The fail step runs once nothing is
 * in flight. */
void eng_job_fail(vmig_job *j, vmig_error *err);
/* Waits until @pred holds (checked now, and at each eng_job_kick()) and then runs @next;
 * after @timeout_ms (0: none) the job fails with VMIG_E_TIMEOUT naming @what. */
void eng_job_wait(vmig_job *j, eng_pred_fn pred, int timeout_ms, const char *what,
                  eng_step_fn next);
/* Something happened (an event): re-checks the condition waited for. */
void eng_job_kick(vmig_job *j);
/* Runs @tick every @ms until eng_job_stop_tick(). */
void eng_job_start_tick(vmig_job *j, int ms, eng_step_fn tick);
void eng_job_stop_tick(vmig_job *j);
/* The job reached its final state (COMPLETED, FAILED or CANCELLED): done callback. */
void eng_job_end(vmig_job *j, vmig_job_state final);
/* Takes the lock of VM @name in @state_dir for the job's life (at most two): every operation
 * that changes a VM's directory holds it, so two vmigrate processes never work on one VM.
 * Fails at once, naming the VM, when another holds it. */
bool eng_job_lock(vmig_job *j, const char *state_dir, const char *name, vmig_error **errp);
/* The same lock without a job: its fd (its path in @ret_path), or -1 with an error. */
int eng_lock_vm(const char *state_dir, const char *name, char **ret_path, vmig_error **errp);
void eng_unlock_vm(int fd, char *path);
/* vmig_engine_free(): every job lets go of the engine; those the caller holds stay as shells
 * for vmig_job_free(). */
void eng_jobs_detach(vmig_engine *e);
/* Writes @obj (borrowed) as the job's state file, atomically. */
void eng_job_write_state(vmig_job *j, json_object *obj);

/* ---- spec.c ------------------------------------------------------------------------------ */

#define ENG_DISK_ID_FMT "disk%u" /* the -drive id of disk N: its name in block jobs */

typedef struct eng_disk {
    char *path;
    char *format;
    char *interface;
    char *cache; /* QEMU's cache mode; NULL: QEMU's default (writeback) */
    bool readonly;
} eng_disk;

struct vmig_spec {
    char *name;
    uint64_t memory_mib;
    int vcpus;
    char *machine;
    char *cpu;
    char *kernel;
    char *initrd;
    char *append;
    char *uuid;            /* filled in at the first start; the destination reuses it */
    char *qemu;            /* the QEMU binary for this VM; NULL: the engine's */
    GPtrArray *disks;      /* eng_disk * */
    GPtrArray *extra_args; /* char * */
};

G_DEFINE_AUTOPTR_CLEANUP_FUNC(vmig_spec, vmig_spec_free)

/* Relative paths in the spec are resolved against @base_dir (may be NULL: the cwd). */
vmig_spec *eng_spec_from_json(json_object *obj, const char *origin, const char *base_dir,
                              vmig_error **errp);
vmig_spec *eng_spec_copy(const vmig_spec *s);
/* The spec as JSON (what vmig_spec_to_json() prints); owned. */
json_object *eng_spec_to_obj(const vmig_spec *s);
bool eng_spec_name_valid(const char *name);

typedef struct eng_launch {
    const char *qemu;
    const char *dir; /* absolute instance directory */
    vmig_accel accel;
    bool incoming; /* -incoming defer -S */
} eng_launch;

/* The QEMU argv (NULL-terminated, owned strings) for @s under @l: the engine's monitor
 * (qmp.sock) and the readers' (qmp-read.sock). */
GPtrArray *eng_spec_argv(const vmig_spec *s, const eng_launch *l);

/* ---- vm.c -------------------------------------------------------------------------------- */

/* A QEMU the engine knows: an instance directory under a state directory. */
typedef struct eng_vm {
    vmig_engine *e;
    char *name;
    char *dir;
    vmig_spec *spec;
    vmig_accel accel;
    int pid;
    qmp_conn *qmp;
    int guard_fd;       /* lifeline to the guard of a destination, until released; else -1 */
    char *remote_token; /* a QEMU an agent started (link.c): its token; NULL for ours */
    char *remote_uri;   /* its incoming migration address there */
} eng_vm;

void eng_vm_free(eng_vm *vm);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(eng_vm, eng_vm_free)

char *eng_vm_dir(const char *state_dir, const char *name);
/* Finds a running VM by its instance directory (no monitor connection yet). */
eng_vm *eng_vm_find(vmig_engine *e, const char *dir, vmig_error **errp);
/* Connects the VM's monitor and starts the handshake; @ready runs when it is done. */
bool eng_vm_connect(eng_vm *vm, qmp_event_fn ev, void *opaque, qmp_ready_fn ready,
                    void *ready_opaque, vmig_error **errp);
/* The same, waiting. */
bool eng_vm_connect_sync(eng_vm *vm, vmig_error **errp);
void eng_vm_disconnect(eng_vm *vm);
/* Removes an instance directory and the files in it. */
void eng_vm_remove_dir(const char *dir);
/* Lets a guarded QEMU outlive the engine (the switchover); freeing the VM unreleased kills it.
 * False with an error when the guard is gone: then it is not known to live on. */
bool eng_vm_release_guard(eng_vm *vm, vmig_error **errp);
/* Cleans up after a migration whose vmigrate died (recover.c), the VM's lock held: a source
 * left paused or migrating to nobody, a destination in FINAL_DIR.incoming.  @ret_what says what
 * was done ("" for nothing). */
bool eng_vm_recover_locked(vmig_engine *e, const char *src_dir, const char *final_dir,
                           char **ret_what, vmig_error **errp);
/* Whether the VM's QEMU process still exists. */
bool eng_vm_alive(const eng_vm *vm);
/* Last lines of the VM's QEMU stderr, for error messages ("" when none). */
char *eng_vm_log_tail(const eng_vm *vm);
/* QEMU's run state into @buf (waiting). */
const char *eng_vm_run_state(eng_vm *vm, char *buf, size_t len, vmig_error **errp);

/* Starting a QEMU, asynchronously: spawn it, wait for its monitor, handshake, and a
 * query-status that names a run state.  @done gets the VM (owned) or an error (borrowed). */
typedef void (*eng_launch_fn)(void *opaque, eng_vm *vm, const vmig_error *err);
typedef struct eng_launch_req {
    const vmig_spec *spec; /* copied */
    const char *dir;       /* absolute instance directory; created, must not hold a live VM */
    vmig_accel accel;
    bool incoming;    /* -incoming defer -S */
    bool guard;       /* killed when the engine dies, until eng_vm_release_guard() */
    bool probe;       /* -machine none, in a fresh directory below the state directory */
    const char *qemu; /* a probe's binary; NULL: the engine's (others: the spec's, else it) */
    qmp_event_fn ev;
    void *ev_opaque;
} eng_launch_req;
bool eng_vm_launch(vmig_engine *e, const eng_launch_req *req, eng_launch_fn done, void *opaque,
                   vmig_error **errp);
/* Stopping a QEMU, asynchronously: quit over QMP (SIGTERM without a monitor), SIGKILL after
 * @timeout_ms, and done when the process is gone.  @vm stays the caller's. */
typedef void (*eng_kill_fn)(void *opaque, const vmig_error *err);
void eng_vm_kill(eng_vm *vm, int timeout_ms, eng_kill_fn done, void *opaque);
/* Retires the source of a VM that moved: SIGKILL, never quit.  QEMU's exit unlinks its pid
 * file and listening sockets by path, and a VM that came in by migration has the paths of its
 * staging directory (NAME.incoming), where its own next destination lives now. */
void eng_vm_retire(eng_vm *vm, int timeout_ms, eng_kill_fn done, void *opaque);
/* The same two, waiting (tests, probes). */
eng_vm *eng_vm_launch_sync(vmig_engine *e, const eng_launch_req *req, vmig_error **errp);
bool eng_vm_kill_sync(eng_vm *vm, int timeout_ms, vmig_error **errp);
bool eng_vm_retire_sync(eng_vm *vm, int timeout_ms, vmig_error **errp);
/* A probe QEMU is done with: killed and its directory removed, without waiting. */
void eng_vm_discard(eng_vm *vm);

/* A throwaway QEMU (-machine none) to ask things of, waiting; eng_qemu_probe_end() after
 * freeing the connection. */
qmp_conn *eng_qemu_probe(vmig_engine *e, vmig_accel accel, int *ret_pid, char **ret_dir,
                         vmig_error **errp);
void eng_qemu_probe_end(int pid, const char *dir);
/* Removes the probes (and kills their QEMUs) of vmigrate processes that are gone. */
void eng_clean_stale_probes(vmig_engine *e);
const char *eng_accel_name(vmig_accel a);
bool eng_accel_parse(const char *s, vmig_accel *ret);
/* "HOST[:PORT]" and "[V6]:PORT" (agent.c); the port is @default_port when absent. */
bool eng_parse_hostport(const char *s, int default_port, char **ret_host, int *ret_port,
                        vmig_error **errp);
/* The first address of @host (waits on the resolver). */
bool eng_resolve(const char *host, int port, struct sockaddr_storage *ret, socklen_t *ret_len,
                 vmig_error **errp);
/* Writes @text to @path atomically. */
bool eng_write_file(const char *path, const char *text, vmig_error **errp);

/* ---- preflight.c ------------------------------------------------------------------------- */

typedef struct eng_qemu_version {
    int major, minor, micro;
    char package[64];
} eng_qemu_version;

/* major * 10000 + minor * 100 + micro */
int eng_qemu_version_code(const eng_qemu_version *v);
const char *eng_qemu_version_str(const eng_qemu_version *v, char *buf, size_t len);
/* Reads a query-version reply, type-checked. */
bool eng_qemu_version_parse(json_object *reply, eng_qemu_version *ret, vmig_error **errp);
bool eng_qemu_version_query(qmp_conn *c, eng_qemu_version *ret, vmig_error **errp);
/* Whether a QEMU runs its guest under TCG, from its query-kvm reply (not enabled). */
bool eng_qemu_tcg_parse(json_object *reply, bool *ret, vmig_error **errp);
/* Whether the QEMU at @c runs its guest under TCG (query-kvm: not enabled). */
bool eng_qemu_uses_tcg(qmp_conn *c, bool *ret, vmig_error **errp);
/* Whether @machine names one fixed machine version (pc-i440fx-7.2), not an alias (pc). */
bool eng_machine_is_versioned(const char *machine);
/* The machine type @machine names in a query-machines reply (its own name, or the type it is
 * an alias of), or NULL when that QEMU has no such type.  Owned string. */
char *eng_machine_resolve(json_object *machines, const char *machine);

enum { ENG_MACHINE_UNCHECKED, ENG_MACHINE_KNOWN, ENG_MACHINE_UNKNOWN };

/* What the pre-flight checks decide on. */
typedef struct eng_preflight {
    const char *vm;
    eng_qemu_version src, dst;
    const char *machine;     /* the spec's machine type */
    const char *src_machine; /* what it resolves to on the source (may be NULL) */
    int dst_machine_known;   /* ENG_MACHINE_*: whether the destination has that type */
    bool live, src_tcg, unsafe;
} eng_preflight;

/* Refuses a migration to an older QEMU, or between QEMU versions with an unversioned machine
 * type, or to a QEMU that lacks the machine type; the message names both versions. */
bool eng_preflight_versions(const eng_preflight *p, vmig_error **errp);
/* Refuses a live migration a QEMU < 9.0 under TCG would corrupt, unless @p->unsafe, in which
 * case *ret_warn is set and the caller warns. */
bool eng_preflight_tcg(const eng_preflight *p, bool *ret_warn, vmig_error **errp);

/* ---- verify.c ---------------------------------------------------------------------------- */

typedef struct eng_verify_result {
    uint64_t pages_checked;
    uint64_t bad_pages;
    uint32_t first_bad;    /* index of the first bad page */
    uint32_t expected_gen; /* what it should have held */
    uint32_t found_magic, found_index, found_gen;
    bool content_bad; /* header right, body wrong */
} eng_verify_result;

/* Checks @n pages starting at index @first against @st (pure: for tests). */
void eng_verify_pages(const struct vmig_guest_status *st, uint32_t first, const uint8_t *buf,
                      uint32_t n, eng_verify_result *res);
/* Whether a status block the guest wrote fits a VM of @ram_bytes (page size, page range,
 * cursor): the guest's numbers drive what is read. */
bool eng_guest_status_check(const struct vmig_guest_status *st, uint64_t ram_bytes,
                            vmig_error **errp);
/* Reads the status block of the test guest from @vm's memory. */
bool eng_guest_status(eng_vm *vm, struct vmig_guest_status *ret, vmig_error **errp);
bool eng_guest_verify(eng_vm *vm, uint64_t *ret_pages, vmig_error **errp);

/* ---- verify-disk.c: the test guest's disk, and QEMU's tools ------------------------------- */

/* Checks @n sectors starting at @first against the disk fields of @st (pure: for tests). */
void eng_verify_sectors(const struct vmig_guest_status *st, uint32_t first, const uint8_t *buf,
                        uint32_t n, eng_verify_result *res);
/* Pauses @vm if running, checks the image of the disk its test guest writes, resumes it. */
bool eng_guest_verify_disk(eng_vm *vm, uint64_t *ret_sectors, vmig_error **errp);
/* ---- tool.c ---- */
/* Path of QEMU's tool @tool (qemu-img, qemu-nbd): beside the engine's QEMU, else on PATH;
 * NULL when there is none.  Owned. */
char *eng_qemu_tool(const vmig_engine *e, const char *tool);
/* Runs @argv (NULL-terminated) to its end, killed after @timeout_s; false with an error that
 * quotes what it wrote on stderr. */
bool eng_run_tool(const char *const *argv, int timeout_s, vmig_error **errp);
/* The same, keeping what it wrote on stdout (owned). */
bool eng_run_tool_out(const char *const *argv, int timeout_s, char **ret_out, vmig_error **errp);
/* A tool running on the ring (qemu-img convert -p): @progress (may be NULL) with 0..1 as it
 * prints "(N/100%)", then @done once with NULL or an error that quotes its output.  Freeing
 * it before then kills it, and @done does not run. */
typedef struct eng_tool eng_tool;
typedef void (*eng_tool_progress_fn)(void *opaque, double done);
typedef void (*eng_tool_done_fn)(void *opaque, const vmig_error *err);
eng_tool *eng_tool_start(vmig_engine *e, const char *const *argv, eng_tool_progress_fn progress,
                         eng_tool_done_fn done, void *opaque, vmig_error **errp);
bool eng_tool_running(const eng_tool *t);
void eng_tool_free(eng_tool *t);

/* ---- storage.c: what the destination side does for a migration's disks ------------------- */

#define ENG_IMAGE_DIR "images"  /* in the state directory: images a storage copy created */
#define ENG_NBD_SOCK "nbd.sock" /* in a destination's directory: its NBD server */
/* The shared-storage proof at the destination: @args {"disks":[{id, path, format, size,
 * token_path, token}]}; false with an error naming the disk that fails. */
bool eng_storage_check(vmig_engine *e, json_object *args, vmig_error **errp);
/* Creates the images of a storage copy (@arr: [{disk, format, size, backing?,
 * backing_format?}]) in @image_dir, points @spec's disks at them, and adds their paths to
 * @created (also on failure, for eng_storage_remove()). */
bool eng_storage_create(vmig_engine *e, const char *image_dir, const char *vm, json_object *arr,
                        vmig_spec *spec, GPtrArray *created, vmig_error **errp);
/* One new image for disk @idx of VM @vm in @dir (qemu-img create; a qcow2 over @backing if
 * given), added to @created; its path. */
bool eng_storage_new_image(vmig_engine *e, const char *dir, const char *vm, unsigned idx,
                           const char *format, uint64_t size, const char *backing,
                           const char *backing_fmt, GPtrArray *created, char **ret_path,
                           vmig_error **errp);
/* qemu-img info -U of @path: its format and virtual size. */
bool eng_image_info(vmig_engine *e, const char *path, char **ret_format, uint64_t *ret_size,
                    vmig_error **errp);
/* The readers of what peers send, checked (pure: fuzzed) ------------------------------------ */
/* query-block's entry of drive @device: format, virtual size, backing file, read-only. */
typedef struct eng_block_info {
    char *format, *backing, *backing_fmt;
    uint64_t size;
    bool ro;
} eng_block_info;
bool eng_block_info_read(json_object *ret, const char *device, eng_block_info *out,
                         vmig_error **errp);
void eng_block_info_clear(eng_block_info *b);
/* query-block-jobs' entry of job @job: false when it is not listed (or malformed). */
bool eng_block_job_read(json_object *ret, const char *job, uint64_t *len, uint64_t *offset,
                        bool *ready);
/* One disk of a storage-check request (strings borrowed from @d). */
typedef struct eng_share_check {
    const char *id, *path, *format, *token_path, *token;
    uint64_t size;
} eng_share_check;
bool eng_share_check_read(json_object *d, eng_share_check *out, vmig_error **errp);
/* One image to create for a storage copy (the launch's "storage" entries). */
typedef struct eng_image_req {
    int64_t disk;
    const char *format, *backing, *backing_format;
    uint64_t size;
} eng_image_req;
bool eng_image_req_read(json_object *c, eng_image_req *out, vmig_error **errp);
/* Removes the images in @created (may be NULL) and empties it. */
void eng_storage_remove(GPtrArray *created);

/* ---- define.c: VM definitions (persistent VMs) ------------------------------------------------
 *
 * A definition is a VM's spec kept while it is shut off: STATE_DIR/.defined/NAME.json, with the
 * VM's UUID.  None of these take the VM's lock: the caller holds it (a job's eng_job_lock(), or
 * eng_lock_vm()), or, like vmig_vm_define(), takes it around the call.
 */
#define ENG_DEF_DIR ".defined"

/* STATE_DIR/.defined/NAME.json (owned). */
char *eng_def_path(const char *state_dir, const char *name);
bool eng_def_exists(const char *state_dir, const char *name);
/* The definition of VM @name (owned): VMIG_E_NOTFOUND naming the VM when there is none; an
 * unreadable file or one naming another VM is an error that names the file. */
vmig_spec *eng_def_load(const char *state_dir, const char *name, vmig_error **errp);
/* Defines @spec (borrowed) or replaces its definition, atomically.  Without a UUID it keeps the
 * one defined already, else the running instance's (STATE_DIR/NAME/spec.json), else a new
 * one; a UUID other than the one defined already is refused. */
bool eng_def_write(const char *state_dir, const vmig_spec *spec, vmig_error **errp);
/* Defines running VM @name from its effective spec (STATE_DIR/NAME/spec.json, with its UUID):
 * what --persistent keeps on a destination after a live migration. */
bool eng_def_write_running(const char *state_dir, const char *name, vmig_error **errp);
/* VMIG_E_NOTFOUND naming the VM when it is not defined. */
bool eng_def_remove(const char *state_dir, const char *name, vmig_error **errp);
/* Fails (VMIG_E_STATE, naming what is there) when @state_dir defines VM @name or has an
 * instance directory of it (NAME or NAME.incoming, running or not). */
bool eng_def_check_free(const char *state_dir, const char *name, vmig_error **errp);
/* The names of the VMs defined in @state_dir (owned strings), unsorted. */
GPtrArray *eng_def_names(const char *state_dir);

/* ---- offline.c: offline migration (--offline --persistent) ----------------------------------
 *
 * Moves a shut-off VM's definition to the destination ("local:STATE_DIR" or "vmig://", where
 * the agent's "define" op writes it) and, with @o->undefine_source, removes it here.  A job of
 * kind VMIG_JOB_MIGRATE with its own ops: vmig_migrate_start() hands an @o with o->offline to
 * it (the caller's struct, any size: read up to o->size), and the job queries ask
 * eng_job_is_offline() before reading j->data as a live migration's.
 */
vmig_job *eng_offline_start(vmig_engine *e, const char *name, const vmig_migrate_opts *o,
                            vmig_progress_fn progress, void *progress_opaque, vmig_job_done_fn done,
                            void *opaque, vmig_error **errp);
bool eng_job_is_offline(const vmig_job *j);
/* The job's figures (mode "offline"); false when @j is not an offline migration. */
bool eng_offline_stats(const vmig_job *j, vmig_migration_stats *st);

#endif
