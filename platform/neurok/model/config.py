"""The model's hyper-parameters. Defaults follow neurok-paper.md s9.2 where the paper is silent."""

from __future__ import annotations

from dataclasses import dataclass

from neurok.errors import ConfigError, require

DECODER_OUTPUTS = ("displacement", "dual_quaternion")
VAE_ENCODERS = ("perceiver", "pointnet")


@dataclass
class ModelConfig:
    width: int = 512  # transformer width of all three networks
    heads: int = 8
    tokens: int = 64  # M learnable latent tokens
    latent_dim: int = 8  # d per token; the latent has k = M * d dimensions
    encoder_depth: int = 8  # self-attention layers after each encoder's cross-attention read
    decoder_depth: int = 8  # self-attention layers over [shape tokens, z tokens] before the query read
    frequencies: int = 8  # Fourier embedding: 2^i * pi, i < frequencies, per axis
    ff_mult: int = 4  # GEGLU hidden width = ff_mult * width
    k_drive: int = 8  # mesh vertices follow their K nearest query points (mean, or DQ blending)
    kl_weight: float = 0.01  # lambda of the paper's loss
    error_floor: float = 0.0  # mean squared displacement above which errors count relatively (losses)
    kl_free_bits: float = 0.0  # nats per latent dimension the KL term does not penalise (losses.cvae_loss)
    # The KL weight and the posterior's sampling noise are 0 for this many steps, then rise linearly to full
    # over as many: the model starts as an autoencoder. (It did not save deformation-only training: README.)
    kl_warmup_steps: int = 0
    field_points: int = 4096  # the reconstruction term is scaled as a sum over this many points (see losses)
    dual_quaternion: bool = False  # E_vae also reads per-point dual quaternions of the local motion
    # Trained on frame pairs whose target has its best rigid motion onto the rest frame undone (Kabsch): the
    # latent would spend nothing on travel and turning, which IK and rollouts carry on their rigid frame
    # (dynamics.rigid). With the Perceiver E_vae it does not train (README, "The CVAE memorises a change of
    # shape"); with vae_encoder=pointnet, global_latent and data.from_rest it learns a change of shape that
    # carries to unseen objects, so far the multibody chains' (README, "From the rest state"); off.
    deformation_only: bool = False
    # Weight of a second reconstruction term on the change of shape: predicted and target query positions
    # each with its best rigid motion from the rest queries undone (geometry.in_rest_frame), the squared
    # error relative to the target's own change (floored at shape_floor), so that the shape is graded where
    # travel (most of a falling object's motion) drowns it in the displacement error. 0: the paper's loss.
    shape_weight: float = 0.0
    shape_floor: float = (
        1e-3  # mean squared change of shape (normalised units) below which errors count absolutely
    )
    # E_vae reads the displacement times this: at 1 it is 3 of E_vae's 54 input features, 0.01-0.05 in size
    # against the Fourier features' 1, and Adam grows a weight by about lr per step (README, "The CVAE
    # memorises a change of shape")
    displacement_scale: float = 1.0
    # E_vae: a Perceiver (the paper's), or a PointNet pooled into the tokens (model/pointnet.py: the
    # Perceiver's uniform first read passes no change of shape on)
    vae_encoder: str = "perceiver"
    # The flattened z, by one Linear, added to every query's read before the head: a route from the latent to
    # each query that does not wait for the read's attention to become selective (ours)
    global_latent: bool = False
    head_layers: int = 1  # hidden layers (width, GELU) of the decoder's per-query head
    # Fields of a basis that each query reads from M0's shape tokens alone, weighted by a linear map of z and
    # added to the displacement head's output (model/basis.py): a range linear in z for every object. 0: off
    linear_basis: int = 0
    fused_attention: bool = True  # encoders use fused SDPA; the decoder never does (torch.func, traps.md 1)
    # D's output per query: a displacement (the "w/o dual quaternion" ablation, s7.3), or a rigid motion
    # as a unit dual quaternion that moves the query, blended (DQB) at the mesh vertices (s9.2)
    decoder_output: str = "displacement"

    def __post_init__(self) -> None:
        require(
            self.vae_encoder in VAE_ENCODERS,
            "model.vae_encoder",
            self.vae_encoder,
            f"must be one of {', '.join(VAE_ENCODERS)}",
        )
        require(self.head_layers >= 1, "model.head_layers", self.head_layers, "must be at least 1")
        require(self.linear_basis >= 0, "model.linear_basis", self.linear_basis, "must be 0 (off) or more")
        require(
            not self.linear_basis or self.decoder_output == "displacement",
            "model.linear_basis",
            self.linear_basis,
            "adds displacements: it needs model.decoder_output=displacement",
        )
        if self.decoder_output not in DECODER_OUTPUTS:
            raise ConfigError(
                f"model.decoder_output: '{self.decoder_output}' is not one of {', '.join(DECODER_OUTPUTS)}"
            )
