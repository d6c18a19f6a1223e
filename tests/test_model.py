"""The CVAE: shapes, a decode that torch.func can differentiate, the loss pieces, and a one-batch overfit."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.func import jacfwd, jvp

from neurok.errors import ConfigError
from neurok.model import ModelConfig, NeuROK, chamfer, cvae_loss, drive_vertices, kl_divergence
from neurok.model.cvae import QueryFeatures
from neurok.model.forward_mode import decode_with_tangents
from neurok.model.losses import kl_ramp

torch.set_num_threads(1)

TINY = ModelConfig(width=32, heads=4, tokens=8, latent_dim=4, encoder_depth=1, decoder_depth=1)
# The routes that let a change of shape through (README, "NeuROK learns a change of shape")
ROUTES = {"vae_encoder": "pointnet", "global_latent": True, "head_layers": 3, "frequencies": 4}


def bend(x: torch.Tensor) -> torch.Tensor:
    return 0.1 * torch.stack([x[..., 1] ** 2, torch.zeros_like(x[..., 0]), x[..., 0] * x[..., 1]], -1)


def make_batch(b=2, p=64, q=48, v=16, seed=0, dq=False) -> dict:
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(b, p + q, 3, generator=g) - 0.5
    batch = {
        "points": points[:, :p],
        "displacement": bend(points[:, :p]),
        "queries": points[:, p:],
        "query_displacement": bend(points[:, p:]),
        "vertices": points[:, p : p + v],
        "vertex_displacement": bend(points[:, p : p + v]),
    }
    if dq:
        batch["dual_quaternion"] = torch.nn.functional.pad(torch.ones(b, p, 1), (0, 7))
    return batch


@pytest.mark.parametrize(
    "dual_quaternion, vae_encoder", [(False, "perceiver"), (True, "perceiver"), (True, "pointnet")]
)
def test_shapes(dual_quaternion, vae_encoder):
    cfg = ModelConfig(**{**TINY.__dict__, "dual_quaternion": dual_quaternion, "vae_encoder": vae_encoder})
    out = NeuROK(cfg)(make_batch(dq=dual_quaternion))
    assert out["deformation"].shape == (2, 48, 3)
    for key in ("mu", "logvar", "mu_cond", "z"):
        assert out[key].shape == (2, cfg.tokens, cfg.latent_dim)
    assert out["shape_tokens"].shape == (2, cfg.tokens, cfg.width)


def test_decode_is_pure_and_differentiable_forward_mode():
    torch.manual_seed(0)
    model = NeuROK(TINY).double()
    torch.nn.init.normal_(model.decoder.head[-1].weight, std=0.3)  # the zero init would make D constant in z
    batch = {k: v.double() for k, v in make_batch().items()}
    shape_tokens, mu_cond = model.encode_shape(batch["points"])
    shape_tokens, mu_cond = shape_tokens.detach(), mu_cond.detach()
    decode = lambda z: model.decode(z, shape_tokens, batch["queries"])  # noqa: E731
    z, v = torch.randn_like(mu_cond), torch.randn_like(mu_cond)
    assert torch.equal(decode(z), decode(z))  # no hidden randomness, even in train mode

    value, tangent = jvp(decode, (z,), (v,))
    eps = 1e-5
    finite = (decode(z + eps * v) - decode(z - eps * v)) / (2 * eps)
    torch.testing.assert_close(tangent, finite, rtol=1e-5, atol=1e-7)
    assert tangent.abs().max() > 1e-3

    jac = jacfwd(lambda z1: model.decode(z1, shape_tokens[:1], batch["queries"][:1]))(z[:1])
    assert jac.shape == (1, 48, 3, 1, TINY.tokens, TINY.latent_dim)
    torch.testing.assert_close((jac.flatten(3) @ v[:1].flatten()).squeeze(), tangent[0].squeeze())


@pytest.mark.parametrize(
    "decoder_output, route",
    [
        ("displacement", {}),
        ("dual_quaternion", {}),
        ("dual_quaternion", ROUTES),
        ("displacement", ROUTES),
        ("displacement", {**ROUTES, "linear_basis": 5}),
    ],
)
def test_hand_written_forward_mode_matches_jacfwd(decoder_output, route):
    """decode_with_tangents (the head's output and k directional derivatives in one pass) against
    torch.func.jacfwd, in float64, on a decoder with every weight random (two layers, so tangents cross a
    layer; and with the global latent route and a deeper head)."""
    torch.manual_seed(1)
    model = NeuROK(replace(TINY, decoder_depth=2, decoder_output=decoder_output, **route)).double()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.normal_(0.0, 0.3)
    tokens = torch.randn(TINY.tokens, TINY.width, dtype=torch.float64)
    queries = torch.rand(40, 3, dtype=torch.float64) - 0.5
    z = torch.randn(TINY.tokens * TINY.latent_dim, dtype=torch.float64)
    directions = torch.randn(3, len(z), dtype=torch.float64)

    def decode(q: torch.Tensor) -> torch.Tensor:
        latent = (z + q @ directions).view(1, TINY.tokens, TINY.latent_dim)
        return model.decoder.head_output(latent, tokens[None], model.decoder.features(queries[None]))[0]

    features = QueryFeatures(*(f[0] for f in model.decoder.features(queries[None])))
    stacked = torch.cat([z[None], directions]).view(4, TINY.tokens, TINY.latent_dim)
    out = decode_with_tangents(model.decoder, stacked, tokens, features)
    q0 = torch.zeros(3, dtype=torch.float64)
    J = jacfwd(decode)(q0)  # (40, 3, 3)
    channels = 3 if decoder_output == "displacement" else 7
    assert out.shape == (4, 40, channels) and J.abs().max() > 1e-2
    torch.testing.assert_close(out[0], decode(q0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1:].permute(1, 2, 0), J, rtol=1e-10, atol=1e-12)


def test_linear_basis_adds_a_displacement_linear_in_z():
    """With the nonlinear head silenced, D is exactly linear in z: D(a z1 + b z2) = a D(z1) + b D(z2), D(0)
    = 0; the basis depends on the object (other shape tokens, another basis); and an untrained model starts
    from no deformation."""
    torch.manual_seed(2)
    model = NeuROK(replace(TINY, linear_basis=6)).double()
    queries = torch.rand(1, 30, 3, dtype=torch.float64) - 0.5
    tokens = torch.randn(2, TINY.tokens, TINY.width, dtype=torch.float64)
    z1, z2 = torch.randn(2, 1, TINY.tokens, TINY.latent_dim, dtype=torch.float64)
    assert model.decoder(z1, tokens[:1], queries).abs().max() == 0  # zero coefficients at the start
    torch.nn.init.normal_(model.decoder.basis.coefficients.weight, std=0.3)
    decode = lambda z, t=tokens[:1]: model.decoder(z, t, queries)  # noqa: E731
    assert decode(torch.zeros_like(z1)).abs().max() == 0
    torch.testing.assert_close(decode(2 * z1 - 3 * z2), 2 * decode(z1) - 3 * decode(z2))
    assert decode(z1).abs().max() > 1e-2
    assert (decode(z1, tokens[1:]) - decode(z1)).abs().max() > 1e-3


def test_pointnet_encoder_is_blind_to_point_order_and_sees_the_displacement():
    torch.manual_seed(0)
    model = NeuROK(replace(TINY, **ROUTES))
    batch = make_batch(b=1, p=64)
    order = torch.randperm(64)
    mu, logvar = model.encode_deformation(batch["points"], batch["displacement"])
    shuffled, _ = model.encode_deformation(batch["points"][:, order], batch["displacement"][:, order])
    torch.testing.assert_close(shuffled, mu)
    still, _ = model.encode_deformation(batch["points"], torch.zeros_like(batch["displacement"]))
    assert (still - mu).abs().max() > 1e-4
    assert mu.std(dim=1).mean() > 1e-2  # its tokens differ: each is its own projection of the field


def test_model_config_names_a_bad_route():
    with pytest.raises(
        ConfigError, match="model.vae_encoder=transformer: must be one of perceiver, pointnet"
    ):
        ModelConfig(vae_encoder="transformer")
    with pytest.raises(ConfigError, match="model.linear_basis=4: adds displacements"):
        ModelConfig(linear_basis=4, decoder_output="dual_quaternion")
    with pytest.raises(ConfigError, match="model.head_layers=0"):
        ModelConfig(head_layers=0)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu, logvar, mu_cond = (torch.randn(3, 4, 5, generator=g) for _ in range(3))
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(mu_cond, torch.ones_like(mu_cond))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2))
    torch.testing.assert_close(kl_divergence(mu, logvar, mu_cond), expected)


def test_free_bits_charge_a_floor_and_no_gradient_below_it():
    batch = {"query_displacement": torch.zeros(2, 3, 3)}
    mu = torch.tensor([[[0.1, 3.0]], [[-0.1, 3.0]]], requires_grad=True)  # dim 0: 0.005 nats, dim 1: 4.5
    out = {"deformation": torch.zeros(2, 3, 3), "mu": mu, "logvar": torch.zeros(2, 1, 2)}
    out["mu_cond"] = torch.zeros(2, 1, 2)
    cfg = ModelConfig(kl_weight=0.1, kl_free_bits=0.5, field_points=1)
    losses = cvae_loss(out, batch, cfg)
    torch.testing.assert_close(losses["kl"], torch.tensor(0.005 + 4.5))  # the true KL is reported
    torch.testing.assert_close(losses["loss"], torch.tensor(0.1 * (0.5 + 4.5)))  # dim 0 costs the floor
    losses["loss"].backward()
    assert torch.all(mu.grad[..., 0] == 0) and torch.all(mu.grad[..., 1] > 0)
    plain = cvae_loss(out, batch, replace(cfg, kl_free_bits=0.0))
    torch.testing.assert_close(plain["loss"], torch.tensor(0.1 * 4.505))


def test_error_floor_counts_large_motions_by_their_relative_error():
    small, large = torch.full((1, 4, 3), 0.01), torch.full((1, 4, 3), 1.0)  # m = 3e-4 and 3 per point
    batch = {"query_displacement": torch.cat([small, large])}
    out = {"deformation": torch.zeros(2, 4, 3), "mu": torch.zeros(2, 1, 1), "logvar": torch.zeros(2, 1, 1)}
    out["mu_cond"] = torch.zeros(2, 1, 1)
    plain = ModelConfig(kl_weight=0.0, field_points=1)
    torch.testing.assert_close(cvae_loss(out, batch, plain)["recon"], torch.tensor((3e-4 + 3.0) / 2))
    floored = cvae_loss(out, batch, replace(plain, error_floor=1e-3))["recon"]
    expected = (3e-4 * 1e-3 / 1.3e-3 + 3.0 * 1e-3 / 3.001) / 2  # each sample's error over its own size
    torch.testing.assert_close(floored, torch.tensor(expected))


def test_kl_warmup_starts_as_an_autoencoder():
    assert [kl_ramp(s, 100) for s in (0, 100, 150, 200, 400)] == [0, 0, 0.5, 1, 1] and kl_ramp(0, 0) == 1
    torch.manual_seed(0)  # the spread below is measured on 64 draws
    model, batch = NeuROK(TINY), make_batch()
    model.eval()
    with torch.no_grad():
        mean, same = model(batch, noise=0.0), model(batch, noise=0.0)
        half, full = model(batch, noise=0.5), model(batch, noise=1.0)
    torch.testing.assert_close(mean["z"], mean["mu"])
    torch.testing.assert_close(mean["deformation"], same["deformation"])
    spread = lambda out: (out["z"] - out["mu"]).std() / (0.5 * out["logvar"]).exp().mean()  # noqa: E731
    assert 0.3 < float(spread(half)) < 0.7 and 0.7 < float(spread(full)) < 1.3


def test_displacement_scale_scales_what_e_vae_reads():
    torch.manual_seed(0)
    plain, scaled = NeuROK(TINY), NeuROK(replace(TINY, displacement_scale=30.0))
    scaled.load_state_dict(plain.state_dict())
    batch = make_batch()
    with torch.no_grad():
        mu, logvar = scaled.encode_deformation(batch["points"], batch["displacement"])
        expected = plain.encode_deformation(batch["points"], 30.0 * batch["displacement"])
        unscaled = plain.encode_deformation(batch["points"], batch["displacement"])
    torch.testing.assert_close((mu, logvar), expected)
    assert float((mu - unscaled[0]).abs().max()) > 1e-3  # the scale changes the posterior


def test_chamfer_and_vertex_driving():
    a = torch.rand(1, 50, 3)
    assert chamfer(a, a)[0].item() == 0.0
    l1, l2 = chamfer(a, a + torch.tensor([0.0, 0.01, 0.0]))
    assert l1.item() <= 0.01 + 1e-6 and l2.item() <= 1e-4 + 1e-8
    deformation = torch.randn(1, 50, 3)
    torch.testing.assert_close(drive_vertices(a, a, deformation, k=1), deformation)  # each vertex is a query
    mean_of_all = drive_vertices(a[:, :5], a, deformation, k=50)
    torch.testing.assert_close(mean_of_all, deformation.mean(1, keepdim=True).expand(1, 5, 3))


@pytest.mark.parametrize(
    "decoder_output, route",
    [
        ("displacement", {}),
        ("dual_quaternion", {}),
        ("displacement", ROUTES),
        ("displacement", {**ROUTES, "linear_basis": 16}),
    ],
)
def test_overfits_one_batch(decoder_output, route):
    torch.manual_seed(0)
    cfg = ModelConfig(
        width=64,
        heads=4,
        tokens=16,
        latent_dim=8,
        encoder_depth=1,
        decoder_depth=1,
        decoder_output=decoder_output,
        **route,
    )
    model, batch = NeuROK(cfg), make_batch(b=4, p=128, q=128)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss = cvae_loss(model(batch), batch, cfg)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0], (losses[0], losses[-1])


def test_shape_change_distances_count_the_change_of_shape_and_not_the_travel():
    from neurok.model import shape_change_distances

    torch.manual_seed(0)
    queries = torch.randn(3, 128, 3) * torch.tensor([0.4, 0.2, 0.3])
    squash = queries * torch.tensor([1.0, 0.7, 1.2]) - queries
    c, s = math.cos(0.8), math.sin(0.8)
    turn = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    moved = lambda d: (queries + d) @ turn.T + torch.tensor([0.5, -1.0, 0.0]) - queries  # noqa: E731
    target = moved(squash)
    error, change = shape_change_distances(queries, moved(squash), target)
    assert error.shape == change.shape == (3,)
    assert float(error.max()) < 1e-5  # the right shape, moved alike
    squashed = (queries * torch.tensor([0.0, -0.3, 0.2])).norm(dim=-1).mean(dim=1)
    # the squash's own best rigid fit takes a little of it (random queries are not centred or aligned)
    assert bool((change <= squashed).all()) and bool((change > 0.95 * squashed).all())
    error, _ = shape_change_distances(queries, moved(torch.zeros_like(squash)), target)
    assert torch.allclose(error, change, rtol=1e-4)  # travelling and turning right, shape unchanged
    error, _ = shape_change_distances(queries, -squash, target)
    assert bool((error > 1.5 * change).all())  # the opposite change of shape is worse than none


def test_shape_error_grades_the_change_of_shape_not_the_travel():
    from neurok.model.losses import shape_error

    torch.manual_seed(0)
    queries = torch.randn(2, 64, 3) * torch.tensor([0.4, 0.2, 0.3])
    squash = queries * torch.tensor([1.0, 0.7, 1.2]) - queries  # a change of shape
    c, s = math.cos(0.5), math.sin(0.5)
    turn = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    moved = lambda d: (queries + d) @ turn.T + torch.tensor([0.0, -2.0, 0.3]) - queries  # noqa: E731
    target = moved(squash)  # squashed, turned and fallen
    assert float(shape_error(queries, moved(squash), target, 1e-9)) < 1e-8  # the right shape, moved alike
    assert float(shape_error(queries, squash, target, 1e-9)) < 1e-8  # the right shape anywhere
    assert float(shape_error(queries, moved(torch.zeros_like(squash)), target, 1e-9)) == pytest.approx(
        1, rel=1e-4
    )
    sphere = torch.nn.functional.normalize(torch.randn(1, 200, 3), dim=-1)  # symmetric: the fit is degenerate
    predicted = torch.zeros(1, 200, 3, requires_grad=True)
    shape_error(sphere, predicted, 0.1 * sphere, 1e-3).backward()
    assert torch.isfinite(predicted.grad).all() and predicted.grad.abs().sum() > 0
