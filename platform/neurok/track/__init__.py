"""Experiment tracking with MLflow: runs, their inputs, checkpoints by reference, plots."""

from neurok.track.callback import MlflowRunCallback
from neurok.track.logger import UNREACHABLE, PatientMlflowLogger
from neurok.track.plots import reconstruction_figure
from neurok.track.run import dataset_fingerprint, log_checkpoints, log_run_inputs, open_run, tracking_uri

__all__ = [
    "UNREACHABLE",
    "MlflowRunCallback",
    "PatientMlflowLogger",
    "dataset_fingerprint",
    "log_checkpoints",
    "log_run_inputs",
    "open_run",
    "reconstruction_figure",
    "tracking_uri",
]
