"""The data module: embedded digits, torchvision sets from tiny real-format files, synthetic budget sets,
loaders. No network: every on-disk set is written here in its real format and read back through
``robustsuite.data.load``."""
from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from robustsuite import data
from robustsuite.data import digits as digits_module
from robustsuite.data import torchvision_sets
from robustsuite.errors import ConfigError, DataNotFoundError, InputError, UnknownNameError

TORCHVISION_ERROR = torchvision_sets.torchvision_error()
BACKENDS = [
    "builtin",
    pytest.param("torchvision", marks=pytest.mark.skipif(
        TORCHVISION_ERROR is not None,
        reason=f"torchvision cannot be imported in this environment: {TORCHVISION_ERROR}")),
]
ON_DISK = ["mnist", "cifar10", "cifar100", "svhn"]


# -- tiny files in each data set's real on-disk format ------------------------------------------------
def _write_idx(path: Path, array: np.ndarray) -> None:
    """idx format: magic 0x0000 08 <ndim> (unsigned bytes), big-endian uint32 dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _write_sets(root: Path) -> dict:
    """Write MNIST, CIFAR-10, CIFAR-100 and SVHN with a few random images each; return the arrays
    (images uint8 NCHW, labels) each split should load as."""
    rng = np.random.default_rng(0)
    expected = {}

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix, n in (("train", "train", 30), ("test", "t10k", 12)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        expected["mnist", split] = (images[:, None], labels.astype(np.int64))

    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for split, names in batches.items():
        rows, labels = [], []
        for name in names:
            batch_rows = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
            batch_labels = rng.integers(0, 10, 4).tolist()
            _write_pickle(folder / name, {"batch_label": name, "data": batch_rows, "labels": batch_labels,
                                          "filenames": [f"{i}.png" for i in range(4)]})
            rows.append(batch_rows)
            labels += batch_labels
        # A row is the 1024 red, then green, then blue values of a 32x32 image, row-major.
        expected["cifar10", split] = (np.vstack(rows).reshape(-1, 3, 32, 32), np.array(labels))
    _write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)],
                                            "num_cases_per_batch": 4, "num_vis": 3072})

    folder = root / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 10), ("test", 6)):
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        _write_pickle(folder / split, {"data": rows, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine],
                                       "filenames": [f"{i}.png" for i in range(n)]})
        expected["cifar100", split] = (rows.reshape(-1, 3, 32, 32), np.array(fine))
    _write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                    "coarse_label_names": [f"c{i}" for i in range(20)]})

    import scipy.io
    for split, n in (("train", 14), ("test", 8)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N) as in the official files
        digit = np.arange(n) % 10
        y = np.where(digit == 0, 10, digit).astype(np.uint8).reshape(n, 1)  # SVHN stores 0 as 10
        scipy.io.savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
        expected["svhn", split] = (np.transpose(x, (3, 2, 0, 1)), digit)
    return expected


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return root, _write_sets(root)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def backend(request, disk, monkeypatch):
    """The reading path under test. For torchvision, the classes' tables of official MD5 sums are
    replaced by the sums of our tiny files, so torchvision's own integrity check runs and passes."""
    name = request.param
    if name == "torchvision":
        import torchvision.datasets as tvd

        root, _ = disk
        for cls, folder in ((tvd.CIFAR10, "cifar-10-batches-py"), (tvd.CIFAR100, "cifar-100-python")):
            for attr in ("train_list", "test_list"):
                monkeypatch.setattr(cls, attr, [[f, _md5(root / folder / f)] for f, _ in getattr(cls, attr)])
            meta = dict(cls.meta, md5=_md5(root / folder / cls.meta["filename"]))
            monkeypatch.setattr(cls, "meta", meta)
        split_list = {s: [url, f, _md5(root / f) if (root / f).exists() else md5]
                      for s, (url, f, md5) in tvd.SVHN.split_list.items()}
        monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    return name


def _as_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0


