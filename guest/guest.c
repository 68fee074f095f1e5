/*
 * vmigrate's built-in test guest: a freestanding 32-bit multiboot kernel.
 *
 * It fills guest RAM above 2 MiB with a known pattern (guest-abi.h), reports "VMIG-READY" on
 * COM1, then rewrites the pages in order at a bounded rate so a live migration always has
 * dirty memory to chase.  Before rewriting a page it checks that the page still holds what it
 * wrote last time, so a page lost in a migration is caught by the guest too, not only by the
 * host's check of a memory snapshot.
 *
 * With vmig.disk_mib=N it does the same to the first N MiB of the IDE primary master
 * (ATA PIO, polled): fills them, then rewrites vmig.disk_kib_s KiB a second, reading each
 * step back first.  The disk holds the pattern of guest-abi.h, so the host can check an
 * image the way it checks memory.
 *
 * Kernel command line (-append): vmig.fill_mib=N (default: all RAM above 2 MiB, less 1 MiB
 * at the top), vmig.dirty_mib_s=R (default 0: fill, then halt), vmig.tlb_refresh=0|1
 * (default 1, see tlb_drop()), vmig.disk_mib=N (default 0: no disk) and vmig.disk_kib_s=R
 * (default 256).
 */
#include <stdint.h>

#include "guest-abi.h"

#define COM1 0x3f8
#define PM_TIMER_PORT 0x608 /* SeaBIOS puts the ACPI PM block at 0x600 on i440fx and q35 */
#define PM_TIMER_HZ 3579545u
#define PM_TIMER_MASK 0x00ffffffu
#define TICKS_PER_10MS (PM_TIMER_HZ / 100u)
#define MB_INFO_MEM 0x1u
#define MB_INFO_CMDLINE 0x4u

struct mb_info {
    uint32_t flags;
    uint32_t mem_lower;
    uint32_t mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
};

static volatile struct vmig_guest_status *const status = (volatile struct vmig_guest_status *)
    VMIG_GUEST_STATUS_ADDR;

