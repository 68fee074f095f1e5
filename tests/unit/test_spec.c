/* VM specs: strict reading, clear errors, and the QEMU command line they become. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"

static vmig_error *parse_fails(const char *json)
{
    vmig_error *err = NULL;
    cr_assert_null(vmig_spec_parse(json, &err), "accepted: %s", json);
    cr_assert_not_null(err);
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_INVAL));
    return err;
}

static void expect_error(const char *json, const char *needle)
{
    vmig_error *err = parse_fails(json);
    cr_expect_not_null(strstr(vmig_error_message(err), needle), "'%s' lacks '%s'",
                       vmig_error_message(err), needle);
    vmig_error_free(err);
}

Test(spec, full_spec_is_read)
{
    vmig_error *err = NULL;
    g_autoptr(vmig_spec) s = vmig_spec_parse(
        "{\"name\": \"web-1\", \"memory_mib\": 512, \"vcpus\": 2, \"machine\": \"q35\","
        " \"cpu\": \"Skylake-Client\", \"kernel\": \"/boot/k\", \"initrd\": \"/boot/i\","
        " \"append\": \"console=ttyS0\", \"disks\": [{\"path\": \"/d/a,b.qcow2\","
        " \"format\": \"qcow2\", \"readonly\": true}], \"extra_args\": [\"-rtc\", \"base=utc\"],"
        " \"uuid\": \"9a1c2b3d-0000-4000-8000-000000000001\"}",
        &err);
    cr_assert_not_null(s, "%s", vmig_error_message(err));
    cr_assert(eq(str, s->name, "web-1"));
    cr_assert(eq(u64, s->memory_mib, 512));
    cr_assert(eq(int, s->vcpus, 2));
    cr_assert(eq(str, s->cpu, "Skylake-Client"));
    cr_assert(eq(u32, s->disks->len, 1));
    cr_assert(eq(u32, s->extra_args->len, 2));
}

Test(spec, defaults)
{
    g_autoptr(vmig_spec) s = vmig_spec_parse(
        "{\"name\": \"a\", \"memory_mib\": 64, \"kernel\": \"/k\"}", NULL);
    cr_assert_not_null(s);
    cr_assert(eq(str, s->machine, "pc"));
    cr_assert(eq(str, s->cpu, "qemu64"));
    cr_assert(eq(int, s->vcpus, 1));
}

Test(spec, errors_name_the_field)
{
    expect_error("{\"memory_mib\": 64, \"kernel\": \"/k\"}", "'name': is required");
    expect_error("{\"name\": \"a\", \"kernel\": \"/k\"}", "'memory_mib': is required");
    expect_error("{\"name\": \"a\", \"memory_mib\": \"64\", \"kernel\": \"/k\"}",
                 "'memory_mib': must be a whole number");
    expect_error("{\"name\": \"a\", \"memory_mib\": 8, \"kernel\": \"/k\"}",
                 "'memory_mib': 8 is out of range 16-4194304");
    expect_error("{\"name\": \"a\", \"memory_mib\": 64, \"vcpus\": 0, \"kernel\": \"/k\"}",
                 "'vcpus': 0 is out of range");
    expect_error("{\"name\": \"a\", \"memory_mib\": 64, \"kernal\": \"/k\"}",
                 "'kernal': unknown field");
    expect_error("{\"name\": \"a\", \"memory_mib\": 64}", "nothing to boot");
    expect_error("{\"name\": \"a/b\", \"memory_mib\": 64, \"kernel\": \"/k\"}", "'name': use");
    expect_error("{\"name\": \"x.incoming\", \"memory_mib\": 64, \"kernel\": \"/k\"}", "'name'");
    expect_error("{\"name\": \"a\", \"memory_mib\": 64, \"disks\": [{\"format\": \"raw\"}]}",
                 "'disks[0]': has no 'path'");
    expect_error("{\"name\": \"a\", \"memory_mib\": 64, \"disks\": [{\"path\": \"/d\", "
                 "\"bus\": \"none\"}]}",
                 "'disks[0].bus': unknown field");
    expect_error("{\"name\": \"a\", \"memory_mib\": 64, \"disks\": [{\"path\": \"/d\", "
                 "\"cache\": \"none,aio=native\"}]}",
                 "'disks[0].cache': must be one of none, writeback");
    expect_error("{\"name\": \"a\", \"memory_mib\": 64, \"kernel\": \"/k\", \"extra_args\": "
                 "[\"-a\", 3]}",
                 "'extra_args[1]': must be a string");
    expect_error("{\"name\": \"a\", \"memory_mib\": 64, \"append\": \"x\", \"disks\": "
                 "[{\"path\": \"/d\"}]}",
                 "'append': needs 'kernel'");
    expect_error("{\"name\": \"a\", \"memory_mib\": 64, \"kernel\": \"/k\", \"uuid\": \"x\"}",
                 "'uuid': is not a UUID");
    expect_error("[1]", "must be a JSON object");
    expect_error("{\"name\": ", "not valid JSON");
}

Test(spec, load_resolves_relative_paths_and_reports_bad_files)
{
    char dir[] = "/tmp/vmig-spec-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    g_autofree char *path = g_build_filename(dir, "vm.json", NULL);
    cr_assert(g_file_set_contents(path,
                                  "{\"name\": \"a\", \"memory_mib\": 64, "
                                  "\"kernel\": \"images/k.elf\"}",
                                  -1, NULL));
    vmig_error *err = NULL;
    g_autoptr(vmig_spec) s = vmig_spec_load(path, &err);
    cr_assert_not_null(s, "%s", vmig_error_message(err));
    g_autofree char *want = g_build_filename(dir, "images", "k.elf", NULL);
    cr_assert(eq(str, s->kernel, want));

    cr_assert(g_file_set_contents(path, "{\"name\": \"a\",\n \"memory_mib\": }", -1, NULL));
    cr_assert_null(vmig_spec_load(path, &err));
    cr_assert_not_null(strstr(vmig_error_message(err), "not valid JSON"));
    cr_assert_not_null(strstr(vmig_error_message(err), path));
    vmig_error_free(err);
    err = NULL;
    unlink(path);
    cr_assert_null(vmig_spec_load(path, &err));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_NOTFOUND));
    cr_assert_not_null(strstr(vmig_error_message(err), "No such file"));
    vmig_error_free(err);
    rmdir(dir);
}

static bool argv_has(GPtrArray *a, const char *opt, const char *val)
{
    for (guint i = 0; i + 1 < a->len && g_ptr_array_index(a, i + 1); i++) {
        if (strcmp(g_ptr_array_index(a, i), opt) == 0 &&
            (!val || strcmp(g_ptr_array_index(a, i + 1), val) == 0)) {
            return true;
        }
    }
    return false;
}

Test(spec, argv_for_source_and_destination)
{
    g_autoptr(vmig_spec) s = vmig_spec_parse(
        "{\"name\": \"db\", \"memory_mib\": 256, \"vcpus\": 2, \"kernel\": \"/k\","
        " \"append\": \"vmig.dirty_mib_s=5\", \"uuid\": \"9a1c2b3d-0000-4000-8000-000000000001\","
        " \"disks\": [{\"path\": \"/d/a,b.img\", \"interface\": \"ide\"}],"
        " \"extra_args\": [\"-rtc\", \"base=utc\"]}",
        NULL);
    cr_assert_not_null(s);
    eng_launch l = {.qemu = "qemu-x", .dir = "/run/v/db", .accel = VMIG_ACCEL_TCG};
    g_autoptr(GPtrArray) src = eng_spec_argv(s, &l);
    cr_assert(eq(str, (char *)g_ptr_array_index(src, 0), "qemu-x"));
    cr_assert(argv_has(src, "-machine", "pc,accel=tcg"));
    cr_assert(argv_has(src, "-m", "256M"));
    cr_assert(argv_has(src, "-smp", "2"));
    cr_assert(argv_has(src, "-uuid", "9a1c2b3d-0000-4000-8000-000000000001"));
    cr_assert(
        argv_has(src, "-chardev", "socket,id=vmig-qmp,path=/run/v/db/qmp.sock,server=on,wait=off"));
    cr_assert(
        argv_has(src, "-drive", "file=/d/a,,b.img,format=raw,if=ide,id=disk0,node-name=vmig-disk0"),
        "commas in paths are doubled for QEMU's option parser; diskN names it");
    cr_assert(argv_has(src, "-rtc", "base=utc"));
    cr_assert(not(argv_has(src, "-incoming", NULL)));
    cr_assert(not(argv_has(src, "-S", NULL)));

    l.incoming = true;
    l.accel = VMIG_ACCEL_KVM;
    g_autoptr(GPtrArray) dst = eng_spec_argv(s, &l);
    cr_assert(argv_has(dst, "-incoming", "defer"));
    cr_assert(argv_has(dst, "-cpu", "qemu64,enforce"), "the destination enforces the CPU");
    cr_assert(argv_has(src, "-cpu", "qemu64"));
    cr_assert(argv_has(dst, "-machine", "pc,accel=kvm"));
    cr_assert(eq(ptr, g_ptr_array_index(dst, dst->len - 1), NULL), "argv is NULL-terminated");
}

Test(spec, json_round_trip)
{
    g_autoptr(vmig_spec) s = vmig_spec_parse(
        "{\"name\": \"a\", \"memory_mib\": 64, \"kernel\": \"/k\", \"disks\": [{\"path\": "
        "\"/d\", \"readonly\": true}], \"extra_args\": [\"-x\"]}",
        NULL);
    g_autofree char *json = vmig_spec_to_json(s);
    g_autoptr(vmig_spec) back = vmig_spec_parse(json, NULL);
    cr_assert_not_null(back);
    g_autofree char *json2 = vmig_spec_to_json(back);
    cr_assert(eq(str, json, json2));
}

/* ---- what reaches QEMU's command line (issue 11, items 7 and 8) ------------------------------ */

