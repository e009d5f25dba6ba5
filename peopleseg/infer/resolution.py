"""How an image of any size meets a network with a fixed input size, and how the answer goes back.

- `resize` (as TAO does): stretch to the input size, then resize the scores back;
- `letterbox`: scale to fit keeping the aspect ratio, pad the rest, and crop the padding out of the scores;
- `sliding`: run overlapping input-sized windows over the image at its own scale and average the scores (for
  large images whose people would shrink to a few pixels in a plain resize).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from peopleseg.errors import ConfigError
from peopleseg.resize_policy import POLICIES

Policy = Literal["resize", "letterbox", "sliding"]


@dataclass
class Plan:
    """Where one image's network inputs came from: enough to put their scores back together."""

    policy: str
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    # letterbox: the content box (top, left, height, width) inside the padded input
    content: tuple[int, int, int, int] | None = None
    # sliding: window boxes (top, left) in the padded image, and the padded size
    windows: list[tuple[int, int]] = field(default_factory=list)
    padded_size: tuple[int, int] | None = None


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"unknown resolution policy '{policy}'; choose from {', '.join(POLICIES)}")


def prepare(
    pixels: torch.Tensor,
    policy: str,
    input_size: tuple[int, int],
    overlap: float = 1 / 3,
    pad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Plan]:
    """`pixels`: one image [1, 3, H, W], as the network takes it. Returns the network inputs [K, 3, h, w] and the
    plan. `pad`: the per-channel value [3] of added pixels, the model's mean colour in `pixels`' scale (default 0:
    the mean, once normalised)."""
    check_policy(policy)
    fill = (pad if pad is not None else pixels.new_zeros(3)).to(pixels.dtype).view(1, 3, 1, 1)
    image_size = (pixels.shape[2], pixels.shape[3])
    height, width = input_size
    if policy == "resize":
        return _resize(pixels, input_size), Plan(policy, image_size, input_size)
    if policy == "letterbox":
        top, left, inner_height, inner_width = letterbox_box(image_size, input_size)
        canvas = fill.expand(1, 3, height, width).clone()
        canvas[:, :, top : top + inner_height, left : left + inner_width] = _resize(pixels, (inner_height, inner_width))
        return canvas, Plan(policy, image_size, input_size, content=(top, left, inner_height, inner_width))
    # sliding windows at the image's own scale, padded up to at least one window
    padded = (max(image_size[0], height), max(image_size[1], width))
    if padded != image_size:
        canvas = fill.expand(1, 3, *padded).clone()
        canvas[:, :, : image_size[0], : image_size[1]] = pixels
        pixels = canvas
    if not 0 <= overlap < 1:
        raise ConfigError(f"sliding-window overlap must be in [0, 1), got {overlap}")
    tops = _starts(padded[0], height, overlap)
    lefts = _starts(padded[1], width, overlap)
    windows = [(top, left) for top in tops for left in lefts]
    crops = torch.cat([pixels[:, :, top : top + height, left : left + width] for top, left in windows])
    return crops, Plan(policy, image_size, input_size, windows=windows, padded_size=padded)


def letterbox_box(image_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the network input: scaled to fit, aspect ratio kept, centred."""
    height, width = input_size
    scale = min(height / image_size[0], width / image_size[1])
    inner = (max(1, round(image_size[0] * scale)), max(1, round(image_size[1] * scale)))
    return (height - inner[0]) // 2, (width - inner[1]) // 2, inner[0], inner[1]


def merge(scores: torch.Tensor, plan: Plan, mode: str = "bilinear") -> torch.Tensor:
    """Scores of one image's inputs [K, C, h, w] back to [C, H, W] at the image's own size.

    `mode` is "bilinear" for logits and probabilities, "nearest" for class-id maps (as float).
    """
    align = {"align_corners": False} if mode == "bilinear" else {}
    if plan.policy == "resize":
        if mode == "bilinear" and len(scores) == 1:
            return _bilinear(scores[0], plan.image_size)
        return F.interpolate(scores, size=plan.image_size, mode=mode, **align)[0]
    if plan.policy == "letterbox":
        top, left, height, width = plan.content  # type: ignore[misc]
        if mode == "bilinear" and len(scores) == 1:  # through OpenCV, as for resize (a video frame's path)
            content = _bilinear(scores[0], plan.input_size)[:, top : top + height, left : left + width].contiguous()
            return _bilinear(content, plan.image_size)
        full = F.interpolate(scores, size=plan.input_size, mode=mode, **align)
        content = full[:, :, top : top + height, left : left + width]
        return F.interpolate(content, size=plan.image_size, mode=mode, **align)[0]
    height, width = plan.input_size
    padded = plan.padded_size or plan.image_size
    total = scores.new_zeros(scores.shape[1], *padded)
    count = scores.new_zeros(1, *padded)
    windows = F.interpolate(scores, size=plan.input_size, mode=mode, **align)
    for (top, left), window in zip(plan.windows, windows, strict=True):
        total[:, top : top + height, left : left + width] += window
        count[:, top : top + height, left : left + width] += 1
    merged = total / count
    return merged[:, : plan.image_size[0], : plan.image_size[1]]


def _bilinear(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, h, w] to [C, *size], bilinear with half-pixel centres (F.interpolate's align_corners=False), through
    OpenCV: 0.08 ms against 0.72 ms for one 128x128 map to 768x576, equal to within 1e-4."""
    height, width = size
    channels = scores.detach().to("cpu", torch.float32).numpy()
    resized = [cv2.resize(channel, (width, height), interpolation=cv2.INTER_LINEAR) for channel in channels]
    return torch.from_numpy(np.stack(resized) if len(resized) > 1 else resized[0][None])


def _resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(pixels.shape[2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)


def _starts(length: int, window: int, overlap: float) -> list[int]:
    """Window starts covering [0, length) with at least `overlap` of a window shared between neighbours."""
    if length <= window:
        return [0]
    stride = max(1, int(window * (1 - overlap)))
    count = math.ceil((length - window) / stride) + 1
    return [min(i * stride, length - window) for i in range(count)]
