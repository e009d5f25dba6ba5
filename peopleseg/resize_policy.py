"""The names of the resolution policies: how an image of any size meets a network's fixed input size.

`infer/resolution.py` implements them, with torch and OpenCV; the names live apart so that a model's metadata,
configs and the CLI can check one without importing either.
"""

POLICIES = ("resize", "letterbox", "sliding")
# What a Segmenter, the CLI and the configs accept: "auto" is the model's own policy (`ModelInfo.resize`).
CHOICES = ("auto", *POLICIES)
# One network-sized input per image, so that images of any size stack into a batch (training's validation).
BATCHABLE = ("resize", "letterbox")


def single_input_policy(policy: str) -> str:
    """`policy` where it gives one input per image; "resize" for sliding windows, which give several."""
    return policy if policy in BATCHABLE else "resize"
