//! The container's network, as containerd (through CNI) prepared it: a network
//! namespace holding an interface with the container's address. The guest
//! cannot use that interface directly, so the shim makes a tap beside it in the
//! same namespace and joins the two with tc redirects (every frame arriving on
//! one leaves on the other), the way Kata Containers' `tcfilter` model does.
//! The guest's virtio-net gets the interface's MAC, address and default route,
//! so what CNI configured is what the workload sees, and nothing outside the
//! namespace changes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The tap the shim makes in the container's namespace.
pub const TAP: &str = "spry0";

/// Errors wiring the namespace to the guest.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A command in the namespace failed.
    #[error("`{command}` in network namespace {netns} failed: {why}")]
    Command {
        /// The namespace.
        netns: PathBuf,
        /// The command.
        command: String,
        /// Its status and error output.
        why: String,
    },
    /// Another VM already took the namespace's interface.
    #[error(
        "network namespace {netns} already has spry's tap {TAP}: another container of the pod \
         took its network (spry runs one VM per container; only one container per pod gets \
         the pod's network)"
    )]
    Taken {
        /// The namespace.
        netns: PathBuf,
    },
    /// `ip -j` printed something unexpected.
    #[error("cannot read the interfaces of {netns}: {why}")]
    Parse {
        /// The namespace.
        netns: PathBuf,
        /// Why.
        why: String,
    },
}

/// What the guest's virtio-net takes over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// The namespace spry runs in.
    pub netns: PathBuf,
    /// The tap spry opens there.
    pub tap: String,
    /// The interface the tap is joined to.
    pub interface: String,
    /// Its MAC, which the guest takes.
    pub mac: String,
    /// Its IPv4 address with prefix length, if it has one.
    pub address: Option<String>,
    /// The namespace's IPv4 default gateway, if any.
    pub gateway: Option<String>,
}

#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
    #[serde(default)]
    link_type: Option<String>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
}

#[derive(Deserialize)]
struct Route {
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
}

impl GuestNetwork {
    /// The kernel command line keys the guest's init reads.
    pub fn boot_args(&self) -> String {
        let mut args = String::new();
        if let Some(address) = &self.address {
            args.push_str(&format!(" spry.ip={address}"));
        }
        if let Some(gateway) = &self.gateway {
            args.push_str(&format!(" spry.gw={gateway}"));
        }
        args
    }
}

/// Runs `ip`/`tc` (`program`) with `args` inside `netns`.
fn in_netns<I, S>(netns: &Path, program: &str, args: I) -> Result<String, NetworkError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = format!(
        "{program} {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let fail = |why: String| NetworkError::Command {
        netns: netns.into(),
        command: command.clone(),
        why,
    };
    let mut net = std::ffi::OsString::from("--net=");
    net.push(netns);
    let out = Command::new("nsenter")
        .arg(net)
        .arg("--")
        .arg(program)
        .args(&args)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds the namespace's interface (the first one with an Ethernet address
/// that is not loopback) and joins a new tap to it. Returns `None` when the
/// namespace has no such interface (a container without a network).
///
/// `owner` is the uid of a jailed spry, which has no capability to attach to
/// a tap it does not own.
pub fn attach(netns: &Path, owner: Option<u32>) -> Result<Option<GuestNetwork>, NetworkError> {
    let parse = |why: String| NetworkError::Parse {
        netns: netns.into(),
        why,
    };
    let links: Vec<Link> = serde_json::from_str(&in_netns(netns, "ip", ["-j", "addr", "show"])?)
        .map_err(|e| parse(e.to_string()))?;
    if links.iter().any(|l| l.ifname == TAP) {
        return Err(NetworkError::Taken {
            netns: netns.into(),
        });
    }
    let Some(link) = links
        .into_iter()
        .find(|l| l.ifname != "lo" && l.ifname != TAP && l.link_type.as_deref() == Some("ether"))
    else {
        return Ok(None);
    };
    let mac = link
        .address
        .clone()
        .ok_or_else(|| parse(format!("{} has no MAC address", link.ifname)))?;
    let address = link
        .addr_info
        .iter()
        .find(|a| a.family == "inet")
        .map(|a| format!("{}/{}", a.local, a.prefixlen));
    let routes: Vec<Route> =
        serde_json::from_str(&in_netns(netns, "ip", ["-j", "-4", "route", "show"])?)
            .map_err(|e| parse(e.to_string()))?;
    let gateway = routes
        .into_iter()
        .find(|r| r.dst == "default")
        .and_then(|r| r.gateway);
    let net = GuestNetwork {
        netns: netns.into(),
        tap: TAP.into(),
        interface: link.ifname,
        mac,
        address,
        gateway,
    };
    if let Err(e) = join(&net, owner) {
        // Leave the namespace as CNI made it.
        detach(&net);
        return Err(e);
    }
    Ok(Some(net))
}

fn join(net: &GuestNetwork, owner: Option<u32>) -> Result<(), NetworkError> {
    let netns = net.netns.as_path();
    // The guest answers for the address now; the namespace's own stack must not
    // (it would answer ARP with the same MAC from two places).
    if let Some(address) = &net.address {
        in_netns(netns, "ip", ["addr", "del", address, "dev", &net.interface])?;
    }
    let mut tuntap = vec!["tuntap", "add", TAP, "mode", "tap"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    if let Some(uid) = owner {
        tuntap.extend(["user".to_string(), uid.to_string()]);
    }
    in_netns(netns, "ip", &tuntap)?;
    in_netns(netns, "ip", ["link", "set", TAP, "up"])?;
    for (from, to) in [(net.interface.as_str(), TAP), (TAP, net.interface.as_str())] {
        in_netns(netns, "tc", ["qdisc", "add", "dev", from, "ingress"])?;
        in_netns(
            netns,
            "tc",
            [
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(())
}

/// Undoes [`attach`] as far as it got; errors are logged, not returned, since
/// the namespace may already be gone with the pod.
pub fn detach(net: &GuestNetwork) {
    let mut results = vec![
        in_netns(&net.netns, "ip", ["link", "del", TAP]),
        in_netns(
            &net.netns,
            "tc",
            ["qdisc", "del", "dev", &net.interface, "ingress"],
        ),
    ];
    if let Some(address) = &net.address {
        results.push(in_netns(
            &net.netns,
            "ip",
            ["addr", "add", address, "dev", &net.interface],
        ));
        // Removing the address took the routes through it along.
        if let Some(gateway) = &net.gateway {
            results.push(in_netns(
                &net.netns,
                "ip",
                ["route", "add", "default", "via", gateway],
            ));
        }
    }
    for e in results.into_iter().filter_map(Result::err) {
        log::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_args_carry_address_and_gateway() {
        let net = GuestNetwork {
            netns: "/n".into(),
            tap: TAP.into(),
            interface: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            address: Some("10.4.0.2/24".into()),
            gateway: Some("10.4.0.1".into()),
        };
        assert_eq!(net.boot_args(), " spry.ip=10.4.0.2/24 spry.gw=10.4.0.1");
    }
}
