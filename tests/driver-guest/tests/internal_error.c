/* internal-error: runs an instruction kvm_pvm's emulator cannot execute at CPL0 (`insn=int3`,
 * the default, `insn=xsave` or `insn=fwait`; see tests/unrunnable.S). KVM then ends the VM with
 * KVM_EXIT_INTERNAL_ERROR and Canto must exit non-zero with one stderr line naming the error, the
 * RIP and the instruction bytes. The guest first prints where the instruction is and the 16 bytes
 * there, for the Rust test to compare. On a KVM that can run the instruction the test fails
 * (int3 and the ud2 after the others reach the IDT as exceptions). */
#include "dg.h"
#include "serial.h"
#include "tests.h"

void dg_unrunnable_int3(void);
void dg_unrunnable_xsave(void *area);
void dg_unrunnable_fwait(void);

static u8 xsave_area[4096] ALIGNED(64);

void test_internal_error(void)
{
    char which[16];
    if (!cmdline_get(dg_cmdline, "insn", which, sizeof(which)))
        memcpy(which, "int3", 5);
    const u8 *at;
    if (strcmp(which, "int3") == 0)
        at = (const u8 *)dg_unrunnable_int3;
    else if (strcmp(which, "xsave") == 0)
        at = (const u8 *)dg_unrunnable_xsave;
    else if (strcmp(which, "fwait") == 0)
        at = (const u8 *)dg_unrunnable_fwait;
    else
        dg_fail("insn=%s: expected int3, xsave or fwait", which);
    char hex[16 * 3 + 1];
    for (int i = 0; i < 16; i++)
        ksnprintf(hex + 3 * i, 4, "%02x ", at[i]);
    hex[16 * 3 - 1] = 0;
    dg_log("internal-error: running %s at rip 0x%lx, bytes: %s", which, (u64)at, hex);
    if (at == (const u8 *)dg_unrunnable_xsave)
        dg_unrunnable_xsave(xsave_area);
    else
        ((void (*)(void))at)();
    dg_fail("%s at 0x%lx ran and returned: this KVM executes it, no internal error to report",
            which, (u64)at);
}
