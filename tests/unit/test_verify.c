/* The guest memory check on synthetic snapshots: it must pass a consistent snapshot and catch
 * every kind of damage a migration can do to a page. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <string.h>

#include "engine/engine.h"

#define NPAGES 64u

static uint8_t *mem;
static struct vmig_guest_status st;

static void write_page(uint32_t p, uint32_t g)
{
    uint32_t *w = (uint32_t *)(mem + (size_t)p * VMIG_GUEST_PAGE_SIZE);
    w[0] = VMIG_PAGE_MAGIC;
    w[1] = p;
    w[2] = g;
    for (uint32_t i = 3; i < VMIG_GUEST_PAGE_WORDS; i++) {
        w[i] = vmig_page_word(p, g, i);
    }
}

/* A snapshot taken while generation 5 was being written, cursor at page 20. */
static void setup(void)
{
    mem = g_malloc0((size_t)NPAGES * VMIG_GUEST_PAGE_SIZE);
    st = (struct vmig_guest_status){
        .magic = VMIG_GUEST_STATUS_MAGIC,
        .state = VMIG_GUEST_RUNNING,
        .npages = NPAGES,
        .gen = 5,
        .cursor = 20,
    };
    for (uint32_t p = 0; p < NPAGES; p++) {
        write_page(p, p < st.cursor ? 5 : 4);
    }
}

static void teardown(void)
{
    g_free(mem);
}

static eng_verify_result check(void)
{
    eng_verify_result r = {0};
    eng_verify_pages(&st, 0, mem, NPAGES, &r);
    return r;
}

TestSuite(verify, .init = setup, .fini = teardown);

Test(verify, consistent_snapshot_passes)
{
    eng_verify_result r = check();
    cr_assert(eq(u64, r.bad_pages, 0));
    cr_assert(eq(u64, r.pages_checked, NPAGES - 1), "every page but the one in flight");
}

Test(verify, page_in_flight_may_be_half_written)
{
    uint32_t *w = (uint32_t *)(mem + (size_t)st.cursor * VMIG_GUEST_PAGE_SIZE);
    w[100] = vmig_page_word(st.cursor, 5, 100); /* new body word, old header */
    cr_assert(eq(u64, check().bad_pages, 0));
}

Test(verify, lost_update_is_caught)
{
    /* page 7 should hold generation 5: a migration that lost its last copy leaves 4 */
    write_page(7, 4);
    eng_verify_result r = check();
    cr_assert(eq(u64, r.bad_pages, 1));
    cr_assert(eq(u32, r.first_bad, 7));
    cr_assert(eq(u32, r.expected_gen, 5));
    cr_assert(eq(u32, r.found_gen, 4));
    cr_assert(not(r.content_bad));
}

Test(verify, page_from_the_future_is_caught)
{
    write_page(40, 5); /* after the cursor: must still be 4 */
    cr_assert(eq(u32, check().first_bad, 40));
}

Test(verify, one_flipped_byte_is_caught)
{
    mem[(size_t)33 * VMIG_GUEST_PAGE_SIZE + 2000] ^= 0x01;
    eng_verify_result r = check();
    cr_assert(eq(u64, r.bad_pages, 1));
    cr_assert(eq(u32, r.first_bad, 33));
    cr_assert(r.content_bad);
}

Test(verify, zeroed_page_is_caught)
{
    memset(mem + (size_t)2 * VMIG_GUEST_PAGE_SIZE, 0, VMIG_GUEST_PAGE_SIZE);
    eng_verify_result r = check();
    cr_assert(eq(u64, r.bad_pages, 1));
    cr_assert(eq(u32, r.found_magic, 0));
}

Test(verify, page_in_the_wrong_place_is_caught)
{
    memcpy(mem + (size_t)50 * VMIG_GUEST_PAGE_SIZE, mem + (size_t)51 * VMIG_GUEST_PAGE_SIZE,
           VMIG_GUEST_PAGE_SIZE);
    eng_verify_result r = check();
    cr_assert(eq(u64, r.bad_pages, 1));
    cr_assert(eq(u32, r.found_index, 51));
}

Test(verify, chunks_add_up)
{
    write_page(60, 5);
    eng_verify_result r = {0};
    eng_verify_pages(&st, 0, mem, 32, &r);
    eng_verify_pages(&st, 32, mem + (size_t)32 * VMIG_GUEST_PAGE_SIZE, 32, &r);
    cr_assert(eq(u64, r.pages_checked, NPAGES - 1));
    cr_assert(eq(u64, r.bad_pages, 1));
    cr_assert(eq(u32, r.first_bad, 60));
}

