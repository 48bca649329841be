//! `spry-bench`: spry's benchmarks. Boots sandboxes side by side with containers
//! (runc) and other VMMs (QEMU, Firecracker) and reports boot, restart, memory,
//! density, image size and device throughput.
#![warn(missing_docs)]

mod agent_exec;
mod api_client;
mod boot;
mod child;
mod cleanup;
mod clock;
mod clones_bench;
mod compare;
mod containerd_bench;
mod devices;
mod exits;
mod guest;
mod host;
mod nested;
mod phase_output;
mod procfs;
mod progress;
mod rawsock;
mod report;
mod setup;
mod snapshot_bench;
mod spry_log;
mod stats;
mod systems;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// spry-bench: spry's benchmarks against containers and other VMMs.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Without a command, spry-bench runs `compare`, and takes compare's options \
                  as they are: `spry-bench --quick` is `spry-bench compare --quick`."
)]
struct Cli {
    /// The spry binary (default: $SPRY_BIN, else `spry` next to spry-bench, else
    /// target/release/spry).
    #[arg(long, global = true, value_name = "PATH")]
    spry: Option<PathBuf>,
    /// Where the guest artifacts are (and are built if missing): default <repo>/build.
    #[arg(long, global = true, value_name = "DIR")]
    build_dir: Option<PathBuf>,
    /// compare's options, for the default command.
    #[command(
        flatten,
        next_help_heading = "Options of compare (the default command)"
    )]
    compare: CompareArgs,
    #[command(subcommand)]
    command: Option<Bench>,
}

impl Cli {
    /// Parses a command line. compare's options go after `compare` or, compare being
    /// the default, without a command; before another command they are refused
    /// rather than ignored.
    fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        if let Some(command) = &cli.command {
            if cli.compare != CompareArgs::default() {
                return Err(Cli::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "compare's options go after `compare` or without a command, not \
                         before `{}`",
                        command.name()
                    ),
                ));
            }
        }
        Ok(cli)
    }

    /// The benchmark to run: the command given, else compare with the options given.
    fn bench(self) -> Bench {
        self.command.unwrap_or(Bench::Compare(self.compare))
    }
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Boot the guest N times with spry: start to running and to exit, the VMM's own
    /// share of the start, and its own memory.
    Boot {
        /// Boots measured after the warm-up.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Boots before measuring.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Idle boots whose memory is read.
        #[arg(long, default_value_t = 5)]
        memory_runs: usize,
        /// How spry is run, comma-separated, boots alternated between them: default
        /// (seccomp on, as users run it), no-seccomp, jailed (under spry-jailer, root
        /// only), jailed-shared (spry-jailer --share-exec-file). Default: all four as
        /// root with spry-jailer next to spry, else the first two.
        #[arg(long, value_delimiter = ',', value_enum)]
        variants: Option<Vec<boot::Variant>>,
    },
    /// Requests/s, MiB/s and VMM CPU per request through virtio-blk.
    Block(DeviceCli),
    /// Frames/s, MiB/s and VMM CPU per frame through virtio-net.
    Net(DeviceCli),
    /// VM exits of a Linux boot to init by kind (KVM's debugfs counters) under spry,
    /// QEMU and Firecracker; runs itself in the nested host (tools/nested/nested-host)
    /// where /dev/kvm is not hardware virtualization. Writes exits.md and exits.json.
    Exits(ExitsCli),
    /// `spry exec -- true` and 100 MiB copied in (spry cp, and piped through spry
    /// exec) against `runc exec` into a runc container, with the Linux guest and its
    /// agent; runs itself in the nested host where /dev/kvm is not hardware
    /// virtualization (runc too). Writes exec.md and exec.json.
    Exec(ExecCli),
    /// Snapshot create (Full, Diff) time and file sizes, and restore time (load →
    /// running again, → the guest's next console line) against a cold boot, for
    /// spry and Firecracker, with the counting probe. Writes snapshot.md and
    /// snapshot.json.
    Snapshot(SnapshotCli),
    /// Clones of one snapshot against cold boots of the same VM and idle runc
    /// containers, fleets of N at once: launches/s, Pss and Rss per idle instance,
    /// clone/cold and clone/runc ratios. Writes clones.md and clones.json.
    Clones(ClonesCli),
    /// `ctr run` to first output and to exit, and K tasks at once, through one
    /// private containerd with io.containerd.runc.v2 against io.containerd.spry.v2;
    /// runs itself in the nested host where /dev/kvm is not hardware
    /// virtualization (containerd and runc too). Writes containerd.md and
    /// containerd.json.
    Containerd(ContainerdCli),
    /// The default: spry against a runc container, QEMU and Firecracker (start,
    /// restart, memory, CPU, density, image size); writes report.md, results.json
    /// and SVG/PNG plots.
    Compare(CompareArgs),
}

