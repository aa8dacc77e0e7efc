"""Parameter and FLOP counts per action chunk (torch's FlopCounterMode over one real forward pass)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(policy, batch_size: int = 1) -> dict:
    """{'policy': FLOPs per chunk of the network, 'text_encoder': FLOPs to embed one instruction (cached)}."""
    itf = policy.interface
    net = policy.net.eval()
    dev = policy.device
    images = torch.zeros(batch_size, len(itf.cameras), 3, *itf.image_size, dtype=torch.uint8, device=dev)
    state = torch.zeros(batch_size, itf.state_dim, device=dev)
    text, mask = policy.encode_text(["pick up the red block"] * batch_size)
    noise = torch.zeros(batch_size, itf.chunk_size, itf.action_dim, device=dev)
    with FlopCounterMode(display=False) as fc:  # grad on: module tracker needs grad_fns
        net(images, state, text, mask, noise)
    policy_flops = fc.get_total_flops() / batch_size
    tok = {k: torch.from_numpy(v) for k, v in policy.text.tokenize(["pick up the red block"]).items()}
    with FlopCounterMode(display=False) as fc:  # grad on: module tracker needs grad_fns
        policy.text.model(**{k: v.to(policy.text.device) for k, v in tok.items()})
    return {"policy": int(policy_flops), "text_encoder": int(fc.get_total_flops())}


def describe_preset(name: str, interface=None, head: str = "chunk") -> dict:
    """Params and FLOPs of a preset built for `interface` (default: 2 cameras at 128 px, 4-d state/action)."""
    from rfm.config import RobotInterface
    from rfm.model.policy import RFMPolicy

    interface = interface or RobotInterface(cameras=["cam0", "cam1"], image_size=(128, 128), chunk_size=16)
    policy = RFMPolicy.build(name, interface=interface, head=head)
    flops = count_flops(policy)
    return {
        "preset": name, "head": head,
        "params": policy.num_parameters(),
        "text_encoder_params": sum(p.numel() for p in policy.text.model.parameters()),
        "flops_per_chunk": flops["policy"],
        "text_encoder_flops": flops["text_encoder"],
        "cameras": len(interface.cameras), "image_size": list(interface.image_size),
        "chunk_size": interface.chunk_size, "image_tokens_per_camera": policy.net.n_img_tokens,
        "config": policy.model_config.to_dict(),
    }
