/* What the migration job's files share (migrate.c, migrate-prepare.c).  Not for other files. */
#ifndef VMIG_ENGINE_MIGRATE_PRIV_H
#define VMIG_ENGINE_MIGRATE_PRIV_H

#include "engine.h"
#include "link.h"
#include "transport/relay.h"

typedef enum mig_status {
    MS_NONE,
    MS_SETUP,
    MS_ACTIVE,
    MS_CANCELLING,
    MS_PRE_SWITCHOVER,
    MS_DEVICE,
    MS_WAIT_UNPLUG,
    MS_POSTCOPY_ACTIVE,
    MS_POSTCOPY_PAUSED,
    MS_POSTCOPY_RECOVER_SETUP,
    MS_POSTCOPY_RECOVER,
    MS_COLO,
    MS_COMPLETED,
    MS_FAILED,
    MS_CANCELLED,
    MS_UNKNOWN, /* a name this QEMU has and we do not: treated as active */
    MS_COUNT,
} mig_status;

extern const char *const mig_status_names[MS_COUNT];
mig_status mig_status_parse(const char *s);
bool mig_status_active(mig_status s);

typedef struct mig_disk mig_disk;
void mig_disk_free(mig_disk *d);

typedef struct mig {
    vmig_migrate_opts o; /* the caller's, at our size; o.dest points at dest */
    char *dest;
    char *name;
    vmig_progress_fn progress;
    void *progress_opaque;
    eng_vm *src, *dst, *probe;
    char *dest_state;
    char *final_dir; /* where the VM lives after success */
    char *uri;
    char *dst_cpu; /* the VM's effective -cpu for the destination */
    bool was_running;
    bool dest_took_over; /* past the point of no return */
    bool src_closed, dst_closed;
    char *src_closed_why; /* what the source's monitor connection ended with */
    int64_t src_grace_deadline;
    mig_status src_status, dst_status;
    int64_t src_stop_us, dst_resume_us;
    int64_t t0, t_migrate, resume_deadline, cancel_deadline, dst_grace_deadline;
    bool poll_in_flight;
    uint64_t progress_bytes; /* transferred at the last sign of progress */
    int64_t progress_ms;
    vmig_migration_stats st;
    /* what the pre-flight learns */
    char src_state[32];
    json_object *blocked;                     /* query-migrate's blocked-reasons, owned */
    json_object *src_machines, *dst_machines; /* query-machines, owned */
    eng_preflight pf;
    char *cpu_path;
    json_object *qom_words, *qom_filtered, *qom_vendor, *qom_msrs; /* owned */
    json_object *dst_expansion;                                    /* owned */
    char *host_cpu_file; /* the destination's host-cpu.xml, when there is one */
    char *fail_desc;     /* query-migrate's error-desc after a failure */
    /* a vmig:// destination */
    eng_link *link; /* its agent, else NULL */
    bool link_closed;
    char *link_why;
    tp_source_relay *relay;
    tp_limiter *limiter; /* the relay's shared cap, or NULL */
    char *relay_why;     /* the first channel that failed */
    char *src_uri;       /* where the source migrates to (the relay's socket, or m->uri) */
    tp_channel_stats chan[TP_CHANNELS_MAX + 2]; /* the relay's channels, kept at its end */
    size_t n_chan;
    GArray *actions; /* vmig_policy_action: what the policy and timeouts did */
    /* convergence (converge.c) */
    json_object *src_caps, *dst_caps; /* query-migrate-capabilities, owned */
    bool pc_armed;                    /* postcopy-ram set on both sides */
    bool pc_requested;                /* migrate-start-postcopy sent */
    bool pc_switched;                 /* the source reached postcopy-active */
    bool pc_paused;                   /* it broke: both sides hold part of the VM */
    bool throttle_armed;              /* auto-converge set */
    bool throttle_released;           /* the policy let the throttle rise */
    bool suspended;                   /* the timeout paused the source */
    bool timed_out;
    bool dst_gone_asked;             /* the source was asked why its destination left */
    bool cancelled_here;             /* we sent migrate_cancel (not another process) */
    uint64_t max_downtime_ms;        /* the limit the policy may rise to */
    uint64_t downtime_now_ms;        /* what QEMU has now */
    uint64_t expected_downtime_ms;   /* QEMU's estimate */
    uint64_t qm_syncs;               /* dirty-sync-count in the last query-migrate */
    uint64_t page_size;              /* query-migrate's ram page-size (4096 if none) */
    uint64_t pass_seen;              /* the last pass the policy looked at */
    uint64_t best_remaining;         /* the least remaining at a pass boundary */
    bool pass_acted;                 /* the policy has acted once */
    int stall_passes;                /* pass boundaries since remaining last shrank */
    int64_t dirty_deadline;          /* calc-dirty-rate: until when to wait */
    int64_t dirty_t0, dirty_wait_t0; /* when it was asked, when the wait began */
    bool dirty_measured;
    void (*after_dirty)(vmig_job *j);
    vmig_spec *dest_spec; /* --dest-spec, checked against the VM's */
    /* storage (storage.c) */
    GPtrArray *disks;             /* mig_disk *: what the source's query-block says */
    bool copy_storage;            /* --copy-storage-all or -inc */
    GPtrArray *created;           /* char *: images made for the destination (local) */
    char *nbd_dst_path;           /* the destination QEMU's NBD server socket */
    char *nbd_src_path;           /* where the source's NBD clients connect (it, or the relay) */
    tp_source_relay *nbd_relay;   /* vmig://: the NBD clients' relay to the agent */
    tp_channel_stats nbd_chan[8]; /* its channels, kept at its end */
    size_t n_nbd_chan;
    bool mirroring;           /* mirrors started and not yet finished */
    bool jobs_in_flight;      /* query-block-jobs sent */
    bool pre_switchover_done; /* the mirrors finished at pre-switchover */
    char *mirror_error;       /* the first mirror that failed, and why */
    int64_t cleanup_deadline; /* rollback: waiting for cancelled mirrors */
    uint64_t mirror_bytes;    /* copied at the mirrors' last sign of progress */
    int64_t mirror_progress_ms;
    eng_step_fn storage_next;
} mig;

