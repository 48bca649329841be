//! x86_64 boot state: memory layout, descriptor tables, registers, CPUID, MP table,
//! ACPI tables and the zero page.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod cpuid_compat;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
