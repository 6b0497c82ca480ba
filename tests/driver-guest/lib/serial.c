/* COM1 is a 16550: poll the line status register's "transmit holding register empty" bit (5),
 * then write the transmit register. No interrupts, no FIFO setup: Canto's UART needs neither. */
#include "serial.h"

#define COM1 0x3f8
#define UART_THR 0
#define UART_LSR 5
#define LSR_THRE 0x20

void serial_putc(char c)
{
    /* Bounded, so a broken UART cannot hang the guest: it just loses characters. */
    for (int i = 0; i < 100000 && !(inb(COM1 + UART_LSR) & LSR_THRE); i++)
        cpu_relax();
    outb(COM1 + UART_THR, (u8)c);
}

void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

/* Output goes through a sink so that kprintf and ksnprintf share one formatter. */
struct sink {
    char *buf; /* NULL: the serial port */
    size_t size, len;
};

static void sink_put(struct sink *s, char c)
{
    if (!s->buf) {
        serial_putc(c);
    } else if (s->len + 1 < s->size) {
        s->buf[s->len++] = c;
        s->buf[s->len] = 0;
    }
}

static void put_num(struct sink *s, u64 v, unsigned base, bool neg, int width, char pad)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (neg)
        tmp[n++] = '-';
    while (width-- > n)
        sink_put(s, pad);
    while (n--)
        sink_put(s, tmp[n]);
}

static void format(struct sink *s, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            sink_put(s, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            longs++;
            fmt++;
        }
        switch (*fmt) {
        case 'd': {
            i64 v = longs ? va_arg(ap, i64) : va_arg(ap, int);
            put_num(s, v < 0 ? -(u64)v : (u64)v, 10, v < 0, width, pad);
            break;
        }
        case 'u':
            put_num(s, longs ? va_arg(ap, u64) : va_arg(ap, unsigned), 10, false, width, pad);
            break;
        case 'x':
            put_num(s, longs ? va_arg(ap, u64) : va_arg(ap, unsigned), 16, false, width, pad);
            break;
        case 'p':
            sink_put(s, '0');
            sink_put(s, 'x');
            put_num(s, (u64)va_arg(ap, void *), 16, false, width, pad);
            break;
        case 's': {
            const char *str = va_arg(ap, const char *);
            if (!str)
                str = "(null)";
            int len = (int)strlen(str);
            while (width-- > len)
                sink_put(s, ' ');
            while (*str)
                sink_put(s, *str++);
            break;
        }
        case 'c':
            sink_put(s, (char)va_arg(ap, int));
            break;
        case '%':
            sink_put(s, '%');
            break;
        case 0:
            return;
        default:
            sink_put(s, '%');
            sink_put(s, *fmt);
        }
    }
}

void kvprintf(const char *fmt, va_list ap)
{
    struct sink s = {0};
    format(&s, fmt, ap);
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
}

void ksnprintf(char *buf, size_t size, const char *fmt, ...)
{
    struct sink s = {buf, size, 0};
    va_list ap;
    if (size)
        buf[0] = 0;
    va_start(ap, fmt);
    format(&s, fmt, ap);
    va_end(ap);
}
