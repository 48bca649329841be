/*
 * Interrupt stubs and a build-time IDT.
 *
 * Each of the NUM_VECTORS stubs is exactly 16 bytes at a fixed offset
 * (STUB_OFFSET) from the image's link address LOAD_ADDR, so the IDT gates can
 * be computed by the assembler: no instruction is spent building the IDT at
 * run time (under the KVM emulator every instruction costs ~0.7 us).
 * This file is therefore assembled once per link address (-DLOAD_ADDR=...);
 * link.ld asserts the stubs really landed at LOAD_ADDR + STUB_OFFSET.
 */
#ifndef LOAD_ADDR
#error "assemble with -DLOAD_ADDR=<link address>"
#endif
#define STUB_OFFSET 0x400
#define NUM_VECTORS 64
#define KERNEL_CS 0x10

	.section .text.isr, "ax"
	.code64
	.globl isr_stubs
isr_stubs:
	.set	vec, 0
	.rept	NUM_VECTORS
	.org	vec * 16, 0x90
	/* CPU pushes an error code for 8, 10-14, 17, 21, 29, 30 */
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	pushq	$vec
	.else
	pushq	$0
	pushq	$vec
	.endif
	jmp	isr_common
	.set	vec, vec + 1
	.endr
	.org	NUM_VECTORS * 16, 0x90

isr_common:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	cld
	movq	%rsp, %rdi
	call	isr_dispatch
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rbp
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rbx
	popq	%rax
	addq	$16, %rsp
	iretq

	.section .data
	.balign 16
	.globl probe_idt
probe_idt:
	.set	vec, 0
	.rept	NUM_VECTORS
	.set	addr, LOAD_ADDR + STUB_OFFSET + vec * 16
	.word	addr & 0xffff
	.word	KERNEL_CS
	.word	0x8e00			/* present, DPL 0, 64-bit interrupt gate */
	.word	(addr >> 16) & 0xffff
	.long	addr >> 32
	.long	0
	.set	vec, vec + 1
	.endr
	.balign 4
	.word	0
	.globl probe_idtr
probe_idtr:
	.word	NUM_VECTORS * 16 - 1
	.quad	probe_idt

	.section .note.GNU-stack, "", @progbits
