//! Where the exits of one boot come from, by KVM's tracepoints: histogram triggers
//! (`hist:keys=...`) on `kvm_exit` (exit reason), `kvm_userspace_exit` (returns to
//! the VMM, by reason), `kvm_pio` (port and direction), `kvm_mmio` (address and
//! direction) and `kvm_msr` (MSR and direction). The triggers count every VM on the
//! host, so only one VM may run while they are set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The histograms: event, keys.
const HISTOGRAMS: [(&str, &str); 5] = [
    ("kvm_exit", "exit_reason"),
    ("kvm_userspace_exit", "reason"),
    ("kvm_pio", "port,rw"),
    ("kvm_mmio", "gpa,type"),
    ("kvm_msr", "ecx,write"),
];

/// The trigger for `keys` (the same text sets and, after a `!`, removes it).
fn trigger(keys: &str) -> String {
    format!("hist:keys={keys}:vals=hitcount:size=4096")
}

/// One histogram: key values (in the order of the trigger's keys) to hit count.
pub type Histogram = BTreeMap<Vec<u64>, u64>;

/// Parses a `hist` file: lines `{ port:       1016, rw:          1 } hitcount:       8091`.
pub fn parse_hist(text: &str) -> Histogram {
    let mut hist = Histogram::new();
    for line in text.lines() {
        let Some((keys, rest)) = line
            .trim()
            .strip_prefix('{')
            .and_then(|l| l.split_once('}'))
        else {
            continue;
        };
        let values: Option<Vec<u64>> = keys
            .split(',')
            .map(|kv| kv.split_once(':')?.1.trim().parse().ok())
            .collect();
        let hits = rest
            .trim()
            .strip_prefix("hitcount:")
            .and_then(|h| h.split_whitespace().next()?.parse::<u64>().ok());
        if let (Some(values), Some(hits)) = (values, hits) {
            *hist.entry(values).or_insert(0) += hits;
        }
    }
    hist
}

/// The histogram triggers, set on the host's tracefs.
#[derive(Debug)]
pub struct Tracer {
    events: PathBuf,
    set: Vec<&'static str>,
}

/// tracefs's KVM events directory, if tracing is there.
fn kvm_events() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(|t| Path::new(t).join("events/kvm"))
        .find(|d| d.join("kvm_exit/trigger").exists())
}

impl Tracer {
    /// Sets every trigger, or none (`Err` says why).
    pub fn start() -> Result<Tracer, String> {
        let events = kvm_events().ok_or(
            "no KVM tracepoints (tracefs at /sys/kernel/tracing or /sys/kernel/debug/tracing)",
        )?;
        let mut tracer = Tracer {
            events,
            set: Vec::new(),
        };
        for (event, keys) in HISTOGRAMS {
            let path = tracer.events.join(event).join("trigger");
            if let Err(e) = std::fs::write(&path, trigger(keys)) {
                tracer.stop();
                return Err(format!(
                    "cannot set a histogram trigger on {} ({e}; needs CONFIG_HIST_TRIGGERS)",
                    path.display()
                ));
            }
            tracer.set.push(event);
        }
        Ok(tracer)
    }

    /// The histograms so far.
    pub fn read(&self) -> Breakdown {
        let hist = |event: &str| {
            std::fs::read_to_string(self.events.join(event).join("hist"))
                .map(|t| parse_hist(&t))
                .unwrap_or_default()
        };
        Breakdown::from_histograms(
            &hist("kvm_exit"),
            &hist("kvm_userspace_exit"),
            &hist("kvm_pio"),
            &hist("kvm_mmio"),
            &hist("kvm_msr"),
            Vendor::detect(),
        )
    }