# -- digits --------------------------------------------------------------------------------------------
def test_digits_images_are_float_in_unit_range_with_ten_classes():
    train = data.load("digits", "train")
    x, y = data.as_tensors(train)
    assert x.shape == (1347, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert x.min() == 0.0 and x.max() == 1.0
    image, label = train[0]
    assert image.shape == (1, 8, 8) and isinstance(label, int)
    assert data.info("digits") == train.info
    assert train.info.shape == (1, 8, 8) and train.info.num_classes == 10


def test_digits_split_is_disjoint_and_covers_all_1797_images():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert (len(train), len(test)) == (1347, 450)
    together = torch.cat([train.source_index, test.source_index])
    assert torch.equal(together.sort().values, torch.arange(1797))


def test_digits_split_is_stratified():
    _, labels, _ = digits_module._digits_arrays()
    test = data.load("digits", "test")
    total = torch.bincount(labels, minlength=10).double()
    in_test = torch.bincount(test.labels, minlength=10).double()
    assert (in_test - 450 * total / 1797).abs().max() <= 1.0


def test_digits_split_is_identical_on_every_load_and_pinned():
    a, b = data.load("digits", "test"), data.load("digits", "test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # Pinned so that a change in scikit-learn's split algorithm cannot move samples unnoticed.
    assert a.source_index[:8].tolist() == [21, 24, 28, 34, 35, 37, 39, 42]
    assert int(a.source_index.sum()) == 423769


def test_digits_loads_do_not_share_memory():
    a = data.load("digits", "test")
    a.images.zero_()
    assert data.load("digits", "test").images.max() == 1.0


def test_digits_mean_std_constants_match_the_train_split():
    x, _ = data.as_tensors(data.load("digits", "train"))
    info = data.info("digits")
    assert abs(x.mean().item() - info.mean[0]) < 1e-4
    assert abs(x.std(unbiased=False).item() - info.std[0]) < 1e-4


def test_digits_size_option_upsamples_within_unit_range():
    small = data.load("digits", "test")
    big = data.load("digits", "test", size=16)
    x, _ = data.as_tensors(big)
    assert x.shape == (450, 1, 16, 16)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert big.info.shape == (1, 16, 16) == data.info("digits", size=16).shape
    assert torch.equal(big.labels, small.labels)
    # Bilinear upsampling preserves the mean brightness up to border effects.
    assert abs(x.mean().item() - small.images.mean().item()) < 0.02


# -- option validation ---------------------------------------------------------------------------------
def test_unknown_name_lists_the_available_names():
    with pytest.raises(UnknownNameError, match="cifar10.*digits.*svhn"):
        data.load("imagenet", "train")
    with pytest.raises(UnknownNameError):
        data.info("imagenet")


@pytest.mark.parametrize("split", ["val", "Train", None, 1])
def test_bad_split_is_a_config_error(split):
    with pytest.raises(ConfigError, match="split"):
        data.load("digits", split)


def test_unknown_option_names_the_option_and_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"'sise'.*allowed options: size"):
        data.load("digits", "train", sise=16)
    with pytest.raises(ConfigError, match=r"'augment'.*backend"):
        data.load("mnist", "train", augment=True)


@pytest.mark.parametrize("options", [{"size": 0}, {"size": -3}, {"size": "16"}, {"size": True}, {"size": 2.5}])
def test_bad_size_is_a_config_error(options):
    with pytest.raises(ConfigError, match="size"):
        data.load("digits", "train", **options)


@pytest.mark.parametrize("name, options", [("cifar10", {"augment": "yes"}), ("svhn", {"backend": "pil"}),
                                           ("digits_border", {"border": 0}), ("digits_border", {"seed": -1})])
def test_bad_option_values_are_config_errors(name, options):
    with pytest.raises(ConfigError, match=next(iter(options))):
        data.load(name, "train", **options)


def test_bad_download_and_root_types_are_config_errors():
    with pytest.raises(ConfigError, match="download"):
        data.load("mnist", "train", download="yes")
    with pytest.raises(ConfigError, match="root"):
        data.load("mnist", "train", root=3)


def test_available_lists_the_sets_in_registration_order_digits_first():
    """Each set registers in its own module; data/__init__ imports them so the order stays as documented."""
    assert data.available() == ["digits", "mnist", "cifar10", "cifar100", "svhn", "digits_distractor",
                                "digits_border", "mnist_distractor", "mnist_border", "npz"]


def test_available_names_all_have_info():
    names = data.available()
    assert names[0] == "digits"
    assert set(ON_DISK) | {"digits_distractor", "digits_border", "mnist_distractor", "mnist_border"} <= set(names)
    stats = {"mnist": (0.1307,), "cifar10": (0.4914, 0.4822, 0.4465), "svhn": (0.4377, 0.4438, 0.4728)}
    for name in names:
        if name == "npz":  # its shape and classes come from the user's file
            with pytest.raises(ConfigError, match="option 'path' is required"):
                data.info(name)
            continue
        meta = data.info(name)
        assert len(meta.mean) == len(meta.std) == meta.shape[0]
        if name in stats:
            assert meta.mean == stats[name]
    assert data.info("cifar100").num_classes == 100


# -- torchvision sets from tiny files in their real format --------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("name", ON_DISK)
def test_on_disk_test_split_loads_exact_pixels_and_labels(name, backend, disk):
    root, expected = disk
    dataset = data.load(name, "test", root=root, backend=backend)
    images, labels = expected[name, "test"]
    x, y = data.as_tensors(dataset)
    assert x.dtype == torch.float32 and x.shape == (len(labels), *dataset.info.shape)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert torch.equal(x, _as_float(images))
    assert y.tolist() == labels.tolist()
    assert dataset.transform is None  # no augmentation on the test split


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_svhn_label_10_is_read_as_digit_0(backend, disk):
    root, _ = disk
    _, y = data.as_tensors(data.load("svhn", "test", root=root, backend=backend))
    assert y.tolist() == [i % 10 for i in range(len(y))]


def _matches_a_crop(augmented: torch.Tensor, raw: torch.Tensor, flips: bool) -> bool:
    """Whether ``augmented`` (C, H, W) is a 4-padded crop of ``raw`` (optionally mirrored)."""
    h, w = raw.shape[-2:]
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + h, dx:dx + w]
            if torch.equal(augmented, crop) or (flips and torch.equal(augmented, crop.flip(-1))):
                return True
    return False


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("name, flips", [("cifar10", True), ("cifar100", True), ("svhn", False)])
def test_train_split_is_augmented_with_crop_and_flip(name, flips, backend, disk):
    root, expected = disk
    torch.manual_seed(0)
    train = data.load(name, "train", root=root, backend=backend)
    raw = _as_float(expected[name, "train"][0])
    augmented, labels = data.as_tensors(train)
    assert augmented.shape == raw.shape and labels.tolist() == expected[name, "train"][1].tolist()
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0
    assert not torch.equal(augmented, raw)
    assert all(_matches_a_crop(a, r, flips) for a, r in zip(augmented, raw))
    if flips:  # with random pixels a flipped crop matches no unflipped one: some image was mirrored
        assert not all(_matches_a_crop(a, r, False) for a, r in zip(augmented, raw))
    unaugmented = data.load(name, "train", root=root, backend=backend, augment=False)
    assert torch.equal(data.as_tensors(unaugmented)[0], raw)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_mnist_train_split_is_not_augmented(backend, disk):
    root, expected = disk
    train = data.load("mnist", "train", root=root, backend=backend)
    assert train.transform is None
    assert torch.equal(data.as_tensors(train)[0], _as_float(expected["mnist", "train"][0]))
    assert train.info.shape == (1, 28, 28)


