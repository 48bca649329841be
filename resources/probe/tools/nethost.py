#!/usr/bin/env python3
"""Host side of the probe's network modes: runs spry, talks to the guest
through the tap, checks every frame byte for byte.

usage (as root, inside the network namespace that holds the tap):
  nethost.py --tap TAP [--tx N] [--rx M] [--mode net|hostile|netbench]
             [--bench-rx M] [--bench-size B] [--timeout S] -- SPRY ARGS...

The probe's command line must match (probe.mode, probe.net_tx, probe.net_rx,
probe.bench_rx, ...). Frame formats: resources/probe/README.md.

  net       the probe's N standard frames 0..N-1 must arrive in order and
            byte-exact; after "probe: net0: rx ready for M frames" the host
            sends M frames (standard frames 100.., src 02:00:00:00:00:02) and
            each must come back unchanged except EtherType 0x88b6, in order;
            the probe's "rx <k> len <l> sum <s>" lines must match them.
  hostile   exactly one 0x88b5 frame, the standard frame 0, must arrive.
  netbench  counts the probe's 0x88b5 frames; after "probe: netbench rx
            ready" sends --bench-rx frames of --bench-size bytes.

Prints "nethost: ok ..." or "nethost: FAIL ..." lines; exit status 0 only if
spry exited 0, the probe summary says all checks ok and every frame matched.
"""
import argparse
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
BCAST = b"\xff" * 6
HOST_MAC = bytes.fromhex("020000000002")
DEFAULT_MAC = bytes.fromhex("020000000001")


