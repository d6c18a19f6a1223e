"""How many threads a process's numeric libraries use, set in one place: torch's intra-op pool and the
BLAS pools (numpy's and scipy's OpenBLAS; the compiled simulator's products go through scipy's), which
would otherwise each take every core of a machine that others share."""

from __future__ import annotations

import scipy.linalg  # noqa: F401 (loads scipy's OpenBLAS, so that the limit reaches it too)
import threadpoolctl
import torch


def limit_threads(n: int) -> None:
    """At most n threads for torch and for every BLAS loaded in this process."""
    torch.set_num_threads(n)
    threadpoolctl.threadpool_limits(n, user_api="blas")
