"""`fmaudit` with probes, for launchers that start a script (torchrun, accelerate launch).

FMAUDIT_PROBE=kill-in-fisher:N: the process kills itself (SIGKILL) when it starts the N-th
member's Fisher pass. FMAUDIT_PROBE=count: at exit, it prints to stderr how many Fisher passes
and prediction batches it ran ("probe rank R: fisher F batches B").
"""

from __future__ import annotations

import atexit
import os
import signal
import sys

import fmaudit.passes.fisher as fisher_pass
from fmaudit.cli import main
from fmaudit.metrics import DisagreementAccumulator

calls = {"fisher": 0, "batches": 0}
probe = os.environ.get("FMAUDIT_PROBE", "")
run_fisher_pass, update = fisher_pass.run_fisher_pass, DisagreementAccumulator.update


def counted_fisher(*args, **kwargs):
    calls["fisher"] += 1
    if probe.startswith("kill-in-fisher:") and calls["fisher"] == int(probe.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return run_fisher_pass(*args, **kwargs)


def counted_update(self, member_logits):
    calls["batches"] += 1
    return update(self, member_logits)


fisher_pass.run_fisher_pass = counted_fisher
DisagreementAccumulator.update = counted_update
if probe == "count":
    rank = os.environ.get("RANK", "0")
    atexit.register(lambda: print(f"probe rank {rank}: fisher {calls['fisher']} batches "
                                  f"{calls['batches']}", file=sys.stderr))
sys.exit(main())
