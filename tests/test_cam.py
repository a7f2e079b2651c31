import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.cam import cams_to_labels, multiscale_cam, normalize_cams, sweep_labels


class FixedCam(torch.nn.Module):
    """cam(x) = x[:, :2] / 255 at half resolution, so the fused result is known."""

    def cam(self, x):
        return torch.relu(F.avg_pool2d(x[:, :2], 2) / 255.0)


def test_normalize_max_and_minmax():
    cams = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[1.0, 1.0], [3.0, 5.0]]])
    out = normalize_cams(cams, "max", eps=0)
    assert torch.allclose(out[0], cams[0] / 4) and torch.allclose(out[1], cams[1] / 5)
    out = normalize_cams(cams, "minmax", eps=0)
    assert torch.allclose(out[1], (cams[1] - 1) / 4)
    assert out.min() == 0 and out.amax(dim=(1, 2)).tolist() == [1.0, 1.0]
    np.testing.assert_allclose(
        normalize_cams(cams.numpy(), "max", eps=0), (cams / cams.amax((1, 2), keepdim=True)).numpy()
    )
    with pytest.raises(ValueError):
        normalize_cams(cams, "softmax")


def test_multiscale_fusion_sums_scales_and_flips():
    torch.manual_seed(0)
    image = torch.rand(3, 8, 12) * 255
    model = FixedCam()
    single = multiscale_cam(model, image, scales=(1.0,), flip=False)
    expected = F.interpolate(model.cam(image[None]), (8, 12), mode="bilinear", align_corners=False)[
        0
    ]
    assert single.shape == (2, 8, 12)
    torch.testing.assert_close(single, expected)
    flipped = multiscale_cam(model, image, scales=(1.0,), flip=True)
    expected_flip = F.interpolate(
        model.cam(image.flip(-1)[None]), (8, 12), mode="bilinear", align_corners=False
    )[0].flip(-1)
    torch.testing.assert_close(flipped, expected + expected_flip)
    two = multiscale_cam(model, image, scales=(1.0, 2.0), flip=False)
    up = F.interpolate(image[None], (16, 24), mode="bilinear", align_corners=False)
    expected_two = F.interpolate(model.cam(up), (8, 12), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(two, expected + expected_two)


def test_cams_to_labels_threshold_and_keys():
    cams = np.array([[[0.1, 0.5], [0.9, 0.0]], [[0.2, 0.7], [0.3, 0.0]]], dtype=np.float32)
    keys = np.array([3, 7])
    labels = cams_to_labels(cams, keys, 0.15)
    assert labels.tolist() == [[7, 7], [3, 0]]
    assert cams_to_labels(cams, keys, 0.6).tolist() == [[0, 7], [3, 0]]
    assert cams_to_labels(np.zeros((0, 2, 2)), np.array([]), 0.1).tolist() == [[0, 0], [0, 0]]
    swept = dict(sweep_labels(cams, keys, np.array([0.15, 0.6])))
    assert swept[0.6].tolist() == [[0, 7], [3, 0]]