def standard_frame(k, src, dst=BCAST, ethertype=0x88B5):
    """The probe's standard frame k (without the virtio header)."""
    s = ("spry-probe frame %d " % k).encode()
    n = 64 + k
    payload = (s * (n // len(s) + 1))[:n]
    return dst + src + struct.pack(">H", ethertype) + payload


def byte_sum(frame):
    return sum(frame) & 0xFFFF


class Spry:
    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lines = []
        self.err = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True).start()

    def _read(self, f, out):
        for raw in f:
            line = raw.decode(errors="replace").rstrip("\n")
            with self.cv:
                out.append(line)
                self.cv.notify_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tap", required=True)
    ap.add_argument("--mode", default="net", choices=["net", "hostile", "netbench"])
    ap.add_argument("--tx", type=int, default=4)
    ap.add_argument("--rx", type=int, default=0)
    ap.add_argument("--mac", default=None, help="guest MAC (default 02:00:00:00:00:01)")
    ap.add_argument("--bench-rx", type=int, default=0)
    ap.add_argument("--bench-size", type=int, default=1514)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("spry", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    argv = a.spry[1:] if a.spry and a.spry[0] == "--" else a.spry
    mac = bytes.fromhex(a.mac.replace(":", "")) if a.mac else DEFAULT_MAC

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((a.tap, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setblocking(False)

    fails = []
    t_start = time.monotonic()
    spry = Spry(argv)
    probe_frames, echoes, other = [], [], 0
    sent = []
    end = t_start + a.timeout
    rx_ready = re.compile(r"probe: (net0: rx ready for|netbench rx ready for) (\d+) frames")
    sent_rx = False
    while time.monotonic() < end:
        r, _, _ = select.select([sock], [], [], 0.02)
        if r:
            while True:
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue            # our own frames towards the guest
                et = struct.unpack(">H", data[12:14])[0] if len(data) >= 14 else 0
                if et == 0x88B5:
                    probe_frames.append(data)
                elif et == 0x88B6:
                    echoes.append(data)
                else:
                    other += 1
        if not sent_rx:
            with spry.cv:
                m = next((rx_ready.search(l) for l in spry.lines if rx_ready.search(l)), None)
            if m:
                n = int(m.group(2))
                t_send = time.monotonic()
                for j in range(n):
                    if a.mode == "netbench":
                        f = BCAST + HOST_MAC + b"\x88\xb5" + struct.pack("<I", j)
                        f += bytes(a.bench_size - len(f))
                    else:
                        f = standard_frame(100 + j, HOST_MAC, dst=mac)
                    sent.append(f)
                    while True:
                        try:
                            sock.send(f)
                            break
                        except BlockingIOError:
                            time.sleep(0.0005)
                sent_rx = True
                if a.mode == "netbench":
                    print("nethost: sent %d frames of %d bytes in %.1f ms" %
                          (n, a.bench_size, (time.monotonic() - t_send) * 1000))
        if spry.proc.poll() is not None:
            # drain what is still in the socket, then stop
            time.sleep(0.05)
            try:
                while True:
                    data, addr = sock.recvfrom(65536)
                    if addr[2] == PACKET_OUTGOING:
                        continue
                    et = struct.unpack(">H", data[12:14])[0] if len(data) >= 14 else 0
                    if et == 0x88B5:
                        probe_frames.append(data)
                    elif et == 0x88B6:
                        echoes.append(data)
            except BlockingIOError:
                pass
            break
    else:
        fails.append("spry did not exit within %.0f s" % a.timeout)
        spry.proc.kill()
    rc = spry.proc.wait()
    time.sleep(0.05)
    out = "\n".join(spry.lines)
    sys.stdout.write(out + "\n")
    sys.stderr.write("\n".join(spry.err) + "\n")
    if rc != 0:
        fails.append("spry exit status %d" % rc)
    if not re.search(r"^probe: all \d+ checks ok$", out, re.M):
        fails.append("probe summary is not 'all checks ok'")

    if a.mode == "net":
        want = [standard_frame(k, mac) for k in range(a.tx)]
        if probe_frames != want:
            fails.append("probe frames: got %d %s, want %d standard frames 0..%d" % (
                len(probe_frames), [f[14:40] for f in probe_frames[:3]], len(want), a.tx - 1))
        else:
            print("nethost: ok %d probe frames byte-exact and in order" % len(want))
        want_echo = [f[:12] + b"\x88\xb6" + f[14:] for f in sent]
        if len(sent) != a.rx:
            fails.append("sent %d frames, wanted %d (no 'rx ready' line?)" % (len(sent), a.rx))
        if echoes != want_echo:
            fails.append("echoes: got %d, want %d (first got %s)" % (
                len(echoes), len(want_echo), echoes[0][:20].hex() if echoes else None))
        elif a.rx:
            print("nethost: ok %d echoes byte-exact and in order" % len(echoes))
        for j, f in enumerate(sent):
            line = "probe: net0: rx %d len %d sum %04x" % (j, len(f), byte_sum(f))
            if line not in spry.lines:
                fails.append("missing line '%s'" % line)
    elif a.mode == "hostile":
        want = [standard_frame(0, mac)]
        if probe_frames != want:
            fails.append("hostile: got %d 0x88b5 frames (%s), want exactly standard frame 0" % (
                len(probe_frames), [f[14:44] for f in probe_frames]))
        else:
            print("nethost: ok exactly one frame (standard frame 0) arrived")
    else:
        print("nethost: received %d probe frames (%d bytes each: %s)" % (
            len(probe_frames), len(probe_frames[0]) if probe_frames else 0,
            sorted(set(len(f) for f in probe_frames))[:4]))
        seq = [struct.unpack("<I", f[14:18])[0] for f in probe_frames]
        if seq != list(range(len(seq))):
            fails.append("netbench frames out of order or lost (%d frames)" % len(seq))
    stamps = [int(m.group(1)) for m in re.finditer(r"monotonic (\d+) us", "\n".join(spry.err))]
    if len(stamps) > 1:
        print("nethost: boot-timer stamps (us after the first): %s" % [s - stamps[0] for s in stamps])
    if other:
        print("nethost: %d frames of other EtherTypes on the tap (ignored)" % other)
    for f in fails:
        print("nethost: FAIL " + f)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