    /// Removes the triggers (and with them the counts).
    pub fn stop(&mut self) {
        for event in self.set.drain(..) {
            let keys = HISTOGRAMS
                .iter()
                .find(|(e, _)| *e == event)
                .map_or("", |(_, k)| k);
            let _ = std::fs::write(
                self.events.join(event).join("trigger"),
                format!("!{}", trigger(keys)),
            );
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whose exit reason codes `kvm_exit` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// AMD SVM (kvm_amd).
    Amd,
    /// Intel VMX (kvm_intel).
    Intel,
}

impl Vendor {
    /// The loaded KVM vendor module (AMD if neither is seen).
    pub fn detect() -> Vendor {
        if Path::new("/sys/module/kvm_intel").exists() {
            Vendor::Intel
        } else {
            Vendor::Amd
        }
    }
}

/// SVM exit codes (arch/x86/include/uapi/asm/svm.h).
fn svm_exit(code: u64) -> Option<&'static str> {
    Some(match code {
        0x000..=0x00f => "CR read",
        0x010..=0x01f => "CR write",
        0x020..=0x03f => "DR access",
        0x040..=0x05f => "exception",
        0x060 => "host interrupt (INTR)",
        0x061 => "NMI",
        0x064 => "interrupt window (VINTR)",
        0x065 => "CR0 selective write",
        0x06e => "RDTSC",
        0x072 => "CPUID",
        0x074 => "IRET",
        0x077 => "PAUSE",
        0x078 => "HLT",
        0x079 => "INVLPG",
        0x07b => "port I/O (IOIO)",
        0x07c => "MSR",
        0x07f => "shutdown",
        0x081 => "hypercall (VMMCALL)",
        0x089 => "WBINVD",
        0x08d => "XSETBV",
        0x08f..=0x09f => "CR/EFER write trap",
        0x400 => "nested page fault (NPF)",
        0x401 | 0x402 => "AVIC",
        _ => return None,
    })
}

/// VMX basic exit reasons (arch/x86/include/uapi/asm/vmx.h).
fn vmx_exit(code: u64) -> Option<&'static str> {
    Some(match code & 0xffff {
        0 => "exception or NMI",
        1 => "host interrupt",
        2 => "triple fault",
        7 => "interrupt window",
        8 => "NMI window",
        10 => "CPUID",
        12 => "HLT",
        14 => "INVLPG",
        16 => "RDTSC",
        18 => "hypercall (VMCALL)",
        28 => "CR access",
        29 => "DR access",
        30 => "port I/O",
        31 => "MSR read",
        32 => "MSR write",
        40 => "PAUSE",
        43 => "TPR below threshold",
        44 => "APIC access",
        45 => "EOI induced",
        48 => "EPT violation",
        49 => "EPT misconfiguration (MMIO)",
        52 => "preemption timer",
        54 => "WBINVD",
        55 => "XSETBV",
        56 => "APIC write",
        _ => return None,
    })
}

/// KVM_EXIT_* (include/uapi/linux/kvm.h).
fn userspace_exit(reason: u64) -> &'static str {
    match reason {
        0 => "unknown (a signal before entry)",
        1 => "exception",
        2 => "port I/O",
        3 => "hypercall",
        4 => "debug",
        5 => "HLT",
        6 => "MMIO",
        7 => "interrupt window open",
        8 => "shutdown",
        9 => "failed entry",
        10 => "interrupted (signal)",
        17 => "internal error",
        24 => "system event",
        29 | 30 => "MSR",
        _ => "other",
    }
}

/// A port's device and register (the guest's view: what it read or wrote).
pub fn port_name(port: u64, write: bool) -> String {
    const COM1: [(&str, &str); 8] = [
        ("RBR (receive)", "THR (transmit)"),
        ("IER", "IER"),
        ("IIR", "FCR"),
        ("LCR", "LCR"),
        ("MCR", "MCR"),
        ("LSR (line status)", "LSR"),
        ("MSR (modem status)", "MSR"),
        ("SCR", "SCR"),
    ];
    let dir = if write { "write" } else { "read" };
    let device = match port {
        0x3f8..=0x3ff => {
            let (r, w) = COM1[usize::try_from(port - 0x3f8).unwrap_or(0)];
            return format!("COM1 {} {dir}", if write { w } else { r });
        }
        0x20 | 0x21 | 0xa0 | 0xa1 => "PIC (8259)",
        0x40..=0x43 => "PIT (8254)",
        0x61 => "PIT gate / speaker (port 0x61)",
        0x60 | 0x64 => "i8042 (keyboard controller)",
        0x70 | 0x71 => "CMOS RTC",
        0x80 => "POST / I/O delay (port 0x80)",
        0x2f8..=0x2ff => "COM2",
        0x3e8..=0x3ef => "COM3",
        0x2e8..=0x2ef => "COM4",
        0x510..=0x51b => "fw_cfg",
        0xcf8..=0xcff => "PCI configuration",
        0x4d0 | 0x4d1 => "PIC edge/level control",
        0x92 => "system control port A",
        _ => "",
    };
    if device.is_empty() {
        format!("port {port:#x} {dir}")
    } else {
        format!("{device} {port:#x} {dir}")
    }
}

