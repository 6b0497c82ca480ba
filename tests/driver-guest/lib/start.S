/* Entry point and interrupt stubs.
 *
 * Canto enters here through the Linux 64-bit boot protocol: long mode, 0..4 GiB identity-mapped,
 * RSI = the zero page (boot_params), a stack at 0x8ff0 we do not keep, and an empty IDT. */

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    mov %rsi, %r12                  /* boot_params: rep stos below does not touch r12 */

    /* Zero .bss (our stack lives there, so nothing may be pushed before this). */
    cld
    mov $__bss_start, %rdi
    mov $__bss_end, %rcx
    sub %rdi, %rcx
    shr $3, %rcx                    /* the linker script keeps .bss 16-byte aligned */
    xor %eax, %eax
    rep stosq

    mov $stack_top, %rsp            /* 16-byte aligned: the SysV ABI wants that at a call */
    xor %ebp, %ebp
    mov %r12, %rdi
    call dg_main                    /* does not return; if it did, reset anyway */
1:  mov $0xfe, %al
    out %al, $0x64
    cli
    hlt
    jmp 1b

/* 256 interrupt stubs, 16 bytes apart (irq.c computes each one's address as isr_stubs + 16 * v).
 * Each pushes a dummy error code when the CPU does not push one, then the vector number, so that
 * isr_common always sees the same frame. */
    .text
    .align 16
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .align 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec
    .else
    pushq $0
    pushq $vec
    .endif
    jmp isr_common
    .set vec, vec + 1
    .endr

/* Saves the registers the C ABI lets irq_dispatch clobber, and passes it the frame
 * (struct irq_frame in irq.h). The CPU aligned RSP to 16 before pushing its 5-word frame; with the
 * 2 words above and the 9 here the call happens on a 16-byte boundary. No SSE state to save: the
 * guest is built with -mgeneral-regs-only. */
isr_common:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov %rsp, %rdi
    cld
    call irq_dispatch
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp                   /* vector and error code */
    iretq

    .bss
    .align 16
stack_bottom:
    .skip 32768
stack_top:

    .section .note.GNU-stack, "", @progbits
