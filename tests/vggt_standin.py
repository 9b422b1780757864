"""A stand-in ``vggt`` package (the released module layout of vggt.models.vggt.VGGT, tiny), for
the adapter tests and the command-line tests of ``--backbone vggt:DIR``."""

from pathlib import Path

VGGT_SOURCE = '''
"""Stand-in for the released vggt.models.vggt (module layout only)."""
import torch
import torch.nn.functional as F
from torch import nn


class _PatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 14, 14)

    def forward(self, x):
        return {"x_norm_patchtokens": self.proj(x).flatten(2).transpose(1, 2)}


class _Aggregator(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.patch_size = 14
        self.patch_start_idx = 5
        self.patch_embed = _PatchEmbed(dim)
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, dim))
        self.frame_blocks = nn.ModuleList([nn.Linear(dim, dim) for _ in range(2)])
        self.global_blocks = nn.ModuleList([nn.Linear(dim, dim) for _ in range(2)])
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
        self.register_buffer("_resnet_mean", mean, persistent=False)
        self.register_buffer("_resnet_std", std, persistent=False)

    def forward(self, images):
        B, S, _, H, W = images.shape
        x = (images - self._resnet_mean) / self._resnet_std
        tok = self.patch_embed(x.reshape(B * S, 3, H, W))
        if isinstance(tok, dict):
            tok = tok["x_norm_patchtokens"]
        out = []
        for f, g in zip(self.frame_blocks, self.global_blocks):
            tok = g(torch.tanh(f(tok)))
            out.append(tok.reshape(B, S, -1, tok.shape[-1]))
        return out, self.patch_start_idx


class _CameraHead(nn.Module):
    # The released head's call: the aggregator's token list -> a list of pose encodings.
    def __init__(self, dim):
        super().__init__()
        self.cam = nn.Linear(dim, 9)

    def forward(self, tokens):
        base = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.2])
        return [base + 0.1 * torch.tanh(self.cam(tokens[-1].mean(2)))]


class _DepthHead(nn.Module):
    # The released DPT head's call: (tokens, images=, patch_start_idx=) -> (depth, conf).
    def __init__(self, dim):
        super().__init__()
        self.dense = nn.Linear(dim, 14 * 14)

    def forward(self, tokens, images, patch_start_idx):
        B, S, _, H, W = images.shape
        h, w = H // 14, W // 14
        d = self.dense(tokens[-1]).reshape(B, S, h, w, 14, 14).permute(0, 1, 2, 4, 3, 5)
        depth = 1.0 + F.softplus(d.reshape(B, S, H, W))
        return depth[..., None], 1.0 + depth


class VGGT(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.aggregator = _Aggregator(dim)
        self.camera_head = _CameraHead(dim)
        self.depth_head = _DepthHead(dim)
        self.point_head = None

    def forward(self, images):
        tokens, start = self.aggregator(images)
        depth, conf = self.depth_head(tokens, images=images, patch_start_idx=start)
        return {"pose_enc": self.camera_head(tokens)[-1], "depth": depth, "depth_conf": conf,
                "images": images}
'''


def write_vggt_package(root: Path) -> Path:
    """Write the package under ``root`` (``root/vggt/models/vggt.py``); returns ``root``, the
    folder to put on ``sys.path``."""
    (root / "vggt" / "models").mkdir(parents=True)
    (root / "vggt" / "__init__.py").write_text("")
    (root / "vggt" / "models" / "__init__.py").write_text("")
    (root / "vggt" / "models" / "vggt.py").write_text(VGGT_SOURCE)
    return root
