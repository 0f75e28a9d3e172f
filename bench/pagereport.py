"""Holds the VM's free page reporting off for a lab run (`--no-page-reporting`).

A guest whose balloon device reports free pages (virtio-balloon's free page
reporting, the kernel's `page_reporting` module) tells the host about every
free block of `page_reporting_order` (2 MiB at order 9), and the host takes
the memory back. The next touch of such a page stops the vCPU until the host
has faulted fresh memory in, and the guest charges that time to whatever
process touched the page. Every lab run churns memory (each copy passes
through the page cache, and agents drop their written pages), so on such a
VM part of every process's CPU time, and some of the machine's stalls, are
the host's. Real hosts do not pay this.

Writing an order above the largest one (`/proc/pagetypeinfo` lists them)
leaves no free block the reporter will take. The lab does that for its whole
duration and writes the previous order back on the way out (an exception,
SIGTERM or SIGHUP included). A kernel that only accepts orders up to the
largest gets the largest instead, which still reports the largest blocks
(4 MiB on x86-64). The lab records the orders and how much was reported
while it held reporting off.

Measured on this machine (2026-11-24), touching 8 GiB of anonymous memory
once per page: 5.9-17.4 s a pass with reporting on (13.0 and 13.3 s for two
passes 20 s apart), and 3.3-3.5 s a pass with it held off, after a first
pass of 8.5 s (docs/benchmarks.md, twenty-third run).
"""

import os

PARAMS = "/sys/module/page_reporting/parameters"
PAGETYPEINFO = "/proc/pagetypeinfo"


def page_orders(path=PAGETYPEINFO):
    """How many page orders the buddy allocator has (11 on x86-64), from the
    header of `/proc/pagetypeinfo`; None if it cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("Free pages count per migrate type at order"):
                    return len(line.split("order", 1)[1].split())
    except OSError:
        return None
    return None


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class PageReportingHold:
    """Free page reporting off from `start()`, as it was again after `stop()`."""

    def __init__(self, params=PARAMS, pagetypeinfo=PAGETYPEINFO):
        self.order_path = os.path.join(params, "page_reporting_order")
        self.reported_path = os.path.join(params, "reported_kib")
        self.pagetypeinfo = pagetypeinfo
        self.before = None
        self.during = None
        self.reported_at_start = None

    def unavailable(self):
        """Why the hold cannot work here, or None."""
        if not os.path.exists(self.order_path):
            return f"{self.order_path} does not exist (no free page reporting on this kernel)"
        if not os.access(self.order_path, os.W_OK):
            return f"{self.order_path} is not writable (run as root)"
        if page_orders(self.pagetypeinfo) is None:
            return f"cannot read the page orders from {self.pagetypeinfo}"
        if read_int(self.order_path) is None:
            return f"{self.order_path} does not hold a number"
        return None

    def start(self):
        """Holds reporting off.

        Raises:
            RuntimeError: when it cannot, saying why.
        """
        why = self.unavailable()
        if why:
            raise RuntimeError(f"cannot hold free page reporting off: {why}")
        before = read_int(self.order_path)
        orders = page_orders(self.pagetypeinfo)
        self.reported_at_start = read_int(self.reported_path)
        errors = []
        for order in (max(orders, before), orders - 1):
            try:
                self._write(order)
            except OSError as e:
                errors.append(f"{order}: {e}")
                continue
            self.before, self.during = before, order
            return
        raise RuntimeError(f"cannot hold free page reporting off: writing {self.order_path} failed "
                           f"({'; '.join(errors)})")

    def stop(self):
        """Writes the order found at the start back."""
        if self.before is not None:
            self._write(self.before)

    def _write(self, order):
        with open(self.order_path, "w") as f:
            f.write(f"{order}\n")

    def record(self):
        """What the results file says about it."""
        now = read_int(self.reported_path)
        reported = None
        if now is not None and self.reported_at_start is not None:
            reported = now - self.reported_at_start
        return {"order_before": self.before, "order_during": self.during,
                "reported_kib_since_start": reported}
