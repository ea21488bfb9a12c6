"""Datasets: shapes determinism and splits, digits, image folders (ADM crop, errors), registry, checks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.data.datasets import (
    DATASETS,
    DigitsDataset,
    ImageFolderDataset,
    ShapesDataset,
    build_dataset,
    center_crop_arr,
    validate_dataset,
)
from train.errors import UserError


def test_shapes_items_and_balance():
    ds = ShapesDataset("train", n=200, size=32)
    image, label = ds[13]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 3
    assert torch.bincount(ds.labels).tolist() == [20] * 10
    assert ds.images.float().std() > 30  # not blank


def test_shapes_pure_function_of_seed_split_index():
    big = ShapesDataset("train", n=300, seed=1)
    assert torch.equal(ShapesDataset("train", n=40, seed=1).images, big.images[:40])
    assert torch.equal(ShapesDataset("train", n=300, seed=1, chunk=64).images, big.images)
    assert not torch.equal(ShapesDataset("train", n=40, seed=2).images, big.images[:40])
    val = ShapesDataset("val", n=300, seed=1)
    same = (val.images.flatten(1)[:, None] == big.images.flatten(1)[None]).all(-1)
    assert not same.any()


def test_shapes_size_and_bad_split():
    assert ShapesDataset("val", n=10, size=64).images.shape == (10, 3, 64, 64)
    assert len(ShapesDataset("val")) == 2000
    with pytest.raises(UserError, match="split"):
        ShapesDataset("test", n=10)


def test_digits_split():
    train, val = DigitsDataset("train", size=16), DigitsDataset("val", size=16)
    assert len(train) + len(val) == 1797 and len(val) == 359
    image, label = train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and 0 <= label < 10
    assert torch.equal(image[0], image[2])  # grey replicated to RGB
    assert torch.equal(DigitsDataset("val", size=16).images, val.images)


def _save(path: Path, size: tuple[int, int], color=(200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_center_crop_arr_adm():
    # 600x300 (w x h) -> halve once (300x150 >= 2*64? 150 >= 128 yes -> 150x75), then scale short side to 64
    arr = np.zeros((300, 600, 3), np.uint8)
    arr[:, 300:] = 255  # right half white: the centre crop straddles the boundary
    out = center_crop_arr(Image.fromarray(arr), 64)
    assert out.shape == (64, 64, 3)
    assert out[:, :20].max() < 10 and out[:, -20:].min() > 245


def test_image_folder(tmp_path):
    _save(tmp_path / "b_dog" / "1.png", (100, 80), (0, 0, 255))
    _save(tmp_path / "a_cat" / "1.jpg", (50, 70))
    _save(tmp_path / "a_cat" / "sub" / "2.png", (64, 64))
    (tmp_path / "a_cat" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, size=32)
    assert ds.classes == ("a_cat", "b_dog") and len(ds) == 3
    image, label = ds[2]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 1
    assert image[2].min() == 255 and image[0].max() == 0
    validate_dataset(ds, 32, 2)


def test_image_folder_hflip(tmp_path):
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, :16] = 255
    (tmp_path / "c").mkdir()
    Image.fromarray(arr).save(tmp_path / "c" / "x.png")
    ds = ImageFolderDataset(tmp_path, size=32, hflip=True)
    torch.manual_seed(0)
    lefts = {int(ds[0][0][0, 0, 0]) for _ in range(20)}
    assert lefts == {0, 255}


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UserError, match="no images"):
        ImageFolderDataset(tmp_path)
    good = tmp_path / "empty_class" / "ok.png"
    _save(good, (40, 40))
    bad = tmp_path / "empty_class" / "zz_truncated.png"
    bad.write_bytes(good.read_bytes()[:60])
    ds = ImageFolderDataset(tmp_path, size=32)
    with pytest.raises(UserError, match="zz_truncated.png.*re-encode") as err:
        ds[1]
    assert "\n" not in str(err.value)


def test_registry(tmp_path):
    assert set(DATASETS) == {"shapes", "scenes", "scenes-plain", "fashion-mnist", "digits", "folder", "latents",
                             "captioned-scenes", "captioned-shapes", "coco-features"}  # the last three: train.data.captions
    assert len(build_dataset("shapes", "val", n=20, size=16)) == 20
    with pytest.raises(UserError, match="shapes, scenes, scenes-plain, fashion-mnist, digits, folder, latents, captioned-scenes"):
        build_dataset("imagenet", "train")
    with pytest.raises(UserError, match="root"):
        build_dataset("folder", "train")
    _save(tmp_path / "val" / "k" / "1.png", (32, 32))
    _save(tmp_path / "train" / "k" / "1.png", (32, 32))
    _save(tmp_path / "train" / "k" / "2.png", (32, 32))
    assert len(build_dataset("folder", "train", root=tmp_path, size=32)) == 2
    assert len(build_dataset("folder", "val", root=tmp_path, size=32)) == 1


def test_validate_dataset(tmp_path):
    ds = ShapesDataset("val", n=20, size=32)
    validate_dataset(ds, 32, 10)
    with pytest.raises(UserError, match="index 0.*image size"):
        validate_dataset(ds, 64, 10)
    with pytest.raises(UserError, match="label 5 at index 5.*at least 10"):
        validate_dataset(ds, 32, 5)
    with pytest.raises(UserError, match="empty"):
        validate_dataset(ShapesDataset("val", n=0), 32, 10)
    _save(tmp_path / "k" / "big.png", (64, 64))
    with pytest.raises(UserError, match="big.png"):
        validate_dataset(ImageFolderDataset(tmp_path, size=64), 32, 10)
