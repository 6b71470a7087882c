"""TFDS builders without TensorFlow and the ``get_source`` resolver (never downloads anything)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vl_jax.data import DatasetNotPreparedError, get_source, known_names
from vl_jax.data import wordnet_ids as W
from vl_jax.data.builders import _common
from vl_jax.data.builders._common import read_skipped
from vl_jax.data.builders.imagenet_subset import (
    VAL_LABEL_FILES,
    ImagenetSubset,
    ImagenetSubsetConfig,
    per_class_order,
)
from vl_jax.data.wnid_names import ILSVRC2012_WNIDS, WNID_LEMMAS
from vl_jax.images import load_rgb

# The published class lists (docs/data.md), verbatim: the 15 ImageNet-Dogs classes and ImageNet-10.
DOGS_FROM_SPEC = """n02085936 Maltese_dog, n02086646 Blenheim_spaniel, n02088238 basset,
n02091467 Norwegian_elkhound, n02097130 giant_schnauzer, n02099601 golden_retriever, n02101388
Brittany_spaniel, n02101556 clumber, n02102177 Welsh_springer_spaniel, n02105056 groenendael,
n02105412 kelpie, n02105855 Shetland_sheepdog, n02107142 Doberman, n02110958 pug, n02112137 chow"""
IMAGENET10_FROM_SPEC = """n02056570, n02085936, n02128757, n02690373, n02692877, n03095699,
n04254680, n04285008, n04467665, n07747607"""

# easy-VQA train images looked at by eye (shape, colour); the first six have a label the
# questions leave open, so it comes from the pixel rule (ids 106, 121, 179: both labels).
EASY_VQA_HAND_CHECKED = [
    (106, "triangle", "gray"),
    (121, "rectangle", "brown"),
    (179, "circle", "red"),
    (57, "triangle", "brown"),
    (126, "circle", "black"),
    (49, "circle", "blue"),
    (0, "rectangle", "blue"),
    (3, "rectangle", "brown"),
]


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")

    for attr in ("download", "download_and_extract", "extract"):
        monkeypatch.setattr(tfds.download.DownloadManager, attr, refuse)


# ----------------------------------------------------------------------------- image factory


def _rgb(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, kind="jpeg", seed=0):
    """Write a test image of ``kind`` to ``path`` (any extension); returns the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = _rgb(seed=seed)
    if kind == "jpeg":
        Image.fromarray(rgb).save(path, format="JPEG", quality=90)
    elif kind == "png":
        Image.fromarray(rgb).save(path, format="PNG")
    elif kind == "gray":
        Image.fromarray(rgb[..., 0]).save(path, format="JPEG")
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG")
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path, format="PNG")
    elif kind == "rgba":
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 0, np.uint8)])  # fully transparent
        Image.fromarray(rgba, "RGBA").save(path, format="PNG")
    elif kind == "16bit":
        Image.fromarray(np.full((5, 7), 0x1234, np.uint16)).save(path, format="PNG")
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise on display
        Image.fromarray(_rgb(10, 20, seed)).save(path, format="JPEG", exif=exif.tobytes())
    elif kind == "1x1":
        Image.fromarray(np.array([[[10, 20, 30]]], np.uint8)).save(path, format="PNG")
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG")
        open(path, "wb").write(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "text":
        open(path, "w").write("not an image\n")
    elif kind == "big":
        Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(path, format="PNG")
    return path


def ilsvrc_tree(root, wnids, n_train=2, val="loc_csv", n_val=1):
    """A tiny ILSVRC-2012 tree with real file names; returns {val file stem: wnid}."""
    for k, w in enumerate(wnids):
        for i in range(n_train):
            save(os.path.join(root, "train", w, f"{w}_{1000 + i}.JPEG"), seed=10 * k + i)
    others = [w for w in ILSVRC2012_WNIDS if w not in wnids][:2]  # val images of other classes
    val_wnids = [w for w in wnids for _ in range(n_val)] + others
    truth = {}
    for i, w in enumerate(val_wnids, 1):
        stem = f"ILSVRC2012_val_{i:08d}"
        truth[stem] = w
        folder = os.path.join(root, "val", w) if val == "folders" else os.path.join(root, "val")
        save(os.path.join(folder, stem + ".JPEG"), seed=500 + i)
    if val == "loc_csv":
        rows = [f"{s},{w} 10 20 30 40 {w} 1 2 3 4\n" for s, w in truth.items()]
        open(os.path.join(root, "LOC_val_solution.csv"), "w").write(
            "ImageId,PredictionString\n" + "".join(rows)
        )
    elif val == "labels_txt":
        lines = [f"{s}.JPEG {w}\n" for s, w in truth.items()]
        open(os.path.join(root, "val", "val_labels.txt"), "w").write(
            "# name wnid\n" + "".join(lines)
        )
    elif val == "devkit":
        ids = [
            ILSVRC2012_WNIDS.index(truth[f"ILSVRC2012_val_{i:08d}"]) + 1
            for i in range(1, len(truth) + 1)
        ]
        open(os.path.join(root, "ILSVRC2012_validation_ground_truth.txt"), "w").write(
            "".join(f"{i}\n" for i in ids)
        )
    return truth


def tiny_builder(wnids, data_dir, manual_dir, name="tiny", **kwargs):
    config = ImagenetSubsetConfig(name=name, wnids=tuple(wnids), **kwargs)
    builder = ImagenetSubset(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def read_all(builder, split):
    ds = builder.as_data_source(split=split)
    return {ex["file_name"].decode(): ex for ex in (ds[i] for i in range(len(ds)))}


# ----------------------------------------------------------------------------- class lists


def test_class_lists_match_the_benchmark_definitions():
    spec = [item.split() for item in DOGS_FROM_SPEC.replace("\n", " ").split(", ")]
    assert W.IMAGENET_DOGS == tuple(w for w, _ in spec)
    assert W.class_names(W.IMAGENET_DOGS) == [n.replace("_", " ") for _, n in spec]
    assert W.IMAGENET10 == tuple(IMAGENET10_FROM_SPEC.replace("\n", " ").split(", "))
    assert W.IMAGENET_DOG10 == W.IMAGENET_DOGS[:10] and len(set(W.IMAGENET_DOG10)) == 10
    assert len(W.CMC_IMAGENET100_FILE_ORDER) == len(set(W.IMAGENET100)) == 100
    assert W.CMC_IMAGENET100_FILE_ORDER[:3] == ("n02869837", "n01749939", "n02488291")
    for subset in (W.IMAGENET_DOGS, W.IMAGENET10, W.IMAGENET100):
        assert list(subset) == sorted(subset) and set(subset) <= set(ILSVRC2012_WNIDS)
        assert len(set(W.class_names(subset))) == len(subset)


def test_wordnet_table():
    assert len(ILSVRC2012_WNIDS) == len(set(ILSVRC2012_WNIDS)) == len(WNID_LEMMAS) == 1000
    assert sorted(ILSVRC2012_WNIDS)[0] == "n01440764" and WNID_LEMMAS["n01440764"][0] == "tench"
    assert ILSVRC2012_WNIDS[490 - 1] == "n01751748"  # ground truth of ILSVRC2012_val_00000001
    assert W.class_name("n02110958") == "pug"
    assert W.class_names(["n02012849", "n03126707"]) == ["crane (n02012849)", "crane (n03126707)"]
    with pytest.raises(KeyError, match="not an ImageNet-1k"):
        W.class_name("n00000000")


# ----------------------------------------------------------------------------- imagenet_subset


def test_imagenet10_via_resolver_flat_val_with_loc_csv(tmp_path):
    manual, data = tmp_path / "ilsvrc", tmp_path / "data"
    truth = ilsvrc_tree(str(manual), W.IMAGENET10)
    train = get_source("imagenet10", "train", data_dir=data, manual_dir=manual)
    assert len(train) == 20 and train.num_classes == 10
    assert train.class_names[:3] == ["king penguin", "Maltese dog", "snow leopard"]
    ex = train[0]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (24, 32, 3)
    assert ex["label"].dtype == np.int32 and ex["id"].endswith(".JPEG")
    assert ex["id"].startswith(W.IMAGENET10[int(ex["label"])])
    assert np.bincount(train.labels(), minlength=10).tolist() == [2] * 10
    np.testing.assert_array_equal(ex["image"], load_rgb(manual / "train" / ex["id"][:9] / ex["id"]))

    val = get_source("imagenet_subset/imagenet10", "validation", data_dir=data, prepare=False)
    assert len(val) == 10  # the 2 val images of other classes are not in the subset
    for i in range(len(val)):
        ex = val[i]
        assert W.IMAGENET10[ex["label"]] == truth[ex["id"].removesuffix(".JPEG")]
    assert read_skipped(data / "imagenet_subset" / "imagenet10" / "1.0.0") == []


@pytest.mark.parametrize("layout", ["folders", "labels_txt", "devkit"])
def test_val_layouts(tmp_path, layout):
    wnids = W.IMAGENET_DOGS[:3]
    truth = ilsvrc_tree(str(tmp_path / "m"), wnids, n_train=1, val=layout, n_val=2)
    builder = tiny_builder(wnids, tmp_path / "d", tmp_path / "m")
    val = read_all(builder, "validation")
    assert len(val) == 6
    for name, ex in val.items():
        assert ex["wnid"].decode() == wnids[ex["label"]] == truth[name.removesuffix(".JPEG")]


def test_kaggle_layout_and_clear_errors(tmp_path):
    wnids = W.IMAGENET_DOGS[:2]
    kaggle = tmp_path / "kaggle"
    ilsvrc_tree(str(kaggle / "ILSVRC" / "Data" / "CLS-LOC"), wnids, n_train=1, val="folders")
    assert len(read_all(tiny_builder(wnids, tmp_path / "d", kaggle), "train")) == 2

    with pytest.raises(FileNotFoundError, match=r"empty.* does not exist or is empty.*manual_dir"):
        tiny_builder(wnids, tmp_path / "d2", tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no ILSVRC-2012 train/ folder .*other"):
        tiny_builder(wnids, tmp_path / "d2", tmp_path / "other")
    ilsvrc_tree(str(tmp_path / "m"), wnids[:1], n_train=1, val="none")
    with pytest.raises(FileNotFoundError, match=f"missing under .*train.*{wnids[1]}"):
        tiny_builder(wnids, tmp_path / "d3", tmp_path / "m")
    ilsvrc_tree(str(tmp_path / "m"), wnids, n_train=1, val="none")  # flat val, no label file
    with pytest.raises(FileNotFoundError, match="|".join(VAL_LABEL_FILES)):
        tiny_builder(wnids, tmp_path / "d4", tmp_path / "m")


BAD = {"truncated": "truncated or corrupt", "empty": "empty file", "text": "not an image",
       "big": "decompression bomb", "noperm": "PermissionError"}  # fmt: skip
CONVERTED = ["gray", "cmyk", "palette", "rgba", "16bit", "exif", "1x1", "png", "jpeg"]


def test_bad_images_are_skipped_and_recorded_odd_ones_converted(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # "big" (200x200) is a bomb
    wnids = W.IMAGENET_DOGS[:2]
    ilsvrc_tree(str(tmp_path / "m"), wnids, n_train=1, val="folders")
    folder = tmp_path / "m" / "train" / wnids[0]
    paths = {k: save(str(folder / f"{wnids[0]}_{k}.JPEG"), k if k != "noperm" else "jpeg")
             for k in [*BAD, *CONVERTED]}  # fmt: skip
    os.chmod(paths["noperm"], 0)
    if os.access(paths["noperm"], os.R_OK):  # root ignores permissions: fake the refusal
        real = _common.load_rgb

        def load_rgb_as_user(path):
            if os.fspath(path) == paths["noperm"]:
                raise PermissionError(13, "Permission denied", path)
            return real(path)

        monkeypatch.setattr(_common, "load_rgb", load_rgb_as_user)

    builder = tiny_builder(wnids, tmp_path / "d", tmp_path / "m")
    skipped = read_skipped(builder.data_dir)
    assert {p: s for s, p, _ in skipped} == {paths[k]: "train" for k in BAD}
    for _, path, reason in skipped:
        assert BAD[next(k for k in BAD if paths[k] == path)] in reason
    assert builder.info.metadata["num_skipped"] == {"train": len(BAD)}

    train = read_all(builder, "train")  # TFDS's own decoder (PIL, no conversions)
    assert len(train) == 2 + len(CONVERTED)
    for kind in CONVERTED:
        image = train[os.path.basename(paths[kind])]["image"]
        np.testing.assert_array_equal(image, load_rgb(paths[kind]), err_msg=kind)
    assert train[os.path.basename(paths["exif"])]["image"].shape == (20, 10, 3)
    assert (train[os.path.basename(paths["rgba"])]["image"] == 255).all()  # white background
    assert (train[os.path.basename(paths["16bit"])]["image"] == 0x12).all()
    jpeg = paths["jpeg"]
    assert _common.stored_image_bytes(jpeg) == open(jpeg, "rb").read()  # no re-compression


def test_dog10_seeded_per_class_sample(tmp_path):
    wnids = W.IMAGENET_DOG10[:3]
    ilsvrc_tree(str(tmp_path / "m"), wnids, n_train=5, val="folders")
    bad = tmp_path / "m" / "train" / wnids[0] / f"{wnids[0]}_1002.JPEG"
    save(str(bad), "truncated")
    kw = dict(name="tiny_dog", train_per_class=3)
    first = read_all(tiny_builder(wnids, tmp_path / "d1", tmp_path / "m", **kw), "train_3")
    again = read_all(tiny_builder(wnids, tmp_path / "d2", tmp_path / "m", **kw), "train_3")
    assert sorted(first) == sorted(again) and len(first) == 9
    for label, w in enumerate(wnids):
        names = [f"{w}_{1000 + i}.JPEG" for i in range(5)]
        order = [names[i] for i in per_class_order(5, label, seed=0) if names[i] != bad.name]
        assert sorted(n for n in first if n.startswith(w)) == sorted(order[:3])
    other_seed = read_all(
        tiny_builder(wnids, tmp_path / "d3", tmp_path / "m", sample_seed=1, **kw), "train_3"
    )
    assert len(other_seed) == 9 and sorted(other_seed) != sorted(first)


# ----------------------------------------------------------------------------- image_folder


def test_image_folder_source(tmp_path):
    root = tmp_path / "My Photos"
    save(str(root / "cats" / "a.jpg"))
    save(str(root / "cats" / "nested" / "b.png"), "png")
    save(str(root / "dogs" / "c.JPEG"), "gray")
    save(str(root / "dogs" / "bad.jpg"), "truncated")
    save(str(root / "loose.jpg"))
    (root / "dogs" / "notes.txt").write_text("x")
    src = get_source(f"image_folder:{root}", "train", data_dir=tmp_path / "d")
    assert len(src) == 3 and src.class_names == ["cats", "dogs"]
    by_id = {src[i]["id"]: src[i] for i in range(len(src))}
    assert set(by_id) == {"cats/a.jpg", "cats/nested/b.png", "dogs/c.JPEG"}
    assert by_id["dogs/c.JPEG"]["label"] == 1 and by_id["dogs/c.JPEG"]["image"].shape == (24, 32, 3)
    (prepared,) = (tmp_path / "d" / "image_folder").iterdir()
    assert prepared.name.startswith("my_photos_")
    reasons = {os.path.basename(p): r for _, p, r in read_skipped(next(prepared.iterdir()))}
    assert set(reasons) == {"bad.jpg", "loose.jpg", "notes.txt"}
    assert "class subfolder" in reasons["loose.jpg"]

    # Unchanged folder -> same prepared copy; a changed folder -> a new one.
    assert (
        len(get_source(f"image_folder:{root}", "train", data_dir=tmp_path / "d", prepare=False))
        == 3
    )
    save(str(root / "dogs" / "d.jpg"))
    with pytest.raises(DatasetNotPreparedError):
        get_source(f"image_folder:{root}", "train", data_dir=tmp_path / "d", prepare=False)
    assert len(get_source(f"image_folder:{root}", "train", data_dir=tmp_path / "d")) == 4


def test_image_folder_split_layout(tmp_path):
    root = tmp_path / "ds"
    save(str(root / "train" / "a" / "1.png"), "png")
    save(str(root / "train" / "b" / "2.png"), "png")
    save(str(root / "test" / "b" / "3.png"), "png")
    test = get_source(f"image_folder:{root}", "test", data_dir=tmp_path / "d")
    assert test.class_names == ["a", "b"] and len(test) == 1 and test[0]["label"] == 1
    assert test[0]["id"] == "test/b/3.png"
    assert len(get_source(f"image_folder:{root}", "train", data_dir=tmp_path / "d")) == 2


# ----------------------------------------------------------------------------- easy_vqa_shapes


@pytest.fixture(scope="module")
def easy_vqa_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("easy_vqa")
    get_source("easy_vqa_shapes", "test", data_dir=data)  # prepares both splits (~5-10 s)
    return data


@pytest.mark.slow
def test_easy_vqa_shapes(easy_vqa_dir):
    train = get_source("easy_vqa_shapes", "train", data_dir=easy_vqa_dir, prepare=False)
    test = get_source("easy_vqa_shapes", "test", data_dir=easy_vqa_dir, prepare=False)
    colors = get_source("easy_vqa_colors", "train", data_dir=easy_vqa_dir, prepare=False)
    assert (len(train), len(test), len(colors)) == (4000, 1000, 4000)
    assert train.class_names == ["circle", "rectangle", "triangle"]
    assert colors.num_classes == 8 and colors.class_names[:2] == ["black", "blue"]
    assert np.bincount(train.labels()).min() > 1000 and np.bincount(colors.labels()).min() > 400

    builder = tfds.builder("easy_vqa_shapes", data_dir=str(easy_vqa_dir))
    sources = builder.info.metadata["label_sources"]
    assert sources["train"] == {"shape_from_questions": 3837, "shape_from_pixels": 163,
                                "color_from_questions": 3712, "color_from_pixels": 288}  # fmt: skip
    raw = builder.as_data_source(split="train")
    by_image_id = {int(raw[i]["image_id"]): i for i in range(len(raw))}
    for image_id, shape, color in EASY_VQA_HAND_CHECKED:
        i = by_image_id[image_id]
        assert train.class_names[train[i]["label"]] == shape, image_id
        assert colors.class_names[colors[i]["label"]] == color, image_id
        assert train[i]["id"] == f"train/{image_id}" and train[i]["image"].shape == (64, 64, 3)
    ex = raw[by_image_id[0]]
    assert b"what color is the shape?" in list(ex["questions"])
    assert len(ex["questions"]) == len(ex["answers"])


# ----------------------------------------------------------------------------- resolver


def test_resolver_names_and_errors(tmp_path, easy_vqa_dir):
    for name in ("imagenet_dogs", "imagenet_subset/imagenet_dogs", "easy_vqa_shapes", "cifar10",
                 "cifar100_20", "stl10", "stanford_dogs15", "image_folder:<path>"):  # fmt: skip
        assert name in known_names()
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar11'; known: .*cifar100_20"):
        get_source("cifar11", "train")
    with pytest.raises(ValueError, match="no split 'validation'"):
        get_source("easy_vqa_shapes", "validation", data_dir=easy_vqa_dir)
    for name in ("cifar10", "stanford_dogs15"):
        with pytest.raises(DatasetNotPreparedError, match=r"not prepared.*never downloaded"):
            get_source(name, "train", data_dir=tmp_path)
    with pytest.raises(DatasetNotPreparedError, match="imagenet_dogs is not prepared"):
        get_source("imagenet_dogs", "train", data_dir=tmp_path, prepare=False)
    with pytest.raises(FileNotFoundError, match="manual"):
        get_source("imagenet_dogs", "train", data_dir=tmp_path)  # default manual dir is empty


def _png(seed):
    buf = io.BytesIO()
    Image.fromarray(_rgb(8, 8, seed)).save(buf, format="PNG")
    return buf.getvalue()


def fake_prepare(monkeypatch, name, data_dir, splits, label_names=None, **more_names):
    """Prepare the *registered* TFDS dataset ``name`` from in-memory examples (no network).

    Label names that the real builder reads from the downloaded files are given here
    (``label_names`` for feature ``label``, ``<feature>=names`` for others).
    """
    builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")
    names = {"label": label_names, **more_names} if label_names else more_names

    def split_generators(self, dl_manager):
        for feature, values in names.items():
            self.info.features[feature].names = values
        return {s: iter(rows) for s, rows in splits.items()}

    monkeypatch.setattr(type(builder), "_split_generators", split_generators)
    builder.download_and_prepare()


def test_registered_dataset_adapters(tmp_path, monkeypatch):
    cifar = [
        (f"train_{i}", {"id": f"train_{i}", "image": _png(i), "label": i % 10}) for i in range(4)
    ]
    cifar10_names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    fake_prepare(monkeypatch, "cifar10", tmp_path, {"train": cifar}, cifar10_names)
    src = get_source("cifar10", "train", data_dir=tmp_path)
    assert len(src) == 4 and src.class_names[:2] == ["airplane", "automobile"]
    assert {src[i]["id"]: int(src[i]["label"]) for i in range(4)} == {
        f"train_{i}": i for i in range(4)
    }

    rows = [
        (i, {"id": f"test_{i}", "image": _png(i), "label": 99 - i, "coarse_label": 19 - i})
        for i in range(3)
    ]
    coarse = ["aquatic_mammals"] + [f"super{i}" for i in range(1, 20)]
    fine = [f"fine{i}" for i in range(100)]
    fake_prepare(monkeypatch, "cifar100", tmp_path, {"test": rows}, fine, coarse_label=coarse)
    src = get_source("cifar100_20", "test", data_dir=tmp_path)
    assert src.num_classes == 20 and src.class_names[0] == "aquatic mammals"
    assert sorted(src.labels().tolist()) == [17, 18, 19]

    stl = {"train": [(i, {"image": _png(i), "label": 3}) for i in range(2)],
           "unlabelled": [(i, {"image": _png(i), "label": -1}) for i in range(2)]}  # fmt: skip
    fake_prepare(monkeypatch, "stl10", tmp_path, stl, label_names=[f"c{i}" for i in range(10)])
    unlabelled = get_source("stl10", "unlabelled", data_dir=tmp_path)
    assert unlabelled.labels().tolist() == [-1, -1] and unlabelled[1]["id"] in {
        "unlabelled/0",
        "unlabelled/1",
    }

    # Stanford Dogs labels are "<wnid>-<breed>": keep the 15 ImageNet-Dogs breeds, relabel.
    names = [f"{w}-breed{i}" for i, w in enumerate(sorted(ILSVRC2012_WNIDS)[151:271])]
    assert set(W.IMAGENET_DOGS) <= {n[:9] for n in names}
    dog = {w: names.index(next(n for n in names if n.startswith(w))) for w in W.IMAGENET_DOGS}
    picks = [0, dog["n02110958"], dog["n02085936"], 1]  # not a dog15, pug, Maltese, not
    rows = [(f"f{i}.jpg", {"image": _png(i), "image/filename": f"f{i}.jpg", "label": y,
                           "objects": {"bbox": np.zeros((0, 4), np.float32)}})
            for i, y in enumerate(picks)]  # fmt: skip
    fake_prepare(monkeypatch, "stanford_dogs", tmp_path, {"train": rows}, label_names=names)
    src = get_source("stanford_dogs15", "train", data_dir=tmp_path)
    assert (
        len(src) == 2
        and src.num_classes == 15
        and src.class_names == W.class_names(W.IMAGENET_DOGS)
    )
    got = {src[i]["id"]: src.class_names[src[i]["label"]] for i in range(2)}
    assert got == {"f1.jpg": "pug", "f2.jpg": "Maltese dog"}
    assert src[-1]["image"].shape == (8, 8, 3)
    with pytest.raises(IndexError):
        src[2]
