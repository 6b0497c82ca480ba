#include "dg.h"
#include "serial.h"

const char *dg_test_name = "?";
const char *dg_cmdline = "";

void dg_log(const char *fmt, ...)
{
    va_list ap;
    serial_puts("DG ");
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    serial_putc('\n');
}

NORETURN void dg_reset(void)
{
    cli();
    outb(0x64, 0xfe); /* i8042 "pulse reset line" */
    for (;;)
        __asm__ volatile("hlt");
}

NORETURN void dg_fail(const char *fmt, ...)
{
    va_list ap;
    cli(); /* no more interrupt noise between the reason and the reset */
    kprintf("DG FAIL %s: ", dg_test_name);
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    serial_putc('\n');
    dg_reset();
}
