"""The training run's metric logger: Lightning's MLFlowLogger, made to ride out a tracking-server outage.

While the server does not answer, logged metrics are kept in memory (a warning says so, once per outage)
and sent with their steps when it answers again (their timestamps are the sending time). After a failed
request the next try waits `retry_s`, so an outage costs training one failed request per interval rather
than one per logged step. What is still unsent when training ends is written to a JSON-lines file under
`<output_dir>/unsent-metrics/`, and a warning names it. MLflow's own HTTP retries are shortened for the
process (unless set): its default of 7 retries with doubling back-off blocks a step for about 2 minutes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

# What an unreachable or failing server raises through the MLflow client (requests' errors are OSErrors)
UNREACHABLE = (MlflowException, OSError)


def reason(exc: BaseException) -> str:
    """The first line of an MLflow client error, short enough for a warning (they carry whole tracebacks)."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class PatientMlflowLogger(MLFlowLogger):
    def __init__(self, *args, spill_dir: str | Path, retry_s: float = 30.0, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.spill_dir, self.retry_s = Path(spill_dir), retry_s
        self.pending: list[tuple[dict[str, float], int | None]] = []
        self.failed_at: float | None = None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.pending.append(({k: float(v) for k, v in metrics.items()}, step))
        self.send()

    def send(self) -> bool:
        """Send what is pending, oldest first; False while the server does not answer."""
        if self.failed_at is not None and time.monotonic() - self.failed_at < self.retry_s:
            return False
        try:
            while self.pending:
                super().log_metrics(*self.pending[0])
                self.pending.pop(0)
        except UNREACHABLE as exc:
            if self.failed_at is None:
                log.warning(
                    "MLflow at %s does not answer (%s): training goes on, and its metrics are kept and sent "
                    "when it answers",
                    self._tracking_uri,
                    reason(exc),
                )
            self.failed_at = time.monotonic()
            return False
        if self.failed_at is not None:
            log.warning("MLflow at %s answers again: the metrics kept meanwhile are sent", self._tracking_uri)
            self.failed_at = None
        return True

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self.failed_at = None  # a last try, now
        if not self.send():
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            spill = self.spill_dir / f"{self.run_id}.jsonl"
            with spill.open("a") as f:
                f.writelines(json.dumps({"step": step, "metrics": m}) + "\n" for m, step in self.pending)
            log.warning(
                "MLflow at %s did not answer at the end: %d metric rows were not logged; they are in %s",
                self._tracking_uri,
                len(self.pending),
                spill,
            )
        try:
            super().finalize(status)
        except UNREACHABLE as exc:
            log.warning(
                "MLflow at %s did not answer at the end (%s): run %s keeps its RUNNING status there",
                self._tracking_uri,
                reason(exc),
                self.run_id,
            )