@pytest.mark.skipif(TORCHVISION_ERROR is not None, reason=f"torchvision cannot be imported: {TORCHVISION_ERROR}")
@pytest.mark.parametrize("backend", ["torchvision"], indirect=True)
@pytest.mark.parametrize("name", ON_DISK)
def test_builtin_readers_match_torchvision(name, backend, disk):
    root, _ = disk
    options = {} if name == "mnist" else {"augment": False}
    for split in ("train", "test"):
        a = data.load(name, split, root=root, backend="torchvision", **options)
        b = data.load(name, split, root=root, backend="builtin", **options)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_auto_backend_reads_the_files(disk):
    root, expected = disk
    dataset = data.load("mnist", "test", root=root)  # torchvision where it imports, else the readers
    assert torch.equal(data.as_tensors(dataset)[0], _as_float(expected["mnist", "test"][0]))


def test_root_defaults_to_the_environment_variable_then_dot_data(disk, monkeypatch, tmp_path):
    root, expected = disk
    monkeypatch.setenv(data.DATA_ENV, str(root))
    assert len(data.load("mnist", "test", backend="builtin")) == len(expected["mnist", "test"][1])
    monkeypatch.delenv(data.DATA_ENV)
    monkeypatch.chdir(tmp_path)
    assert data.resolve_root(None) == tmp_path.resolve() / "data"


