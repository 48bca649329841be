/* PVH boot: the entry record pvh_entry.S fills, and the layout of the structures
 * the PVH boot protocol hands over (Xen's public hvm/start_info.h). Included
 * by assembly too. */
#ifndef PROBE_PVH_H
#define PROBE_PVH_H

/* struct pvh_entry, field offsets (pvh_entry.S stores by offset) */
#define PVH_ACTIVE      0       /* 1 once pvh_start ran: the PVH flavour */
#define PVH_START_INFO  4       /* EBX at entry */
#define PVH_ESP         8
#define PVH_EFLAGS      12
#define PVH_CR0         16
#define PVH_CS          20
#define PVH_DS          22
#define PVH_ES          24
#define PVH_SS          26
#define PVH_FS          28
#define PVH_GS          30
#define PVH_GDTR        32      /* sgdtl image: u16 limit, u32 base */

/* struct hvm_start_info */
#define SI_MAGIC          0     /* u32 */
#define SI_VERSION        4     /* u32 */
#define SI_FLAGS          8     /* u32 */
#define SI_NR_MODULES     12    /* u32 */
#define SI_MODLIST_PADDR  16    /* u64 */
#define SI_CMDLINE_PADDR  24    /* u64 */
#define SI_RSDP_PADDR     32    /* u64 */
#define SI_SIZE_V0        40
#define SI_MEMMAP_PADDR   40    /* u64, version >= 1 */
#define SI_MEMMAP_ENTRIES 48    /* u32, version >= 1 */
#define SI_SIZE_V1        56
#define START_INFO_MAGIC  0x336ec578u

/* struct hvm_modlist_entry: u64 paddr, size, cmdline_paddr, reserved */
#define MODLIST_ENTRY_SIZE 32
/* struct hvm_memmap_table_entry: u64 addr, u64 size, u32 type, u32 reserved
 * (addr/size/type at the same offsets as in an e820 entry) */
#define MEMMAP_ENTRY_SIZE  24

#ifndef __ASSEMBLER__
#include "types.h"

struct pvh_entry {
	u32 active;
	u32 start_info;
	u32 esp;
	u32 eflags;
	u32 cr0;
	u16 cs, ds, es, ss, fs, gs;
	u16 gdt_limit;
	u32 gdt_base;
} __attribute__((packed));
extern struct pvh_entry pvh_entry;

_Static_assert(__builtin_offsetof(struct pvh_entry, cr0) == PVH_CR0, "pvh_entry layout");
_Static_assert(__builtin_offsetof(struct pvh_entry, cs) == PVH_CS, "pvh_entry layout");
_Static_assert(__builtin_offsetof(struct pvh_entry, gs) == PVH_GS, "pvh_entry layout");
_Static_assert(__builtin_offsetof(struct pvh_entry, gdt_limit) == PVH_GDTR, "pvh_entry layout");

/* checks of the PVH flavour (pvh.c) */
void check_pvh_entry(void);
void check_start_info(void);
#endif

#endif
