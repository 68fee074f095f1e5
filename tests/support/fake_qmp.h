/*
 * A scripted QMP peer for unit tests, like libvirt's mock monitor: it runs on a thread at the
 * other end of a socketpair and plays a script.  An EXPECT step reads one command and fails
 * the script if it is not the one expected; "$ID" in a later SEND is replaced by that
 * command's id, so replies match the way QEMU's do, and "$PREV" by the id of the command
 * before it (to answer out of order).
 */
#ifndef VMIG_TEST_FAKE_QMP_H
#define VMIG_TEST_FAKE_QMP_H

#include <stdbool.h>

typedef enum t_step_kind {
    T_END = 0,
    T_SEND,   /* write text as is (include the "\r\n" yourself) */
    T_EXPECT, /* read one command line; text is the command name it must run */
    T_SLEEP,  /* ms */
    T_CLOSE,  /* hang up */
} t_step_kind;

typedef struct t_step {
    t_step_kind kind;
    const char *text;
    int ms;
} t_step;

#define T_GREETING                                                                                 \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "             \
    "\"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n"
#define T_GREETING_NO_OOB                                                                          \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 6}, "              \
    "\"package\": \"\"}, \"capabilities\": []}}\r\n"

typedef struct t_fake t_fake;

/* Starts the peer; returns it and stores the client's end of the socketpair in *ret_fd. */
t_fake *t_fake_start(const t_step *script, int *ret_fd);
/* Waits for the script to end; true when every EXPECT matched. */
bool t_fake_finish(t_fake *f);
/* The arguments of the last command read, as JSON text ("" if none). */
const char *t_fake_last_args(const t_fake *f);
const char *t_fake_failure(const t_fake *f);
void t_fake_free(t_fake *f);

#endif
