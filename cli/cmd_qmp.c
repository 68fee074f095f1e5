#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "qmp/qmp.h"

#define QMP_CLI_TIMEOUT_MS 10000

int cmd_qmp(const cli_global *g, int argc, char **argv)
{
    (void)g;
    if (argc < 3 || argc > 4) {
        return cli_usage_error("qmp", "expected SOCKET COMMAND [ARGS-JSON]");
    }
    json_object *args = NULL;
    if (argc == 4) {
        enum json_tokener_error jerr;
        args = json_tokener_parse_verbose(argv[3], &jerr);
        if (!args || !json_object_is_type(args, json_type_object)) {
            json_object_put(args);
            return cli_usage_error("qmp", "ARGS-JSON must be a JSON object: %s",
                                   args ? "got another JSON type"
                                        : json_tokener_error_desc(jerr));
        }
    }
    vmig_error *err = NULL;
    qmp_conn *c = qmp_conn_open_unix(argv[1], QMP_CLI_TIMEOUT_MS, &err);
    if (!c) {
        json_object_put(args);
        return cli_fail(err);
    }
    json_object *ret = qmp_conn_call(c, argv[2], args, 0, QMP_CLI_TIMEOUT_MS, &err);
    qmp_conn_free(c);
    if (!ret) {
        return cli_fail(err);
    }
    puts(json_object_to_json_string_ext(ret, JSON_C_TO_STRING_PRETTY |
                                                 JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(ret);
    return CLI_OK;
}
