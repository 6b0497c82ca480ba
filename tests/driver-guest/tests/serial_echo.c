/* serial-echo: reports every byte the host sends to COM1, until the VM is stopped from outside.
 * With `read=0` it never reads COM1, so the receive FIFO fills and stays full. */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "tests.h"

#define COM1 0x3f8
#define UART_RBR 0
#define UART_LSR 5
#define LSR_DR 0x01

void test_serial_echo(void)
{
    char read[4] = "1";
    cmdline_get(dg_cmdline, "read", read, sizeof(read));
    dg_log("serial-echo: ready");
    if (strcmp(read, "0") == 0) {
        for (;;)
            sleep_ms(1000);
    }
    for (;;) {
        /* Polled, not interrupt-driven: between polls the vCPU sleeps in hlt until the timer. */
        if (!(inb(COM1 + UART_LSR) & LSR_DR)) {
            sleep_ms(TICK_MS);
            continue;
        }
        dg_log("serial-echo: byte 0x%02x", inb(COM1 + UART_RBR));
    }
}
