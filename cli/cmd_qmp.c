#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define QMP_CLI_TIMEOUT_MS 10000

int cmd_qmp(const cli_global *g, int argc, char **argv)
{
    (void)g;
    if (argc < 3 || argc > 4) {
        return cli_usage_error("qmp", "expected SOCKET COMMAND [ARGS-JSON]");
    }
    if (argc == 4) {
        /* a usage error (exit 2) rather than the library's failure (exit 1) */
        enum json_tokener_error jerr;
        json_object *args = json_tokener_parse_verbose(argv[3], &jerr);
        bool is_obj = args && json_object_is_type(args, json_type_object);
        json_object_put(args);
        if (!is_obj) {
            return cli_usage_error("qmp", "ARGS-JSON must be a JSON object: %s",
                                   args ? "got another JSON type" : json_tokener_error_desc(jerr));
        }
    }
    vmig_error *err = NULL;
    char *out = vmig_qmp_call(argv[1], argv[2], argc == 4 ? argv[3] : NULL, QMP_CLI_TIMEOUT_MS,
                              &err);
    if (!out) {
        return cli_fail(err);
    }
    puts(out);
    free(out);
    return CLI_OK;
}
