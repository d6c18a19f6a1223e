"""The evaluation's outputs: a metrics table per (object type, split) in markdown and JSON, the error-vs-
horizon and energy plots, rendered rollouts, and the same logged to an MLflow run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from neurok.eval.config import EvalConfig
from neurok.eval.evaluate import CaseResult, EvalResult
from neurok.eval.rollout_files import write_rollout

COLUMNS = (  # (key, header) of the markdown table
    ("k_q", "k_q"),
    ("retained", "retained"),
    ("recon_chamfer_l1", "recon CD-L1"),
    ("recon_chamfer_l2", "recon CD-L2"),
    ("recon_fscore", "recon F"),
    ("recon_vertex_error", "vertex err"),
    ("shape_change", "shape change"),
    ("recon_shape_error", "recon shape error"),
    ("ik_neurok_q_chamfer_l1", "IK CD-L1 NeuROK q"),
    ("ik_neurok_z_chamfer_l1", "IK CD-L1 NeuROK z"),
    ("ik_neurok_frame_chamfer_l1", "IK CD-L1 NeuROK frame+q"),
    ("ik_neurok_frame_z_chamfer_l1", "IK CD-L1 NeuROK frame+z"),
    ("ik_pca_chamfer_l1", "IK CD-L1 PCA k_q"),
    ("ik_pca_frame_chamfer_l1", "IK CD-L1 PCA frame+k_q"),
    ("ik_pca_k_chamfer_l1", "IK CD-L1 PCA k"),
    ("ik_pca_k_frame_chamfer_l1", "IK CD-L1 PCA frame+k"),
    ("ik_nn_chamfer_l1", "IK CD-L1 NN"),
    ("ik_rigid_chamfer_l1", "IK CD-L1 rigid frame only"),
    ("ik_neurok_q_chamfer_l2", "IK CD-L2 NeuROK q"),
    ("ik_neurok_z_chamfer_l2", "IK CD-L2 NeuROK z"),
    ("ik_neurok_frame_chamfer_l2", "IK CD-L2 NeuROK frame+q"),
    ("ik_pca_chamfer_l2", "IK CD-L2 PCA k_q"),
    ("ik_pca_k_chamfer_l2", "IK CD-L2 PCA k"),
    ("ik_nn_chamfer_l2", "IK CD-L2 NN"),
    ("ik_neurok_q_iou", "IoU NeuROK q"),
    ("ik_neurok_z_iou", "IoU NeuROK z"),
    ("ik_neurok_frame_iou", "IoU NeuROK frame+q"),
    ("ik_neurok_frame_z_iou", "IoU NeuROK frame+z"),
    ("ik_pca_iou", "IoU PCA k_q"),
    ("ik_pca_frame_iou", "IoU PCA frame+k_q"),
    ("ik_pca_k_iou", "IoU PCA k"),
    ("ik_pca_k_frame_iou", "IoU PCA frame+k"),
    ("ik_nn_iou", "IoU NN"),
    ("ik_rigid_iou", "IoU rigid frame only"),
    ("rollout_chamfer_l1", "rollout CD-L1"),
    ("rollout_chamfer_l1_2s", "rollout CD-L1 @2s"),
    ("energy_drift", "energy drift"),
    ("rollout_failed", "rollout failed"),
    # physics checks of the rollouts (dynamics.checks), each where it applies to the case's conditions
    ("checks_passed", "checks passed"),
    ("check_start_error", "start err"),
    ("check_free_fall", "free fall err"),
    ("check_linear_momentum_drift", "P drift"),
    ("check_angular_momentum_drift", "L drift"),
    ("check_poke_alignment", "poke cos"),
    ("check_poke_locality", "poke locality"),
    ("check_pin_error", "pin err"),
    ("check_at_rest_on_the_ground", "rest/peak speed"),
)


def table_rows(cases: list[CaseResult]) -> list[dict]:
    """Mean of every metric per (object type, split), then over everything ("all"); NaN-free means."""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for c in cases:
        groups.setdefault((c.object_type, c.split), []).append(c)
    groups[("all", "all")] = list(cases)
    rows = []
    for (object_type, split), members in groups.items():
        keys = sorted({k for c in members for k in c.values})
        means = {}
        for k in keys:
            values = [c.values[k] for c in members if k in c.values and math.isfinite(c.values[k])]
            means[k] = float(np.mean(values)) if values else float("nan")
        rows.append({"object_type": object_type, "split": split, "n": len(members), **means})
    return rows


def markdown(rows: list[dict], speed: dict, cfg: EvalConfig, latent: dict[str, float] | None = None) -> str:
    def cell(value) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    lines = [
        "| type | split | n | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "---|" * (3 + len(COLUMNS)),
    ]
    for r in rows:
        cells = [cell(r.get(k)) for k, _ in COLUMNS]
        lines.append(f"| {r['object_type']} | {r['split']} | {r['n']} | " + " | ".join(cells) + " |")
    overall = rows[-1]
    notes = [
        "",
        f"Store normalisation (rest shape in the unit cube); Chamfer on {cfg.surface_samples} surface "
        f"samples, F-score at {cfg.fscore_threshold}, IoU on a {cfg.grid}^3 grid; "
        f"IK {cfg.dynamics.ik.iterations} iterations; energy drift with damping off. k_q: the reduced "
        f"space's dimension, chosen to retain {cfg.dynamics.reduction.retain:g} of the latent's decoded "
        f"variation (`retained`: what it keeps); PCA k_q has as many dimensions, PCA k as many as the latent "
        f"z (capped by the training bank: {cell(overall.get('pca_k_dims'))} on average).",
    ]
    if latent:
        notes.append(
            "Latent diagnostics (all cases as one batch; model.diagnostics): "
            + ", ".join(f"{k} {v:.4g}" for k, v in latent.items())
        )
    if speed:
        notes.append(
            "Speed (same sequence, same horizon, this process): "
            + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in speed.items())
        )
    return "\n".join(lines + notes) + "\n"


# NeuROK's IK space -> the PCA baseline with as many coordinates (evaluate.inverse_kinematics)
SAME_DIMENSION = {"q": "pca", "frame": "pca_frame", "z": "pca_k", "frame_z": "pca_k_frame"}
TARGET_WORDS = {"motion": "moved most", "deformation": "changed shape most, rigid motion taken out"}
TARGETS = {"test": 0.5, "heldout": 0.75}  # IK against the better baseline (issue 14)


def _spread(members: list[CaseResult], key: str) -> tuple[float, float]:
    values = [c.values[key] for c in members if math.isfinite(c.values.get(key, float("nan")))]
    return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))


def summary_markdown(cases: list[CaseResult], cfg: EvalConfig) -> str:
    """The science table: per split (and object type), the mean +- spread over objects of IK Chamfer-L1 and
    IoU for NeuROK in its IK space against PCA with as many coordinates and nearest-neighbour retrieval,
    the ratio to the better baseline, reconstruction, and the generative metrics; then the targets."""
    space = str(cfg.dynamics.ik.space)
    pca = SAME_DIMENSION[space]
    columns = [
        ("recon_chamfer_l1", "recon"),
        ("shape_change", "shape change"),
        ("recon_shape_error", "recon shape error"),
        (f"ik_neurok_{space}_chamfer_l1", f"IK NeuROK ({space})"),
        (f"ik_{pca}_chamfer_l1", "IK PCA same dim"),
        ("ik_nn_chamfer_l1", "IK NN"),
        ("ik_rigid_chamfer_l1", "IK rigid only"),
        *([("ik_pca_k_chamfer_l1", "IK PCA k dims")] if pca != "pca_k" else []),  # as many as z has
        *[(f"ik_neurok_{o}_chamfer_l1", f"IK NeuROK ({o})") for o in SAME_DIMENSION if o != space],
        (f"ik_neurok_{space}_iou", "IoU NeuROK"),
        (f"ik_{pca}_iou", "IoU PCA"),
        ("ik_nn_iou", "IoU NN"),
        *[(f"gen_{m}_{k}", f"{k} {label}") for k in ("coverage", "mmd", "nna") for m, label in
          (("neurok", "NeuROK"), ("pca_gauss", "PCA-G"))],
    ]  # fmt: skip
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for c in cases:
        for key in ((c.split, "all"), (c.split, c.object_type)):
            groups.setdefault(key, []).append(c)
    lines = [
        "| split | type | objects | ratio | " + " | ".join(h for _, h in columns) + " |",
        "|" + "---|" * (4 + len(columns)),
    ]
    ratios = {}
    for (split, object_type), members in groups.items():
        ours = _spread(members, f"ik_neurok_{space}_chamfer_l1")[0]
        best = min(_spread(members, f"ik_{pca}_chamfer_l1")[0], _spread(members, "ik_nn_chamfer_l1")[0])
        ratio = ours / best if best > 0 else float("nan")
        if object_type == "all":
            ratios[split] = (ratio, ours)
        cells = []
        for key, _ in columns:
            mean, std = _spread(members, key)
            cells.append("-" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {split} | {object_type} | {len(members)} | {ratio:.2f} | {' | '.join(cells)} |")
    lines += [
        "",
        f"Each case fits frame 0 to the frame that {TARGET_WORDS[cfg.target]}. "
        "Chamfer-L1 in the store's normalisation (rest shape in the unit cube), "
        f"{cfg.surface_samples} surface samples; IoU on a {cfg.grid}^3 grid; IK "
        f"{cfg.dynamics.ik.iterations} Adam steps for every method; mean ± standard deviation over objects. "
        "ratio: NeuROK's IK over the better of PCA with as many coordinates "
        f"({pca}) and nearest-neighbour retrieval. Generative: {cfg.generative_samples} prior samples per "
        "object against as many of its true states (coverage: higher is better; MMD: lower; 1-NN accuracy: "
        "0.5 is ideal), beside a Gaussian in the training deformations' PCA space.",
        "",
        "Targets (issue 14):",
    ]
    verdict = lambda ok: "met" if ok else "not met"  # noqa: E731
    for split, target in TARGETS.items():
        if split in ratios:
            ratio = ratios[split][0]
            lines.append(f"- {split}: ratio {ratio:.2f} <= {target}: {verdict(ratio <= target)}")
    if "test" in ratios and "heldout" in ratios:
        factor = ratios["heldout"][1] / ratios["test"][1]
        lines.append(f"- heldout / test IK: {factor:.2f} <= 2: {verdict(factor <= 2)}")
    if "test" in ratios:
        test = groups[("test", "all")]
        rigid = _spread(test, "ik_rigid_chamfer_l1")[0]
        if rigid > 0:
            others = _spread(test, f"ik_{pca}_chamfer_l1")[0]
            lines.append(
                f"- test IK over the rigid frame alone: NeuROK {ratios['test'][1] / rigid:.2f}, PCA same dim "
                f"{others / rigid:.2f} (1: the deformation adds nothing to what 6 rigid coordinates fit)"
            )
        error, change = (_spread(test, k)[0] for k in ("recon_shape_error", "shape_change"))
        share = 1 - error / change if change > 0 else float("nan")
        if not math.isnan(share):
            lines.append(
                f"- test: the posterior reproduces {share:.2f} of the change of shape (rigid motion undone; "
                "0 or less: the decoder's shape change on these objects carries no information)"
            )
        iou = _spread(test, f"ik_neurok_{space}_iou")[0]
        lines.append(f"- test IoU {iou:.3f} >= 0.70: {verdict(iou >= 0.7)}")
        ours, theirs = (_spread(test, f"gen_{m}_coverage")[0] for m in ("neurok", "pca_gauss"))
        if not math.isnan(ours):
            lines.append(f"- test coverage {ours:.3f} > PCA-G {theirs:.3f}: {verdict(ours > theirs)}")
    return "\n".join(lines) + "\n"


def horizon_figure(cases: list[CaseResult], fps: float = 30.0) -> Figure:
    fig = Figure(figsize=(6, 3.5), constrained_layout=True)
    ax = fig.add_subplot()
    for c in cases:
        if c.horizon:
            ax.plot(np.arange(len(c.horizon)) / fps, c.horizon, label=f"{c.case} ({c.split})")
    ax.set(xlabel="time (s)", ylabel="Chamfer L1 to the simulated truth", title="rollout error vs horizon")
    ax.legend(fontsize=6)
    return fig


def energy_figure(cases: list[CaseResult]) -> Figure:
    fig = Figure(figsize=(6, 3.5), constrained_layout=True)
    ax = fig.add_subplot()
    for c in cases:
        if c.rollout is not None:
            r = c.rollout
            ax.plot(r.time, r.kinetic + r.potential - r.work, label=f"{c.case}: E - W")
            ax.plot(r.time, r.kinetic, ":", label=f"{c.case}: kinetic")
    ax.set(xlabel="time (s)", ylabel="energy (normalised units, mass 1)", title="latent rollout energy")
    ax.legend(fontsize=6)
    return fig


def write_report(result: EvalResult, cfg: EvalConfig, store_path: str, model_path: str) -> dict[str, Path]:
    """summary.md (the science table), metrics.md, metrics.json, horizon.png, energy.png and
    rollouts/<case>/ under cfg.out_dir."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(result.cases)
    files = {"summary": out / "summary.md", "table": out / "metrics.md", "json": out / "metrics.json"}
    files["summary"].write_text(summary_markdown(result.cases, cfg))
    files["table"].write_text(markdown(rows, result.speed, cfg, result.latent))
    payload = {
        "model": model_path,
        "store": store_path,
        "rows": rows,
        "speed": result.speed,
        "latent": result.latent,
        "cases": [
            {"case": c.case, "object_type": c.object_type, "split": c.split, **c.values} for c in result.cases
        ],
    }
    files["json"].write_text(json.dumps(payload, indent=2, default=float))
    if any(c.horizon for c in result.cases):
        for name, figure in (
            ("horizon", horizon_figure(result.cases)),
            ("energy", energy_figure(result.cases)),
        ):
            files[name] = out / f"{name}.png"
            figure.savefig(files[name], dpi=100)
    rendered = [c for c in result.cases if c.rollout is not None and c.truth is not None]
    for c in rendered:
        title = f"{c.case}: simulated truth vs NeuROK"
        written = write_rollout(out / "rollouts" / c.case, c.rollout, cfg.render, c.truth, title=title)
        files |= {f"{c.case}/{k}": v for k, v in written.items()}
    return files