void guest_main(uint32_t magic, const struct mb_info *mbi);

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void outw(uint16_t port, uint16_t v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint16_t inw(uint16_t port)
{
    uint16_t v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/*
 * QEMU before 9.0 under TCG clears migration dirty bits without dropping the vCPU's fast-path
 * TLB entries, so stores through an entry that stays hot are never marked dirty again and are
 * lost in a live migration (fixed upstream by commit 03bfc2188f).  Flushing the entry after
 * writing a page makes the next store to it trap and mark it dirty.  vmig.tlb_refresh=0
 * turns this off to reproduce the QEMU bug.
 */
static uint32_t tlb_refresh = 1;

static inline void tlb_drop(const volatile void *addr)
{
    if (tlb_refresh) {
        __asm__ volatile("invlpg (%0)" : : "r"(addr) : "memory");
    }
}

static void serial_puts(const char *s)
{
    while (*s) {
        outb(COM1, (uint8_t)*s++);
    }
}

static void serial_putu(uint32_t v)
{
    char buf[11];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n) {
        outb(COM1, (uint8_t)buf[--n]);
    }
}

/* Value of "key=<decimal>" in @cmd, or @dflt when absent or malformed. */
static uint32_t cmdline_u32(const char *cmd, const char *key, uint32_t dflt)
{
    for (const char *p = cmd; p && *p; p++) {
        if (p != cmd && p[-1] != ' ') {
            continue;
        }
        const char *k = key, *q = p;
        while (*k && *q == *k) {
            k++, q++;
        }
        if (*k || *q != '=') {
            continue;
        }
        uint32_t v = 0;
        int digits = 0;
        for (q++; *q >= '0' && *q <= '9'; q++, digits++) {
            v = v * 10u + (uint32_t)(*q - '0');
        }
        return digits ? v : dflt;
    }
    return dflt;
}

static volatile uint32_t *page_at(uint32_t p)
{
    return (volatile uint32_t *)(VMIG_GUEST_RANGE_START + p * VMIG_GUEST_PAGE_SIZE);
}

static int page_holds(uint32_t p, uint32_t g)
{
    volatile uint32_t *w = page_at(p);
    if (w[0] != VMIG_PAGE_MAGIC || w[1] != p || w[2] != g) {
        return 0;
    }
    for (uint32_t i = 3; i < VMIG_GUEST_PAGE_WORDS; i++) {
        if (w[i] != vmig_page_word(p, g, i)) {
            return 0;
        }
    }
    return 1;
}

/* Header last: a page whose header says (p, g) is complete. */
static void page_write(uint32_t p, uint32_t g)
{
    volatile uint32_t *w = page_at(p);
    for (uint32_t i = 3; i < VMIG_GUEST_PAGE_WORDS; i++) {
        w[i] = vmig_page_word(p, g, i);
    }
    w[2] = g;
    w[1] = p;
    w[0] = VMIG_PAGE_MAGIC;
    tlb_drop(w);
}

static void count_write(void)
{
    if (++status->writes_lo == 0) {
        status->writes_hi++;
    }
}

/* One page of generation status->gen at status->cursor, with the rewrite check. */
static void step(void)
{
    uint32_t p = status->cursor, g = status->gen;
    if (g > 1 && !page_holds(p, g - 1)) {
        if (status->errors++ == 0) {
            status->first_bad = p;
        }
        serial_puts("VMIG-BAD ");
        serial_putu(p);
        serial_puts("\n");
    }
    page_write(p, g);
    __asm__ volatile("" ::: "memory");
    count_write();
    if (++p == status->npages) {
        p = 0;
        status->gen = g + 1;
    }
    status->cursor = p;
    tlb_drop(status);
}

/* ---- the disk: ATA PIO on the primary channel, polled ------------------------------------ */

#define ATA_DATA 0x1f0
#define ATA_COUNT 0x1f2
#define ATA_LBA0 0x1f3
#define ATA_LBA1 0x1f4
#define ATA_LBA2 0x1f5
#define ATA_DRIVE 0x1f6
#define ATA_CMD 0x1f7 /* status when read */
#define ATA_CTRL 0x3f6
#define ATA_BSY 0x80u
#define ATA_DRQ 0x08u
#define ATA_ERR 0x01u
#define ATA_DF 0x20u
#define ATA_READ 0x20u
#define ATA_WRITE 0x30u
#define ATA_FLUSH 0xe7u
#define ATA_IDENTIFY 0xecu
#define ATA_POLL_MAX 100000000u
#define FILL_SECTORS 128u /* sectors a command while filling */

static uint32_t sector_buf[FILL_SECTORS * VMIG_SECTOR_WORDS];

/* Waits for BSY to clear, then for DRQ when @drq; the status, or 0xff on an error or timeout. */
static uint8_t ata_wait(int drq)
{
    for (uint32_t i = 0; i < ATA_POLL_MAX; i++) {
        uint8_t st = inb(ATA_CMD);
        if (st == 0xffu) {
            return 0xffu; /* nothing on the bus */
        }
        if (st & ATA_BSY) {
            continue;
        }
        if (st & (ATA_ERR | ATA_DF)) {
            return 0xffu;
        }
        if (!drq || (st & ATA_DRQ)) {
            return st;
        }
    }
    return 0xffu;
}

static void ata_select(uint32_t lba, uint32_t count, uint8_t cmd)
{
    outb(ATA_DRIVE, (uint8_t)(0xe0u | ((lba >> 24) & 0x0fu)));
    outb(ATA_COUNT, (uint8_t)count);
    outb(ATA_LBA0, (uint8_t)lba);
    outb(ATA_LBA1, (uint8_t)(lba >> 8));
    outb(ATA_LBA2, (uint8_t)(lba >> 16));
    outb(ATA_CMD, cmd);
}

/* Sectors of the primary master (LBA28), or 0 when there is no ATA disk there. */
static uint32_t ata_identify(void)
{
    outb(ATA_CTRL, 0x02u); /* nIEN: polled */
    outb(ATA_DRIVE, 0xa0u);
    if (inb(ATA_CMD) == 0xffu) {
        return 0;
    }
    outb(ATA_CMD, ATA_IDENTIFY);
    if (inb(ATA_CMD) == 0 || ata_wait(0) == 0xffu || inb(ATA_LBA1) || inb(ATA_LBA2) ||
        ata_wait(1) == 0xffu) {
        return 0; /* none, or ATAPI */
    }
    uint16_t id[256];
    for (int i = 0; i < 256; i++) {
        id[i] = inw(ATA_DATA);
    }
    return (uint32_t)id[60] | ((uint32_t)id[61] << 16);
}

/* Moves @n sectors at @lba to (@write) or from the disk through sector_buf; 0 on success. */
static int ata_rw(uint32_t lba, uint32_t n, int write)
{
    if (ata_wait(0) == 0xffu) {
        return -1;
    }
    ata_select(lba, n, write ? ATA_WRITE : ATA_READ);
    for (uint32_t k = 0; k < n; k++) {
        if (ata_wait(1) == 0xffu) {
            return -1;
        }
        const uint32_t *w = &sector_buf[k * VMIG_SECTOR_WORDS];
        uint16_t *h = (uint16_t *)&sector_buf[k * VMIG_SECTOR_WORDS];
        for (uint32_t i = 0; i < VMIG_SECTOR_SIZE / 2u; i++) {
            if (write) {
                outw(ATA_DATA, (uint16_t)(w[i / 2u] >> (16u * (i & 1u))));
            } else {
                h[i] = inw(ATA_DATA);
            }
        }
    }
    if (ata_wait(0) == 0xffu) {
        return -1;
    }
    if (write) {
        outb(ATA_CMD, ATA_FLUSH);
        if (ata_wait(0) == 0xffu) {
            return -1;
        }
    }
    return 0;
}

static void sector_fill(uint32_t *w, uint32_t s, uint32_t g)
{
    w[0] = VMIG_SECTOR_MAGIC;
    w[1] = s;
    w[2] = g;
    for (uint32_t i = 3; i < VMIG_SECTOR_WORDS; i++) {
        w[i] = vmig_sector_word(s, g, i);
    }
}

static int sector_holds(const uint32_t *w, uint32_t s, uint32_t g)
{
    if (w[0] != VMIG_SECTOR_MAGIC || w[1] != s || w[2] != g) {
        return 0;
    }
    for (uint32_t i = 3; i < VMIG_SECTOR_WORDS; i++) {
        if (w[i] != vmig_sector_word(s, g, i)) {
            return 0;
        }
    }
    return 1;
}

static void disk_failed(uint32_t sector)
{
    status->disk_first_bad = sector;
    status->disk_state = VMIG_DISK_IO_ERROR;
    serial_puts("VMIG-DISK-ERROR ");
    serial_putu(sector);
    serial_puts("\n");
}

/* Writes generation 1 over the whole pattern; 0 on success. */
static int disk_fill(void)
{
    for (uint32_t s = 0; s < status->disk_sectors; s += FILL_SECTORS) {
        uint32_t n = status->disk_sectors - s < FILL_SECTORS ? status->disk_sectors - s
                                                             : FILL_SECTORS;
        for (uint32_t k = 0; k < n; k++) {
            sector_fill(&sector_buf[k * VMIG_SECTOR_WORDS], s + k, 1);
        }
        if (ata_rw(s, n, 1) < 0) {
            disk_failed(s);
            return -1;
        }
        status->disk_cursor = s + n;
    }
    status->disk_cursor = 0;
    status->disk_gen = 2;
    status->disk_state = VMIG_DISK_RUNNING;
    return 0;
}

/* One step of generation disk_gen at disk_cursor: read back, check, rewrite, flush. */
static void disk_step(void)
{
    uint32_t s = status->disk_cursor, g = status->disk_gen;
    if (status->disk_state != VMIG_DISK_RUNNING) {
        return;
    }
    if (ata_rw(s, VMIG_DISK_STEP, 0) < 0) {
        disk_failed(s);
        return;
    }
    for (uint32_t k = 0; k < VMIG_DISK_STEP; k++) {
        if (!sector_holds(&sector_buf[k * VMIG_SECTOR_WORDS], s + k, g - 1)) {
            if (status->disk_errors++ == 0) {
                status->disk_first_bad = s + k;
            }
            serial_puts("VMIG-DISK-BAD ");
            serial_putu(s + k);
            serial_puts("\n");
            break;
        }
    }
    for (uint32_t k = 0; k < VMIG_DISK_STEP; k++) {
        sector_fill(&sector_buf[k * VMIG_SECTOR_WORDS], s + k, g);
    }
    if (ata_rw(s, VMIG_DISK_STEP, 1) < 0) {
        disk_failed(s);
        return;
    }
    __asm__ volatile("" ::: "memory");
    status->disk_steps++;
    s += VMIG_DISK_STEP;
    if (s >= status->disk_sectors) {
        s = 0;
        status->disk_gen = g + 1;
    }
    status->disk_cursor = s;
    tlb_drop(status);
}

/* Sets the disk up for @mib MiB; the disk state. */
static uint32_t disk_init(uint32_t mib, uint32_t kib_s)
{
    status->disk_gen = 1;
    status->disk_rate_steps_s = kib_s / (VMIG_DISK_STEP * VMIG_SECTOR_SIZE / 1024u);
    if (mib == 0) {
        return status->disk_state = VMIG_DISK_OFF;
    }
    uint32_t have = ata_identify();
    uint32_t want = mib * (1024u * 1024u / VMIG_SECTOR_SIZE);
    if (have < VMIG_DISK_STEP) {
        serial_puts("VMIG-ERROR no ATA disk on the primary master\n");
        return status->disk_state = VMIG_DISK_NONE;
    }
    if (want > have) {
        want = have;
    }
    status->disk_sectors = want - want % VMIG_DISK_STEP;
    status->disk_state = VMIG_DISK_FILLING;
    serial_puts("VMIG-DISK-FILLING ");
    serial_putu(status->disk_sectors);
    serial_puts(" sectors\n");
    disk_fill();
    return status->disk_state;
}

static uint32_t pm_now(void)
{
    return inl(PM_TIMER_PORT) & PM_TIMER_MASK;
}

static int pm_timer_ticks(void)
{
    uint32_t t0 = pm_now();
    for (uint32_t i = 0; i < 10000000u; i++) {
        if (pm_now() != t0) {
            return 1;
        }
    }
    return 0;
}

/*
 * Dirty at @rate pages/s.  Credit is kept in 1/100 page per 10 ms tick so no 64-bit division
 * is needed; it is capped at two ticks of work.  Time the vCPU did not run (descheduled, or
 * throttled by auto-converge) is work not done, as for a CPU-bound workload: the guest does not
 * burst to catch up, so a throttle slows its writes as it slows a real guest's.  (A quarter
 * second of catch-up let it keep a quarter of its rate at a 99% throttle.)
 */
static void dirty_forever(uint32_t rate, uint32_t disk_rate)
{
    uint32_t last = pm_now(), acc = 0, credit = 0, cap = rate * 2u;
    uint32_t dcredit = 0, dcap = disk_rate * 2u;
    for (;;) {
        uint32_t now = pm_now();
        acc += (now - last) & PM_TIMER_MASK;
        last = now;
        while (acc >= TICKS_PER_10MS) {
            acc -= TICKS_PER_10MS;
            credit += rate;
            dcredit += disk_rate;
        }
        credit = credit > cap ? cap : credit;
        dcredit = dcredit > dcap ? dcap : dcredit;
        while (credit >= 100u) {
            credit -= 100u;
            step();
        }
        while (dcredit >= 100u) {
            dcredit -= 100u;
            disk_step();
        }
    }
}

void guest_main(uint32_t magic, const struct mb_info *mbi)
{
    const char *cmd = "";
    uint32_t top = 64u << 20;

    if (magic == 0x2BADB002u && (mbi->flags & MB_INFO_CMDLINE)) {
        cmd = (const char *)mbi->cmdline;
    }
    if (magic == 0x2BADB002u && (mbi->flags & MB_INFO_MEM)) {
        top = (1u << 20) + mbi->mem_upper * 1024u;
    }
    uint32_t avail = top > VMIG_GUEST_RANGE_START + (2u << 20)
                         ? (top - VMIG_GUEST_RANGE_START - (1u << 20)) / VMIG_GUEST_PAGE_SIZE
                         : 0;
    uint32_t fill_mib = cmdline_u32(cmd, "vmig.fill_mib", 0);
    uint32_t rate_mib = cmdline_u32(cmd, "vmig.dirty_mib_s", 0);
    tlb_refresh = cmdline_u32(cmd, "vmig.tlb_refresh", 1);
    uint32_t disk_mib = cmdline_u32(cmd, "vmig.disk_mib", 0);
    uint32_t disk_kib_s = cmdline_u32(cmd, "vmig.disk_kib_s", 256);
    uint32_t npages = avail;
    if (fill_mib && fill_mib * (1024u * 1024u / VMIG_GUEST_PAGE_SIZE) < avail) {
        npages = fill_mib * (1024u * 1024u / VMIG_GUEST_PAGE_SIZE);
    }

    status->magic = 0;
    status->version = VMIG_GUEST_ABI_VERSION;
    status->state = VMIG_GUEST_FILLING;
    status->page_size = VMIG_GUEST_PAGE_SIZE;
    status->range_start = VMIG_GUEST_RANGE_START;
    status->npages = npages;
    status->gen = 1;
    status->cursor = 0;
    status->rate_pages_s = rate_mib * (1024u * 1024u / VMIG_GUEST_PAGE_SIZE);
    status->errors = 0;
    status->first_bad = 0;
    status->writes_lo = status->writes_hi = 0;
    status->disk_state = VMIG_DISK_OFF;
    status->disk_sectors = status->disk_cursor = status->disk_errors = 0;
    status->disk_first_bad = status->disk_steps = 0;
    status->clock_ok = (uint32_t)pm_timer_ticks();
    status->magic = VMIG_GUEST_STATUS_MAGIC;

    if (npages == 0) {
        serial_puts("VMIG-ERROR no memory for the pattern\n");
        return;
    }
    serial_puts("VMIG-FILLING ");
    serial_putu(npages);
    serial_puts(" pages\n");
    while (status->gen == 1) {
        step();
    }
    disk_init(disk_mib, disk_kib_s);
    status->state = VMIG_GUEST_RUNNING;
    serial_puts("VMIG-READY ");
    serial_putu(npages);
    serial_puts(status->clock_ok ? " clock=pm\n" : " clock=none\n");

    uint32_t disk_rate = status->disk_state == VMIG_DISK_RUNNING ? status->disk_rate_steps_s : 0;
    if ((status->rate_pages_s == 0 && disk_rate == 0) || !status->clock_ok) {
        return; /* idle: _start halts with interrupts off */
    }
    dirty_forever(status->rate_pages_s, disk_rate);
}
