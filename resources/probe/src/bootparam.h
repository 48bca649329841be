/* Offsets into Linux's struct boot_params (the "zero page"),
 * arch/x86/include/uapi/asm/bootparam.h. Accessed with ld8/16/32/64. */
#ifndef PROBE_BOOTPARAM_H
#define PROBE_BOOTPARAM_H

#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE  0x0c4
#define BP_EXT_CMD_LINE_PTR  0x0c8
#define BP_E820_ENTRIES      0x1e8
#define BP_SETUP_SECTS       0x1f1
#define BP_BOOT_FLAG         0x1fe
#define BP_HEADER            0x202
#define BP_VERSION           0x206
#define BP_KERNEL_VERSION    0x20e
#define BP_TYPE_OF_LOADER    0x210
#define BP_LOADFLAGS         0x211
#define BP_CODE32_START      0x214
#define BP_RAMDISK_IMAGE     0x218
#define BP_RAMDISK_SIZE      0x21c
#define BP_CMD_LINE_PTR      0x228
#define BP_KERNEL_ALIGNMENT  0x230
#define BP_XLOADFLAGS        0x236
#define BP_CMDLINE_SIZE      0x238
#define BP_INIT_SIZE         0x260
#define BP_E820_TABLE        0x2d0
#define BP_E820_MAX          128
#define E820_ENTRY_SIZE      20

#define E820_RAM 1

#define BOOT_FLAG_MAGIC 0xAA55
#define HDRS_MAGIC      0x53726448u /* "HdrS" */

#endif
