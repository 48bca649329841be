//! spry's own log lines, on stderr so they never mix with the guest console on stdout.

use std::io::Write;

/// Starts logging at `level` ("error", "warn", "info", "debug", "trace" or "off").
pub fn init(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .target(env_logger::Target::Stderr)
        .format(|buf, record| {
            let t = crate::clock::since_start();
            writeln!(
                buf,
                "[spry {:>4}.{:03}ms {:<5}] {}",
                t.as_millis(),
                t.subsec_micros() % 1000,
                record.level(),
                record.args()
            )
        })
        .init();
}