# -- missing data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["builtin", pytest.param("torchvision", marks=BACKENDS[1].marks)])
@pytest.mark.parametrize("name", ON_DISK + ["mnist_distractor"])
def test_missing_data_says_where_it_looked_and_how_to_download(name, backend, tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(DataNotFoundError) as raised:
        data.load(name, "train", root=empty, backend=backend)
    message = str(raised.value)
    assert str(empty.resolve()) in message
    assert "download" in message
    assert isinstance(raised.value, FileNotFoundError)


def test_corrupted_file_is_reported_as_unreadable(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(b"not an idx file")
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(b"nor this")
    with pytest.raises(DataNotFoundError, match="could not read"):
        data.load("mnist", "train", root=tmp_path, backend="builtin")


# -- synthetic budget sets -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits_distractor", "digits_border"])
def test_synthetic_sets_are_deterministic_from_the_seed(name):
    a = data.load(name, "train", seed=3)
    b = data.load(name, "train", seed=3)
    c = data.load(name, "train", seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_distractor_label_is_the_left_digit_and_the_right_digit_has_another_label():
    base = data.load("digits", "test")
    dataset = data.load("digits_distractor", "test", seed=0)
    x, y = data.as_tensors(dataset)
    bx, by = data.as_tensors(base)
    assert x.shape == (450, 1, 8, 16) and dataset.info.shape == (1, 8, 16)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert torch.equal(x[..., :8], bx) and torch.equal(y, by)  # relevant cell = base digit, same label
    right = x[..., 8:]
    # Every base image identical to the right cell has a different label than the sample.
    same = (right[:, None] == bx[None]).flatten(2).all(-1)  # (450, 450)
    assert same.any(1).all()
    assert not (same & (y[:, None] == by[None])).any()
    assert torch.equal(right, bx[dataset.other_index])
    # The distractor classes are spread over all the other classes.
    assert len(set(by[dataset.other_index].tolist())) == 10


def test_distractor_right_any_is_independent_of_the_label():
    base = data.load("digits", "test")
    _, by = data.as_tensors(base)
    dataset = data.load("digits_distractor", "test", seed=0, right="any")
    x, y = data.as_tensors(dataset)
    assert torch.equal(y, by) and torch.equal(x[..., 8:], data.as_tensors(base)[0][dataset.other_index])
    other = by[dataset.other_index]
    # Same-class pairs occur about 1 time in 10 (they never do with the default right: other_class).
    assert 0.04 < (other == y).float().mean().item() < 0.2
    assert torch.equal(data.load("digits_distractor", "test", seed=0, right="any").images, dataset.images)
    assert torch.equal(data.load("digits_distractor", "test", seed=0, right="other_class").images,
                       data.load("digits_distractor", "test", seed=0).images)
    with pytest.raises(ConfigError, match="'right'.*choose one of: other_class, any"):
        data.load("digits_distractor", "test", right="same")
    with pytest.raises(ConfigError, match="unknown option 'right'"):
        data.load("digits_border", "test", right="any")


def test_distractor_mask_marks_the_right_cell():
    dataset = data.load("digits_distractor", "train", size=12)
    mask = dataset.irrelevant_mask
    assert mask.dtype == torch.bool and mask.shape == (1, 12, 24) == dataset.info.shape
    assert mask[..., 12:].all() and not mask[..., :12].any()


def test_border_puts_the_digit_in_the_centre_of_fresh_noise():
    base = data.load("digits", "train")
    dataset = data.load("digits_border", "train", seed=0)
    x, y = data.as_tensors(dataset)
    assert x.shape == (1347, 1, 16, 16) and dataset.info.shape == (1, 16, 16)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert torch.equal(x[:, :, 4:12, 4:12], base.images) and torch.equal(y, base.labels)
    mask = dataset.irrelevant_mask
    assert mask.shape == (1, 16, 16) and mask.sum() == 16 * 16 - 8 * 8
    assert not mask[:, 4:12, 4:12].any()
    frame = x[:, mask]  # (N, 192)
    assert not torch.equal(frame[0], frame[1])  # noise is drawn per image
    assert abs(frame.mean().item() - 0.5) < 0.01 and frame.std().item() > 0.25  # uniform on [0, 1]


def test_border_width_option_sets_the_canvas():
    dataset = data.load("digits_border", "test", border=2, size=10)
    assert dataset.images.shape[1:] == (1, 14, 14) == dataset.info.shape
    assert dataset.irrelevant_mask.sum() == 14 * 14 - 10 * 10


def test_mnist_synthetic_sets_use_mnist_from_disk(disk):
    root, expected = disk
    images, labels = expected["mnist", "test"]
    distractor = data.load("mnist_distractor", "test", root=root, seed=1, backend="builtin")
    x, y = data.as_tensors(distractor)
    assert x.shape == (len(labels), 1, 28, 56) == (len(labels), *data.info("mnist_distractor").shape)
    assert torch.equal(x[..., :28], _as_float(images)) and y.tolist() == labels.tolist()
    assert (torch.from_numpy(labels)[distractor.other_index] != y).all()
    border = data.load("mnist_border", "test", root=root, seed=1, backend="builtin")
    assert border.images.shape[1:] == (1, 56, 56) == data.info("mnist_border").shape
    assert torch.equal(data.as_tensors(border)[0][:, :, 14:42, 14:42], _as_float(images))


def test_make_distractor_needs_two_classes():
    with pytest.raises(ValueError, match="two classes"):
        data.make_distractor(torch.zeros(3, 1, 4, 4), torch.zeros(3), generator=torch.Generator())


# -- augmentation --------------------------------------------------------------------------------------
def test_random_crop_flip_without_padding_or_flip_is_the_identity():
    x = torch.rand(5, 3, 8, 8)
    assert torch.equal(data.RandomCropFlip(padding=0, flip=False)(x), x)


def test_random_crop_flip_is_a_padded_crop_per_image():
    torch.manual_seed(1)
    x = torch.rand(16, 3, 10, 10)
    out = data.RandomCropFlip(padding=4, flip=True)(x)
    assert out.shape == x.shape
    assert all(_matches_a_crop(a, r, True) for a, r in zip(out, x))


# -- loaders, subsets, tensors -------------------------------------------------------------------------
def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_make_loader_order_is_reproducible_from_the_seed():
    dataset = data.load("digits", "test")
    a = _batches(data.make_loader(dataset, 64, shuffle=True, seed=5))
    b = _batches(data.make_loader(dataset, 64, shuffle=True, seed=5))
    c = _batches(data.make_loader(dataset, 64, shuffle=True, seed=6))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(dataset.labels.tolist())
    x, y = a[0]
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_make_loader_without_shuffle_keeps_dataset_order_and_drop_last():
    dataset = data.load("digits", "test")
    batches = _batches(data.make_loader(dataset, 100, shuffle=False, drop_last=True))
    assert len(batches) == 4
    assert torch.equal(torch.cat([x for x, _ in batches]), dataset.images[:400])


def test_make_loader_with_a_worker_reproduces_augmentation(disk):
    root, _ = disk
    train = data.load("cifar10", "train", root=root, backend="builtin")
    a = _batches(data.make_loader(train, 8, shuffle=True, seed=2, num_workers=1))
    b = _batches(data.make_loader(train, 8, shuffle=True, seed=2, num_workers=1))
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))


def test_make_loader_rejects_bad_arguments():
    dataset = data.load("digits", "test")
    with pytest.raises(ConfigError, match="batch_size"):
        data.make_loader(dataset, 0, shuffle=False)
    with pytest.raises(ConfigError, match="num_workers"):
        data.make_loader(dataset, 8, shuffle=False, num_workers=-1)
    with pytest.raises(ConfigError, match="distributed"):
        data.make_loader(dataset, 8, shuffle=False, distributed=True)


def test_make_loader_distributed_uses_a_seeded_distributed_sampler(tmp_path):
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this test process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        dataset = data.load("digits", "test")
        loader = data.make_loader(dataset, 50, shuffle=True, seed=3, distributed=True)
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.seed == 3
        loader.sampler.set_epoch(0)
        labels = torch.cat([y for _, y in loader])
        assert sorted(labels.tolist()) == sorted(dataset.labels.tolist())
    finally:
        dist.destroy_process_group()


def test_subset_takes_the_first_n_or_every_kth():
    dataset = data.load("digits_distractor", "test")
    first = data.subset(dataset, n=10)
    assert isinstance(first, data.ImageTensorDataset) and len(first) == 10
    assert torch.equal(first.images, dataset.images[:10])
    assert first.irrelevant_mask is dataset.irrelevant_mask and first.info == dataset.info
    assert torch.equal(first.other_index, dataset.other_index[:10]) and first.seed == dataset.seed
    every = data.subset(dataset, every=3)
    assert torch.equal(every.labels, dataset.labels[::3])
    assert torch.equal(every.other_index, dataset.other_index[::3])
    both = data.subset(dataset, n=5, every=7)
    assert torch.equal(both.labels, dataset.labels[0:35:7])
    plain = data.subset(TensorDataset(torch.rand(9, 1, 2, 2), torch.arange(9)), every=4)
    assert isinstance(plain, Subset) and plain.indices == [0, 4, 8]
    with pytest.raises(ConfigError, match="every"):
        data.subset(dataset, every=0)


def test_as_tensors_equals_stacking_the_items():
    dataset = data.load("digits", "test", size=16)
    x, y = data.as_tensors(dataset, limit=20)
    assert x.shape == (20, 1, 16, 16)
    assert torch.equal(x, torch.stack([dataset[i][0] for i in range(20)]))
    assert y.tolist() == [dataset[i][1] for i in range(20)]
    generic = TensorDataset(x, y)
    gx, gy = data.as_tensors(generic, limit=7)
    assert torch.equal(gx, x[:7]) and torch.equal(gy, y[:7]) and gy.dtype == torch.int64


def test_dataloader_batch_equals_the_items():
    dataset = data.load("digits_border", "test")
    x, y = next(iter(torch.utils.data.DataLoader(dataset, batch_size=6)))  # default collate, batched fetch
    assert torch.equal(x, torch.stack([dataset[i][0] for i in range(6)]))
    assert y.tolist() == [dataset[i][1] for i in range(6)]


# -- npz: the user's own images ---------------------------------------------------------------------
def test_npz_reads_float_and_uint8_images_for_every_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 6, 6), dtype=np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.arange(12) % 3)
    for split in ("train", "test"):
        ds = data.load("npz", split, path=str(tmp_path / "f.npz"))
        got, labels = data.as_tensors(ds)
        assert torch.equal(got, torch.from_numpy(x)) and labels.tolist() == (np.arange(12) % 3).tolist()
    assert ds.info.shape == (1, 6, 6) and ds.info.num_classes == 3
    assert ds.info.mean == (round(float(x.astype(np.float64).mean()), 4),)
    u8 = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)  # (N, H, W): one channel added
    np.savez(tmp_path / "u.npz", x=u8, y=np.array([0, 1, 2, 3, 9]))
    ds = data.load("npz", "test", path=str(tmp_path / "u.npz"), num_classes=12)
    assert torch.equal(data.as_tensors(ds)[0], torch.from_numpy(u8[:, None]).float() / 255)
    assert ds.info.num_classes == 12 and ds.info.shape == (1, 4, 4)


