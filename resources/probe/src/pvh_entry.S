/*
 * PVH entry of the spry probe guest (linked into the ELF vmlinux only: QEMU
 * boots ELF kernels only through PVH, and only ELF files carry the note).
 *
 * The Xen/QEMU PVH boot protocol enters XEN_ELFNOTE_PHYS32_ENTRY in 32-bit
 * protected mode, paging off, interrupts off, CS/DS/ES/SS flat 4 GiB, with
 * EBX = physical address of struct hvm_start_info; ESP is undefined. This stub
 * records that entry state for the pvh-entry check (src/pvh.c), switches to
 * long mode on identity page tables and joins the Linux 64-bit entry
 * (startup_64, entry.S), which loads the probe's GDT and IDT and calls
 * probe_main; pvh_entry.active tells the C code to run the PVH flavour.
 *
 * Page tables: 2 MiB pages, identity 0-1 GiB (RAM: image, firmware tables,
 * command line, memory map, modules) and 3-4 GiB (boot timer 0xC0000000,
 * IOAPIC, LAPIC, the rest of the MMIO gap). The two page directories are
 * built by the assembler (no run-time loop: ~0.7 us per emulated
 * instruction); the PML4 and PDPT are NOLOAD pages, zero-filled by the ELF
 * loader (p_memsz > p_filesz), that get their three entries at run time.
 *
 * Every instruction here is 32-bit code; tools/check_insns.py decodes
 * [pvh_start, pvh_code32_end) as such.
 */
#include "pvh.h"

#define PTE_P_RW	0x003
#define PDE_2M		0x083		/* present, writable, 2 MiB page */
#define CR0_PG		0x80000000
#define CR4_PAE		0x00000020
#define MSR_EFER	0xC0000080
#define EFER_LME	0x00000100
#define KERNEL_CS	0x10		/* probe_gdt (entry.S): 64-bit code */

	.section .text.pvh, "ax"
	.code32
	.globl pvh_start
pvh_start:
	/* mov leaves EFLAGS untouched, so pushfl sees the entry flags; the stack
	 * is the probe's own (the entry ESP is undefined) */
	movl	%esp, pvh_entry + PVH_ESP
	movl	$boot_stack_top, %esp
	pushfl
	popl	pvh_entry + PVH_EFLAGS
	cli
	cld
	movl	%ebx, pvh_entry + PVH_START_INFO
	movw	%cs, pvh_entry + PVH_CS
	movw	%ds, pvh_entry + PVH_DS
	movw	%es, pvh_entry + PVH_ES
	movw	%ss, pvh_entry + PVH_SS
	movw	%fs, pvh_entry + PVH_FS
	movw	%gs, pvh_entry + PVH_GS
	sgdtl	pvh_entry + PVH_GDTR
	movl	%cr0, %eax
	movl	%eax, pvh_entry + PVH_CR0
	movl	$1, pvh_entry + PVH_ACTIVE

	/* PML4[0] -> PDPT; PDPT[0] -> 0-1 GiB, PDPT[3] -> 3-4 GiB */
	movl	$pvh_pdpt + PTE_P_RW, pvh_pml4
	movl	$pvh_pd_low + PTE_P_RW, pvh_pdpt
	movl	$pvh_pd_high + PTE_P_RW, pvh_pdpt + 3 * 8
	movl	$pvh_pml4, %eax
	movl	%eax, %cr3
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	/* the probe's GDT (its base is below 4 GiB, so the 32-bit lgdt reads it
	 * right); the old CS stays cached until the far jump */
	lgdtl	probe_gdtr
	movl	%cr0, %eax
	orl	$CR0_PG, %eax
	movl	%eax, %cr0		/* EFER.LMA now set: compatibility mode */
	ljmp	$KERNEL_CS, $startup_64
	.globl pvh_code32_end
pvh_code32_end:

	/* XEN_ELFNOTE_PHYS32_ENTRY: owner "Xen", type 18, the entry's physical
	 * address. 8 bytes like Linux's (_ASM_PTR): QEMU reads a size_t there,
	 * linux-loader the low 4 bytes. The section stays 4-aligned: QEMU aligns
	 * the name to the PT_NOTE's p_align, which must therefore be 4. */
	.section .note.pvh, "a", @note
	.balign 4
	.long	2f - 1f		/* namesz */
	.long	4f - 3f		/* descsz */
	.long	18		/* type: XEN_ELFNOTE_PHYS32_ENTRY */
1:	.asciz	"Xen"
2:	.balign 4
3:	.long	pvh_start
	.long	0
4:	.balign 4

	/* identity page directories, 512 x 2 MiB each */
	.section .data.pvh_pd, "aw"
	.balign 4096
pvh_pd_low:
	.set	i, 0
	.rept	512
	.quad	(i << 21) | PDE_2M
	.set	i, i + 1
	.endr
pvh_pd_high:
	.set	i, 0
	.rept	512
	.quad	(0xC0000000 + (i << 21)) | PDE_2M
	.set	i, i + 1
	.endr

	/* zero-filled by the loader (see link.ld: NOLOAD, inside p_memsz) */
	.section .pvh_tables, "aw", @nobits
	.balign 4096
pvh_pml4:
	.skip	4096
pvh_pdpt:
	.skip	4096

	.section .note.GNU-stack, "", @progbits
