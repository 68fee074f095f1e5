/*
 * The engine's side of an agent (engine/agent.c has the protocol): one control connection, the
 * requests on it, and the QEMUs the agent starts, reached through monitor connections the
 * agent relays.  For the migration job (migrate.c, migrate-prepare.c).
 */
#ifndef VMIG_ENGINE_LINK_H
#define VMIG_ENGINE_LINK_H

#include "engine.h"
#include "transport/handshake.h"

typedef struct eng_link eng_link;

/* A reply to a request: @reply borrowed (NULL with @err when the agent refused or the
 * connection ended). */
typedef void (*eng_link_reply_fn)(void *opaque, json_object *reply, const vmig_error *err);
typedef void (*eng_link_done_fn)(void *opaque, const vmig_error *err);

/* For destination @dest ("vmig://HOST[:PORT]") and key file @key_file: resolves, reads the
 * key; connects nothing yet. */
eng_link *eng_link_new(vmig_engine *e, const char *dest, const char *key_file, vmig_error **errp);
/* Connects and runs the handshake; @ready once. */
void eng_link_connect(eng_link *l, eng_link_done_fn ready, void *opaque);
/* Runs once if the control connection ends before eng_link_free(). */
void eng_link_set_closed_cb(eng_link *l, eng_link_done_fn fn, void *opaque);
bool eng_link_alive(const eng_link *l);
/* "HOST:PORT", for messages. */
const char *eng_link_name(const eng_link *l);
const struct sockaddr *eng_link_addr(const eng_link *l, socklen_t *ret_len);
const tp_key *eng_link_key(const eng_link *l);
/* Sends request @op with @args' members (stolen, may be NULL); @fn (NULL: none waits for the
 * reply) gets the reply or an error. */
void eng_link_call(eng_link *l, const char *op, json_object *args, eng_link_reply_fn fn,
                   void *opaque);
/* Asks the agent to start a QEMU (@op "probe" or "launch", @args stolen), then connects its
 * monitor through the agent: @done gets a remote eng_vm (pid 0, its token in remote_token,
 * the agent's "uri" in remote_uri) or an error. */
void eng_link_launch(eng_link *l, const char *op, json_object *args, const char *name,
                     const vmig_spec *spec, vmig_accel accel, qmp_event_fn ev, void *ev_opaque,
                     eng_launch_fn done, void *opaque);
/* Asks the agent to define VM @spec's name with @spec (borrowed; NULL: from the VM of that
 * name running there, its effective spec and UUID), replacing a definition there unless
 * @exclusive, which refuses a name the agent's host defines or runs already (an offline
 * migration).  @done once. */
void eng_link_define(eng_link *l, const char *name, const vmig_spec *spec, bool exclusive,
                     eng_link_done_fn done, void *opaque);
/* Asks the agent to remove the definition of VM @name there; @done once. */
void eng_link_undefine(eng_link *l, const char *name, eng_link_done_fn done, void *opaque);
/* The control protocol's messages, type-checked (untrusted on both sides; fuzzed):
 * a request {"id": N, "op": "..."}: the object (owned), its id and op (borrowed from it);
 * a reply {"id": N, "ok": true, ...} or {"id": N, "error": "..."}: the object, id, and the
 * error text (NULL for ok; a reply that is neither is an error). */
json_object *eng_agent_read_request(const char *text, size_t len, int64_t *ret_id,
                                    const char **ret_op, vmig_error **errp);
json_object *eng_link_read_reply(const char *text, size_t len, int64_t *ret_id,
                                 const char **ret_error, vmig_error **errp);
/* A "define" or "undefine" request (@op), type-checked: the name must be a valid VM name, and
 * only "define" may carry a spec (an object, borrowed from @req) and "exclusive". */
typedef struct eng_def_req {
    const char *name;
    json_object *spec;
    bool exclusive;
} eng_def_req;
bool eng_agent_read_define(json_object *req, const char *op, eng_def_req *ret, vmig_error **errp);
/* A token in hex into its bytes; false when it is not one. */
bool eng_link_token(const char *hex, uint8_t out[TP_TOKEN_LEN]);
void eng_link_free(eng_link *l);

#endif
