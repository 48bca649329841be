/* ELF note that marks this image as emulator-safe for spry:
 * name "spry" (namesz 5 incl. NUL), type 1, desc "emulator-safe" (descsz 14 incl. NUL).
 * link.ld puts it in a PT_NOTE segment. */
	.section .note.spry, "a", @note
	.balign 4
	.long	2f - 1f		/* namesz */
	.long	4f - 3f		/* descsz */
	.long	1		/* type */
1:	.asciz	"spry"
2:	.balign 4
3:	.asciz	"emulator-safe"
4:	.balign 4

	.section .note.GNU-stack, "", @progbits
