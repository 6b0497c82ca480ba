/* Instructions this machine's kvm_pvm cannot execute at CPL0, for test=internal-error: each ends
 * the VM with KVM_EXIT_INTERNAL_ERROR, which Canto must report with the instruction's bytes.
 *
 * Emitted as .byte so that the assembler cannot pick another encoding. The Makefile's disassembly
 * check skips exactly the symbols named dg_unrunnable_* (and nothing else). Each stub is the
 * instruction, then ud2 (were it to run after all, the guest's IDT reports #UD), then ret. */

    .text

    .align 16
    .globl dg_unrunnable_int3
    .type dg_unrunnable_int3, @function
dg_unrunnable_int3:
    .byte 0xcc                      /* int3 */
    .byte 0x0f, 0x0b                /* ud2 */
    .byte 0xc3                      /* ret */
    .size dg_unrunnable_int3, . - dg_unrunnable_int3

    .align 16
    .globl dg_unrunnable_xsave
    .type dg_unrunnable_xsave, @function
dg_unrunnable_xsave:                /* rdi = a 64-byte aligned save area */
    .byte 0x0f, 0xae, 0x27          /* xsave (%rdi) */
    .byte 0x0f, 0x0b                /* ud2 */
    .byte 0xc3                      /* ret */
    .size dg_unrunnable_xsave, . - dg_unrunnable_xsave

    .align 16
    .globl dg_unrunnable_fwait
    .type dg_unrunnable_fwait, @function
dg_unrunnable_fwait:
    .byte 0x9b                      /* fwait */
    .byte 0x0f, 0x0b                /* ud2 */
    .byte 0xc3                      /* ret */
    .size dg_unrunnable_fwait, . - dg_unrunnable_fwait

    .section .note.GNU-stack, "", @progbits
