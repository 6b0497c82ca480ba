/* The IDT, the local APIC (EOI, a periodic timer as the clock for timeouts) and waiting. */
#ifndef DG_IRQ_H
#define DG_IRQ_H

#include "util.h"

/* Vectors. MSI-X vectors for tests start at VEC_MSIX_BASE; every vector from 32 up has a handler
 * that counts it in irq_count[] and sends the EOI, so any vector a test programs just works. */
#define VEC_TIMER 0x20
#define VEC_MSIX_BASE 0x40
#define VEC_SPURIOUS 0xff

#define LAPIC_BASE 0xfee00000ull
#define MSI_ADDRESS(apic_id) (LAPIC_BASE | ((u64)(apic_id) << 12))

/* What isr_common (start.S) pushed, lowest address first. */
struct irq_frame {
    u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
    u64 vector, error;
    u64 rip, cs, rflags, rsp, ss;
};

/* How many times each vector arrived. */
extern volatile u32 irq_count[256];
/* Timer ticks since irq_init (TICK_MS each) */
extern volatile u64 ticks;
#define TICK_MS 10

/* Builds and loads the IDT, masks the legacy PIC and LINT0, enables the LAPIC, starts the timer
 * and enables interrupts. Checks that the timer ticks; without it waits fall back to polling. */
void irq_init(void);
u32 lapic_id(void);
/* True when the LAPIC timer ticks (waits can then sleep in hlt). */
bool timer_works(void);

/* Waits until done(arg) returns true or timeout_ms passes; false on timeout. Sleeps in hlt between
 * interrupts (an MSI-X vector or the timer wakes it), so the device thread gets the host CPU. */
bool wait_until(bool (*done)(void *), void *arg, u32 timeout_ms);
/* Waits until irq_count[vector] differs from `seen`; false on timeout. */
bool wait_irq(u8 vector, u32 seen, u32 timeout_ms);
/* Roughly `ms` milliseconds (in timer ticks), interrupts enabled. */
void sleep_ms(u32 ms);

#endif
