"""The built-in CNN's options (task.pool, task.batch_norm, task.head, task.dropout): the defaults are the original
network, each option changes what it says, bad values are refused before anything starts, and the Fashion-MNIST
configs hold the models the study documents (quick)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from launch.preflight import check_model
from protocol.config.loader import load_experiment
from protocol.config.schema import TaskConfig
from protocol.errors import ConfigError
from tests.helpers import make_config
from worker.tasks.models import build_model

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
IMAGES = SimpleNamespace(features=784, num_classes=10, input_shape=(1, 28, 28))


def _cnn(**task) -> nn.Module:
    torch.manual_seed(0)
    return build_model(TaskConfig(dataset="fashion_mnist", model="cnn", **task), IMAGES)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_defaults_are_the_original_cnn_layer_for_layer():
    model = _cnn(channels=(16, 32))
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear"]
    assert _count(model) == 160 + 4640 + 32 * 14 * 14 * 10 + 10  # the 67,530 of the earlier built-in CNN
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]


def test_pool_each_batch_norm_head_and_dropout_build_what_they_say():
    model = _cnn(channels=(32, 64), pool="each", batch_norm=True, head=(16,), dropout=0.3)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)  # BatchNorm's shift replaces the bias
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model) == 2
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 2
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.3, 0.3]  # before each linear layer
    conv = 1 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64
    assert _count(model) == conv + (64 * 7 * 7 * 16 + 16) + (16 * 10 + 10)  # two pools: 28 -> 7
    assert sorted(name for name, _ in model.named_buffers() if name.endswith("running_mean")) == [
        "1.running_mean",
        "5.running_mean",
    ]
    x = torch.randn(8, 1, 28, 28)
    model.eval()
    assert model(x).shape == (8, 10) and torch.equal(model(x), model(x))  # dropout is off in evaluation
    model.train()
    assert not torch.equal(model(x), model(x))


def test_pooling_images_below_one_pixel_is_refused_naming_the_channels():
    cfg = make_config(task={"model": "cnn", "channels": [2, 2, 2, 2], "pool": "each"})  # 8x8 digits: 4 halvings
    with pytest.raises(ConfigError) as info:
        check_model(cfg, 1 << 40)
    assert info.value.key == "task.channels" and "below 1 pixel" in info.value.message
    check_model(make_config(task={"model": "cnn", "channels": [2, 2, 2], "pool": "each"}), 1 << 40)  # 1x1 is fine


@pytest.mark.parametrize(
    ("task", "key"),
    [({"head": [0]}, "task.head"), ({"dropout": 1.0}, "task.dropout"), ({"dropout": -0.1}, "task.dropout")],
)
def test_bad_values_are_refused(task, key):
    with pytest.raises(ConfigError) as info:
        make_config(task={"model": "cnn", **task})
    assert info.value.key == key


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_fashion_configs_hold_the_models_the_study_documents():
    small = check_model(load_experiment(ROOT / "configs" / "fashion_mnist.yaml"), 1 << 40).total
    ef21 = check_model(load_experiment(ROOT / "configs" / "fashion_mnist_ef21_sgdm.yaml"), 1 << 40).total
    wide = check_model(load_experiment(ROOT / "configs" / "fashion_mnist_wide.yaml"), 1 << 40).total
    assert small == ef21 < 100_000 and 1_000_000 <= wide <= 5_000_000
    for name, n in (("fashion_mnist", small), ("fashion_mnist_ef21_sgdm", ef21), ("fashion_mnist_wide", wide)):
        assert f"{n:,} parameters" in (ROOT / "configs" / f"{name}.yaml").read_text(), name


def test_augment_is_a_parameter_free_first_layer_that_acts_only_in_training():
    plain = _cnn(channels=(8,), pool="each")
    flipped = _cnn(channels=(8,), pool="each", augment="flip")
    assert type(flipped[0]).__name__ == "Augment"
    assert _count(flipped) == _count(plain) and not list(flipped[0].state_dict())
    x = torch.randn(64, 1, 28, 28)
    flipped.eval()
    assert torch.equal(flipped[0](x), x)  # evaluations see the images as they are
    flipped.train()
    out = flipped[0](x)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all())  # each image is itself or its mirror image ...
    assert 10 < int(mirrored.sum()) < 54  # ... about half of them mirrored (64 draws of p = 1/2)


def test_augment_shift_moves_each_image_by_at_most_two_pixels():
    from worker.tasks.augment import flip_shift

    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 13, 13] = 1.0  # one lit pixel per image
    out = flip_shift(x, flip=False, shift=2)
    where = out.flatten(1).argmax(1)
    rows, cols = where // 28, where % 28
    assert bool(((rows - 13).abs() <= 2).all() and ((cols - 13).abs() <= 2).all())
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 5  # each image its own shift
    assert torch.equal(out.sum((1, 2, 3)), torch.ones(32))  # the pixel moved, nothing else appeared


def test_augment_needs_the_cnn():
    with pytest.raises(ConfigError, match="task.augment"):
        make_config(task={"model": "mlp", "augment": "flip"})
