/* Internals shared by the engine's files.  Not installed. */
#ifndef VMIG_ENGINE_H
#define VMIG_ENGINE_H

#include <glib.h>
#include <json-c/json.h>
#include <signal.h>

#include "common/error.h"
#include "engine/loop.h"
#include "guest/guest-abi.h"
#include "qmp/qmp.h"
#include "vmigrate.h"

#define ENG_QMP_TIMEOUT_MS 10000   /* one monitor command */
#define ENG_CONNECT_TIMEOUT_MS 5000
#define ENG_START_TIMEOUT_MS 30000 /* QEMU up and its monitor answering */
#define ENG_INCOMING_SUFFIX ".incoming"

struct vmig_engine {
    char *state_dir;
    char *qemu;
    eng_loop *loop;
    int cancel_fd; /* eventfd written by vmig_engine_cancel() */
    int cancel_watch;
    volatile sig_atomic_t cancel_requested;
    vmig_log_fn log_fn;
    void *log_opaque;
    bool loop_logged;
};

void eng_log(vmig_engine *e, vmig_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- spec.c ------------------------------------------------------------------------------ */

typedef struct eng_disk {
    char *path;
    char *format;
    char *interface;
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
    char *uuid; /* filled in at the first start; the destination reuses it */
    GPtrArray *disks;      /* eng_disk * */
    GPtrArray *extra_args; /* char * */
};

G_DEFINE_AUTOPTR_CLEANUP_FUNC(vmig_spec, vmig_spec_free)

/* Relative paths in the spec are resolved against @base_dir (may be NULL: the cwd). */
vmig_spec *eng_spec_from_json(json_object *obj, const char *origin, const char *base_dir,
                              vmig_error **errp);
vmig_spec *eng_spec_copy(const vmig_spec *s);
bool eng_spec_name_valid(const char *name);

typedef struct eng_launch {
    const char *qemu;
    const char *dir; /* absolute instance directory */
    vmig_accel accel;
    bool incoming;   /* -incoming defer -S */
} eng_launch;

/* The QEMU argv (NULL-terminated, owned strings) for @s under @l. */
GPtrArray *eng_spec_argv(const vmig_spec *s, const eng_launch *l);

/* ---- vm.c -------------------------------------------------------------------------------- */

/* A running QEMU the engine knows: an instance directory under a state directory. */
typedef struct eng_vm {
    vmig_engine *e;
    char *name;
    char *dir;
    vmig_spec *spec;
    int pid;
    qmp_conn *qmp;
    int watch;
} eng_vm;

void eng_vm_free(eng_vm *vm);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(eng_vm, eng_vm_free)

char *eng_vm_dir(const char *state_dir, const char *name);
/* Starts QEMU in instance directory @dir (created; must not hold a live VM). */
eng_vm *eng_vm_launch(vmig_engine *e, const vmig_spec *spec, const char *dir, vmig_accel accel,
                      bool incoming, vmig_error **errp);
/* Finds a running VM by its instance directory. */
eng_vm *eng_vm_find(vmig_engine *e, const char *dir, vmig_error **errp);
/* Connects the VM's monitor and puts it on the engine's loop. */
bool eng_vm_connect(eng_vm *vm, qmp_event_fn ev, void *opaque, vmig_error **errp);
void eng_vm_disconnect(eng_vm *vm);
/* quit, then SIGKILL after @timeout_ms; waits for the process to be gone. */
bool eng_vm_kill(eng_vm *vm, int timeout_ms, vmig_error **errp);
/* QEMU's run state ("running", "paused", ...) into @buf, via query-status. */
const char *eng_vm_run_state(eng_vm *vm, char *buf, size_t len, vmig_error **errp);
/* Removes an instance directory and the files in it. */
void eng_vm_remove_dir(const char *dir);
/* Whether the VM's QEMU process still exists. */
bool eng_vm_alive(const eng_vm *vm);
/* Last lines of the VM's QEMU stderr, for error messages ("" when none). */
char *eng_vm_log_tail(const eng_vm *vm);
/* A throwaway QEMU (-machine none) to ask things of, such as its host CPU model; stop it with
 * eng_qemu_probe_end() after freeing the connection. */
qmp_conn *eng_qemu_probe(vmig_engine *e, vmig_accel accel, int *ret_pid, char **ret_dir,
                         vmig_error **errp);
void eng_qemu_probe_end(int pid, const char *dir);
/* Runs the loop until @pred(@opaque) holds or @timeout_ms passed. */
bool eng_wait_until(vmig_engine *e, bool (*pred)(void *), void *opaque, int timeout_ms);
/* Frees @vm's accelerator field names: tcg or kvm, for the instance's accel file. */
const char *eng_accel_name(vmig_accel a);
bool eng_accel_parse(const char *s, vmig_accel *ret);
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
    uint32_t first_bad;     /* index of the first bad page */
    uint32_t expected_gen;  /* what it should have held */
    uint32_t found_magic, found_index, found_gen;
    bool content_bad;       /* header right, body wrong */
} eng_verify_result;

/* Checks @n pages starting at index @first against @st (pure: for tests). */
void eng_verify_pages(const struct vmig_guest_status *st, uint32_t first, const uint8_t *buf,
                      uint32_t n, eng_verify_result *res);
/* Reads the status block of the test guest from @vm's memory. */
bool eng_guest_status(eng_vm *vm, struct vmig_guest_status *ret, vmig_error **errp);
bool eng_guest_verify(eng_vm *vm, uint64_t *ret_pages, vmig_error **errp);

#endif