impl Bench {
    fn name(&self) -> &'static str {
        match self {
            Bench::Boot { .. } => "boot",
            Bench::Block(_) => "block",
            Bench::Net(_) => "net",
            Bench::Exits(_) => "exits",
            Bench::Exec(_) => "exec",
            Bench::Snapshot(_) => "snapshot",
            Bench::Clones(_) => "clones",
            Bench::Containerd(_) => "containerd",
            Bench::Compare(_) => "compare",
        }
    }
}

#[derive(Debug, clap::Args)]
struct DeviceCli {
    /// Request (frame) sizes, comma-separated, K/M suffixes allowed (default: block
    /// 4K,64K,1M; net 64,1514,65535).
    #[arg(long, value_delimiter = ',', value_parser = devices::parse_size)]
    sizes: Option<Vec<u64>>,
    /// Requests (frames) per run.
    #[arg(long, default_value_t = 1000)]
    reqs: u64,
    /// Runs per case, each alternated with a 0-request baseline run.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Operations: block read,write; net tx,rx.
    #[arg(long, value_delimiter = ',', value_enum)]
    ops: Option<Vec<devices::Op>>,
    /// The guest: the probe on PVM hosts and Linux elsewhere (auto), or forced.
    #[arg(long, value_enum, default_value = "auto")]
    guest: devices::GuestChoice,
    /// Systems to run, comma-separated: spry, spry-no-seccomp (spry --no-seccomp, to
    /// see what its filters cost per request), qemu.
    #[arg(long, value_delimiter = ',', default_value = "spry,qemu")]
    systems: Vec<String>,
    /// QEMU's accelerator: kvm, or tcg to check the harness where KVM cannot run
    /// the guest (its numbers then mean nothing).
    #[arg(long, default_value = "kvm")]
    qemu_accel: String,
    /// The QEMU binary (default: qemu-system-x86_64-microvm if installed, else
    /// qemu-system-x86_64).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// net: also run QEMU with vhost-net (`-netdev tap,...,vhost=on`; its kernel
    /// worker's CPU is counted as QEMU's).
    #[arg(long)]
    qemu_vhost: bool,
}

impl DeviceCli {
    fn args(&self, device: devices::Device) -> devices::DeviceArgs {
        use devices::Op;
        let (sizes, ops) = match device {
            devices::Device::Block => (vec![4 << 10, 64 << 10, 1 << 20], vec![Op::Read, Op::Write]),
            devices::Device::Net => (vec![64, 1514, 65535], vec![Op::Tx, Op::Rx]),
        };
        devices::DeviceArgs {
            sizes: self.sizes.clone().unwrap_or(sizes),
            requests: self.reqs,
            runs: self.runs.max(1),
            ops: self.ops.clone().unwrap_or(ops),
            guest: self.guest,
            systems: self.systems.clone(),
            qemu_accel: self.qemu_accel.clone(),
            qemu: self.qemu.clone(),
            qemu_vhost: self.qemu_vhost,
        }
    }
}

