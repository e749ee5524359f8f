"""Local data files: the MNIST IDX and LIBSVM readers, their error messages, and training on them."""

import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.errors import ConfigError
from tests.helpers import make_config
from worker.tasks import Task, files
from worker.tasks.data import MNIST_MEAN, MNIST_STD, DataShape, check_data, load_dataset
from worker.tasks.files import IDX_IMAGES, IDX_LABELS, read_idx, read_libsvm, read_mnist_pair

ROOT = Path(__file__).resolve().parent.parent
NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def digit_images(labels: np.ndarray, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """Learnable fake digits: class c lights a bright horizontal band at rows 2c..2c+2, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), size, size))
    for i, c in enumerate(labels):
        images[i, 2 * c : 2 * c + 2, :] = 255
    return images.astype(np.uint8)


def make_mnist(folder: Path, n_train: int = 200, n_test: int = 50, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        write(folder / NAMES[split][0], idx_bytes(digit_images(labels, rng), IDX_IMAGES), gz)
        write(folder / NAMES[split][1], idx_bytes(labels, IDX_LABELS), gz)
    return folder


# ---- IDX ----


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_plain_and_gzip(tmp_path, gz):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([0, 9, 3], dtype=np.uint8)
    ip = write(tmp_path / "img", idx_bytes(images, IDX_IMAGES), gz)
    lp = write(tmp_path / "lab", idx_bytes(labels, IDX_LABELS), gz)
    got_images, got_labels = read_mnist_pair(ip, lp)
    assert got_images.dtype == np.uint8 and np.array_equal(got_images, images)
    assert np.array_equal(got_labels, labels)


GOOD = idx_bytes(np.zeros((3, 4, 5)), IDX_IMAGES)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x12\x34\x56\x78" + GOOD[4:], r"img: bad magic 0x12345678: not an IDX file \(expected 0x00000803\)"),
        (GOOD[:2] + b"\x0d\x03" + GOOD[4:], r"img: IDX data type code 0x0d is not supported"),
        (
            idx_bytes(np.zeros(60), IDX_LABELS),
            r"img: bad magic 0x00000801: 1 dimensions, but an MNIST images file has 3",
        ),
        (GOOD[:-7], r"img: header says 3 x 4 x 5 = 60 bytes of data, the file holds 53 \(truncated"),
        (GOOD + b"\0", r"img: header says 3 x 4 x 5 = 60 bytes of data, the file holds 61"),
        (GOOD[:9], r"img: 9 bytes is too short for an IDX header"),
    ],
)
def test_malformed_idx_is_refused_naming_the_file(tmp_path, data, message):
    path = write(tmp_path / "img", data)
    error = _error(read_idx, path, IDX_IMAGES)
    assert error.startswith(f"{path}: ") and re.search(message, error), error


def _error(fn, *args) -> str:
    try:
        fn(*args)
    except ValueError as err:
        return str(err)
    raise AssertionError("no error")


def test_truncated_gzip_is_refused(tmp_path):
    path = tmp_path / "img.gz"
    path.write_bytes(gzip.compress(GOOD)[:-12])
    assert _error(read_idx, path, IDX_IMAGES).startswith(f"{path}: cannot decompress")


def test_image_and_label_counts_must_agree(tmp_path):
    ip = write(tmp_path / "img", GOOD)
    lp = write(tmp_path / "lab", idx_bytes(np.zeros(2), IDX_LABELS))
    assert _error(read_mnist_pair, ip, lp) == f"{ip}: 3 images, but {lp} holds 2 labels"


def test_labels_outside_0_to_9_are_refused(tmp_path):
    ip = write(tmp_path / "img", GOOD)
    lp = write(tmp_path / "lab", idx_bytes(np.array([1, 10, 2]), IDX_LABELS))
    assert _error(read_mnist_pair, ip, lp) == f"{lp}: label 10 at index 1 is outside 0..9"


# ---- LIBSVM ----

A9A = """# a comment line
-1 3:1 11:0.5 14:1  # trailing comment

+1 qid:7 1:1 5:-2.5e0
-1 2:1
"""


def test_libsvm_parses_labels_features_qid_comments_and_blank_lines(tmp_path):
    path = tmp_path / "a9a"
    path.write_text(A9A)
    d = read_libsvm(path)
    assert d.classes == [-1.0, 1.0] and d.y_train.tolist() == [0, 1, 0]
    assert d.x_train.dtype == np.float32 and d.x_train.shape == (3, 14)  # inferred: largest index
    assert d.x_train[0, [2, 10, 13]].tolist() == [1, 0.5, 1] and d.x_train[0].sum() == 2.5
    assert d.x_train[1, [0, 4]].tolist() == [1, -2.5] and d.x_test is None
    assert read_libsvm(path, features=20).x_train.shape == (3, 20)


def test_libsvm_multiclass_labels_map_in_sorted_order_and_test_file_shares_them(tmp_path):
    (tmp_path / "train").write_text("3 1:1\n1 2:1\n2 1:0.5\n")
    (tmp_path / "test").write_text("2 4:1\n3 1:1\n")
    d = read_libsvm(tmp_path / "train", test_path=tmp_path / "test")
    assert d.classes == [1.0, 2.0, 3.0] and d.y_train.tolist() == [2, 0, 1] and d.y_test.tolist() == [1, 2]
    assert d.x_train.shape == (3, 4) and d.x_test.shape == (2, 4)  # features: largest index of both files


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("1 1:1\n-1 2:1 oops\n", 2, "bad token 'oops' (expected index:value)"),
        ("1 1:1\n\n-1 0:1\n", 3, "feature index 0 (indices are 1-based)"),
        ("1 3:1 2:1\n-1 1:1\n", 1, "feature index 2 after 3 (indices must increase)"),
        ("1 3:1 3:1\n-1 1:1\n", 1, "feature index 3 after 3 (indices must increase)"),
        ("1 1:1\n-1 2:abc\n", 2, "value 'abc' of feature 2 is not a number"),
        ("1 1:nan\n-1 2:1\n", 1, "value 'nan' of feature 1 is not a number"),
        ("yes 1:1\n-1 2:1\n", 1, "label 'yes' is not a number"),
        ("1 x:1\n-1 2:1\n", 1, "feature index 'x' is not a positive integer"),
        ("1 -3:1\n-1 2:1\n", 1, "feature index '-3' is not a positive integer"),
        ("1 1:1\n-1 2:1 9:1\n", 2, "feature index 9 exceeds the number of features (5)"),
    ],
)
def test_malformed_libsvm_names_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "a9a"
    path.write_text(text)
    assert _error(read_libsvm, path, 5) == f"{path}:{line}: {message}"


def test_libsvm_unknown_test_label_is_refused(tmp_path):
    (tmp_path / "train").write_text("-1 1:1\n+1 2:1\n")
    (tmp_path / "test").write_text("1 1:1\n# c\n2 2:1\n")
    assert _error(read_libsvm, tmp_path / "train", 0, tmp_path / "test") == (
        f"{tmp_path / 'test'}:3: label 2 does not occur in the training file {tmp_path / 'train'} (labels: -1, 1)"
    )


@pytest.mark.parametrize(
    "text,message",
    [
        ("# nothing\n\n", "no samples (every line is blank or a comment)"),
        ("1 1:1\n1 2:1\n", "only one label (1); classification needs at least two"),
    ],
)
def test_libsvm_needs_samples_of_two_classes(tmp_path, text, message):
    path = tmp_path / "f"
    path.write_text(text)
    assert _error(read_libsvm, path) == f"{path}: {message}"


def test_libsvm_dataset_without_test_file_is_split_with_a_fixed_seed(tmp_path):
    rng = np.random.default_rng(1)
    lines = [f"{rng.choice([-1, 1])} " + " ".join(f"{j}:{rng.normal():.3f}" for j in range(1, 8)) for _ in range(50)]
    (tmp_path / "train").write_text("\n".join(lines) + "\n")
    cfg = make_config(
        task={
            "dataset": "libsvm",
            "path": str(tmp_path / "train"),
            "model": "logreg",
            "test_fraction": 0.2,
            "features": 10,
        }
    )
    a, b = load_dataset(cfg.task), load_dataset(cfg.task)
    assert len(a.x_train) == 40 and len(a.x_test) == 10 and a.input_shape == (10,) and a.num_classes == 2
    assert torch.equal(a.x_test, b.x_test)


# ---- config validation and the pre-launch check ----


@pytest.mark.parametrize(
    "task,key",
    [
        ({"dataset": "mnist"}, "task.path"),
        ({"dataset": "libsvm"}, "task.path"),
        ({"dataset": "libsvm", "path": "f", "model": "cnn"}, "task.model"),
        ({"dataset": "mnist", "path": "d", "test_path": "t"}, "task.test_path"),
        ({"dataset": "mnist", "path": "d", "features": 3}, "task.features"),
        ({"dataset": "libsvm", "path": "f", "features": -1}, "task.features"),
    ],
)
def test_file_data_sets_validate_their_keys(task, key):
    with pytest.raises(ConfigError) as info:
        make_config(task=task)
    assert info.value.key == key


def test_cnn_is_allowed_on_mnist():
    assert make_config(task={"dataset": "mnist", "path": "d", "model": "cnn"}).task.model == "cnn"


def test_check_data_names_the_key_and_the_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder") as info:
        check_data(make_config(task={"dataset": "mnist", "path": str(tmp_path / "nope")}))
    assert info.value.key == "task.path"
    folder = make_mnist(tmp_path / "m", n_train=5, n_test=5)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte \(or .gz\) does not exist"):
        check_data(make_config(task={"dataset": "mnist", "path": str(folder)}))
    with pytest.raises(ConfigError) as info:
        check_data(make_config(task={"dataset": "libsvm", "path": str(tmp_path / "a9a")}))
    assert info.value.key == "task.path" and "a9a does not exist" in info.value.message


def test_check_data_checks_image_and_label_counts_and_test_file_lines(tmp_path):
    folder = make_mnist(tmp_path / "m", n_train=5, n_test=4, gz=True)
    check_data(make_config(task={"dataset": "mnist", "path": str(folder)}))
    write(folder / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(3), IDX_LABELS), gz=True)
    with pytest.raises(ConfigError, match="4 images, but .* holds 3 labels"):
        check_data(make_config(task={"dataset": "mnist", "path": str(folder)}))
    (tmp_path / "train").write_text("1 1:1\n-1 2:1\n")
    (tmp_path / "test").write_text("1 0:1\n")
    with pytest.raises(ConfigError, match=r"test:1: feature index 0") as info:
        check_data(
            make_config(
                task={"dataset": "libsvm", "path": str(tmp_path / "train"), "test_path": str(tmp_path / "test")}
            )
        )
    assert info.value.key == "task.test_path"


def test_launcher_refuses_missing_data_before_starting_anything(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            str(ROOT / "configs" / "tiny.yaml"),
            "task.dataset=mnist",
            f"task.path={tmp_path / 'mnist'}",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2, out.stderr
    assert "config key 'task.path'" in out.stderr and "is not a folder" in out.stderr
    assert not (tmp_path / "run").exists()


# ---- end to end: a tiny MNIST-format folder trains through the Task ----


@pytest.mark.parametrize("model", ["logreg", "cnn"])
def test_tiny_mnist_folder_trains_through_the_task(tmp_path, model):
    folder = make_mnist(tmp_path / "mnist", gz=model == "cnn")
    cfg = make_config(task={"dataset": "mnist", "path": str(folder), "model": model, "channels": [4], "batch_size": 32})
    check_data(cfg)
    task = Task(cfg)
    (x_train, y_train), (x_test, _) = task.spec.train, task.spec.test
    assert x_train.shape[1:] == ((1, 28, 28) if model == "cnn" else (784,)) and int(y_train.max()) < 10
    assert len(x_train) == 200 and len(x_test) == 50  # the files' own split, no resampling
    assert x_train.min() == pytest.approx(-MNIST_MEAN / MNIST_STD, rel=1e-5)
    assert x_train.max() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, rel=1e-5)
    before = task.evaluate(task.net.params.clone(), 10000)
    stream = task.batches(0, 1)
    for _ in range(40):
        task.gradient(next(stream))
        task.net.params.sub_(0.05 * task.net.grad)
    after = task.evaluate(task.net.params.clone(), 10000)
    assert after["train_loss"] < 0.5 * before["train_loss"]
    assert after["test_acc"] > 0.8 > before["test_acc"]


# ---- the pre-launch check reads every byte: bodies, labels, gzip streams, every LIBSVM line ----


def _mnist_cfg(folder: Path, **task):
    return make_config(task={"dataset": "mnist", "path": str(folder), **task})


@pytest.mark.parametrize("gz", [False, True])
def test_check_data_refuses_an_idx_body_shorter_than_its_header(tmp_path, gz):
    folder = make_mnist(tmp_path / "m", n_train=6, n_test=4, gz=gz)
    images = folder / (NAMES["train"][0] + (".gz" if gz else ""))
    body = (gzip.decompress if gz else bytes)(images.read_bytes())
    write(folder / NAMES["train"][0], body[:-100], gz)  # valid header, 100 pixels missing
    with pytest.raises(ConfigError, match=r"header says 6 x 28 x 28 = 4704 bytes of data, the file holds 4604") as info:
        check_data(_mnist_cfg(folder))
    assert info.value.key == "task.path"


@pytest.mark.parametrize("gz", [False, True])
def test_check_data_refuses_a_label_outside_0_to_9(tmp_path, gz):
    folder = make_mnist(tmp_path / "m", n_train=6, n_test=4, gz=gz)
    write(folder / NAMES["test"][1], idx_bytes(np.array([1, 2, 200, 3]), IDX_LABELS), gz)
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte(.gz)?: label 200 at index 2 is outside 0..9"):
        check_data(_mnist_cfg(folder))


def test_check_data_refuses_a_corrupt_gzip_stream(tmp_path):
    folder = make_mnist(tmp_path / "m", n_train=300, n_test=4, gz=True)
    path = folder / (NAMES["train"][0] + ".gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55  # deflate data damaged mid-stream (zlib.error) or the CRC fails at the end
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="cannot decompress") as info:
        check_data(_mnist_cfg(folder))
    assert info.value.key == "task.path" and str(path) in info.value.message


def test_readers_name_the_file_for_every_kind_of_corrupt_gzip(tmp_path):
    """zlib.error (damaged deflate data) is not an OSError: it escaped the reader as a bare traceback."""
    good = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (8, 20, 25)), IDX_IMAGES))
    path = tmp_path / "x.gz"
    for pos in range(12, len(good) - 8, 7):  # every 7th byte after the gzip header, each damaged in turn
        damaged = bytearray(good)
        damaged[pos] ^= 0xFF
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError) as err:
            read_idx(path, IDX_IMAGES)
        assert str(err.value).startswith(f"{path}: "), (pos, err.value)


def test_idx_check_reads_in_chunks_across_header_and_label_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CHUNK_BYTES", 5)  # the 8-byte label header and the labels span chunks
    files.check_idx.cache_clear()
    labels = write(tmp_path / "lab", idx_bytes(np.array([0, 1, 2, 3, 4, 5, 6, 9, 10, 1]), IDX_LABELS), gz=True)
    with pytest.raises(ValueError, match="label 10 at index 8 is outside 0..9"):
        files.check_idx(labels, IDX_LABELS, 10)
    images = write(tmp_path / "img", GOOD)
    assert files.check_idx(images, IDX_IMAGES) == (3, 4, 5)
    files.check_idx.cache_clear()


def test_check_data_refuses_an_mnist_folder_without_images(tmp_path):
    folder = make_mnist(tmp_path / "m", n_train=0, n_test=4)
    with pytest.raises(ConfigError, match="no image to learn from"):
        check_data(_mnist_cfg(folder))


def test_check_data_parses_every_libsvm_line(tmp_path):
    lines = [f"{1 if i % 2 else -1} 1:{i}" for i in range(500)]
    lines[400] = "1 1:oops"
    (tmp_path / "train").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"train:401: value 'oops' of feature 1 is not a number") as info:
        check_data(make_config(task={"dataset": "libsvm", "path": str(tmp_path / "train")}))
    assert info.value.key == "task.path"


@pytest.mark.parametrize(
    "train,test,task,key,message",
    [
        ("1 1:1\n" * 50 + "1 2:1\n", None, {}, "task.path", "only one label (1)"),
        ("1 1:1\n-1 2:1\n", "1 1:1\n# c\n2 2:1\n", {}, "task.test_path", "test:3: label 2 does not occur in"),
        ("1 1:1\n" * 30 + "-1 9:1\n", None, {"features": 5}, "task.features", "train:31: feature index 9 exceeds"),
        ("1 1:1\n-1 2:1\n", "1 7:1\n", {"features": 3}, "task.features", "test:1: feature index 7 exceeds"),
        ("1 qid:1\n-1 qid:2\n", None, {}, "task.path", "no sample has a feature"),
    ],
    ids=["one_label", "unknown_test_label", "index_beyond_features", "test_index_beyond_features", "no_feature"],
)
def test_check_data_refuses_what_read_libsvm_would_refuse_in_every_process(tmp_path, train, test, task, key, message):
    (tmp_path / "train").write_text(train)
    task = {"dataset": "libsvm", "path": str(tmp_path / "train"), "model": "logreg", **task}
    if test is not None:
        (tmp_path / "test").write_text(test)
        task["test_path"] = str(tmp_path / "test")
    with pytest.raises(ConfigError) as info:
        check_data(make_config(task=task))
    assert info.value.key == key and message in info.value.message, info.value


def test_check_data_refuses_too_few_training_samples_for_the_workers(tmp_path):
    (tmp_path / "train").write_text("1 1:1\n-1 2:1\n1 3:1\n-1 1:1\n")
    (tmp_path / "test").write_text("1 1:1\n")
    task = {"dataset": "libsvm", "path": str(tmp_path / "train"), "test_path": str(tmp_path / "test")}
    with pytest.raises(ConfigError, match="each of the 5 workers its own slice") as info:
        check_data(make_config(workers=5, task={**task, "sampling": "shard"}))
    assert info.value.key == "task.sampling"
    assert check_data(make_config(workers=4, task={**task, "sampling": "shard"})).train_samples == 4
    tiny = {"dataset": "synthetic", "synthetic": {"samples": 10}, "test_fraction": 0.96}
    with pytest.raises(ConfigError, match="leaves 0 for training") as info:
        check_data(make_config(task=tiny))
    assert info.value.key == "task.test_fraction"


def test_check_data_returns_the_shape_the_model_is_built_for(tmp_path):
    folder = make_mnist(tmp_path / "m", n_train=7, n_test=3, gz=True)
    assert check_data(_mnist_cfg(folder, model="cnn")) == DataShape((1, 28, 28), 10, 7)
    for task in ({"dataset": "digits", "model": "logreg"}, {"dataset": "digits", "model": "cnn", "test_fraction": 0.3}):
        data = load_dataset(make_config(task=task).task)
        assert check_data(make_config(task=task)) == DataShape(data.input_shape, 10, len(data.x_train))
    (tmp_path / "train").write_text("3 1:1\n1 2:1\n2 4:0.5\n1 1:1\n3 1:1\n")
    task = {"dataset": "libsvm", "path": str(tmp_path / "train"), "model": "logreg"}
    data = load_dataset(make_config(task=task).task)
    assert check_data(make_config(task=task)) == DataShape((4,), 3, len(data.x_train)) and data.input_shape == (4,)
    quadratic = {"dataset": "synthetic", "synthetic": {"kind": "quadratic"}}
    assert check_data(make_config(task=quadratic)) is None
