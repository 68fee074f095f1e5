/*
 * The CLI's SIGINT/SIGTERM handler cancels the engine's work (issue 11, item 13): it must
 * never reach an engine that was freed.  Before the fix, cli_remove_sigint() did not exist and
 * a signal after vmig_engine_free() called vmig_engine_cancel() on freed memory.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <glib/gstdio.h>
#include <signal.h>

#include "cli/cli.h"
#include "tests/support/t_util.h"

static vmig_engine *new_engine(char **state)
{
    *state = t_state_dir_new();
    return t_engine(*state);
}

/* After the engine is freed, the signal does what it does to any program: it ends it. */
static void raise_after_free(int sig)
{
    char *state = NULL;
    vmig_engine *e = new_engine(&state);
    cli_install_sigint(e);
    cli_remove_sigint();
    vmig_engine_free(e);
    g_rmdir(state);
    raise(sig);
    cr_fail("signal %d was caught after the engine was freed", sig);
}

Test(cli_signal, sigint_after_the_engine_is_freed_has_its_default_effect, .signal = SIGINT)
{
    raise_after_free(SIGINT);
}

Test(cli_signal, sigterm_too, .signal = SIGTERM)
{
    raise_after_free(SIGTERM);
}

/* While the engine lives, the signal cancels its jobs instead of ending the program. */
Test(cli_signal, a_signal_while_the_engine_lives_is_caught)
{
    char *state = NULL;
    vmig_engine *e = new_engine(&state);
    cli_install_sigint(e);
    raise(SIGINT);
    raise(SIGTERM);
    cli_remove_sigint();
    vmig_engine_free(e);
    g_rmdir(state);
    g_free(state);
}
