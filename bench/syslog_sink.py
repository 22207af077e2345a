#!/usr/bin/env python3
"""A stand-in syslog daemon for bench/run.sh.

Binds a datagram socket at PATH and receives every line, as journald or rsyslog would (each
line a wake-up when it was idle). On SIGTERM it takes what is still queued and prints one
key=value line: every line received, the daemon's `from=` and `status=sent` lines, and its
`log lines lost` reports.

Usage: syslog_sink.py PATH
"""
import os
import signal
import socket
import sys


def main():
    path = sys.argv[1]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o666)  # the daemon reconnects as nobody
    counts = {"syslog_lines": 0, "from_lines": 0, "sent_lines": 0, "lost_reports": 0}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))

    def take(data):
        text = data.decode("utf-8", "replace")
        counts["syslog_lines"] += 1
        if " from=<" in text:
            counts["from_lines"] += 1
        elif "status=sent" in text:
            counts["sent_lines"] += 1
        elif "log lines lost" in text:
            counts["lost_reports"] += 1

    print("ready", file=sys.stderr, flush=True)
    # recv is retried after a signal (PEP 475): wake up now and then to see the stop.
    sock.settimeout(0.2)
    while not stopping:
        try:
            take(sock.recv(65536))
        except socket.timeout:
            continue
    sock.setblocking(False)
    while True:
        try:
            take(sock.recv(65536))
        except BlockingIOError:
            break
    print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    os.unlink(path)


if __name__ == "__main__":
    main()
