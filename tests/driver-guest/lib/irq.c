#include "irq.h"
#include "dg.h"
#include "serial.h"

#define LAPIC_ID 0x20
#define LAPIC_TPR 0x80
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_DCR 0x3e0
#define LVT_MASKED (1u << 16)
#define LVT_PERIODIC (1u << 17)
#define SVR_ENABLE (1u << 8)
/* KVM's LAPIC timer counts at 1 GHz (APIC_BUS_CYCLE_NS = 1); with divide-by-1 a 10 ms period is
 * 10^7 counts. On another clock the ticks stretch or shrink, which only scales the timeouts. */
#define TIMER_COUNT_PER_MS 1000000u

struct idt_gate {
    u16 offset_lo, selector;
    u8 ist, type_attr;
    u16 offset_mid;
    u32 offset_hi, zero;
} __attribute__((packed));

static struct idt_gate idt[256] ALIGNED(16);
volatile u32 irq_count[256];
volatile u64 ticks;
static bool timer_ok;

extern char isr_stubs[];

static inline u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }

u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
bool timer_works(void) { return timer_ok; }

static const char *const exception_names[32] = {
    "#DE divide", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound",
    "#UD invalid opcode", "#NM no FPU", "#DF double fault", "coprocessor overrun", "#TS bad TSS",
    "#NP segment not present", "#SS stack fault", "#GP general protection", "#PF page fault",
    "reserved", "#MF x87", "#AC alignment", "#MC machine check", "#XM SIMD", "#VE virtualization",
    "#CP control protection",
};

void irq_dispatch(struct irq_frame *f);
void irq_dispatch(struct irq_frame *f)
{
    u64 v = f->vector;
    if (v < 32) {
        /* Every exception is a bug in the guest (or an interrupt on a vector nothing should use):
         * say where, and end the VM rather than loop. */
        u64 cr2;
        __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
        dg_fail("exception %lu (%s) error 0x%lx at rip 0x%lx rsp 0x%lx cr2 0x%lx", v,
                exception_names[v] ? exception_names[v] : "?", f->error, f->rip, f->rsp, cr2);
    }
    irq_count[v]++;
    if (v == VEC_TIMER)
        ticks++;
    if (v != VEC_SPURIOUS) /* the spurious vector is the one interrupt that takes no EOI */
        lapic_write(LAPIC_EOI, 0);
}

void irq_init(void)
{
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    for (int v = 0; v < 256; v++) {
        u64 addr = (u64)isr_stubs + 16 * v;
        idt[v] = (struct idt_gate){
            .offset_lo = (u16)addr,
            .selector = cs,
            .type_attr = 0x8e, /* present, DPL 0, 64-bit interrupt gate (IF cleared on entry) */
            .offset_mid = (u16)(addr >> 16),
            .offset_hi = (u32)(addr >> 32),
        };
    }
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" ::"m"(idtr));

    /* The legacy 8259s: mask every line (OCW1), so nothing arrives through LINT0's ExtINT on a
     * vector we have not set up. Masking LINT0/LINT1 in the LAPIC covers the rest. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);

    lapic_write(LAPIC_SVR, SVR_ENABLE | VEC_SPURIOUS);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_TIMER_DCR, 0xb); /* divide by 1 */
    lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
    lapic_write(LAPIC_TIMER_ICR, TICK_MS * TIMER_COUNT_PER_MS);
    sti();

    /* Check the timer really ticks before any wait sleeps in hlt on it (a hlt with nothing to wake
     * it would hang the test). ~30 ms worth of spinning at this machine's interpreted speed. */
    for (u32 i = 0; i < 200000 && ticks == 0; i++)
        cpu_relax();
    timer_ok = ticks != 0;
    if (!timer_ok)
        dg_log("WARN the LAPIC timer does not tick: waits poll instead of sleeping");
}

bool wait_until(bool (*done)(void *), void *arg, u32 timeout_ms)
{
    if (timer_ok) {
        u64 deadline = ticks + (timeout_ms + TICK_MS - 1) / TICK_MS + 1;
        /* Interrupts off while checking, so that an interrupt arriving between the check and hlt
         * is not lost: sti;hlt opens the window only on the hlt itself. */
        cli();
        while (!done(arg)) {
            if (ticks >= deadline) {
                sti();
                return false;
            }
            sti_hlt();
            cli();
        }
        sti();
        return true;
    }
    /* No timer: poll with a crude iteration bound (a few microseconds each, interpreted). */
    for (u64 i = 0; i < (u64)timeout_ms * 300; i++) {
        if (done(arg))
            return true;
        cpu_relax();
    }
    return done(arg);
}

struct irq_wait {
    u8 vector;
    u32 seen;
};

static bool irq_arrived(void *arg)
{
    struct irq_wait *w = arg;
    return irq_count[w->vector] != w->seen;
}

bool wait_irq(u8 vector, u32 seen, u32 timeout_ms)
{
    struct irq_wait w = {vector, seen};
    return wait_until(irq_arrived, &w, timeout_ms);
}

static bool never(void *arg)
{
    (void)arg;
    return false;
}

void sleep_ms(u32 ms) { wait_until(never, 0, ms); }
