/*
 * pvh-hello: the smallest guest both Canto and QEMU boot the same way (an ELF with a PVH note,
 * entered in 32-bit protected mode with paging off). It prints one line on COM1 and resets the
 * machine through the i8042 (Canto ends the VM; QEMU with -no-reboot exits). If the reset is
 * ignored it triple-faults (an empty IDT, then ud2), which ends the VM in both.
 * Only plain integer instructions: kvm_pvm interprets guest kernel code and cannot run some.
 */
	.section .note.pvh, "a", @note
	.balign 4
	.long 4			/* name size: "Xen\0" */
	.long 4			/* descriptor size */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.long pvh_start

	.text
	.code32
	.globl pvh_start
pvh_start:
	cli
	mov	$message, %esi
next_char:
	movb	(%esi), %bl
	test	%bl, %bl
	jz	reset
	mov	$0x3fd, %dx		/* line status register */
wait_thr:
	inb	%dx, %al
	test	$0x20, %al		/* transmit holding register empty */
	jz	wait_thr
	mov	$0x3f8, %dx
	mov	%bl, %al
	outb	%al, %dx
	inc	%esi
	jmp	next_char
reset:
	mov	$0xfe, %al
	outb	%al, $0x64		/* i8042: pulse the reset line */
	lidt	empty_idt
	ud2
	hlt
	jmp	reset

	.section .rodata
message:
	.ascii "BENCH-HELLO\r\n"
	.byte 0
	.balign 8
empty_idt:
	.word 0
	.long 0