/* The guest's status block is untrusted: an npages near 2^32 once made the page loop wrap and
 * run forever (issue 11, item 13). */
Test(verify, a_status_block_that_does_not_fit_the_vm_is_refused)
{
    struct vmig_guest_status sb = {
        .page_size = VMIG_GUEST_PAGE_SIZE, .range_start = 0x200000, .npages = 1000, .cursor = 10};
    uint64_t ram = 64u << 20;
    cr_assert(eng_guest_status_check(&sb, ram, NULL));
    sb.npages = 0xFFFFC001u;
    vmig_error *err = NULL;
    cr_assert(not(eng_guest_status_check(&sb, ram, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_VERIFY));
    cr_assert_not_null(strstr(vmig_error_message(err), "4294950913 pages"), "%s",
                       vmig_error_message(err));
    vmig_error_free(err);
    sb.npages = 1000;
    sb.page_size = 8192;
    cr_assert(not(eng_guest_status_check(&sb, ram, NULL)));
    sb.page_size = VMIG_GUEST_PAGE_SIZE;
    sb.cursor = 1001;
    cr_assert(not(eng_guest_status_check(&sb, ram, NULL)));
}

/* ---- the disk twin ---------------------------------------------------------------------- */

#define NSECT 64u

static void write_sector(uint8_t *disk, uint32_t s, uint32_t g)
{
    uint32_t *w = (uint32_t *)(disk + (size_t)s * VMIG_SECTOR_SIZE);
    w[0] = VMIG_SECTOR_MAGIC;
    w[1] = s;
    w[2] = g;
    for (uint32_t i = 3; i < VMIG_SECTOR_WORDS; i++) {
        w[i] = vmig_sector_word(s, g, i);
    }
}

/* An image stopped while generation 3 was written, the step at sector 24 in flight. */
static eng_verify_result check_disk(void (*damage)(uint8_t *disk))
{
    static uint8_t disk[NSECT * VMIG_SECTOR_SIZE];
    struct vmig_guest_status ds = {
        .disk_state = VMIG_DISK_RUNNING, .disk_sectors = NSECT, .disk_gen = 3, .disk_cursor = 24};
    for (uint32_t s = 0; s < NSECT; s++) {
        write_sector(disk, s, s < 24 ? 3 : 2);
    }
    write_sector(disk, 27, 3); /* half the step in flight is new: either is right */
    if (damage) {
        damage(disk);
    }
    eng_verify_result r = {0};
    eng_verify_sectors(&ds, 0, disk, NSECT, &r);
    return r;
}

static void stale_40(uint8_t *disk)
{
    write_sector(disk, 40, 1); /* a write lost two generations ago */
}

static void moved_10(uint8_t *disk)
{
    memcpy(disk + (size_t)10 * VMIG_SECTOR_SIZE, disk + (size_t)11 * VMIG_SECTOR_SIZE,
           VMIG_SECTOR_SIZE);
}

static void zero_50(uint8_t *disk)
{
    memset(disk + (size_t)50 * VMIG_SECTOR_SIZE, 0, VMIG_SECTOR_SIZE); /* never copied */
}

Test(verify, disk_consistent_image_passes)
{
    eng_verify_result r = check_disk(NULL);
    cr_assert(eq(u64, r.bad_pages, 0));
    cr_assert(eq(u64, r.pages_checked, NSECT - VMIG_DISK_STEP), "all but the step in flight");
}

Test(verify, disk_stale_moved_and_missing_sectors_are_named)
{
    eng_verify_result r = check_disk(stale_40);
    cr_assert(eq(u64, r.bad_pages, 1));
    cr_assert(eq(u32, r.first_bad, 40));
    cr_assert(eq(u32, r.expected_gen, 2));
    cr_assert(eq(u32, r.found_gen, 1));
    r = check_disk(moved_10);
    cr_assert(eq(u32, r.first_bad, 10));
    cr_assert(eq(u32, r.found_index, 11));
    r = check_disk(zero_50);
    cr_assert(eq(u32, r.first_bad, 50));
    cr_assert(eq(u32, r.found_magic, 0));
}