/// An MMIO address's region.
pub fn mmio_region(gpa: u64) -> &'static str {
    match gpa {
        0xfee0_0000..=0xfee0_0fff => "local APIC (0xfee00000)",
        0xfec0_0000..=0xfec0_0fff => "IOAPIC (0xfec00000)",
        0xc000_0000 => "boot timer (0xc0000000)",
        0xc000_1000..=0xcfff_ffff => "virtio-mmio devices (Firecracker: 0xc0001000..)",
        0xd000_0000..=0xdfff_ffff => "virtio-mmio devices (spry: 0xd0000000..)",
        0xfeb0_0000..=0xfebf_ffff => "virtio-mmio devices (QEMU microvm: 0xfeb00000..)",
        _ => "other",
    }
}

/// An MSR's name, where it is one a booting Linux guest touches.
pub fn msr_name(msr: u64) -> String {
    let name = match msr {
        0x10 => "TSC",
        0x1b => "APIC_BASE",
        0x3a => "FEATURE_CONTROL",
        0x48 => "SPEC_CTRL",
        0x49 => "PRED_CMD",
        0x8b => "microcode revision",
        0x10a => "ARCH_CAPABILITIES",
        0x1a0 => "MISC_ENABLE",
        0x277 => "PAT",
        0x6e0 => "TSC_DEADLINE (timer)",
        0x802..=0x8ff => "x2APIC register",
        0xc000_0080 => "EFER",
        0xc000_0081..=0xc000_0084 => "SYSCALL MSRs",
        0xc000_0100..=0xc000_0102 => "FS/GS base",
        0xc000_0103 => "TSC_AUX",
        0xc001_0000..=0xc001_ffff => "AMD model-specific",
        0x4b56_4d00..=0x4b56_4dff => "KVM paravirtual (kvmclock, steal time, PV EOI, ...)",
        _ => "",
    };
    if name.is_empty() {
        format!("{msr:#x}")
    } else {
        format!("{name} ({msr:#x})")
    }
}

/// One boot's exits by reason, returns to the VMM by reason, port I/O by port, MMIO
/// by region and MSR accesses by MSR; labels to counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Breakdown {
    /// VM exits by reason (`kvm_exit`).
    pub exit_reasons: BTreeMap<String, u64>,
    /// Returns from KVM_RUN to the VMM by reason (`kvm_userspace_exit`).
    pub to_vmm: BTreeMap<String, u64>,
    /// Port accesses by device, register and direction (`kvm_pio`): in-kernel
    /// devices (PIT, PIC) and the VMM's alike.
    pub ports: BTreeMap<String, u64>,
    /// MMIO accesses by region and direction (`kvm_mmio`): in-kernel (APIC, IOAPIC)
    /// and the VMM's alike.
    pub mmio: BTreeMap<String, u64>,
    /// MSR accesses by MSR and direction (`kvm_msr`: those KVM handled in the
    /// kernel; MSRs the CPU passes through never exit).
    pub msrs: BTreeMap<String, u64>,
}

fn add(map: &mut BTreeMap<String, u64>, label: String, hits: u64) {
    *map.entry(label).or_insert(0) += hits;
}

impl Breakdown {
    /// Labels the raw histograms.
    pub fn from_histograms(
        exits: &Histogram,
        to_vmm: &Histogram,
        ports: &Histogram,
        mmio: &Histogram,
        msrs: &Histogram,
        vendor: Vendor,
    ) -> Breakdown {
        let mut b = Breakdown::default();
        for (keys, &hits) in exits {
            let code = keys.first().copied().unwrap_or(0);
            let name = match vendor {
                Vendor::Amd => svm_exit(code),
                Vendor::Intel => vmx_exit(code),
            };
            add(
                &mut b.exit_reasons,
                name.map_or_else(|| format!("exit code {code:#x}"), str::to_owned),
                hits,
            );
        }
        for (keys, &hits) in to_vmm {
            let reason = keys.first().copied().unwrap_or(0);
            add(&mut b.to_vmm, userspace_exit(reason).to_owned(), hits);
        }
        for (keys, &hits) in ports {
            if let [port, rw, ..] = keys[..] {
                add(&mut b.ports, port_name(port, rw != 0), hits);
            }
        }
        for (keys, &hits) in mmio {
            if let [gpa, kind, ..] = keys[..] {
                // KVM_TRACE_MMIO_READ_UNSATISFIED (0) is the same read again once
                // the VMM answered it (1): count the read once.
                let dir = match kind {
                    0 => continue,
                    1 => "read",
                    _ => "write",
                };
                add(&mut b.mmio, format!("{} {dir}", mmio_region(gpa)), hits);
            }
        }
        for (keys, &hits) in msrs {
            if let [msr, write, ..] = keys[..] {
                let dir = if write != 0 { "write" } else { "read" };
                add(&mut b.msrs, format!("{} {dir}", msr_name(msr)), hits);
            }
        }
        b
    }

