import pytest

from wsss.config import PRESETS, ConfigError, RunConfig, apply_overrides, from_dict, to_dict


def test_overrides_parse_types():
    cfg = RunConfig()
    apply_overrides(cfg, ["cls.optim.lr=0.1", "cam.scales=0.5,1.0", "data.max_images=none",
                          "seg.upper_bound=false", "cls.backbone.name=resnet50"])  # fmt: skip
    assert cfg.cls.optim.lr == 0.1
    assert cfg.cam.scales == (0.5, 1.0)
    assert cfg.data.max_images is None
    assert cfg.seg.upper_bound is False
    assert cfg.cls.backbone.name == "resnet50"


@pytest.mark.parametrize("written", ["0.125,0.25", "(0.125, 0.25)", "[0.125,0.25]"])
def test_tuple_overrides_accept_brackets(written):
    cfg = RunConfig()
    apply_overrides(cfg, [f"cam.scales={written}"])
    assert cfg.cam.scales == (0.125, 0.25)


@pytest.mark.parametrize(
    "item, message",
    [("cls.nope=1", "unknown config key 'cls.nope'"), ("cls.epochs=two", "expected int"),
     ("cls", "key=value"), ("seg.upper_bound=maybe", "expected bool")],
)  # fmt: skip
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), [item])


def test_round_trip_and_presets():
    for preset in PRESETS.values():
        cfg = RunConfig()
        preset(cfg)
        again = from_dict(RunConfig, to_dict(cfg))
        assert to_dict(again) == to_dict(cfg)
        assert isinstance(again.cam.scales, tuple)
