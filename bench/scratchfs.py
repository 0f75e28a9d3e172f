"""A fresh disk per emulated host: ext4 with a journal on a loop device.

Every copy the lab makes (the payload, each agent's download directory, the
HTTP baseline's copies) lands on disk, and two artefacts of running many
"hosts" on one machine distorted the results when they all shared its root
filesystem:

- That filesystem is ext4 *without* a journal. Without a journal, ext4 will
  not reuse an inode freed in the last 60 s (360 s while its inode-table
  block is dirty) and checks every such inode while looking for a free one
  (`recently_deleted` in fs/ext4/ialloc.c). After one run of 2,000 files x 8
  agents, the next run spent up to 60 % of all CPU in that scan.
- One filesystem means one journal: every host's fsyncs queue behind each
  other's commits, which real hosts never do.

So in netns mode (root) every host gets its own sparse image, formatted as
ext4 with a journal (Linux's default) with its inode tables and journal
written up front (no background initialisation during a run), mounted at
`<workdir>/disk/<host>`. They still share the machine's one virtual disk.
Teardown unmounts them and deletes the images: one file each.
"""

import os
import shutil
import time

from labnet import run

GIB = 1 << 30


def image_size(payload_bytes, copies):
    """Room for `copies` copies of the payload, twice over, plus 1 GiB, in whole GiB."""
    need = 2 * payload_bytes * copies + GIB
    return -(-need // GIB) * GIB


def inode_count(files, copies):
    """Inodes for `copies` copies of a payload of `files` files and their folders."""
    return max(16384, 4 * files * copies)


class ScratchDisks:
    """One fresh ext4 image per host name, mounted under `root`."""

    def __init__(self, root):
        self.root = root
        self.mounted = []  # mount points, in setup order

    @staticmethod
    def available():
        return os.geteuid() == 0 and all(shutil.which(t) for t in ("mkfs.ext4", "mount", "umount"))

    def path(self, name):
        return os.path.join(self.root, name)

    def add(self, name, size_bytes, inodes):
        """Creates, formats and mounts the image of host `name`; returns its mount point."""
        mnt = self.path(name)
        image = mnt + ".img"
        os.makedirs(mnt, exist_ok=True)
        if os.listdir(mnt):
            raise RuntimeError(f"{mnt} is not empty; cannot mount a scratch disk on it")
        with open(image, "wb") as f:
            f.truncate(size_bytes)
        try:
            run(["mkfs.ext4", "-q", "-F", "-N", str(inodes), "-J", "size=16",
                 "-E", "lazy_itable_init=0,lazy_journal_init=0", image])
            run(["mount", "-o", "loop", image, mnt])
        except Exception:
            os.unlink(image)
            raise
        self.mounted.append(mnt)
        return mnt

    def teardown(self, keep=False):
        """Unmounts and deletes every image; with `keep`, returns how to do it later."""
        if keep:
            return " && ".join(f"umount {m} && rm {m}.img" for m in self.mounted) or None
        problems = []
        for mnt in self.mounted:
            for attempt in range(10):
                res = run(["umount", mnt], check=False)
                if res.returncode == 0:
                    break
                time.sleep(0.2 * (attempt + 1))  # a process may still be closing its files
            else:
                problems.append(f"could not unmount {mnt}: {res.stderr.strip()}")
                continue
            os.unlink(mnt + ".img")
            os.rmdir(mnt)
        self.mounted = []
        return "; ".join(problems) or None
