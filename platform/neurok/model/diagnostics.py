"""Does the model use its latent? Measured on one batch (issue 14, item 1).

- KL per latent dimension: KL(q(z | phi, M0) || N(mu_cond, I)) per coordinate, mean over the batch.
- Active dimensions: coordinates whose posterior mean moves with the sample, Var_batch(mu - mu_cond) >
  0.01: the "active units" of Burda, Grosse and Salakhutdinov (2016, Importance Weighted Autoencoders,
  s5.2), measured from the conditional prior's mean since the prior here moves with M0. Their
  criterion is chosen over a KL threshold because it asks what a collapsed latent fails (the encoder's
  mean carries no information about the sample), whereas a coordinate can pay KL for a shrunken
  posterior variance alone.
- Explained share: 1 - err(z) / err(no deformation), err the mean squared deformation error at the
  batch's queries, for z = the sample's own posterior mean, the posterior mean of another sample of the
  batch (shuffled), and the prior mean mu_cond. A model that uses z explains far more with its own z.
- Singular values of dD/dz at mu_cond, for a few objects: the decoded deformation's Jacobian with
  respect to the flattened latent (torch.func forward mode under the math attention kernel,
  research/traps.md 1), divided by sqrt(queries) so that they are RMS per point and compare across
  query counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from neurok.model.cvae import NeuROK
from neurok.model.losses import kl_terms

ACTIVE_VARIANCE = 0.01  # Burda et al. 2016's threshold on Var(posterior mean)


@dataclass
class LatentDiagnostics:
    kl_per_dim: torch.Tensor  # (k,) nats, mean over the batch
    active_dims: int
    explained: dict[str, float]  # own | shuffled | prior -> 1 - err / err(no deformation)
    singular_values: torch.Tensor  # (objects, min(k, 3 Q)) of dD/dz at mu_cond, RMS per point, descending

    def scalars(self, top: int = 4) -> dict[str, float]:
        """Flat numbers for a metrics logger: totals, the explained shares, the leading singular values
        (mean over the objects) and how many are above 1% of the largest."""
        sv = self.singular_values.mean(dim=0)
        values = {
            "kl_total": float(self.kl_per_dim.sum()),
            "kl_max_dim": float(self.kl_per_dim.max()),
            "active_dims": float(self.active_dims),
            **{f"explained_{name}": share for name, share in self.explained.items()},
            "jacobian_rank_1pct": float((sv > 0.01 * sv[0]).sum()) if sv[0] > 0 else 0.0,
        }
        values |= {f"jacobian_sv_{i + 1}": float(sv[i]) for i in range(min(top, len(sv)))}
        return values


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor, mu_cond: torch.Tensor) -> torch.Tensor:
    """(k,) KL of each flattened latent coordinate, mean over the batch."""
    return kl_terms(mu, logvar, mu_cond).flatten(1).mean(dim=0)


def active_dimensions(mu: torch.Tensor, mu_cond: torch.Tensor) -> int:
    """Coordinates whose posterior mean, measured from the prior mean, varies across the batch."""
    if mu.shape[0] < 2:
        return 0
    return int(((mu - mu_cond).flatten(1).var(dim=0) > ACTIVE_VARIANCE).sum())


def explained_shares(model: NeuROK, batch: dict, out: dict) -> dict[str, float]:
    """1 - err(z) / err(0) for the own posterior mean, a shuffled one (the next sample's) and mu_cond."""
    target = batch["query_displacement"].float()
    baseline = target.square().sum(-1).mean()

    def share(z: torch.Tensor) -> float:
        decoded = model.decode(z, out["shape_tokens"], batch["queries"]).float()
        return float(1 - (decoded - target).square().sum(-1).mean() / baseline)

    return {
        "own": share(out["mu"]),
        "shuffled": share(out["mu"].roll(1, dims=0)),
        "prior": share(out["mu_cond"]),
    }


def jacobian_singular_values(
    model: NeuROK, shape_tokens: torch.Tensor, mu_cond: torch.Tensor, queries: torch.Tensor, chunk: int = 32
) -> torch.Tensor:
    """(min(k, 3 Q),) singular values of d deformation / d flat z at mu_cond for one object, / sqrt(Q)."""
    latent_shape = mu_cond.shape

    def deformation(flat_z: torch.Tensor) -> torch.Tensor:
        return model.decode(flat_z.view(1, *latent_shape), shape_tokens[None], queries[None]).flatten()

    def along(direction: torch.Tensor) -> torch.Tensor:
        return jvp(deformation, (mu_cond.flatten(),), (direction,))[1]

    eye = torch.eye(mu_cond.numel(), dtype=mu_cond.dtype, device=mu_cond.device)
    with sdpa_kernel(SDPBackend.MATH):  # forward mode has no fused-attention kernel (traps.md 1)
        columns = torch.cat([vmap(along)(block) for block in eye.split(chunk)])  # (k, 3 Q)
    return torch.linalg.svdvals(columns.float()) / queries.shape[0] ** 0.5


@torch.no_grad()
def latent_diagnostics(
    model: NeuROK, batch: dict, out: dict | None = None, objects: int = 2
) -> LatentDiagnostics:
    """The diagnostics of the module docstring on a batch (the training loader's keys); `out` is the
    model's posterior-mean pass on it, when the caller has it already. In float32, outside autocast."""
    device_type = batch["points"].device.type
    with torch.autocast(device_type, enabled=False):
        out = model(batch, noise=0.0) if out is None else out
        # a bf16-mixed step's outputs are bf16; the weights, outside autocast, are float32
        out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        mu, mu_cond = out["mu"], out["mu_cond"]
        singular_values = torch.stack(
            [
                jacobian_singular_values(model, out["shape_tokens"][i], mu_cond[i], batch["queries"][i])
                for i in range(min(objects, mu.shape[0]))
            ]
        )
        return LatentDiagnostics(
            kl_per_dimension(mu, out["logvar"], mu_cond),
            active_dimensions(mu, mu_cond),
            explained_shares(model, batch, out),
            singular_values,
        )
