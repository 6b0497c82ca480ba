/* COM1 output and a small printf. Every line the tests print starts with "DG ". */
#ifndef DG_SERIAL_H
#define DG_SERIAL_H

#include "util.h"

void serial_putc(char c);
void serial_puts(const char *s);
/* %s %c %d %u %x %p, with l/ll, '0' padding and a width: "%08x", "%lu", "%016lx". */
void kvprintf(const char *fmt, va_list ap);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Formats into buf (always NUL-terminated, truncated to size). */
void ksnprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
