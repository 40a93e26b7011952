#!/usr/bin/env python3
"""A read-only view of a folder in which every open and every read request
waits first, as on network storage:
`python3 tools/slow-fs.py SRC MOUNTPOINT [LATENCY_MS]` (default 2 ms; needs
`pip install fusepy` and libfuse2; unmount with `fusermount -u MOUNTPOINT`).
Requests run concurrently (one FUSE thread each), so a reader that keeps
many in flight pays the latency once per batch of requests, one that reads
synchronously once per request. Pages go through the kernel's page cache
(so shards can be memory-mapped), which `--cold` drops first."""
import errno, os, sys, time
from fuse import FUSE, FuseOSError, Operations


class Slow(Operations):
    def __init__(self, root, latency):
        self.root, self.latency = root, latency

    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._p(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        keys = ("st_mode", "st_size", "st_nlink", "st_uid", "st_gid", "st_atime", "st_mtime", "st_ctime")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + sorted(os.listdir(self._p(path)))

    def open(self, path, flags):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        time.sleep(self.latency)  # the round trip of opening a remote file
        return os.open(self._p(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        time.sleep(self.latency)
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)


if __name__ == "__main__":
    src, mnt = sys.argv[1], sys.argv[2]
    latency = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.002
    FUSE(Slow(os.path.abspath(src), latency), mnt, foreground=True, ro=True, nothreads=False)
