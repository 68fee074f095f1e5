/*
 * vmigrate's built-in test guest: a freestanding 32-bit multiboot kernel.
 *
 * It fills guest RAM above 2 MiB with a known pattern (guest-abi.h), reports "VMIG-READY" on
 * COM1, then rewrites the pages in order at a bounded rate so a live migration always has
 * dirty memory to chase.  Before rewriting a page it checks that the page still holds what it
 * wrote last time, so a page lost in a migration is caught by the guest too, not only by the
 * host's check of a memory snapshot.
 *
 * Kernel command line (-append): vmig.fill_mib=N (default: all RAM above 2 MiB, less 1 MiB
 * at the top), vmig.dirty_mib_s=R (default 0: fill, then halt) and vmig.tlb_refresh=0|1
 * (default 1, see tlb_drop()).
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
static void dirty_forever(uint32_t rate)
{
    uint32_t last = pm_now(), acc = 0, credit = 0, cap = rate * 2u;
    for (;;) {
        uint32_t now = pm_now();
        acc += (now - last) & PM_TIMER_MASK;
        last = now;
        while (acc >= TICKS_PER_10MS) {
            acc -= TICKS_PER_10MS;
            credit += rate;
        }
        if (credit > cap) {
            credit = cap;
        }
        while (credit >= 100u) {
            credit -= 100u;
            step();
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
    status->state = VMIG_GUEST_RUNNING;
    serial_puts("VMIG-READY ");
    serial_putu(npages);
    serial_puts(status->clock_ok ? " clock=pm\n" : " clock=none\n");

    if (status->rate_pages_s == 0 || !status->clock_ok) {
        return; /* idle: _start halts with interrupts off */
    }
    dirty_forever(status->rate_pages_s);
}
