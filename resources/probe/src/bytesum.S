/*
 * u64 bytesum(u64 addr, u64 len): sum of all bytes in [addr, addr+len).
 *
 * Under the KVM emulator the cost is per executed instruction, so this adds
 * eight bytes per step (SWAR): for each qword the even bytes (x & M) and the
 * odd bytes (an unaligned load at +1, & M) are added into four 16-bit lanes
 * each (r10, r11), which are folded into rax every 256 qwords, before a lane
 * can overflow. Six instructions per qword in the unrolled loop (a plain C
 * byte loop needs ~4 per byte). The +1 load never reads past the range: the
 * last 1..8 bytes are added one by one.
 */
	.text
	.code64
	.globl bytesum
bytesum:
	xorl	%eax, %eax
	movabsq	$0x00ff00ff00ff00ff, %r9
	testq	%rsi, %rsi
	jz	9f
	leaq	-1(%rsi), %rcx
	shrq	$3, %rcx		/* qwords for the fast loop: (len - 1) / 8 */
	movq	%rcx, %rdx
	shlq	$3, %rdx
	subq	%rdx, %rsi		/* 1..8 trailing bytes */
2:	testq	%rcx, %rcx
	jz	8f
	movq	%rcx, %rdx
	cmpq	$256, %rdx
	jbe	3f
	movl	$256, %edx
3:	subq	%rdx, %rcx		/* rdx: qwords in this chunk */
	xorl	%r10d, %r10d
	xorl	%r11d, %r11d
4:	cmpq	$4, %rdx
	jb	6f
	.irp	off, 0, 8, 16, 24
	movq	%r9, %r8
	andq	\off(%rdi), %r8
	addq	%r8, %r10
	movq	%r9, %r8
	andq	\off+1(%rdi), %r8
	addq	%r8, %r11
	.endr
	addq	$32, %rdi
	subq	$4, %rdx
	jmp	4b
6:	testq	%rdx, %rdx
	jz	7f
	movq	%r9, %r8
	andq	(%rdi), %r8
	addq	%r8, %r10
	movq	%r9, %r8
	andq	1(%rdi), %r8
	addq	%r8, %r11
	addq	$8, %rdi
	decq	%rdx
	jmp	6b
7:	/* fold 2 x 4 16-bit lanes (each <= 256 * 255) into rax */
	movabsq	$0x0000ffff0000ffff, %rdx
	movq	%r10, %r8
	andq	%rdx, %r10
	shrq	$16, %r8
	andq	%rdx, %r8
	addq	%r8, %r10
	movq	%r11, %r8
	andq	%rdx, %r11
	shrq	$16, %r8
	andq	%rdx, %r8
	addq	%r8, %r11
	addq	%r11, %r10		/* 2 x 32-bit lanes */
	movl	%r10d, %edx
	shrq	$32, %r10
	addq	%rdx, %rax
	addq	%r10, %rax
	jmp	2b
8:	/* trailing bytes */
	movzbl	(%rdi), %edx
	addq	%rdx, %rax
	incq	%rdi
	decq	%rsi
	jnz	8b
9:	ret

	.section .note.GNU-stack, "", @progbits
