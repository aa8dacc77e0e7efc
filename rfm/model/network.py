"""The policy network: [language, state, camera tokens] -> fusion transformer -> action decoder -> action chunk.

Delay-aware continuation (model.prefix_max > 0): a request may carry the actions the robot is committed to execute
from the observation's tick before the new chunk can be used (its committed prefix). The decoder's first action
queries then carry those actions, the rest a "free" embedding, and the returned chunk starts with the committed
actions exactly and continues them. Training shows a random prefix of the ground-truth chunk (none a quarter of the
time), so one checkpoint serves requests with and without one.

Everything between uint8 pixels / robot-unit state and robot-unit actions lives here (normalisation included),
so the same module trains, runs eagerly, compiles, and exports to a single ONNX graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass
class ImageFeatures:
    """What the vision encoder saw: camera tokens and, with keypoints, where each keypoint is and its heatmap."""

    tokens: torch.Tensor  # (B, N*T_img, D) with position and camera embeddings
    keypoints: torch.Tensor | None = None  # (B, N, K, 2) normalised image coordinates
    logits: torch.Tensor | None = None  # (B, N, K, h, w) keypoint heatmap logits


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
        # int8 kept it within 2 % on the simulator's frames but not on a new robot's (5.5 % alone on a 3-camera arm):
        # its input, the backbone's pooled features, spans a range per channel one int8 scale cannot cover
        self.img_proj.int8_float = True
        self.img_pos = nn.Parameter(torch.randn(1, 1, n_img_tokens, d) * 0.02)
        self.cam_embed = nn.Parameter(torch.randn(1, self.n_cam, 1, d) * 0.02)
        self.text_proj = nn.Linear(text_dim, d)
        self.text_pos = nn.Parameter(torch.randn(1, m.text_max_tokens, d) * 0.02)
        self.state_proj = nn.Linear(self.state_dim, d) if self.state_dim > 0 else None
        self.modality = nn.Parameter(torch.randn(3, d) * 0.02)  # language, state, image
        # triangulated keypoints join the state token (where the hand is and where the goal is, side by side);
        # the cameras' calibration and the end effector's place in the state are the robot's (interface) data
        self.point_token = (PointToken(itf.projections(), m.vision_points, self.state_dim, d,
                                       itf.ee_indices() if m.relative_points else None)
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
        self.prefix_max = m.prefix_max
        if self.prefix_max:  # zero-initialised: a checkpoint fine-tuned to take a prefix starts as it was
            self.prefix_in = nn.Linear(self.action_dim, d)
            self.prefix_embed = nn.Parameter(torch.zeros(2, d))  # [free, committed] action positions
            nn.init.zeros_(self.prefix_in.weight)
            nn.init.zeros_(self.prefix_in.bias)

    # --- observation encoding -------------------------------------------------------------------------------
    def int8_float_modules(self) -> list[str]:
        """Module paths an int8 export leaves in float by default: those marked `int8_float = True` (the keypoint
        heatmaps before their spatial softmax, the triangulated point token, the image features' projection)."""
        return [name for name, mod in self.named_modules() if name and getattr(mod, "int8_float", False)]

    def image_features(self, images: torch.Tensor, keypoints: bool | None = None) -> ImageFeatures:
        """Camera tokens of images (B, N_cam, 3, H, W) (uint8, or float in [0, 255]), before fusion.

        keypoints: also return the spatial-softmax keypoints and heatmap logits (default: when the point token
        needs them).
        """
        B = images.shape[0]
        x = images.flatten(0, 1).float() / 255.0  # (B*N, 3, H, W) in [0, 1]
        keypoints = self.point_token is not None if keypoints is None else keypoints
        points = logits = None
        if not keypoints:
            img = self.vision(x)
        elif getattr(self.vision, "keypoints", None) is None:
            raise ValueError("keypoints need a resnet vision encoder with model.vision_keypoints > 0")
        else:
            img, points, logits = self.vision(x, with_keypoints=True)
            points, logits = points.unflatten(0, (B, self.n_cam)), logits.unflatten(0, (B, self.n_cam))
        img = self.img_proj(img).view(B, self.n_cam, self.n_img_tokens, -1)  # (B, N, T_img, D)
        img = (img + self.img_pos + self.cam_embed + self.modality[2]).flatten(1, 2)  # (B, N*T_img, D)
        return ImageFeatures(img, points, logits)

    def fuse(self, feats: ImageFeatures, state: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
             image_offsets: torch.Tensor | None = None,
             point_shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused observation tokens (B, T, D) and their attention mask (B, 1, 1, T) (True = attend).

        Training's geometric augmentations, when the model triangulates points: image_offsets (B, N, 2) how far the
        random shift moved each image (undone before triangulating), point_shift (B, 3) a shift of the whole scene
        (added to the points; the caller moved the state). Both None at inference.
        """
        B, img = state.shape[0], feats.tokens
        txt = self.text_proj(text.float()) + self.text_pos + self.modality[0]  # (B, L, D)
        tokens, masks = [txt], [text_mask.bool()]
        nstate = self.state_norm(state.float()) if self.state_proj is not None else None
        point = (self.point_token(feats.keypoints, feats.logits, nstate, image_offsets, point_shift, state.float())
                 if self.point_token is not None else None)  # (B, 1, D)
        if self.state_proj is not None or point is not None:
            st = self.modality[1].expand(B, 1, -1)
            st = st + self.state_proj(nstate)[:, None] if nstate is not None else st
            tokens.append(st + point if point is not None else st)  # (B, 1, D)
            masks.append(torch.ones(B, 1, dtype=torch.bool, device=img.device))
        tokens.append(img)
        masks.append(torch.ones(B, img.shape[1], dtype=torch.bool, device=img.device))
        h, mask = torch.cat(tokens, 1), torch.cat(masks, 1)[:, None, None, :]  # (B, T, D), (B, 1, 1, T)
        for blk in self.encoder:
            h = blk(h, mask)
        return self.enc_norm(h), mask

    def encode(self, images: torch.Tensor, state: torch.Tensor, text: torch.Tensor,
               text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Observation -> fused tokens (B, T, D) and mask (B, 1, 1, T)."""
        return self.fuse(self.image_features(images), state, text, text_mask)

    def decode(self, memory: torch.Tensor, mask: torch.Tensor, noisy: torch.Tensor | None = None,
               t: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
               committed: torch.Tensor | None = None) -> torch.Tensor:
        """Chunk head: normalised actions (B, H, D_a). Flow head: velocity at (noisy actions, time t).

        prefix (B, H, D_a) normalised committed actions, valid where committed (B, H) is True (models with
        prefix_max > 0; None: no position is committed)."""
        B = memory.shape[0]
        q = self.action_pos.expand(B, -1, -1)
        if self.head_type == "flow":
            temb = self.time_mlp(timestep_embedding(t, q.shape[-1]))  # (B, D)
            q = q + self.action_in(noisy) + temb[:, None]
        if self.prefix_max:
            if committed is None:
                q = q + self.prefix_embed[0]
            else:
                c = committed[..., None]
                q = q + torch.where(c, self.prefix_in(prefix) + self.prefix_embed[1], self.prefix_embed[0])
        for blk in self.decoder:
            q = blk(q, memory, mask)
        return self.action_out(self.dec_norm(q))

    # --- inference -----------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, state: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                noise: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        """Action chunk (B, H, D_a) in robot units. noise (B, H, D_a) makes the flow head deterministic.

        prefix (B, P, D_a) committed actions in robot units (P <= prefix_max), of which the first prefix_len (B,)
        of each row count: the chunk starts with them and continues them (models with prefix_max > 0)."""
        memory, mask = self.encode(images, state, text, text_mask)
        raw = pn = committed = None
        if self.prefix_max and prefix is not None:
            raw = F.pad(prefix.float(), (0, 0, 0, self.chunk - prefix.shape[1]))  # (B, H, D_a)
            n = prefix_len.reshape(-1, 1).clamp(0, prefix.shape[1])
            committed = torch.arange(self.chunk, device=prefix.device)[None] < n  # (B, H)
            pn = self.action_norm(raw)
        if self.head_type == "chunk":
            naction = self.decode(memory, mask, prefix=pn, committed=committed)
        else:
            B = images.shape[0]
            x = noise if noise is not None else torch.randn(B, self.chunk, self.action_dim, device=images.device)
            x = x.to(memory.dtype)
            dt = 1.0 / self.flow_steps
            for k in range(self.flow_steps):  # Euler from t=1 (noise) to t=0 (actions); unrolled in ONNX
                t = torch.full((B,), 1.0 - k * dt, device=images.device)
                if committed is not None:  # inpainting: committed positions hold their actions at every step
                    x = torch.where(committed[..., None], pn.to(x.dtype), x)
                x = x - dt * self.decode(memory, mask, x, t, pn, committed)
            naction = x
        out = self.action_norm.inverse(naction.float())
        return out if committed is None else torch.where(committed[..., None], raw, out)

    # --- training ------------------------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, state: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
             actions: torch.Tensor, action_pad: torch.Tensor | None = None, **prefix_source: torch.Tensor) -> torch.Tensor:
        """Scalar action loss. actions (B, H, D_a) in robot units; action_pad (B, H) True where padded past the end;
        prefix_source: `executed` and `executed_recorded` as in action_loss."""
        memory, mask = self.encode(images, state, text, text_mask)
        return self.action_loss(memory, mask, actions, action_pad, **prefix_source)

    def action_loss(self, memory: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor,
                    action_pad: torch.Tensor | None = None,
                    action_weights: torch.Tensor | None = None,
                    executed: torch.Tensor | None = None,
                    executed_recorded: torch.Tensor | None = None) -> torch.Tensor:
        """L1 (chunk) or flow-matching (flow) loss of the fused tokens against actions (B, H, D_a) in robot units.

        action_weights (D_a,): relative weight of each action dimension (scaled to mean 1). executed (B, H, D_a),
        with executed_recorded (B,): what a recorded robot actually executed, its committed prefixes (models with
        prefix_max > 0), where `actions` holds the expert's labels from the states those actions led to.
        """
        naction = self.action_norm(actions.float())
        pn = committed = None
        if self.prefix_max:  # a random committed prefix per row; its positions are given, not learned
            nexec = None if executed is None else self.action_norm(executed.float())
            pn, committed = self.sample_prefix(naction, action_pad, nexec, executed_recorded)
            action_pad = committed if action_pad is None else (action_pad | committed)
        if self.head_type == "chunk":
            err = F.l1_loss(self.decode(memory, mask, prefix=pn, committed=committed), naction, reduction="none")
        else:
            B = actions.shape[0]
            eps = torch.randn_like(naction)
            t = torch.distributions.Beta(1.5, 1.0).sample((B,)).to(actions.device) * 0.999 + 0.001
            xt = t[:, None, None] * eps + (1 - t[:, None, None]) * naction
            if committed is not None:
                xt = torch.where(committed[..., None], pn, xt)
            err = F.mse_loss(self.decode(memory, mask, xt, t, pn, committed), eps - naction, reduction="none")
        if action_weights is not None:  # e.g. a gripper whose open/close errors matter more than its share of dims
            w = action_weights.to(err)
            err = err * (w / w.mean())
        if action_pad is None:
            return err.mean()
        valid = (~action_pad).float()[..., None].expand_as(err)
        return (err * valid).sum() / valid.sum().clamp_min(1.0)

    def sample_prefix(self, naction: torch.Tensor, action_pad: torch.Tensor | None,
                      nexecuted: torch.Tensor | None = None, recorded: torch.Tensor | None = None,
                      p_none: float = 0.25, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
        """A training prefix: (normalised committed actions (B, H, D_a), committed (B, H)). Each row commits its
        first p actions, p uniform in 1..prefix_max (0 with probability p_none), leaving at least one real action
        to predict. Rows from a recording (`recorded`) commit what the robot executed (`nexecuted`, normalised), the
        rest continue to be labelled by the expert from where those actions led; demonstration rows commit their own
        actions with small noise, standing in for the previous chunk's plan not being the demonstration."""
        B, H, _ = naction.shape
        dev = naction.device
        real = H - (action_pad.sum(1) if action_pad is not None else torch.zeros(B, dtype=torch.long, device=dev))
        p = torch.randint(1, self.prefix_max + 1, (B,), device=dev)
        p = torch.where(torch.rand(B, device=dev) < p_none, torch.zeros_like(p), p)
        p = torch.minimum(p, (real - 1).clamp_min(0))
        committed = torch.arange(H, device=dev)[None] < p[:, None]
        prefix = naction + noise * torch.randn_like(naction)
        if nexecuted is not None and recorded is not None:
            prefix = torch.where(recorded.reshape(B, 1, 1), nexecuted, prefix)
        return prefix, committed
