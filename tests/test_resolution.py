"""Resolution policies put the scores back where they came from: a fake model whose 'person' is the red channel
must find the red region of the image, whatever the policy and aspect ratio."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peopleseg import Segmenter
from peopleseg.errors import ConfigError
from peopleseg.models import ModelInfo
from peopleseg.models.info import HALF_MEAN, HALF_STD


class RedIsPerson:
    """A stand-in backend: logits at 1/4 resolution saying 'person' where the red channel is bright."""

    name = "fake"
    output_kind = "logits"
    device = torch.device("cpu")

    def __init__(self, input_size=(64, 96)) -> None:
        self.info = ModelInfo(arch="fake", mean=HALF_MEAN, std=HALF_STD, input_size=input_size)
        self.batches: list[tuple[int, ...]] = []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(pixels.shape))
        red = F.avg_pool2d(pixels[:, :1], 4) * 8  # normalised red in [-1, 1], sharpened
        return torch.cat([-red, red], dim=1)


def _scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((height, width, 3), np.uint8)
    truth = np.zeros((height, width), bool)
    truth[height // 5 : height // 2, width // 3 : 3 * width // 4] = True
    image[truth] = (255, 0, 0)
    return image, truth


@pytest.mark.parametrize("policy", ["resize", "letterbox", "sliding"])
@pytest.mark.parametrize("size", [(120, 300), (300, 90), (64, 96), (37, 41)])
def test_policies_find_the_region(policy: str, size: tuple[int, int]) -> None:
    segmenter = Segmenter("segformer_b0", backend=RedIsPerson(), resize=policy)
    image, truth = _scene(*size)
    mask = segmenter.predict(image)
    assert mask.shape == truth.shape
    iou = np.logical_and(mask == 1, truth).sum() / np.logical_or(mask == 1, truth).sum()
    assert iou > 0.85, iou


def test_sliding_covers_a_large_image_with_overlapping_windows() -> None:
    backend = RedIsPerson()
    segmenter = Segmenter("segformer_b0", backend=backend, resize="sliding")
    image, truth = _scene(200, 400)
    mask = segmenter.predict(image)
    assert backend.batches[0][0] > 4  # several windows went through in one batch
    assert np.logical_and(mask == 1, truth).sum() / truth.sum() > 0.9


def test_letterbox_feeds_the_aspect_ratio_unchanged() -> None:
    backend = RedIsPerson(input_size=(64, 64))
    segmenter = Segmenter("segformer_b0", backend=backend, resize="letterbox")
    image, truth = _scene(50, 200)
    assert (segmenter.predict(image) == truth).mean() > 0.97


def test_batch_of_mixed_sizes_matches_one_at_a_time() -> None:
    backend = RedIsPerson()
    segmenter = Segmenter("segformer_b0", backend=backend, batch_size=2)
    images = [_scene(*s)[0] for s in [(50, 60), (80, 40), (33, 99)]]
    batched = segmenter.predict_batch(images)
    assert [b[0] for b in backend.batches] == [2, 1]
    for image, mask in zip(images, batched, strict=True):
        assert np.array_equal(mask, segmenter.predict(image))


def test_unknown_policy() -> None:
    with pytest.raises(ConfigError, match="unknown resolution policy 'crop'"):
        Segmenter("segformer_b0", backend=RedIsPerson(), resize="crop")


def test_auto_takes_the_models_own_policy_and_an_explicit_one_wins() -> None:
    backend = RedIsPerson()
    backend.info.resize = "letterbox"
    assert Segmenter("segformer_b0", backend=backend).resize == "letterbox"
    assert Segmenter("segformer_b0", backend=backend, resize="resize").resize == "resize"
    assert Segmenter("segformer_b0", backend=RedIsPerson()).resize == "resize"  # a model that says nothing


@pytest.mark.parametrize("size", [(120, 300), (300, 90), (37, 41), (64, 96)])
def test_batched_letterbox_matches_the_generic_path(size: tuple[int, int]) -> None:
    # The batch path resizes the uint8 image straight into a canvas of the mean colour; the generic path
    # (`prepare`) normalises the float image first and pads with zeros. Same content box, same inputs up to the
    # uint8 rounding of the resized image.
    from peopleseg.infer.resolution import prepare

    backend = RedIsPerson()
    segmenter = Segmenter("segformer_b0", backend=backend, resize="letterbox")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    batch, counts, plans = segmenter._inputs([image], segmenter.resize)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    expected, plan = prepare((pixels - segmenter._mean) / segmenter._std, "letterbox", backend.info.input_size)
    assert counts == [1] and plans[0].content == plan.content
    assert (batch - expected).abs().max() < 1.5 / 127.5  # within about one grey level, on the 0.5/0.5 scale
    top, left, height, width = plan.content
    outside = torch.ones(backend.info.input_size, dtype=torch.bool)
    outside[top : top + height, left : left + width] = False
    assert torch.count_nonzero(batch[0][:, outside]) == 0  # the padding is the mean colour: zero once normalised


@pytest.mark.parametrize("policy", ["letterbox", "sliding"])
def test_a_graph_that_normalises_itself_gets_the_mean_colour_as_padding(policy: str) -> None:
    backend = RedIsPerson(input_size=(64, 64))
    backend.normalized_in_graph = True  # the Segmenter feeds 0-255 RGB; the graph subtracts the mean itself
    segmenter = Segmenter("segformer_b0", backend=backend, resize=policy)
    image = np.full((20, 50, 3), 200, np.uint8)
    batch = segmenter._inputs([image], segmenter.resize)[0]
    # Letterbox centres the image (bands above and below); sliding pads bottom and right.
    padded, inside = ((0, 0), (32, 25)) if policy == "letterbox" else ((63, 63), (10, 25))
    assert torch.allclose(batch[0, :, padded[0], padded[1]], torch.tensor(HALF_MEAN))  # 127.5, not black
    assert torch.allclose(batch[0, :, inside[0], inside[1]], torch.tensor([200.0] * 3), atol=1)  # the image, raw