def test_npz_split_arrays(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", x_train=rng.random((8, 3, 4, 4)), y_train=np.arange(8) % 4,
             x_test=rng.random((3, 3, 4, 4)), y_test=np.array([0, 1, 5]))
    assert len(data.load("npz", "train", path=str(tmp_path / "s.npz"))) == 8
    test = data.load("npz", "test", path=str(tmp_path / "s.npz"))
    assert len(test) == 3 and test.info.num_classes == 6 and test.info.shape == (3, 4, 4)


def _nan_at_3(rng):
    x = rng.random((6, 1, 4, 4))
    x[3, 0, 1, 2] = np.nan
    return x


@pytest.mark.parametrize("arrays, options, error, match", [
    (lambda r: {"x": _nan_at_3(r), "y": np.arange(6)}, {}, InputError, r"array 'x' contains NaN or inf at sample 3"),
    (lambda r: {"x": r.random((6, 4, 4)) * 255, "y": np.arange(6)}, {}, InputError, r"outside \[0, 1\].*x / 255"),
    (lambda r: {"x": r.random((6, 4)), "y": np.arange(6)}, {}, InputError, r"expected \(N, C, H, W\) or \(N, H, W\)"),
    (lambda r: {"x": r.random((6, 4, 4, 3)), "y": np.arange(6)}, {}, InputError, r"channels-last.*transpose"),
    (lambda r: {"x": r.integers(0, 2, (6, 4, 4)), "y": np.arange(6)}, {}, InputError, r"dtype int64.*uint8"),
    (lambda r: {"x": r.random((6, 4, 4)), "y": np.arange(6) * 0.5}, {}, InputError, r"'y' has dtype float64.*astype"),
    (lambda r: {"x": r.random((6, 4, 4)), "y": np.arange(5)}, {}, InputError, r"'y' has shape \(5,\); expected \(6,\)"),
    (lambda r: {"x": r.random((6, 4, 4)), "y": np.arange(6) - 1}, {}, InputError, r"negative label -1 at sample 0"),
    (lambda r: {"x": r.random((6, 4, 4))}, {}, InputError, r"no array 'y' \(found: x\)"),
    (lambda r: {"x": r.random((6, 4, 4)), "y": np.arange(6)}, {"num_classes": 5}, InputError, r"label 5 is out of range"),
    (lambda r: {"x": r.random((6, 4, 4)), "y": np.arange(6)}, {"num_classes": 0}, ConfigError, r"'num_classes' must be"),
    (None, {}, DataNotFoundError, r"does not exist"),
])
def test_npz_bad_files_name_the_array_and_the_fix(tmp_path, arrays, options, error, match):
    path = tmp_path / "d.npz"
    if arrays is not None:
        np.savez(path, **arrays(np.random.default_rng(0)))
    with pytest.raises(error, match=match):
        data.load("npz", "test", path=str(path), **options)


def test_npz_needs_a_path_and_an_npz_archive(tmp_path):
    with pytest.raises(ConfigError, match="option 'path' is required"):
        data.load("npz", "test")
    (tmp_path / "t.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable .npz archive"):
        data.load("npz", "test", path=str(tmp_path / "t.npz"))
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 4)))
    with pytest.raises(InputError, match="single .npy array"):
        data.load("npz", "test", path=str(tmp_path / "a.npy"))
