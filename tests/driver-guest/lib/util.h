/* Basic types, port and MMIO access, and the few libc functions a freestanding guest needs. */
#ifndef DG_UTIL_H
#define DG_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t i64;

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define NORETURN __attribute__((noreturn))
#define ALIGNED(n) __attribute__((aligned(n)))

/* Keeps the compiler from moving memory accesses across this point (x86 is TSO: stores are not
 * reordered with stores, loads not with loads, so this is all a ring update needs). */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
/* A full fence: needed where a store must be visible before a later load (EVENT_IDX checks). */
static inline void mfence(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* MMIO: one access of exactly the given width, in inline asm like Linux's readl/writel. Plain
 * volatile pointers are not enough here: gcc 12.2 -O2 duplicates volatile stores that follow a
 * static variable's update in a loop (its loop store motion re-issues the last iteration's
 * stores after the loop), which sent queue_enable twice to the device. The Makefile also turns
 * that pass off (-fno-tree-loop-im) for the volatile ring accesses. */
static inline u8 mmio_read8(u64 a) { u8 v; __asm__ volatile("movb %1, %0" : "=q"(v) : "m"(*(volatile u8 *)a) : "memory"); return v; }
static inline u16 mmio_read16(u64 a) { u16 v; __asm__ volatile("movw %1, %0" : "=r"(v) : "m"(*(volatile u16 *)a) : "memory"); return v; }
static inline u32 mmio_read32(u64 a) { u32 v; __asm__ volatile("movl %1, %0" : "=r"(v) : "m"(*(volatile u32 *)a) : "memory"); return v; }
static inline void mmio_write8(u64 a, u8 v) { __asm__ volatile("movb %1, %0" : "=m"(*(volatile u8 *)a) : "q"(v) : "memory"); }
static inline void mmio_write16(u64 a, u16 v) { __asm__ volatile("movw %1, %0" : "=m"(*(volatile u16 *)a) : "r"(v) : "memory"); }
static inline void mmio_write32(u64 a, u32 v) { __asm__ volatile("movl %1, %0" : "=m"(*(volatile u32 *)a) : "r"(v) : "memory"); }
/* 64-bit registers as two 32-bit writes, low half first: VIRTIO 1.2 §4.1.3.1 allows it and a
 * device must accept it, while not every VMM handles an 8-byte MMIO access. */
static inline void mmio_write64(u64 a, u64 v) { mmio_write32(a, (u32)v); mmio_write32(a + 4, (u32)(v >> 32)); }
static inline u64 mmio_read64(u64 a) { return mmio_read32(a) | ((u64)mmio_read32(a + 4) << 32); }

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)::"memory");
    return lo | ((u64)hi << 32);
}

static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
/* sti takes effect after the next instruction, so no interrupt can slip in between the caller's
 * last check and the hlt: it wakes the hlt instead. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }

/* gcc may emit calls to these four even with -fno-builtin (struct copies, zeroing). */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

/* The value of `key=` in the kernel command line (whitespace-separated words), copied into `out`;
 * false when the key is absent. */
bool cmdline_get(const char *cmdline, const char *key, char *out, size_t out_size);
/* Parses a decimal or 0x-hex number; false on junk. */
bool parse_u64(const char *s, u64 *out);

/* Sorts in place (heapsort: O(n log n) and no recursion; instructions are expensive here). */
void sort_u64(u64 *a, size_t n);

#endif
