"""A fresh filesystem for one lab run: ext4 with a journal on a loop device.

Every copy the lab makes (the payload, each agent's download directory, the
HTTP baseline's copies) lands in the work directory. On this machine's root
filesystem (ext4 without a journal) creating files right after many were
deleted is slow and erratic: with no journal, ext4 will not reuse an inode
freed in the last 60 s (360 s while its inode-table block is dirty) and
checks every such inode while looking for a free one (`recently_deleted` in
fs/ext4/ialloc.c). After one run of 2,000 files x 8 agents, the next run
spent up to 60 % of all CPU in that scan, and its agents' file creation
took seconds. Measuring that would measure the lab's own leftovers.

So in netns mode (root) the work directory is the mount point of a sparse
image file formatted as ext4 with a journal, Linux's default, and made with
its inode tables and journal already initialised, so no background
initialisation writes to the disk during a run. Teardown unmounts it and
deletes the image: one file.
"""

import os
import shutil
import time

from labnet import run

GIB = 1 << 30


def image_size(payload_bytes, copies):
    """Room for the payload and `copies` copies of it, twice over, at least 4 GiB."""
    need = 2 * payload_bytes * (copies + 1) + GIB
    return max(4 * GIB, -(-need // GIB) * GIB)


class ScratchFs:
    """`mountpoint` on a fresh ext4 image at `mountpoint + '.img'`."""

    def __init__(self, mountpoint, size_bytes):
        self.mountpoint = mountpoint
        self.image = mountpoint.rstrip("/") + ".img"
        self.size = size_bytes
        self.mounted = False

    @staticmethod
    def available():
        return os.geteuid() == 0 and all(shutil.which(t) for t in ("mkfs.ext4", "mount", "umount"))

    def setup(self):
        os.makedirs(self.mountpoint, exist_ok=True)
        if os.listdir(self.mountpoint):
            raise RuntimeError(f"{self.mountpoint} is not empty; cannot mount a scratch filesystem on it")
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        try:
            # one inode per 64 KiB keeps the inode tables (written now, not
            # lazily during the run) small: 16k inodes per GiB
            run(["mkfs.ext4", "-q", "-F", "-i", "65536",
                 "-E", "lazy_itable_init=0,lazy_journal_init=0", self.image])
            run(["mount", "-o", "loop", self.image, self.mountpoint])
        except Exception:
            os.unlink(self.image)
            raise
        self.mounted = True

    def teardown(self, keep=False):
        """Unmounts and deletes the image, unless `keep` (then says how)."""
        if not self.mounted:
            return None
        if keep:
            return f"umount {self.mountpoint} && rm {self.image}"
        for attempt in range(10):
            res = run(["umount", self.mountpoint], check=False)
            if res.returncode == 0:
                break
            time.sleep(0.2 * (attempt + 1))  # a process still closing its files
        else:
            return f"could not unmount {self.mountpoint}: {res.stderr.strip()}"
        self.mounted = False
        os.unlink(self.image)
        os.rmdir(self.mountpoint)
        return None
