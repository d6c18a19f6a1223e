"""Does the CVAE learn the change of shape, and does what it learns carry to new frame pairs?

A training loop without Lightning, for probes that a full run would take too long to answer: the model
trains on a fixed set of loader batches (`fixed=N`, a memorisation test) or on a fresh stream (`fixed=0`,
what training does), with training's optimiser, schedule, gradient clipping and KL ramp. Every `every`
steps it prints the share of the change of shape (model.shape_change_distances: 1 - summed error /
summed change, rigid motion undone, the posterior mean), over all samples and per object type, on

- `seen`: the first two training batches (their samples were trained on, unless fixed=0);
- `new pairs`: batches of the same split that training never drew (new frame pairs of the same objects);
- `val`: the store's validation split (unseen objects), when it has one.

0 or less: no change of shape reproduced. Writes benchmarks/results/shape_learning[NAME].json and .md.

`arch=pointnet` trains a reference network instead of NeuROK, with no attention at all (`PointAutoencoder`):
whether the data and the loss teach a change of shape to a plain autoencoder on the same batches; `pool=`
its pooling (max+mean, max, mean). `arch=mlp-decoder` keeps NeuROK's encoders and puts the autoencoder's
MLP decoder in place of D (`CodeDecoder`): which half stops the change of shape.

Usage: python benchmarks/shape_learning.py STORE [steps=300] [fixed=8] [lr=3e-4] [deformation_only=1]
       [drop=multibody] [augment=1] [threads=2] [every=50] [name=NAME] [arch=neurok|pointnet|mlp-decoder]
       [pool=max+mean|max|mean] [shape=1|0]
       [model.KEY=VALUE ...]
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from common import write_results
from neurok.config import load_config
from neurok.data.loader import AugmentConfig, LoaderConfig, make_loader
from neurok.data.schema import OBJECT_TYPES
from neurok.errors import BadInputError
from neurok.model import ModelConfig, cvae_loss, shape_change_distances
from neurok.model.layers import FourierEmbedding
from neurok.model.losses import kl_ramp
from neurok.model.pointnet import PointNet
from neurok.train.config import OptimConfig, TrainerConfig
from neurok.train.module import NeurokModule

BASE = {"width": 128, "heads": 4, "tokens": 32, "latent_dim": 8, "encoder_depth": 3, "decoder_depth": 3}
HELD_OUT = 6  # batches of new pairs (and of the validation split) the share is measured on


class CodeDecoder(nn.Module):
    """D with no attention (`arch=mlp-decoder`): an MLP of [Fourier(query), the flattened z, the mean shape
    token] -> displacement, with NeuROK's encoders kept."""

    def __init__(self, cfg: ModelConfig, width: int = 256, code: int = 128):
        super().__init__()
        self.query = FourierEmbedding(4, width)
        self.code = nn.Linear(cfg.tokens * cfg.latent_dim + cfg.width, 2 * code)
        hidden = [nn.Linear(width + 2 * code, width)] + [nn.Linear(width, width) for _ in range(2)]
        self.mlp = nn.Sequential(*(m for layer in hidden for m in (layer, nn.GELU())), nn.Linear(width, 3))

    def features(self, queries: torch.Tensor) -> torch.Tensor:
        return queries

    def motion(self, z: torch.Tensor, shape_tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        code = self.code(torch.cat([z.flatten(1), shape_tokens.mean(dim=1)], dim=-1))
        return self.mlp(torch.cat([self.query(queries), code[:, None].expand(-1, queries.shape[1], -1)], -1))


class PointAutoencoder(nn.Module):
    """A PointNet autoencoder (0.68M parameters): per-point MLPs of [Fourier(x), displacement] and of
    Fourier(x), each max- and mean-pooled to a 128-d code (z and the shape's); an MLP decoder of
    [Fourier(query), z, shape code] -> displacement. Returns what cvae_loss and `share` read (no KL).
    Without `shape_code` the decoder reads [Fourier(query), z] alone (`shape=0`)."""

    def __init__(
        self, pool: str, shape_code: bool = True, frequencies: int = 4, width: int = 256, code: int = 128
    ):
        super().__init__()
        self.deformation = PointNet(frequencies, width, code, 3, pool)
        self.shape = PointNet(frequencies, width, code, 0, pool) if shape_code else None
        self.query = FourierEmbedding(frequencies, width)
        codes = 2 if shape_code else 1
        hidden = [nn.Linear(width + codes * code, width)] + [nn.Linear(width, width) for _ in range(2)]
        self.decoder = nn.Sequential(
            *(m for layer in hidden for m in (layer, nn.GELU())), nn.Linear(width, 3)
        )

    def forward(self, batch: dict, noise: float = 0.0) -> dict:
        z = self.deformation(batch["points"], batch["displacement"])
        shape = [self.shape(batch["points"])] if self.shape is not None else []
        queries = batch["queries"]
        codes = torch.cat([z, *shape], dim=-1)[:, None].expand(-1, queries.shape[1], -1)
        deformation = self.decoder(torch.cat([self.query(queries), codes], dim=-1))
        zero = torch.zeros(len(queries), 1, 1)
        return {
            "deformation": deformation,
            "motion": deformation,
            "mu": zero,
            "logvar": zero,
            "mu_cond": zero,
        }


def batches(
    store: str, split: str, n: int, deformation_only: bool, drop: str | None, seed: int, augment: bool
) -> list:
    """n batches of 64 from a split's loader (its epochs chained), less the samples of object type `drop`."""
    cfg = LoaderConfig(store=store, batch_size=64, points=512, queries=512, num_workers=0, seed=seed)
    if not augment:  # no turn about up, no scale: the frame pairs as stored
        cfg.augment = AugmentConfig(rotate=False, scale=[1.0, 1.0])
    loader, samples = make_loader(cfg, split, remove_rigid=deformation_only), []
    while sum(len(b["sequence"]) for b in samples) < 64 * n:
        for batch in loader:
            keep = batch["object_type"] != OBJECT_TYPES.index(drop) if drop else slice(None)
            samples.append({k: v[keep] for k, v in batch.items()})
    flat = {k: torch.cat([b[k] for b in samples]) for k in samples[0]}
    return [{k: v[64 * i : 64 * (i + 1)] for k, v in flat.items()} for i in range(n)]


def share(model, chosen: list[dict]) -> dict[str, float]:
    """The share over the batches ("all"), and per object type present: the summed share is the multibody
    chains' (their change of shape is 10-50x the others'), so only the per-type figures show the rest."""
    model.eval()
    sums = torch.zeros(len(OBJECT_TYPES), 2)
    with torch.no_grad():
        for batch in chosen:
            out = model(batch, noise=0.0)
            error, change = shape_change_distances(
                batch["queries"], out["deformation"], batch["query_displacement"]
            )
            sums.index_add_(0, batch["object_type"], torch.stack([error, change], dim=1))
    model.train()
    total = sums.sum(dim=0)
    shares = {"all": round(float(1 - total[0] / total[1]), 4)}
    return shares | {
        OBJECT_TYPES[t]: round(float(1 - e / c), 3) for t, (e, c) in enumerate(sums.tolist()) if c > 0
    }


def main(argv: list[str]) -> None:
    store, options = argv[0], dict(a.split("=", 1) for a in argv[1:])
    steps, fixed, every = (int(options.pop(k, d)) for k, d in (("steps", 300), ("fixed", 8), ("every", 50)))
    lr, drop, name = float(options.pop("lr", 3e-4)), options.pop("drop", None), options.pop("name", "")
    deformation_only = options.pop("deformation_only", "1") == "1"
    arch, pool = options.pop("arch", "neurok"), options.pop("pool", "max+mean")
    shape_code = options.pop("shape", "1") == "1"
    augment = options.pop("augment", "1") == "1"
    torch.set_num_threads(int(options.pop("threads", 2)))
    torch.manual_seed(0)
    overrides = [f"{k}={v}" for k, v in BASE.items()] + [f"deformation_only={deformation_only}"]
    cfg = load_config(
        ModelConfig, None, overrides + [f"{k.removeprefix('model.')}={v}" for k, v in options.items()]
    )
    module = NeurokModule.from_configs(cfg, OptimConfig(lr=lr, warmup_steps=50), steps)
    if arch == "pointnet":  # the same optimiser, schedule and loss, another network
        module.model = PointAutoencoder(pool, shape_code)
    elif arch == "mlp-decoder":
        module.model.decoder = CodeDecoder(cfg)
    optimiser = module.configure_optimizers()
    optimiser, schedule = optimiser["optimizer"], optimiser["lr_scheduler"]["scheduler"]
    model = module.model

    stream = batches(store, "train", (fixed or steps) + HELD_OUT, deformation_only, drop, 0, augment)
    new_pairs, training = stream[:HELD_OUT], stream[HELD_OUT:]
    val = []
    try:
        val = batches(store, "val", HELD_OUT, deformation_only, drop, 1, augment)
    except BadInputError as exc:  # a store without a validation split (a probe set) reports none
        print(f"no validation share: {exc}")
    rows, start = [], time.perf_counter()
    for step in range(steps + 1):
        if step % every == 0:
            row = {"step": step, "seen": share(model, training[:2]), "new pairs": share(model, new_pairs)}
            row["val"] = share(model, val) if val else None
            rows.append(row)
            print(row | {"s": round(time.perf_counter() - start)}, flush=True)
        if step == steps:
            break
        batch, ramp = training[step % len(training)], kl_ramp(step, cfg.kl_warmup_steps)
        loss = cvae_loss(model(batch, noise=ramp), batch, cfg, kl_scale=ramp)["loss"]
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TrainerConfig.gradient_clip)
        optimiser.step()
        schedule.step()

    setting = " ".join(argv)
    kinds = ("seen", "new pairs", "val")
    table = ["| step | " + " | ".join(kinds) + " |", "|---|---|---|---|"]
    table += [
        f"| {r['step']} | "
        + " | ".join(
            " ".join(f"{k} {v:.3f}" for k, v in r[kind].items()) if r[kind] else "-" for kind in kinds
        )
        + " |"
        for r in rows
    ]
    write_results(
        f"shape_learning{name}", {"setting": setting, "rows": rows}, "\n".join([f"`{setting}`", "", *table])
    )


if __name__ == "__main__":
    main(sys.argv[1:])