def child_run(parent_id: str, tracking_uri: str, name: str) -> str:
    """A new run nested under `parent_id` (the training run), in its experiment: where its evaluation goes."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_id)
    tags = {"mlflow.parentRunId": parent_id, "mlflow.runName": name}
    return client.create_run(parent.info.experiment_id, tags=tags, run_name=name).info.run_id


def log_to_mlflow(
    run_id: str,
    rows: list[dict],
    speed: dict,
    files: dict[str, Path],
    latent: dict[str, float] | None = None,
    tracking_uri: str | None = None,
) -> None:
    """Metrics eval/<type>/<split>/<name>, eval/latent/<name>, and every output file as an artifact under
    eval/."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    now = int(1000 * time.time())
    entries = [
        Metric(f"eval/{r['object_type']}/{r['split']}/{k}", float(v), now, 0)
        for r in rows
        for k, v in r.items()
        if isinstance(v, float) and math.isfinite(v)
    ]
    entries += [Metric(f"eval/speed/{k}", float(v), now, 0) for k, v in speed.items() if isinstance(v, float)]
    entries += [Metric(f"eval/latent/{k}", v, now, 0) for k, v in (latent or {}).items() if math.isfinite(v)]
    for i in range(0, len(entries), 500):
        client.log_batch(run_id, metrics=entries[i : i + 500])
    for key, path in files.items():
        parent = "eval" if "/" not in key else f"eval/rollouts/{key.split('/')[0]}"
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"{parent}/{path.name}")
        else:
            client.log_artifact(run_id, str(path), parent)
