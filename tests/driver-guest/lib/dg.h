/* The test harness: progress lines, the one result line, ending the VM, and the test table.
 *
 * Protocol on the serial port: every line starts with "DG "; a run ends with exactly one
 * "DG PASS <name>" or "DG FAIL <name>: <reason>" and then the guest resets the VM (i8042 0xFE),
 * which makes Canto exit 0. */
#ifndef DG_DG_H
#define DG_DG_H

#include "util.h"

/* Prints "DG " + the formatted text + newline. */
void dg_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "DG FAIL <test>: <reason>" and resets the VM. */
NORETURN void dg_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Resets the VM through the i8042 (Canto ends the VM and exits 0). */
NORETURN void dg_reset(void);

/* Helpers for the common "call something that returns an error string" pattern. */
#define DG_CHECK(expr)                                                                             \
    do {                                                                                           \
        const char *dg_err_ = (expr);                                                              \
        if (dg_err_)                                                                               \
            dg_fail("%s", dg_err_);                                                                \
    } while (0)

/* The running test's name and the whole command line. */
extern const char *dg_test_name;
extern const char *dg_cmdline;

/* A test returns to pass; it fails through dg_fail (which does not return). */
struct dg_test {
    const char *name;
    void (*run)(void);
    const char *about;
};

#endif