#[derive(Debug, PartialEq, clap::Args)]
struct ExitsCli {
    /// Measured boots per VMM and case, after one check boot each.
    #[arg(
        long,
        default_value_t = 5,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    runs: usize,
    /// Times a boot that fails is tried again before its VMM is dropped from the case
    /// (failures are reported).
    #[arg(long, default_value_t = 2)]
    retries: usize,
    /// vCPU counts, comma-separated: one case each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2",
        value_parser = clap::value_parser!(u8).range(1..=32)
    )]
    vcpus: Vec<u8>,
    /// Guest memory, MiB.
    #[arg(
        long,
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(64..=4096)
    )]
    mem_mib: u32,
    /// Root file system: initrd (no devices), drive (read-only virtio-blk root), or
    /// both, comma-separated.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "initrd")]
    root: Vec<exits::Root>,
    /// Kernel log on the console: full (no `quiet`), quiet, or both.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "full")]
    kernel_log: Vec<exits::KernelLog>,
    /// A Firecracker binary to include (default: $FIRECRACKER if set, else
    /// ../shared/peers/firecracker next to the repository if it exists).
    #[arg(long, value_name = "PATH")]
    firecracker: Option<PathBuf>,
    /// The QEMU binary (default: qemu-system-x86_64-microvm if installed, else
    /// qemu-system-x86_64).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// Leave QEMU out.
    #[arg(long)]
    no_qemu: bool,
    /// Also break each check boot down by KVM's tracepoints (exit reasons, returns
    /// to the VMM, ports, MMIO, MSRs). In the nested host, L1 hung at or right after
    /// traced boots more often than elsewhere.
    #[arg(long)]
    trace: bool,
    /// Output directory (default <repo>/build/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Where /dev/kvm is not hardware virtualization: the nested host's launcher
    /// (default <repo>/tools/nested/nested-host; it must take `run [--mem M]
    /// [--timeout S] -- CMD ARGS...`).
    #[arg(long, value_name = "PATH")]
    nested_host: Option<PathBuf>,
}

#[derive(Debug, PartialEq, clap::Args)]
struct ExecCli {
    /// Measured `exec true` round trips per system, after one warm-up.
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// Measured copies per system and way, after one warm-up.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    copy_runs: usize,
    /// The copied file's size, MiB.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1024))]
    copy_mib: u32,
    /// Output directory (default <repo>/build/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Where /dev/kvm is not hardware virtualization: the nested host's launcher
    /// (default <repo>/tools/nested/nested-host).
    #[arg(long, value_name = "PATH")]
    nested_host: Option<PathBuf>,
}

#[derive(Debug, PartialEq, clap::Args)]
struct ContainerdCli {
    /// Measured `ctr run` per runtime, after one warm-up.
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// How many tasks to start at once, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,50", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=200))]
    at_once: Vec<usize>,
    /// Guest memory per spry VM, MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(64..=4096))]
    mem_mib: u32,
    /// Output directory (default <repo>/build/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Where /dev/kvm is not hardware virtualization: the nested host's launcher
    /// (default <repo>/tools/nested/nested-host).
    #[arg(long, value_name = "PATH")]
    nested_host: Option<PathBuf>,
}

impl ContainerdCli {
    fn settings(&self) -> containerd_bench::Settings {
        containerd_bench::Settings {
            runs: self.runs,
            at_once: self.at_once.clone(),
            mem_mib: self.mem_mib,
            out: self.out.clone(),
            nested_host: self.nested_host.clone(),
        }
    }
}

