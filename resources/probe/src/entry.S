/*
 * Entry points of the spry probe guest.
 *
 * The image starts with this section (see link.ld):
 *   +0x000  startup_32: a 32-bit entry (code32_start) that only reports that
 *           the 32-bit boot protocol is not supported and resets.
 *   +0x200  startup_64: the Linux 64-bit boot protocol entry. The VMM jumps
 *           here in long mode with RSI = &boot_params. The PVH entry
 *           (pvh_entry.S, ELF only) jumps here too, once it has switched to long
 *           mode itself; what this records is then its own state.
 *
 * startup_64 records the entry state before touching anything (flags,
 * segment selectors, RSP, RSI, GDTR), then switches to the probe's own stack,
 * GDT and IDT, so that the checks can report a broken VMM setup instead of
 * dying on it. It never writes to the VMM-provided stack.
 */
	.section .text.head, "ax"

	.code32
	.globl startup_32
startup_32:
	cld
	movl	$msg32, %esi
	movw	$0x3f8, %dx
1:	lodsb
	testb	%al, %al
	jz	2f
	outb	%al, %dx
	jmp	1b
2:	movb	$0xfe, %al
	outb	%al, $0x64
3:	cli
	hlt
	jmp	3b

	.org	0x200
	.code64
	.globl startup_64
startup_64:
	/* mov and lea leave RFLAGS untouched, so pushfq sees the entry flags */
	movq	%rsp, entry_state+8(%rip)
	leaq	boot_stack_top(%rip), %rsp
	pushfq
	popq	entry_state+16(%rip)
	cli
	cld
	movq	%rsi, entry_state+0(%rip)
	movw	%cs, entry_state+24(%rip)
	movw	%ds, entry_state+32(%rip)
	movw	%es, entry_state+40(%rip)
	movw	%ss, entry_state+48(%rip)
	movw	%fs, entry_state+56(%rip)
	movw	%gs, entry_state+64(%rip)
	sgdt	entry_state+72(%rip)

	/* own GDT (same layout as Linux's boot GDT: 0x10 code, 0x18 data) */
	lgdt	probe_gdtr(%rip)
	movl	$0x18, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	pushq	$0x10
	leaq	1f(%rip), %rax
	pushq	%rax
	lretq
1:	lidt	probe_idtr(%rip)
	call	probe_main
	jmp	probe_halt

	.globl probe_halt
probe_halt:
	cli
	hlt
	jmp	probe_halt

	.section .rodata
msg32:	.asciz "probe: FAIL entered through the 32-bit entry; only the 64-bit boot protocol (entry at +0x200) is supported\n"

	.section .data
	.balign 16
	.globl entry_state
entry_state:
	.fill	96, 1, 0

	.balign 16
probe_gdt:
	.quad	0
	.quad	0
	.quad	0x00af9b000000ffff	/* 0x10: 64-bit code */
	.quad	0x00cf93000000ffff	/* 0x18: flat data */
probe_gdt_end:
	.balign 4
	.word	0
	.globl probe_gdtr		/* also loaded by the PVH entry (pvh_entry.S) */
probe_gdtr:
	.word	probe_gdt_end - probe_gdt - 1
	.quad	probe_gdt

	.section .stack, "aw", @nobits
	.balign 16
boot_stack:
	.skip	16384
	.globl boot_stack_top
boot_stack_top:

	.section .note.GNU-stack, "", @progbits
