"""The policy network: [language, state, camera tokens] -> fusion transformer -> action decoder -> action chunk.

Everything between uint8 pixels / robot-unit state and robot-unit actions lives here (normalisation included),
so the same module trains, runs eagerly, compiles, and exports to a single ONNX graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rfm.config import PolicyConfig
from rfm.model.normalize import Normalizer
from rfm.model.transformer import DecoderBlock, EncoderBlock
from rfm.model.triangulate import PointToken
from rfm.model.vision import build_vision


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow time t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * 100.0 * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def heatmap_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """KL(target || softmax(heatmap)) of keypoint p's heatmap against a Gaussian (sigma in heatmap cells) at target p.

    logits (B, N, K, h, w); targets (B, N, P, 2) in normalised image coordinates, P <= K; valid (B, N, P).
    A loss on the heatmap itself, not on its expected position: an L1 on the expectation only moves its mean, and
    (measured) the keypoints settle on a blurry average that sits at the task's mean position whatever the scene.
    """
    n, (h, w) = targets.shape[2], logits.shape[-2:]
    if logits.shape[2] < n:
        raise ValueError(f"{n} keypoint targets need model.vision_keypoints >= {n} (it is {logits.shape[2]})")
    cells = ((targets.float() + 1) / 2 * targets.new_tensor([w, h]) - 0.5)  # (B, N, P, 2) in cell units (x, y)
    xs = torch.arange(w, device=logits.device, dtype=torch.float32)
    ys = torch.arange(h, device=logits.device, dtype=torch.float32)
    gx = -((xs - cells[..., :1]) ** 2) / (2 * sigma**2)  # (B, N, P, w)
    gy = -((ys - cells[..., 1:]) ** 2) / (2 * sigma**2)  # (B, N, P, h)
    target = torch.softmax((gy[..., :, None] + gx[..., None, :]).flatten(-2), dim=-1)  # (B, N, P, h*w)
    log_p = torch.log_softmax(logits[:, :, :n].float().flatten(-2), dim=-1)
    kl = (target * (torch.log(target.clamp_min(1e-12)) - log_p)).sum(-1)  # (B, N, P)
    weight = valid.float()
    return (kl * weight).sum() / weight.sum().clamp_min(1.0)


class PolicyNet(nn.Module):
    """images (B, N_cam, 3, H, W) uint8, state (B, D_s), text (B, L, D_text) + mask (B, L) -> actions (B, H, D_a)."""

    def __init__(self, config: PolicyConfig, text_dim: int) -> None:
        super().__init__()
        m, itf = config.model, config.interface
        self.config, self.text_dim = config, text_dim
        self.head_type, self.flow_steps = m.head, m.flow_steps
        self.n_cam, self.chunk, self.action_dim, self.state_dim = (
            len(itf.cameras), itf.chunk_size, itf.action_dim, itf.state_dim)
        d = m.dim

        self.state_norm = Normalizer(max(self.state_dim, 1))
        self.action_norm = Normalizer(self.action_dim)

        self.vision = build_vision(m)
        if m.vision_backbone == "hf" and m.vision_hf_config is None:
            m.vision_hf_config = self.vision.hf_config  # checkpoints rebuild the backbone without its directory
        with torch.no_grad():
            n_img_tokens = self.vision(torch.zeros(1, 3, *itf.image_size)).shape[1]
        self.n_img_tokens = n_img_tokens
        self.img_proj = nn.Linear(self.vision.out_channels, d)
        self.img_pos = nn.Parameter(torch.randn(1, 1, n_img_tokens, d) * 0.02)
        self.cam_embed = nn.Parameter(torch.randn(1, self.n_cam, 1, d) * 0.02)
        self.text_proj = nn.Linear(text_dim, d)
        self.text_pos = nn.Parameter(torch.randn(1, m.text_max_tokens, d) * 0.02)
        self.state_proj = nn.Linear(self.state_dim, d) if self.state_dim > 0 else None
        self.modality = nn.Parameter(torch.randn(3, d) * 0.02)  # language, state, image
        # triangulated keypoints join the state token (where the hand is and where the goal is, side by side)
        self.point_token = (PointToken(m.camera_projections, m.vision_points, self.state_dim, d, m.relative_points)
                            if m.vision_points else None)

        self.encoder = nn.ModuleList(EncoderBlock(d, m.heads, m.mlp_ratio, m.dropout) for _ in range(m.encoder_layers))
        self.enc_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(DecoderBlock(d, m.heads, m.mlp_ratio, m.dropout) for _ in range(m.decoder_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.action_pos = nn.Parameter(torch.randn(1, self.chunk, d) * 0.02)
        if self.head_type == "flow":
            self.action_in = nn.Linear(self.action_dim, d)
            self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.action_out = nn.Linear(d, self.action_dim)
        self.env_state_dim = m.env_state_dim
        if self.env_state_dim:  # auxiliary: where objects and goal are, from the camera tokens (training only)
            self.env_norm = Normalizer(self.env_state_dim)
            self.env_query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.env_attn = nn.MultiheadAttention(d, m.heads, batch_first=True)
            self.env_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, self.env_state_dim))

    # --- observation encoding -------------------------------------------------------------------------------
    def image_tokens(self, images: torch.Tensor, with_keypoints: bool = False):
        """Camera tokens (B, N*T_img, D) with position and camera embeddings, before fusion with language and state.

        with_keypoints: also the spatial-softmax keypoints (B, N, K, 2) in normalised image coordinates and their
        heatmap logits (B, N, K, h, w).
        """
        B = images.shape[0]
        x = images.flatten(0, 1).float() / 255.0  # (B*N, 3, H, W) in [0, 1]
        if not with_keypoints:
            img = self.vision(x)
        elif getattr(self.vision, "keypoints", None) is None:
            raise ValueError("keypoint targets need a resnet vision encoder with model.vision_keypoints > 0")
        else:
            img, points, logits = self.vision(x, with_keypoints=True)
        img = self.img_proj(img).view(B, self.n_cam, self.n_img_tokens, -1)  # (B, N, T_img, D)
        img = (img + self.img_pos + self.cam_embed + self.modality[2]).flatten(1, 2)  # (B, N*T_img, D)
        if with_keypoints:
            return img, points.unflatten(0, (B, self.n_cam)), logits.unflatten(0, (B, self.n_cam))
        return img

    def encode(self, images: torch.Tensor, state: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
               img: torch.Tensor | None = None, keypoints: tuple | None = None,
               offsets: torch.Tensor | None = None,
               point_shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused observation tokens (B, T, D) and their attention mask (B, 1, 1, T) (True = attend).

        img, keypoints: precomputed image_tokens(images, with_keypoints) outputs, when the caller needs them too
        (keypoints = (points, logits)). offsets (B, N, 2): training's image shift, undone before triangulating.
        point_shift (B, 3): training's scene shift, added to the triangulated points (the caller moved the state).
        """
        B = images.shape[0]
        if img is None and self.point_token is not None:
            img, *keypoints = self.image_tokens(images, with_keypoints=True)
        elif img is None:
            img = self.image_tokens(images)
        txt = self.text_proj(text.float()) + self.text_pos + self.modality[0]  # (B, L, D)
        tokens, masks = [txt], [text_mask.bool()]
        nstate = self.state_norm(state.float()) if self.state_proj is not None else None
        point = (self.point_token(*keypoints, nstate, offsets, point_shift, state.float())
                 if self.point_token is not None else None)  # (B, 1, D)
        if self.state_proj is not None or point is not None:
            st = self.modality[1].expand(B, 1, -1)
            st = st + self.state_proj(nstate)[:, None] if nstate is not None else st
            tokens.append(st + point if point is not None else st)  # (B, 1, D)
            masks.append(torch.ones(B, 1, dtype=torch.bool, device=images.device))
        tokens.append(img)
        masks.append(torch.ones(B, img.shape[1], dtype=torch.bool, device=images.device))
        h, mask = torch.cat(tokens, 1), torch.cat(masks, 1)[:, None, None, :]  # (B, T, D), (B, 1, 1, T)
        for blk in self.encoder:
            h = blk(h, mask)
        return self.enc_norm(h), mask

    def decode(self, memory: torch.Tensor, mask: torch.Tensor, noisy: torch.Tensor | None = None,
               t: torch.Tensor | None = None) -> torch.Tensor:
        """Chunk head: normalised actions (B, H, D_a). Flow head: velocity at (noisy actions, time t)."""
        B = memory.shape[0]
        q = self.action_pos.expand(B, -1, -1)
        if self.head_type == "flow":
            temb = self.time_mlp(timestep_embedding(t, q.shape[-1]))  # (B, D)
            q = q + self.action_in(noisy) + temb[:, None]
        for blk in self.decoder:
            q = blk(q, memory, mask)
        return self.action_out(self.dec_norm(q))

    # --- inference -----------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, state: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """Action chunk (B, H, D_a) in robot units. noise (B, H, D_a) makes the flow head deterministic."""
        memory, mask = self.encode(images, state, text, text_mask)
        if self.head_type == "chunk":
            naction = self.decode(memory, mask)
        else:
            B = images.shape[0]
            x = noise if noise is not None else torch.randn(B, self.chunk, self.action_dim, device=images.device)
            x = x.to(memory.dtype)
            dt = 1.0 / self.flow_steps
            for k in range(self.flow_steps):  # Euler from t=1 (noise) to t=0 (actions); unrolled in ONNX
                t = torch.full((B,), 1.0 - k * dt, device=images.device)
                x = x - dt * self.decode(memory, mask, x, t)
            naction = x
        return self.action_norm.inverse(naction.float())

    def predict_env_state(self, img: torch.Tensor) -> torch.Tensor:
        """Normalised environment state (B, D_env) from the camera tokens alone: one learned query attends over them.

        Not from the fused tokens: there the robot state is one attention hop away, and mid-episode the hand's
        position already tells where the object it holds is, so the head would learn that instead of looking.
        """
        q = self.env_query.expand(img.shape[0], -1, -1)
        pooled, _ = self.env_attn(q, img, img, need_weights=False)
        return self.env_out(pooled[:, 0])

    # --- training ------------------------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, state: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
               actions: torch.Tensor, action_pad: torch.Tensor | None = None, env_state: torch.Tensor | None = None,
               env_valid: torch.Tensor | None = None, keypoint_targets: torch.Tensor | None = None,
               keypoint_valid: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
               action_weights: torch.Tensor | None = None,
               point_shift: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"action": scalar, "env_state": scalar (with an env-state head and targets), "keypoints": scalar (with
        keypoint targets)}.

        env_state (B, D_env) in simulator units; env_valid (B,) False for samples without one (e.g. fleet recordings
        beside simulated demos): they add nothing to the auxiliary loss. keypoint_targets (B, N_cam, P, 2): where
        keypoint p should be in each camera (normalised image coordinates); keypoint_valid (B, N_cam, P).
        offsets (B, N_cam, 2): how far augmentation shifted each image (the triangulated points undo it).
        action_weights (D_a,): relative weight of each action dimension in the action loss (mean 1 after scaling).
        point_shift (B, 3): training's scene shift of the triangulated points (see rfm.train.augment.scene_shift).
        """
        keypoints = None
        if keypoint_targets is not None or self.point_token is not None:
            img, *keypoints = self.image_tokens(images, with_keypoints=True)
            logits = keypoints[1]
        else:
            img = self.image_tokens(images)
        memory, mask = self.encode(images, state, text, text_mask, img, keypoints, offsets, point_shift)
        out = {"action": self._action_loss(memory, mask, actions, action_pad, action_weights)}
        if keypoint_targets is not None:
            out["keypoints"] = heatmap_loss(logits, keypoint_targets, keypoint_valid)
        if self.env_state_dim and env_state is not None:
            err = F.l1_loss(self.predict_env_state(img), self.env_norm(env_state.float()),
                            reduction="none").mean(-1)
            valid = torch.ones_like(err) if env_valid is None else env_valid.float()
            out["env_state"] = (err * valid).sum() / valid.sum().clamp_min(1.0)
        return out

    def loss(self, images: torch.Tensor, state: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
             actions: torch.Tensor, action_pad: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar action loss. actions (B, H, D_a) in robot units; action_pad (B, H) True where padded past the end."""
        return self.losses(images, state, text, text_mask, actions, action_pad)["action"]

    def _action_loss(self, memory: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor,
                     action_pad: torch.Tensor | None, action_weights: torch.Tensor | None = None) -> torch.Tensor:
        naction = self.action_norm(actions.float())
        if self.head_type == "chunk":
            err = F.l1_loss(self.decode(memory, mask), naction, reduction="none")
        else:
            B = actions.shape[0]
            eps = torch.randn_like(naction)
            t = torch.distributions.Beta(1.5, 1.0).sample((B,)).to(actions.device) * 0.999 + 0.001
            xt = t[:, None, None] * eps + (1 - t[:, None, None]) * naction
            err = F.mse_loss(self.decode(memory, mask, xt, t), eps - naction, reduction="none")
        if action_weights is not None:  # e.g. a gripper whose open/close errors matter more than its share of dims
            w = action_weights.to(err)
            err = err * (w / w.mean())
        if action_pad is None:
            return err.mean()
        valid = (~action_pad).float()[..., None].expand_as(err)
        return (err * valid).sum() / valid.sum().clamp_min(1.0)
