//! The API as a client reaches it after HTTP framing: a method, a path and a body go
//! through the route table and the body deserializers; what parses then goes through
//! the same validation the controllers apply (machine shape, command line, ids,
//! MACs). Input: a method byte, the path up to the first newline, then the body.
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;
use spry::api::action::{PrebootAction, VmmAction};
use spry::api::routes::parse;
use spry::config::MachineConfig;
use spry::resources::{build_cmdline, parse_mac, valid_id, Machine};

const METHODS: [&str; 9] = [
    "GET", "PUT", "PATCH", "POST", "DELETE", "HEAD", "OPTIONS", "BREW", "put",
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(method) = Method::from_bytes(METHODS[usize::from(m) % METHODS.len()].as_bytes()) else {
        return;
    };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let Ok(path) = std::str::from_utf8(&rest[..split]) else {
        return;
    };
    let body = rest.get(split + 1..).unwrap_or(&[]);

    let Ok(action) = parse(&method, path, body) else {
        return;
    };

    // What the controllers do with what parsed, minus the files they open.
    let _ = format!("{action:?}");
    let VmmAction::Preboot(action) = action else {
        return;
    };
    match action {
        PrebootAction::PutMachineConfig(c) => {
            let _ = Machine::from_config(&c);
        }
        PrebootAction::PatchMachineConfig(update) => {
            let _ = Machine::from_config(&update.apply(&MachineConfig::default()));
        }
        PrebootAction::PutBootSource(b) => {
            let _ = build_cmdline(b.boot_args.as_deref(), 2048);
        }
        PrebootAction::PutDrive(d) => {
            let _ = valid_id(&d.drive_id);
        }
        PrebootAction::PutNetworkInterface(n) => {
            let _ = valid_id(&n.iface_id);
            let _ = n.guest_mac.as_deref().map(parse_mac);
        }
        _ => {}
    }
});