/* converge.c: the options of convergence and modes, checked before anything runs. */
bool mig_converge_opts(mig *m, vmig_error **errp);
/* ...and against what the QEMUs are and have (capabilities, accelerator). */
bool mig_converge_preflight(mig *m, vmig_error **errp);
/* migrate-set-capabilities' arguments for each side: every capability vmigrate manages. */
json_object *mig_converge_caps(const mig *m, bool source);
/* Adds the parameters of convergence to the arguments for each side. */
void mig_converge_params(const mig *m, json_object *args, bool source);
/* The guest's dirty rate (policy auto): calc-dirty-rate, sent while the destination starts;
 * then a step that waits for the figure before the migration starts. */
void mig_dirty_rate_start(vmig_job *j);
void mig_measure_dirty_rate(vmig_job *j, eng_step_fn next);
/* After each figure while memory moves: timeouts, switching to post-copy, the policy.  True
 * when it failed the job. */
bool mig_converge_tick(vmig_job *j);
/* Records what the policy (or a timeout) did, with the time, for the report and the log. */
void mig_act(vmig_job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* query-migrate-capabilities' reply names @cap. */
bool mig_has_cap(json_object *caps, const char *cap);

static inline mig *M(vmig_job *j)
{
    return j->data;
}

/* Fails @j with a copy of @err, prefixed; or with a new error. */
void mig_fail_with(vmig_job *j, const vmig_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mig_fail_new(vmig_job *j, vmig_errc code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* query-migrate into the job's figures and source status. */
bool mig_on_query_migrate(vmig_job *j, json_object *ret, vmig_error **errp);
void mig_src_closed(void *opaque, const vmig_error *why);

/* migrate-prepare.c: the source is connected; ask it and a probe QEMU what they are, refuse
 * what cannot work, then mig_launch_destination(). */
void mig_ask_source(vmig_job *j);
/* migrate.c: start the destination QEMU, then set up and perform. */
void mig_launch_destination(vmig_job *j);
/* migrate.c: lets go of the probe QEMU (the agent's is stopped there). */
void mig_discard_probe(mig *m);

/* migrate.c: a relay to the agent from socket @file in the source's directory (its path in
 * @ret_path): QEMU's migration channels (@fixed 0) or its NBD clients (TP_KIND_NBD). */
tp_source_relay *mig_relay_new(vmig_job *j, const char *file, tp_kind fixed, char **ret_path,
                               vmig_error **errp);

/* storage.c: the migration's disks (see there). */
bool mig_storage_opts(mig *m, vmig_error **errp);
bool mig_on_query_block(vmig_job *j, json_object *ret, vmig_error **errp);
/* Picks the disks to copy, checks the cache rule and proves the others shared; then @next. */
void mig_storage_preflight(vmig_job *j, eng_step_fn next);
/* The agent's launch argument "storage": what to create. */
json_object *mig_storage_create_args(const mig *m);
/* A local destination's images, made in its state directory; @dspec's disks point at them. */
bool mig_storage_create_local(vmig_job *j, vmig_spec *dspec, vmig_error **errp);
/* Exports the new images, starts the mirrors, waits until all are ready; then @next. */
void mig_storage_start(vmig_job *j, eng_step_fn next);
/* The source is at pre-switchover: the mirrors finish, migrate-continue; then @next. */
void mig_storage_switchover(vmig_job *j, eng_step_fn next);
void mig_storage_tick(vmig_job *j);
void mig_storage_event(vmig_job *j, const char *ev, json_object *data);
/* Stops the destination's NBD server once it has loaded. */
void mig_storage_release_dst(vmig_job *j);
/* Cancels the mirrors, drops their NBD clients, removes new local images; then @next. */
void mig_storage_rollback(vmig_job *j, eng_step_fn next);

#endif
