"""Latent diagnostics (neurok.model.diagnostics): does a model use its latent?"""

from __future__ import annotations

import pytest
import torch

from neurok.model import NeuROK
from neurok.model.diagnostics import latent_diagnostics
from test_model import TINY, make_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_with_a_live_head(seed: int = 0) -> NeuROK:
    """TINY with the decoder's last layer drawn at random (it starts at zero: no deformation at all)."""
    torch.manual_seed(seed)
    model = NeuROK(TINY)
    torch.nn.init.normal_(model.decoder.head[-1].weight, std=0.5)
    return model.eval()


def test_a_decoder_that_ignores_z_is_reported_as_such():
    model = model_with_a_live_head()
    # z never reaches the decoder, and the posterior mean is the prior's (a collapsed posterior): 0
    for head in (model.decoder.lift, model.posterior_head, model.prior_head):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    batch = make_batch(b=4)
    found = latent_diagnostics(model, batch)
    explained = found.explained
    assert explained["own"] == pytest.approx(explained["shuffled"], abs=1e-6)
    assert explained["own"] == pytest.approx(explained["prior"], abs=1e-6)
    assert found.active_dims == 0
    assert found.singular_values.shape == (2, TINY.tokens * TINY.latent_dim)
    assert found.singular_values.abs().max() < 1e-6
    assert found.scalars()["jacobian_rank_1pct"] == 0


def test_a_decoder_that_uses_z_explains_its_own_deformation():
    model = model_with_a_live_head()
    batch = make_batch(b=4)
    with torch.no_grad():  # the target is what the model decodes from the sample's own posterior mean
        out = model(batch, noise=0.0)
        batch["query_displacement"] = out["deformation"]
    found = latent_diagnostics(model, batch, out)
    assert found.explained["own"] == pytest.approx(1.0, abs=1e-5)
    assert found.explained["shuffled"] < 0.99 and found.explained["prior"] < 0.99
    assert found.singular_values.min() >= 0 and found.singular_values[:, 0].min() > 1e-4
    assert found.kl_per_dim.shape == (TINY.tokens * TINY.latent_dim,) and (found.kl_per_dim >= 0).all()
    scalars = found.scalars()
    assert scalars["explained_own"] == found.explained["own"] and scalars["jacobian_sv_1"] > 0
    assert scalars["kl_total"] == pytest.approx(float(found.kl_per_dim.sum()))


def test_diagnostics_take_the_outputs_of_a_bf16_mixed_step():
    """Validation under bf16-mixed hands over bf16 outputs; the diagnostics run in float32 (this failed
    on the GPU: 'expected mat1 and mat2 to have the same dtype')."""
    model = model_with_a_live_head()
    batch = make_batch(b=4)
    with torch.no_grad():
        batch["query_displacement"] = model(batch, noise=0.0)["deformation"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch, noise=0.0)
    assert out["mu"].dtype == torch.bfloat16
    found = latent_diagnostics(model, batch, out)
    assert found.explained["own"] > max(0.99, found.explained["shuffled"])
    assert torch.isfinite(found.singular_values).all()
