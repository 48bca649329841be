//! `containerd-shim-spry-v2`: containerd's runtime v2 shim for spry. containerd
//! reaches it as runtime `io.containerd.spry.v2`; each container it is given
//! runs in a spry microVM of its own (docs/containerd.md).

mod jail;
mod network;
mod process;
mod rootfs;
mod service;
mod settings;
mod spec;
mod stats;
mod vm;

fn main() {
    let config = containerd_shim::Config {
        // The shim reaps its own children (the VMs) through their handles; a
        // reaper thread waiting on every child would steal their exit statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<service::SpryShim>("io.containerd.spry.v2", Some(config));
}
