"""``LatentGeometryReward``: the two paper rewards of a video latent, through the LGM (no decode).

:class:`GeometryReward` is the shared part (weights, ``topk``, ``flow_threshold``, the rewards of
a Geometry); :class:`LatentGeometryReward` reads the geometry with the LGM, and
:class:`vggrpo.rgb_reward.RGBGeometryReward` (the path the paper replaces) decodes first.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

from torch import Tensor, nn

from ._checks import is_finite_number, is_positive_int, short_repr

__all__ = ["GeometryReward", "LatentGeometryReward", "REWARD_NAMES", "COVERAGE"]

REWARD_NAMES = ("motion", "geo")
#: The guard beyond the paper, returned when ``coverage`` is set
#: (:func:`vggrpo.reprojection_coverage`).
COVERAGE = "coverage"


class GeometryReward(nn.Module):
    """Latents ``[B,C,T',h,w]`` (``T' >= 3``) -> ``{"motion": [B], "geo": [B]}`` (float32, higher
    is better; with ``coverage`` also ``"coverage": [B]``).

    Subclasses implement :meth:`geometry` (latents -> :class:`~vggrpo.geometry.Geometry`).
    ``"motion"`` is :func:`vggrpo.camera_motion_reward` of its cameras, ``"geo"`` is
    :func:`vggrpo.geometry_reprojection_reward` (``topk`` worst views; pixels whose scene-flow
    norm exceeds ``flow_threshold`` are dynamic). :meth:`weighted` sums them with ``weights``
    (default 1 and 1); weights must be finite numbers.

    ``coverage`` (a ``min_coverage`` in ``(0, 1]``; None: off, the paper's two rewards) adds
    ``"coverage": [B]`` in ``[0, 1]`` (:func:`vggrpo.reprojection_coverage`), a guard beyond the
    paper: the geometry reward scores its best, 0, when the static geometry projects into no
    view, and the coverage of such a video is 0. Weight it in GRPO
    (``GRPOConfig.reward_weights``) above ``"geo"`` (docs/conventions.md says why); it has no
    gradient, so reward guidance ignores it. ``coverage=1.0`` gives the plain share of pixels
    scored (an instrument).
    """

    def __init__(self, weights: Optional[Mapping[str, float]] = None, *, topk: int = 3,
                 flow_threshold: float = 0.1, coverage: Optional[float] = None) -> None:
        super().__init__()
        if coverage is not None and not (is_finite_number(coverage) and 0 < coverage <= 1):
            raise ValueError(f"coverage must be None (off) or a min_coverage in (0, 1], got "
                             f"{short_repr(coverage)}")
        if weights is not None and not isinstance(weights, Mapping):
            raise ValueError(f"weights must map reward names to numbers, got {weights!r}")
        weights = dict(weights) if weights is not None else {"motion": 1.0, "geo": 1.0}
        names = REWARD_NAMES + ((COVERAGE,) if coverage is not None else ())
        unknown = sorted(set(weights) - set(names))
        if unknown:
            hint = (" (pass coverage=<min_coverage> to compute it)" if unknown == [COVERAGE]
                    else "")
            raise ValueError(f"weights: unknown reward names {unknown}; expected a subset of "
                             f"{list(names)}{hint}")
        bad = {k: w for k, w in weights.items() if not is_finite_number(w)}
        if bad:
            raise ValueError(f"weights must be finite numbers, got {bad}")
        # Types first: True would pass as 1 and "0.1" would fail deep inside a comparison.
        if not is_positive_int(topk):
            raise ValueError(f"topk must be a positive int, got {short_repr(topk)}")
        if not (is_finite_number(flow_threshold) and flow_threshold >= 0):
            raise ValueError(f"flow_threshold must be a finite number >= 0 (world units), got "
                             f"{short_repr(flow_threshold)}")
        self.weights = weights
        self.topk = topk
        self.flow_threshold = float(flow_threshold)
        self.coverage = None if coverage is None else float(coverage)

    #: What reads the latents, for messages ("its <reader> 16-channel latents"), and what to do
    #: when they do not fit.
    channels_reader = "geometry model reads"
    channels_advice = "use a reward made for this model's VAE"

    @property
    def latent_channels(self) -> Optional[int]:
        """The channel count ``C`` of the latents ``[B,C,T',h,w]`` this reward reads; None when
        it reads any. The one place the trainer and the CLI ask."""
        return None

    def check_latent_channels(self, channels: int, source: str = "the model",
                              detail: str = "") -> None:
        """A ValueError when ``source`` makes ``channels``-channel latents and this reward reads
        another count (``detail`` is added after ``source``'s count, e.g. its latent shape).
        Checked before a rollout, which on a real model takes minutes before the shape error."""
        mine = self.latent_channels
        if mine is not None and int(mine) != int(channels):
            raise ValueError(f"reward: its {self.channels_reader} {int(mine)}-channel latents but "
                             f"{source} makes {int(channels)}-channel ones{detail}: "
                             f"{self.channels_advice}")

    def geometry(self, latents: Tensor):
        raise NotImplementedError

    def forward(self, latents: Tensor) -> Dict[str, Tensor]:
        if isinstance(latents, Tensor) and latents.dim() == 5 and latents.shape[2] < 3:
            raise ValueError(f"latents [B,C,T',h,w] must have T' >= 3 latent frames (the camera "
                             f"motion reward needs 3 cameras; a Wan video of 9 or more frames), "
                             f"got {list(latents.shape)}")
        rewards = self.geometry(latents).rewards(flow_threshold=self.flow_threshold,
                                                 topk=self.topk, coverage=self.coverage)
        return {k: v.float() for k, v in rewards.items()}

    def weighted(self, rewards: Mapping[str, Tensor]) -> Tensor:
        """``sum_k weights[k] * rewards[k]`` ``[B]``."""
        return sum(w * rewards[k] for k, w in self.weights.items())


class LatentGeometryReward(GeometryReward):
    """The rewards of the LGM's geometry of the latents (paper Sec. 3.5; no VAE decode).

    Differentiable with respect to the latents (for reward guidance); under ``torch.no_grad``
    nothing is kept for backward (for rollouts). The LGM is frozen here.

    Args:
        lgm: a :class:`~vggrpo.lgm.LatentGeometryModel` (or any module latents -> Geometry).
        weights, topk, flow_threshold, coverage: see :class:`GeometryReward`.
        vae: the diffusers VAE whose latents this reward will read, or None. When given, it is
            checked against the VAE the LGM was stitched to
            (:meth:`~vggrpo.lgm.LatentGeometryModel.check_vae`; ValueError when it is another):
            latents of another VAE with the same channel count give rewards that train nothing.
            Only the check uses it; the reward keeps no reference to it.
    """

    def __init__(self, lgm: nn.Module, weights: Optional[Mapping[str, float]] = None, *,
                 vae: Optional[nn.Module] = None, topk: int = 3,
                 flow_threshold: float = 0.1, coverage: Optional[float] = None) -> None:
        super().__init__(weights, topk=topk, flow_threshold=flow_threshold, coverage=coverage)
        if vae is not None:
            check_vae = getattr(lgm, "check_vae", None)
            if not callable(check_vae):
                # Skipping the check would read as "checked" to the caller who asked for it.
                raise TypeError(f"vae: given, but the lgm ({type(lgm).__name__}) has no "
                                f"check_vae to compare it with; pass a LatentGeometryModel or "
                                f"leave vae out")
            check_vae(vae, name="vae")
        self.lgm = lgm.requires_grad_(False).eval()

    channels_reader = "LGM reads"
    channels_advice = "stitch an LGM to this model's VAE (vggrpo train-lgm)"

    @property
    def latent_channels(self) -> Optional[int]:
        # Any module latents -> Geometry may stand in for the LGM; one without a channel count
        # reads any.
        return getattr(self.lgm, "latent_channels", None)

    def geometry(self, latents: Tensor):
        return self.lgm(latents)
