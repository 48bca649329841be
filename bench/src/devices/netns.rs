//! A network namespace of the benchmark's own, holding the tap the Linux guest's
//! eth0 is attached to, so its TCP traffic never leaves the namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cleanup;
use crate::devices::DeviceError;
use crate::systems::run_helper;

/// The host end of the tap, inside the namespace.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The guest's eth0.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
/// The TCP port the data goes over.
pub const PORT: u16 = 5201;

/// The kernel's `ip=` word for the guest's eth0.
pub fn guest_ip_arg() -> String {
    format!("ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off")
}

/// A namespace with a tap device (up, addressed), deleted on drop and on interrupt.
#[derive(Debug)]
pub struct NetNs {
    /// The namespace.
    pub name: String,
    /// The tap inside it.
    pub tap: String,
}

fn ip(args: &[&str]) -> Result<(), DeviceError> {
    run_helper(&PathBuf::from("ip"), args)
        .map(|_| ())
        .map_err(|source| DeviceError::Run {
            what: format!("ip {}", args.join(" ")),
            source,
        })
}

/// Moves the calling thread (only it) into namespace `name`.
fn enter_this_thread(name: &str) -> Result<(), DeviceError> {
    let path = PathBuf::from("/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|source| DeviceError::HostNet {
        what: format!("open {}", path.display()),
        source,
    })?;
    // SAFETY: `file` is an open namespace file for the whole call; setns only
    // switches this thread's network namespace.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret != 0 {
        return Err(DeviceError::HostNet {
            what: format!("setns into {name}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl NetNs {
    /// Creates namespace `name` with tap `tap` at [`HOST_IP`]/24.
    pub fn create(name: &str, tap: &str) -> Result<NetNs, DeviceError> {
        cleanup::creating(|| {
            cleanup::add_netns(name);
            ip(&["netns", "add", name])?;
            let ns = NetNs {
                name: name.to_owned(),
                tap: tap.to_owned(),
            };
            ip(&["-n", name, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", name, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr",
            ])?;
            let addr = format!("{HOST_IP}/24");
            ip(&["-n", name, "addr", "add", &addr, "dev", tap])?;
            ip(&["-n", name, "link", "set", "dev", tap, "up"])?;
            Ok(ns)
        })
    }

    /// `ip netns exec <name>`, to put in front of a VMM's command line.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["netns".into(), "exec".into(), self.name.clone()]
    }

    /// Listens on [`HOST_IP`]:[`PORT`] in the namespace (from a thread of its own),
    /// takes one connection and counts its bytes until EOF or `timeout`.
    pub fn sink(&self, timeout: Duration) -> std::thread::JoinHandle<Result<u64, DeviceError>> {
        let name = self.name.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let result = (|| {
                enter_this_thread(&name)?;
                let net = |what: &str| {
                    let what = what.to_owned();
                    move |source| DeviceError::HostNet { what, source }
                };
                let listener = TcpListener::bind(SocketAddrV4::new(HOST_IP, PORT))
                    .map_err(net("bind the sink"))?;
                let _ = ready_tx.send(());
                listener
                    .set_nonblocking(true)
                    .map_err(net("set the sink nonblocking"))?;
                let deadline = Instant::now() + timeout;
                let mut stream = loop {
                    match listener.accept() {
                        Ok((stream, _)) => break stream,
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                && Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => return Err(net("accept the guest's connection")(e)),
                    }
                };
                stream
                    .set_nonblocking(false)
                    .map_err(net("set the stream blocking"))?;
                stream
                    .set_read_timeout(Some(timeout))
                    .map_err(net("set a read timeout"))?;
                let mut total = 0u64;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match stream
                        .read(&mut buf)
                        .map_err(net("read the guest's data"))?
                    {
                        0 => return Ok(total),
                        n => total += n as u64,
                    }
                }
            })();
            // Unblocks the caller even when binding failed.
            drop(ready_tx);
            result
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        handle
    }

    /// Connects to the guest's [`GUEST_IP`]:[`PORT`] from the namespace (retrying
    /// until it listens), sends `count` writes of `size` bytes and closes; returns
    /// `CLOCK_MONOTONIC` of the connection, µs.
    pub fn source(&self, count: u64, size: u64, timeout: Duration) -> Result<u64, DeviceError> {
        let name = self.name.clone();
        let worker = std::thread::spawn(move || -> Result<u64, DeviceError> {
            enter_this_thread(&name)?;
            let deadline = Instant::now() + timeout;
            let addr = SocketAddrV4::new(GUEST_IP, PORT);
            let mut stream = loop {
                match TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)) {
                    Ok(stream) => break stream,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(source) => {
                        return Err(DeviceError::HostNet {
                            what: format!("connect to the guest at {addr}"),
                            source,
                        })
                    }
                }
            };
            let connected = crate::clock::monotonic_us();
            let block = vec![0u8; usize::try_from(size).unwrap_or(1 << 16)];
            for _ in 0..count {
                stream
                    .write_all(&block)
                    .map_err(|source| DeviceError::HostNet {
                        what: "send to the guest".into(),
                        source,
                    })?;
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
            Ok(connected)
        });
        worker.join().unwrap_or_else(|_| {
            Err(DeviceError::HostNet {
                what: "the sender thread panicked".into(),
                source: std::io::Error::other("panic"),
            })
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run_helper(
            &PathBuf::from("ip"),
            &["-n", &self.name, "link", "del", "dev", &self.tap],
        );
        cleanup::delete_netns(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_guest_ip_word() {
        assert_eq!(
            guest_ip_arg(),
            "ip=10.213.0.2::10.213.0.1:255.255.255.0::eth0:off"
        );
    }
}
