/*
 * The contract between the built-in test guest (guest/guest.c, 32-bit, freestanding) and the
 * host-side memory verifier (engine/verify.c).  Both sides include this file; it must stay
 * free of anything but fixed-width integers.
 *
 * The guest fills a range of pages, generation 1, then keeps rewriting them in order, one
 * generation after the other, at a bounded rate.  Page @p of generation @g holds:
 *   word 0: VMIG_PAGE_MAGIC, word 1: p, word 2: g, words 3..1023: vmig_page_word(p, g, i).
 * The status block is written only after a page is complete, so a snapshot of guest memory
 * (the state a migration delivers) obeys: pages [0, cursor) hold generation gen, pages
 * (cursor, npages) hold gen - 1, and the page at cursor may be either or half-written.
 * A page lost or corrupted in transit breaks that rule, which is what the verifier checks.
 *
 * The disk works the same way (vmig.disk_mib): the guest fills the first sectors of the IDE
 * primary master, generation 1, then rewrites them VMIG_DISK_STEP sectors at a time, reading
 * each step back first to check it still holds the generation before.  Sector @s of
 * generation @g holds VMIG_SECTOR_MAGIC, s, g, then vmig_sector_word(s, g, i).  A step is
 * written and flushed before disk_cursor passes it, so once the VM is stopped (which flushes
 * QEMU's caches) the image obeys: sectors [0, disk_cursor) hold disk_gen, sectors
 * [disk_cursor + VMIG_DISK_STEP, disk_sectors) hold disk_gen - 1, and the step at disk_cursor
 * either.
 */
#ifndef VMIG_GUEST_ABI_H
#define VMIG_GUEST_ABI_H

#include <stdint.h>

#define VMIG_GUEST_STATUS_ADDR 0x001FF000u /* one page just under the pattern range */
#define VMIG_GUEST_RANGE_START 0x00200000u /* first pattern page: 2 MiB */
#define VMIG_GUEST_PAGE_SIZE 4096u
#define VMIG_GUEST_PAGE_WORDS (VMIG_GUEST_PAGE_SIZE / 4u)
#define VMIG_GUEST_STATUS_MAGIC 0x47494d56u /* "VMIG" little-endian */
#define VMIG_GUEST_ABI_VERSION 2u
#define VMIG_PAGE_MAGIC 0x47504d56u   /* "VMPG" */
#define VMIG_SECTOR_MAGIC 0x4b534456u /* "VDSK" */
#define VMIG_SECTOR_SIZE 512u
#define VMIG_SECTOR_WORDS (VMIG_SECTOR_SIZE / 4u)
#define VMIG_DISK_STEP 8u /* sectors written (and flushed) at a time: 4 KiB */

enum vmig_guest_state {
    VMIG_GUEST_BOOTING = 0,
    VMIG_GUEST_FILLING = 1, /* writing generation 1 */
    VMIG_GUEST_RUNNING = 2, /* filled; dirtying at rate_pages_s (0 = idle) */
};

enum vmig_guest_disk_state {
    VMIG_DISK_OFF = 0,     /* vmig.disk_mib not given */
    VMIG_DISK_FILLING = 1, /* writing generation 1 */
    VMIG_DISK_RUNNING = 2, /* filled; rewriting at disk_rate_steps_s */
    VMIG_DISK_NONE = 3,    /* asked for, but no ATA disk answers on the primary master */
    VMIG_DISK_IO_ERROR = 4 /* the disk reported an error; disk_first_bad is the sector */
};

/* Lives at VMIG_GUEST_STATUS_ADDR.  Only the guest writes it. */
struct vmig_guest_status {
    uint32_t magic;
    uint32_t version;
    uint32_t state;
    uint32_t page_size;
    uint32_t range_start; /* guest-physical address of page 0 */
    uint32_t npages;
    uint32_t gen;    /* generation being written now (>= 1) */
    uint32_t cursor; /* next page of generation gen to be written */
    uint32_t rate_pages_s;
    uint32_t errors;    /* pages the guest found not holding gen - 1 before rewriting them */
    uint32_t first_bad; /* index of the first such page, valid when errors > 0 */
    uint32_t clock_ok;  /* 1 when the ACPI PM timer ticks, so rate control is real */
    uint32_t writes_lo; /* pages written since boot, 64-bit split for the 32-bit guest */
    uint32_t writes_hi;
    uint32_t disk_state;        /* enum vmig_guest_disk_state */
    uint32_t disk_sectors;      /* sectors in the pattern (a multiple of VMIG_DISK_STEP) */
    uint32_t disk_gen;          /* generation being written now (>= 1) */
    uint32_t disk_cursor;       /* first sector of the next step of disk_gen to write */
    uint32_t disk_rate_steps_s; /* steps rewritten a second (0 = fill, then leave it) */
    uint32_t disk_errors;       /* steps the guest read back not holding disk_gen - 1 */
    uint32_t disk_first_bad;    /* first such sector, valid when disk_errors > 0 */
    uint32_t disk_steps;        /* steps written since boot */
};

/* The fill word for word @i (>= 3) of page @p in generation @g: cheap, and different for
 * every page, generation and word, so a stale or shifted page never looks right. */
static inline uint32_t vmig_page_word(uint32_t p, uint32_t g, uint32_t i)
{
    uint32_t seed = (p * 0x9E3779B1u) ^ (g * 0x85EBCA77u);
    return seed ^ (i * 0xC2B2AE3Du);
}

/* The fill word for word @i (>= 3) of sector @s in generation @g. */
static inline uint32_t vmig_sector_word(uint32_t s, uint32_t g, uint32_t i)
{
    return vmig_page_word(s, g, i) ^ 0x5bd1e995u;
}

#endif