    /// Returns to the VMM, all reasons.
    pub fn to_vmm_total(&self) -> u64 {
        self.to_vmm.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIO: &str = "# event histogram\n#\n# trigger info: hist:keys=port,rw:vals=hitcount:sort=hitcount:size=4096 [active]\n#\n\n\
                       { port:       1016, rw:          1 } hitcount:       8091\n\
                       { port:       1021, rw:          0 } hitcount:       7856\n\
                       { port:         33, rw:          1 } hitcount:         18\n\
                       \nTotals:\n    Hits: 15965\n    Entries: 3\n    Dropped: 0\n";

    #[test]
    fn test_hist_lines_become_keys_and_counts() {
        let h = parse_hist(PIO);
        assert_eq!(h.len(), 3);
        assert_eq!(h[&vec![1016, 1]], 8091);
        assert_eq!(h[&vec![1021, 0]], 7856);
        assert!(parse_hist("Totals:\n    Hits: 0\n").is_empty());
    }

    #[test]
    fn test_ports_are_named_by_device_and_register() {
        assert_eq!(port_name(0x3f8, true), "COM1 THR (transmit) write");
        assert_eq!(port_name(0x3fd, false), "COM1 LSR (line status) read");
        assert_eq!(port_name(0x21, true), "PIC (8259) 0x21 write");
        assert_eq!(
            port_name(0x64, false),
            "i8042 (keyboard controller) 0x64 read"
        );
        assert_eq!(port_name(0x1234, false), "port 0x1234 read");
    }

    #[test]
    fn test_breakdown_labels_every_histogram() {
        let h = |entries: &[(&[u64], u64)]| -> Histogram {
            entries.iter().map(|(k, v)| (k.to_vec(), *v)).collect()
        };
        let b = Breakdown::from_histograms(
            &h(&[(&[0x7b], 16440), (&[0x400], 6661), (&[0x3ff], 2)]),
            &h(&[(&[2], 16398), (&[6], 1)]),
            &h(&[(&[0x3f8, 1], 8091), (&[0x3fd, 0], 7856)]),
            &h(&[
                (&[0xfec0_0010, 0], 197),
                (&[0xfec0_0010, 1], 197),
                (&[0xfec0_0000, 2], 303),
                (&[0xfec0_0010, 2], 106),
            ]),
            &h(&[(&[0x6e0, 1], 40)]),
            Vendor::Amd,
        );
        assert_eq!(b.exit_reasons["port I/O (IOIO)"], 16440);
        assert_eq!(b.exit_reasons["nested page fault (NPF)"], 6661);
        assert_eq!(b.exit_reasons["exit code 0x3ff"], 2);
        assert_eq!(b.to_vmm["port I/O"], 16398);
        assert_eq!(b.to_vmm_total(), 16399);
        assert_eq!(b.ports["COM1 THR (transmit) write"], 8091);
        assert_eq!(b.mmio["IOAPIC (0xfec00000) read"], 197);
        assert_eq!(b.mmio["IOAPIC (0xfec00000) write"], 409);
        assert_eq!(b.msrs["TSC_DEADLINE (timer) (0x6e0) write"], 40);
    }

    #[test]
    fn test_mmio_regions() {
        assert_eq!(mmio_region(0xfec0_0010), "IOAPIC (0xfec00000)");
        assert!(mmio_region(0xd000_0050).starts_with("virtio-mmio devices (spry"));
        assert!(mmio_region(0xc000_1050).contains("Firecracker"));
        assert!(mmio_region(0xfeb0_0e50).contains("QEMU"));
        assert_eq!(mmio_region(0x1000), "other");
    }

    #[test]
    fn test_vmx_reasons() {
        assert_eq!(vmx_exit(30), Some("port I/O"));
        assert_eq!(vmx_exit(48), Some("EPT violation"));
        assert_eq!(vmx_exit(0x8000_0021), None);
    }
}
