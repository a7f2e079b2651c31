import numpy as np

from wsss.metrics import confusion_matrix
from wsss.refine.crf import CRF_PRESETS, dense_crf, dense_crf_labels
from wsss.refine.pseudo import pseudo_mask


def _scene():
    """A red square on grey, CAM a blurred blob on the square."""
    image = np.full((32, 32, 3), 120, np.uint8)
    image[8:24, 8:24] = (220, 30, 30)
    yy, xx = np.mgrid[:32, :32]
    cam = np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 60.0).astype(np.float32)[None]
    return image, cam, np.array([4])


def test_threshold_pseudo_mask():
    image, cam, keys = _scene()
    mask = pseudo_mask(image, cam, keys, bg_threshold=0.5)
    assert set(np.unique(mask)) == {0, 4}
    assert mask[16, 16] == 4 and mask[0, 0] == 0


def test_ignore_band_between_confidences():
    image, cam, keys = _scene()
    mask = pseudo_mask(
        image, cam, keys, bg_threshold=0.5, ignore_uncertain=True, conf_fg=0.8, conf_bg=0.1
    )
    assert mask[16, 16] == 4 and mask[0, 0] == 0
    band = (cam[0] > 0.1) & (cam[0] <= 0.8)
    assert (mask[band] == 255).all()


def test_crf_snaps_mask_to_image_edges():
    image, cam, keys = _scene()
    truth = np.zeros((32, 32), np.uint8)
    truth[8:24, 8:24] = 4
    plain = pseudo_mask(image, cam, keys, bg_threshold=0.5)
    refined = pseudo_mask(image, cam, keys, bg_threshold=0.5, crf=CRF_PRESETS["irn"])
    assert (refined == truth).mean() > (plain == truth).mean()
    assert (refined == truth).mean() > 0.97


def test_dense_crf_keeps_confident_probabilities():
    image, _, _ = _scene()
    probs = np.stack([np.full((32, 32), 0.9), np.full((32, 32), 0.1)]).astype(np.float32)
    out = dense_crf(image, probs, CRF_PRESETS["deeplab"])
    assert out.shape == (2, 32, 32)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-4)
    assert (out.argmax(0) == 0).all()
    labels = dense_crf_labels(image, np.zeros((32, 32), np.int64), 2, CRF_PRESETS["irn"])
    assert (labels == 0).all()


def test_ignore_mask_scores_as_the_confident_foreground_mask():
    """IRN's rule counts a pseudo mask's 255 as background, so the "CRF + ignore" masks score
    exactly as the CRF mask thresholded at ``conf_fg`` (the README's reading of that column)."""
    image, cam, keys = _scene()
    truth = np.zeros((32, 32), np.uint8)
    truth[10:22, 10:22] = 4
    crf = CRF_PRESETS["irn"]
    ignoring = pseudo_mask(
        image, cam, keys, bg_threshold=0.5, crf=crf, ignore_uncertain=True, conf_fg=0.8, conf_bg=0.1
    )
    at_conf_fg = pseudo_mask(image, cam, keys, bg_threshold=0.8, crf=crf)
    at_shared = pseudo_mask(image, cam, keys, bg_threshold=0.5, crf=crf)
    assert (ignoring == 255).any()
    scores = [confusion_matrix(truth, m, 5) for m in (ignoring, at_conf_fg, at_shared)]
    np.testing.assert_array_equal(scores[0], scores[1])
    assert not np.array_equal(scores[0], scores[2])
