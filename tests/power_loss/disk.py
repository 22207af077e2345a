#!/usr/bin/python3
"""A disk that remembers what reached it, for the power-loss test (tests/power_loss.rs).

    disk.py serve MOUNTPOINT SIZE LOG
        Mounts a FUSE file system (as root) holding one file, MOUNTPOINT/disk, of SIZE bytes.
        A loop device over that file is a block device whose every write and every flush
        (the loop driver turns a cache flush into an fsync of its file) is appended to LOG,
        in the order they reached the disk, stamped with CLOCK_MONOTONIC. Runs until
        unmounted; the log is complete when the process has exited.

    disk.py crash LOG OUT FLUSH SEED KEEP
        Writes to OUT the disk as a power cut could leave it just after flush number FLUSH
        (0 = before the first one) completed: every write that reached the disk before that
        flush, then, of the writes after it and before the next flush, a random subset (each
        kept with probability KEEP, drawn with SEED): a volatile cache that had written some
        of them back. Prints the flush's time stamp (ns, CLOCK_MONOTONIC; 0 for FLUSH 0), how
        many writes after it were kept, of how many, and the moment the power went: the stamp
        of the last write kept (the flush's, when none was).

    disk.py stamps LOG
        Prints the time stamp of every flush, one per line, in order.

Log records (little-endian): b"S" size:u64 first, then b"W" offset:u64 length:u32 time:u64
data, and b"F" time:u64.
Debian's python3-fusepy (libfuse2): mounting needs root, not fusermount.
"""

import errno
import os
import random
import stat
import struct
import sys
import time

W = struct.Struct("<cQIQ")
F = struct.Struct("<cQ")
S = struct.Struct("<cQ")


def serve(mountpoint, size, log_path):
    from fusepy import FUSE, FuseOSError, Operations  # Debian's python3-fusepy

    # The kernel may wait on this process to write out pages of the loop device: tell it
    # this process is an I/O flusher, so that its own allocations do not wait on itself.
    import ctypes
    PR_SET_IO_FLUSHER = 57
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0)

    class Disk(Operations):
        def __init__(self):
            self.data = bytearray(size)
            self.log = open(log_path, "wb", buffering=1 << 20)
            self.log.write(S.pack(b"S", size))
            self.now = int(time.time())

        def getattr(self, path, fh=None):
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2,
                        "st_mtime": self.now, "st_ctime": self.now, "st_atime": self.now}
            if path == "/disk":
                return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": size,
                        "st_mtime": self.now, "st_ctime": self.now, "st_atime": self.now}
            raise FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            return [".", "..", "disk"]

        def open(self, path, flags):
            if path != "/disk":
                raise FuseOSError(errno.ENOENT)
            return 0

        def read(self, path, length, offset, fh):
            return bytes(self.data[offset:offset + length])

        def write(self, path, buf, offset, fh):
            if offset + len(buf) > size:
                raise FuseOSError(errno.ENOSPC)
            self.data[offset:offset + len(buf)] = buf
            self.log.write(W.pack(b"W", offset, len(buf), time.monotonic_ns()))
            self.log.write(buf)
            return len(buf)

        def truncate(self, path, length, fh=None):
            if length != size:
                raise FuseOSError(errno.EPERM)

        def fsync(self, path, datasync, fh):
            # Everything written so far is on the platter now; the flush completes after
            # this returns, so its stamp is earlier than anything the caller did after it.
            self.log.write(F.pack(b"F", time.monotonic_ns()))
            return 0

        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            return 0

        def destroy(self, path):
            self.log.close()

    # One thread: the log holds the writes in the order the disk took them.
    FUSE(Disk(), mountpoint, foreground=True, nothreads=True, big_writes=True,
         max_write=1 << 20, allow_other=True)


def records(log_path):
    with open(log_path, "rb") as f:
        while True:
            kind = f.read(1)
            if not kind:
                return
            if kind == b"S":
                _, size = S.unpack(kind + f.read(S.size - 1))
                yield ("S", size, b"", 0)
            elif kind == b"W":
                _, offset, length, stamp = W.unpack(kind + f.read(W.size - 1))
                data = f.read(length)
                if len(data) != length:
                    raise SystemExit(f"disk.py: {log_path} ends inside a write")
                yield ("W", offset, data, stamp)
            elif kind == b"F":
                _, stamp = F.unpack(kind + f.read(F.size - 1))
                yield ("F", 0, b"", stamp)
            else:
                raise SystemExit(f"disk.py: bad record {kind!r} in {log_path}")


def crash(log_path, out, flush, seed, keep):
    rng = random.Random(seed)
    image = bytearray()
    seen = 0
    stamp = 0
    kept = after = 0
    last = 0
    for kind, offset, data, t in records(log_path):
        if kind == "S":
            image = bytearray(offset)
            continue
        if kind == "F":
            seen += 1
            if seen == flush:
                stamp = t
            elif seen > flush:
                break
            continue
        if seen < flush:
            pass
        else:
            after += 1
            if rng.random() >= keep:
                continue
            kept += 1
            last = t
        image[offset:offset + len(data)] = data
    with open(out, "wb") as f:
        f.write(image)
    print(stamp, kept, after, max(stamp, last))


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "serve" and len(sys.argv) == 5:
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif cmd == "crash" and len(sys.argv) == 7:
        crash(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
    elif cmd == "stamps" and len(sys.argv) == 3:
        for kind, _, _, stamp in records(sys.argv[2]):
            if kind == "F":
                print(stamp)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