#[derive(Debug, PartialEq, clap::Args)]
struct SnapshotCli {
    /// Restores and cold boots per VMM and guest size, after one warm-up.
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// Guest sizes, MiB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,1024", value_parser = clap::value_parser!(u32).range(16..=16384))]
    mem_mib: Vec<u32>,
    /// A Firecracker binary to include (default: $FIRECRACKER if set, else
    /// ../shared/peers/firecracker next to the repository if it exists).
    #[arg(long, value_name = "PATH")]
    firecracker: Option<PathBuf>,
    /// Leave Firecracker out.
    #[arg(long)]
    no_firecracker: bool,
    /// Output directory (default <repo>/build/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, PartialEq, clap::Args)]
struct ClonesCli {
    /// Fleet sizes, comma-separated: N cold boots, N clones and N containers each.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    fleets: Vec<usize>,
    /// The RAM every VM writes at boot (`probe.touch_mib`), MiB of its 128.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=96))]
    working_set_mib: u32,
    /// What every VM does with its working set after launch, before it is measured.
    #[arg(long = "use", value_enum, default_value = "none")]
    usage: clones_bench::Use,
    /// Leave the runc containers out.
    #[arg(long)]
    no_runc: bool,
    /// Output directory (default <repo>/build/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

impl ClonesCli {
    fn settings(&self) -> clones_bench::Settings {
        clones_bench::Settings {
            fleets: distinct(&self.fleets),
            working_set_mib: self.working_set_mib,
            usage: self.usage,
            no_runc: self.no_runc,
            out: self.out.clone(),
        }
    }
}

impl SnapshotCli {
    fn settings(&self) -> snapshot_bench::Settings {
        let firecracker = setup::find_firecracker(
            self.firecracker.clone(),
            std::env::var_os("FIRECRACKER"),
            &setup::default_firecracker(),
        );
        snapshot_bench::Settings {
            runs: self.runs,
            mem_mib: distinct(&self.mem_mib),
            firecracker: firecracker.filter(|_| !self.no_firecracker),
            out: self.out.clone(),
        }
    }
}

impl ExecCli {
    fn settings(&self) -> agent_exec::Settings {
        agent_exec::Settings {
            runs: self.runs,
            copy_runs: self.copy_runs,
            copy_mib: self.copy_mib,
            out: self.out.clone(),
            nested_host: self.nested_host.clone(),
        }
    }
}

/// `values` in their order, each once.
fn distinct<T: PartialEq + Copy>(values: &[T]) -> Vec<T> {
    values.iter().fold(Vec::new(), |mut seen, v| {
        if !seen.contains(v) {
            seen.push(*v);
        }
        seen
    })
}

impl ExitsCli {
    fn settings(&self) -> exits::Settings {
        exits::Settings {
            runs: self.runs,
            retries: self.retries,
            vcpus: distinct(&self.vcpus),
            mem_mib: self.mem_mib,
            roots: distinct(&self.root),
            kernel_logs: distinct(&self.kernel_log),
            firecracker: setup::find_firecracker(
                self.firecracker.clone(),
                std::env::var_os("FIRECRACKER"),
                &setup::default_firecracker(),
            ),
            qemu: self.qemu.clone(),
            no_qemu: self.no_qemu,
            trace: self.trace,
            out: self.out.clone(),
            nested_host: self.nested_host.clone(),
        }
    }
}

#[derive(Debug, Default, PartialEq, clap::Args)]
struct CompareArgs {
    /// Smoke run: 3 runs after 1 warm-up, density K=3.
    #[arg(long)]
    quick: bool,
    /// Measured runs per system and metric (default 20; 3 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Warm-up runs per system (default 3; 1 with --quick).
    #[arg(long)]
    warmup: Option<usize>,
    /// Density levels, comma-separated, each at least 1 (default 10,50,100; 3 with
    /// --quick).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    density: Option<Vec<usize>>,
    /// A Firecracker binary to include (default: $FIRECRACKER if set, else
    /// ../shared/peers/firecracker next to the repository if it exists).
    #[arg(long, value_name = "PATH")]
    firecracker: Option<PathBuf>,
    /// Leave QEMU out.
    #[arg(long)]
    no_qemu: bool,
    /// The QEMU binary (default: qemu-system-x86_64-microvm, Debian's microvm-only
    /// build, if installed, else qemu-system-x86_64).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// Output directory (default <repo>/build/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

impl CompareArgs {
    fn settings(&self) -> compare::Settings {
        compare::Settings {
            runs: self.runs.unwrap_or(if self.quick { 3 } else { 20 }).max(1),
            warmup: self.warmup.unwrap_or(if self.quick { 1 } else { 3 }),
            density: self.density.clone().unwrap_or_else(|| {
                if self.quick {
                    vec![3]
                } else {
                    vec![10, 50, 100]
                }
            }),
            quick: self.quick,
            firecracker: setup::find_firecracker(
                self.firecracker.clone(),
                std::env::var_os("FIRECRACKER"),
                &setup::default_firecracker(),
            ),
            no_qemu: self.no_qemu,
            qemu: self.qemu.clone(),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// Everything that can end a benchmark.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Cleanup(#[from] cleanup::CleanupError),
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Compare(#[from] compare::CompareError),
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error(transparent)]
    Exits(#[from] exits::ExitsError),
    #[error(transparent)]
    Exec(#[from] agent_exec::ExecBenchError),
    #[error(transparent)]
    Snapshot(#[from] snapshot_bench::SnapshotBenchError),
    #[error(transparent)]
    Clones(#[from] clones_bench::ClonesBenchError),
    #[error(transparent)]
    Containerd(#[from] containerd_bench::ContainerdBenchError),
}

fn run(cli: Cli) -> Result<(), BenchError> {
    cleanup::install_interrupt_handler()?;
    let _cleanup = cleanup::CleanupGuard;
    let env = setup::Env::new(cli.spry.clone(), cli.build_dir.clone())?;
    if env.spry_is_debug() {
        eprintln!(
            "spry-bench: warning: {} is a debug build; numbers from it are not representative",
            env.spry.display()
        );
    }
    match cli.bench() {
        Bench::Boot {
            runs,
            warmup,
            memory_runs,
            variants,
        } => {
            let settings = boot::Settings {
                runs,
                warmup,
                memory_runs,
                variants,
            };
            let report = boot::run(&env, &settings)?;
            println!("{}", report.render());
        }
        Bench::Block(args) => {
            let report = devices::block(&env, &args.args(devices::Device::Block))?;
            println!("{}", report.render());
        }
        Bench::Net(args) => {
            let report = devices::net(&env, &args.args(devices::Device::Net))?;
            println!("{}", report.render());
        }
        Bench::Exits(args) => {
            exits::run(
                &env,
                &args.settings(),
                std::env::args_os().skip(1).collect(),
            )?;
        }
        Bench::Exec(args) => {
            agent_exec::run(
                &env,
                &args.settings(),
                std::env::args_os().skip(1).collect(),
            )?;
        }
        Bench::Snapshot(args) => {
            snapshot_bench::run(&env, &args.settings())?;
        }
        Bench::Clones(args) => {
            clones_bench::run(&env, &args.settings())?;
        }
        Bench::Containerd(args) => {
            containerd_bench::run(
                &env,
                &args.settings(),
                std::env::args_os().skip(1).collect(),
            )?;
        }
        Bench::Compare(args) => run_compare(&env, &args)?,
    }
    Ok(())
}

fn run_compare(env: &setup::Env, args: &CompareArgs) -> Result<(), BenchError> {
    let comparison = compare::run(env, args.settings())?;
    let out = args.out.clone().unwrap_or_else(|| env.build.join("bench"));
    let written = report::write_report(&comparison, &out)?;
    println!("{}", report::markdown::headline_table(&comparison));
    for line in report::markdown::headline_sentences(&comparison) {
        println!("{line}");
    }
    for peer in &comparison.unavailable {
        println!("not compared: {}: {}", peer.name, peer.reason);
    }
    println!("\nreport:  {}", written.markdown.display());
    println!("numbers: {}", written.json.display());
    match &written.plot_problem {
        Some(problem) => println!("plots:   none: {problem}"),
        None => println!(
            "plots:   {} files in {}",
            written.plots.len(),
            out.display()
        ),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spry-bench: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ops_are_named_values() {
        let cli = Cli::try_parse_from(["spry-bench", "block", "--ops", "write"]).unwrap();
        let Some(Bench::Block(args)) = cli.command else {
            panic!("not the block command");
        };
        assert_eq!(args.args(devices::Device::Block).ops, [devices::Op::Write]);
        assert!(Cli::try_parse_from(["spry-bench", "block", "--ops", "wirte"]).is_err());
    }

    fn bench(args: &[&str]) -> Bench {
        let line = ["spry-bench", "--spry", "/x/spry"].iter().chain(args);
        Cli::try_parse_args(line).unwrap().bench()
    }

    #[test]
    fn test_no_command_is_the_full_comparison() {
        let Bench::Compare(args) = bench(&[]) else {
            panic!("not compare");
        };
        assert_eq!(args, CompareArgs::default());
        assert_eq!(args.settings().runs, 20);
    }

    #[test]
    fn test_top_level_quick_is_compare_quick() {
        let Bench::Compare(top) = bench(&["--quick"]) else {
            panic!("not compare");
        };
        let Bench::Compare(named) = bench(&["compare", "--quick"]) else {
            panic!("not compare");
        };
        assert_eq!(top, named);
        assert!(top.quick);
        assert_eq!(top.settings().runs, 3);
    }

    #[test]
    fn test_top_level_firecracker_is_compare_firecracker() {
        let Bench::Compare(args) = bench(&["--firecracker", "/opt/fc"]) else {
            panic!("not compare");
        };
        assert_eq!(args.firecracker, Some(PathBuf::from("/opt/fc")));
    }

    #[test]
    fn test_runs_after_boot_belong_to_boot() {
        let Bench::Boot { runs, .. } = bench(&["boot", "--runs", "7"]) else {
            panic!("not boot");
        };
        assert_eq!(runs, 7);
    }

    #[test]
    fn test_boot_variants_are_named_values() {
        let Bench::Boot { variants, .. } = bench(&["boot", "--variants", "no-seccomp,jailed"])
        else {
            panic!("not boot");
        };
        assert_eq!(
            variants,
            Some(vec![boot::Variant::NoSeccomp, boot::Variant::Jailed])
        );
        let line = ["spry-bench", "boot", "--variants", "unjailed"];
        assert!(Cli::try_parse_args(line).is_err());
    }

    #[test]
    fn test_boot_without_variants_leaves_the_choice_to_the_host() {
        let Bench::Boot { variants, .. } = bench(&["boot"]) else {
            panic!("not boot");
        };
        assert_eq!(variants, None);
    }

    #[test]
    fn test_compare_options_before_another_command_are_refused() {
        let line = ["spry-bench", "--runs", "7", "boot"];
        let e = Cli::try_parse_args(line).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn test_compare_options_on_both_sides_of_compare_are_refused() {
        let line = ["spry-bench", "--quick", "compare", "--runs", "5"];
        assert!(Cli::try_parse_args(line).is_err());
    }

    #[test]
    fn test_clones_options() {
        let Bench::Clones(args) = bench(&["clones", "--fleets", "5,5,20", "--use", "write"]) else {
            panic!("not clones");
        };
        let settings = args.settings();
        assert_eq!(settings.fleets, [5, 20]);
        assert_eq!(settings.usage, clones_bench::Use::Write);
        assert_eq!(settings.working_set_mib, 32);
    }

    #[test]
    fn test_density_zero_is_refused() {
        assert!(Cli::try_parse_from(["spry-bench", "compare", "--density", "3,0"]).is_err());
        let cli = Cli::try_parse_from(["spry-bench", "compare", "--density", "1,5"]).unwrap();
        let Some(Bench::Compare(args)) = cli.command else {
            panic!("not the compare command");
        };
        assert_eq!(args.density, Some(vec![1, 5]));
    }
}