#define BASE "\"name\": \"a\", \"memory_mib\": 64, \"kernel\": \"/k\""

Test(spec, option_strings_take_no_injected_options)
{
    expect_error("{" BASE ", \"machine\": \"pc,accel=kvm\"}", "is not a machine type name");
    expect_error("{" BASE ", \"cpu\": \"qemu64,enforce=off\"}", "give features as +name");
    expect_error("{" BASE ", \"cpu\": \"qemu64,-enforce\"}", "vmigrate's to set");
    expect_error("{" BASE ", \"cpu\": \"qemu64,+check\"}", "vmigrate's to set");
    expect_error("{" BASE ", \"cpu\": \"qemu64,,x\"}", "give features as +name");
    expect_error("{" BASE
                 ", \"disks\": [{\"path\": \"/d\", \"format\": \"raw,file.locking=off\"}]}",
                 "is not a disk format");
    expect_error("{" BASE ", \"disks\": [{\"path\": \"/d\", \"interface\": \"virtio,bus=x\"}]}",
                 "is not a disk interface");
    vmig_error *err = NULL;
    g_autoptr(vmig_spec) ok = vmig_spec_parse("{" BASE ", \"machine\": \"pc-i440fx-7.2\", "
                                              "\"cpu\": \"Skylake-Client,-hle,+pcid\"}",
                                              &err);
    cr_assert_not_null(ok, "plain names and +/- features pass: %s", vmig_error_message(err));
}

Test(spec, extra_args_cannot_take_over_what_vmigrate_owns)
{
    const char *owned[] = {"-pidfile",  "-incoming",   "-monitor",   "-mon",
                           "-qmp",      "-daemonize",  "-name",      "-uuid",
                           "--pidfile", "-readconfig", "-qmp-pretty"};
    for (size_t i = 0; i < G_N_ELEMENTS(owned); i++) {
        g_autofree char *json = g_strdup_printf("{" BASE
                                                ", \"extra_args\": [\"-rtc\", \"base=utc\", "
                                                "\"%s\", \"x\"]}",
                                                owned[i]);
        expect_error(json, "extra_args[2]");
        expect_error(json, "is vmigrate's to set");
    }
    g_autoptr(vmig_spec) ok = vmig_spec_parse("{" BASE ", \"extra_args\": [\"-rtc\", "
                                              "\"base=utc\", \"-name-of-nothing\", \"-pidfilex\"]}",
                                              NULL);
    cr_assert_not_null(ok, "options that only begin like owned ones are QEMU's to judge");
}

Test(spec, trailing_data_after_the_spec_is_refused)
{
    expect_error("{" BASE "} {\"name\": \"b\"}", "data after the spec");
    expect_error("{" BASE "} garbage", "data after the spec");
    g_autoptr(vmig_spec) ok = vmig_spec_parse("{" BASE "}  \n\t", NULL);
    cr_assert_not_null(ok, "trailing white space is fine");
    char path[] = "/tmp/vmig-spec-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(ge(int, fd, 0));
    const char text[] = "{" BASE "}\n{}\n";
    cr_assert(eq(sz, (size_t)write(fd, text, sizeof(text) - 1), sizeof(text) - 1));
    close(fd);
    vmig_error *err = NULL;
    cr_assert_null(vmig_spec_load(path, &err));
    cr_assert_not_null(strstr(vmig_error_message(err), "data after the spec"), "%s",
                       vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), path));
    vmig_error_free(err);
    unlink(path);
}
