"""Tests of chapter 00 (fcos_lib.voc, course_data, transforms, data): the VOC parser, the generated dataset, the letterbox loader.

Box convention under test: VOC XML holds 1-based inclusive pixel indices; we use 0-based edges,
x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax.
"""
import shutil

import pytest
import torch
from PIL import Image

from fcos_lib.course_data import COURSE_CLASSES, make_course_dataset
from fcos_lib.data import VOCDataset, collate_detection
from fcos_lib.env import default_data_dir, is_offline
from fcos_lib.transforms import boxes_to_original
from fcos_lib.voc import VOC_CLASSES, DatasetError, download_voc, parse_voc_annotation, read_class_names

XML = """<annotation>
  <filename>{image_id}.jpg</filename>
  <size><width>{W}</width><height>{H}</height><depth>3</depth></size>
{objects}</annotation>
"""
OBJECT = """  <object><name>{name}</name><difficult>{difficult}</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>
"""


def write_xml(path, W, H, objects, image_id="img"):
    body = "".join(OBJECT.format(**{"difficult": 0, **o}) for o in objects)
    path.write_text(XML.format(image_id=image_id, W=W, H=H, objects=body))
    return path


def make_voc(root, images, splits=None):
    """A tiny VOC folder: images = {image_id: (W, H, objects)}; every id in train.txt by default."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (W, H, objects) in images.items():
        Image.new("RGB", (W, H), (120, 60, 30)).save(root / "JPEGImages" / f"{image_id}.jpg")
        write_xml(root / "Annotations" / f"{image_id}.xml", W, H, objects, image_id)
    for split, ids in (splits or {"train": list(images)}).items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return root


@pytest.fixture(scope="module")
def course_root(tmp_path_factory):
    return make_course_dataset(tmp_path_factory.mktemp("data") / "course_voc", num_train=16, num_val=4)


# ---------------------------------------------------------------- constants and switches

def test_constants_and_offline_switch(monkeypatch, tmp_path):
    assert len(VOC_CLASSES) == 20 and list(VOC_CLASSES) == sorted(VOC_CLASSES)
    assert len(COURSE_CLASSES) == 5 and list(COURSE_CLASSES) == sorted(COURSE_CLASSES)
    assert issubclass(DatasetError, ValueError)
    monkeypatch.setenv("FCOS_OFFLINE", "1")
    assert is_offline()
    monkeypatch.setenv("FCOS_OFFLINE", "0")
    assert not is_offline()
    monkeypatch.setenv("FCOS_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


# ---------------------------------------------------------------- the VOC XML parser

def test_parse_hand_written_xml(tmp_path):
    # A 200 x 100 image (W x H). 1-based inclusive -> 0-based edges: subtract 1 from xmin, ymin.
    #   dog  xmin=1   ymin=1  xmax=50  ymax=40  -> (0, 0, 50, 40): 50 px wide, 40 px high
    #   cat  xmin=101 ymin=51 xmax=200 ymax=100 -> (100, 50, 200, 100): touches the right/bottom edge
    #   cat  xmin=10  ymin=10 xmax=10  ymax=10  -> (9, 9, 10, 10): a single pixel, difficult
    xml = write_xml(tmp_path / "a.xml", 200, 100, [
        dict(name="dog", xmin=1, ymin=1, xmax=50, ymax=40),
        dict(name="cat", xmin=101, ymin=51, xmax=200, ymax=100, difficult=1),
        dict(name="cat", xmin=10, ymin=10, xmax=10, ymax=10, difficult=1),
    ])
    ann = parse_voc_annotation(xml, ["cat", "dog"])
    assert ann["boxes"].dtype == torch.float32 and ann["labels"].dtype == torch.int64
    assert ann["difficult"].dtype == torch.bool
    assert ann["boxes"].tolist() == [[0, 0, 50, 40], [100, 50, 200, 100], [9, 9, 10, 10]]
    assert ann["labels"].tolist() == [1, 0, 0]
    assert ann["difficult"].tolist() == [False, True, True]
    assert ann["size"] == (100, 200)


def test_parse_no_objects_and_missing_difficult(tmp_path):
    xml = write_xml(tmp_path / "empty.xml", 50, 40, [])
    ann = parse_voc_annotation(xml, ["cat"])
    assert ann["boxes"].shape == (0, 4) and ann["labels"].shape == (0,) and ann["difficult"].shape == (0,)
    # <difficult> is optional in exports: missing means 0. Float coordinates (CVAT) are fine.
    text = (XML.format(image_id="x", W=50, H=40, objects="  <object><name>cat</name><bndbox><xmin>1.5</xmin>"
            "<ymin>2</ymin><xmax>10.5</xmax><ymax>20</ymax></bndbox></object>\n"))
    (tmp_path / "x.xml").write_text(text)
    ann = parse_voc_annotation(tmp_path / "x.xml", ["cat"])
    assert ann["boxes"].tolist() == [[0.5, 1.0, 10.5, 20.0]] and ann["difficult"].tolist() == [False]


def test_parse_clips_one_pixel_overshoot(tmp_path):
    # LabelImg/CVAT may write 0-based xmin=0: x1 = -1 is clipped to 0; xmax = W + 1 is clipped to W.
    xml = write_xml(tmp_path / "a.xml", 50, 40, [dict(name="cat", xmin=0, ymin=0, xmax=51, ymax=41)])
    assert parse_voc_annotation(xml, ["cat"])["boxes"].tolist() == [[0, 0, 50, 40]]


@pytest.mark.parametrize("box, message", [
    (dict(xmin=20, ymin=5, xmax=10, ymax=30), r"bad\.xml.*degenerate.*x2 > x1"),
    (dict(xmin=5, ymin=30, xmax=20, ymax=29), r"bad\.xml.*degenerate"),
    (dict(xmin=5, ymin=5, xmax=60, ymax=30), r"bad\.xml.*outside the 50 x 40 image"),
    (dict(xmin=-5, ymin=5, xmax=20, ymax=30), r"bad\.xml.*outside"),
])
def test_parse_rejects_bad_boxes(tmp_path, box, message):
    xml = write_xml(tmp_path / "bad.xml", 50, 40, [dict(name="cat", **box)])
    with pytest.raises(DatasetError, match=message):
        parse_voc_annotation(xml, ["cat"])


def test_parse_rejects_unknown_class_listing_known_ones(tmp_path):
    xml = write_xml(tmp_path / "a.xml", 50, 40, [dict(name="zebra", xmin=1, ymin=1, xmax=9, ymax=9)])
    with pytest.raises(DatasetError, match=r"a\.xml.*'zebra'.*\['cat', 'dog'\]"):
        parse_voc_annotation(xml, ["cat", "dog"])


def test_parse_rejects_broken_xml(tmp_path):
    (tmp_path / "a.xml").write_text("<annotation><size>")
    with pytest.raises(DatasetError, match=r"a\.xml is not valid XML"):
        parse_voc_annotation(tmp_path / "a.xml", ["cat"])


# ---------------------------------------------------------------- the generated dataset

def test_course_dataset_layout_and_reuse(course_root):
    main = course_root / "ImageSets" / "Main"
    train, val = main.joinpath("train.txt").read_text().split(), main.joinpath("val.txt").read_text().split()
    assert (len(train), len(val)) == (16, 4)
    assert main.joinpath("trainval.txt").read_text().split() == train + val
    assert len(list((course_root / "JPEGImages").glob("*.jpg"))) == 20
    assert len(list((course_root / "Annotations").glob("*.xml"))) == 20
    stamp = (course_root / ".done").stat().st_mtime_ns
    assert make_course_dataset(course_root, num_train=16, num_val=4) == course_root
    assert (course_root / ".done").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert read_class_names(course_root, "trainval") == list(COURSE_CLASSES)


def test_course_dataset_is_deterministic(course_root, tmp_path):
    # Same seed -> identical annotations; image i does not depend on how many images are asked for.
    other = make_course_dataset(tmp_path / "again", num_train=8, num_val=2)
    for i in range(8):
        name = f"train_{i:05d}.xml"
        assert (other / "Annotations" / name).read_text() == (course_root / "Annotations" / name).read_text()
    seed1 = make_course_dataset(tmp_path / "seed1", num_train=8, num_val=2, seed=1)
    assert any((seed1 / "Annotations" / f"train_{i:05d}.xml").read_text()
               != (other / "Annotations" / f"train_{i:05d}.xml").read_text() for i in range(8))


def test_course_dataset_regenerates_on_new_parameters_and_interrupted_runs(tmp_path):
    root = make_course_dataset(tmp_path / "c", num_train=2, num_val=1)
    assert len((root / "ImageSets/Main/train.txt").read_text().split()) == 2
    root = make_course_dataset(tmp_path / "c", num_train=3, num_val=1)
    assert len((root / "ImageSets/Main/train.txt").read_text().split()) == 3
    (root / ".done").write_text("{broken")  # as if killed while writing the marker
    (root / "JPEGImages" / "train_00000.jpg").unlink()
    with pytest.raises(DatasetError, match="no .done file"):  # not ours any more: never deleted
        make_course_dataset(tmp_path / "c", num_train=3, num_val=1)
    shutil.rmtree(root)
    (tmp_path / "c").mkdir()  # an empty folder is fine
    root = make_course_dataset(tmp_path / "c", num_train=3, num_val=1)
    assert (root / "JPEGImages" / "train_00000.jpg").exists()
    assert not list(tmp_path.glob(".c.tmp-*"))  # no temporary folders left behind


def test_course_dataset_parallel_calls(tmp_path):
    # Two notebooks under `pytest -n 2` may ask for the same folder at once: both get it, complete.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(lambda _: make_course_dataset(tmp_path / "c", num_train=4, num_val=1), range(2)))
    assert roots == [tmp_path / "c"] * 2
    assert len(list((tmp_path / "c" / "JPEGImages").glob("*.jpg"))) == 5
    assert len(VOCDataset(tmp_path / "c", "trainval")) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_course_dataset_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_train must be an int >= 1, got 0"):
        make_course_dataset(tmp_path / "c", num_train=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my files")
    with pytest.raises(DatasetError, match="not empty"):
        make_course_dataset(tmp_path / "mine", num_train=2, num_val=1)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_course_dataset_has_all_fpn_sizes_empty_images_and_difficult(course_root):
    ds = VOCDataset(course_root, "trainval")
    longest = []  # max(w, h) at the 224-px letterboxed input
    for ann in ds.annotations:
        boxes = ann["boxes"] * (224 / max(ann["size"]))
        longest += (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values.tolist()
    assert any(m < 64 for m in longest)  # p3
    assert any(64 <= m < 128 for m in longest)  # p4
    assert any(128 <= m <= 224 for m in longest)  # p5
    assert sum(len(a["boxes"]) == 0 for a in ds.annotations) >= 2  # every 12th image from index 3
    labels = torch.cat([a["labels"] for a in ds.annotations])
    assert set(labels.tolist()) == set(range(5))
    sizes = {a["size"] for a in ds.annotations}
    assert all(224 <= max(s) <= 320 for s in sizes) and any(s[0] != s[1] for s in sizes)


def test_default_course_dataset_has_difficult_objects(tmp_path):
    root = make_course_dataset(tmp_path / "c", num_train=60, num_val=1)
    ds = VOCDataset(root, "train")
    num_difficult = sum(int(a["difficult"].sum()) for a in ds.annotations)
    num_objects = sum(len(a["boxes"]) for a in ds.annotations)
    assert 0 < num_difficult < 0.15 * num_objects


# ---------------------------------------------------------------- the loader

def test_loader_on_generated_data(course_root):
    ds = VOCDataset(course_root, "train", image_size=224)
    assert len(ds) == 16 and ds.class_names == list(COURSE_CLASSES)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        n = len(target["boxes"])
        assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (n,) and target["labels"].dtype == torch.int64
        assert target["difficult"].shape == (n,) and target["difficult"].dtype == torch.bool
        assert target["image_id"] == f"train_{i:05d}"
        h, w = target["resized_size"]
        assert max(h, w) == 224
        boxes = target["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        # The letterbox round trip gives the XML boxes minus the 1-based offset.
        xml = parse_voc_annotation(course_root / "Annotations" / f"{target['image_id']}.xml", COURSE_CLASSES)
        assert torch.allclose(boxes_to_original(boxes, target), xml["boxes"], atol=1e-3)
        assert target["orig_size"] == xml["size"]


def test_letterbox_by_hand(tmp_path):
    # 200 x 100 image at S = 224: scale 1.12, content 224 x 112, padding below.
    #   (0, 0, 50, 40) -> (0, 0, 56, 44.8); (100, 50, 200, 100) -> (112, 56, 224, 112).
    root = make_voc(tmp_path / "voc", {"a": (200, 100, [
        dict(name="dog", xmin=1, ymin=1, xmax=50, ymax=40),
        dict(name="cat", xmin=101, ymin=51, xmax=200, ymax=100, difficult=1)])})
    ds = VOCDataset(root, "train", image_size=224)
    assert ds.class_names == ["cat", "dog"]  # read from the annotations, sorted
    image, target = ds[0]
    assert target["orig_size"] == (100, 200) and target["resized_size"] == (112, 224)
    assert torch.allclose(target["boxes"], torch.tensor([[0, 0, 56, 44.8], [112, 56, 224, 112]]))
    assert target["labels"].tolist() == [1, 0] and target["difficult"].tolist() == [False, True]
    # The image is 120/255 red in the content and the ImageNet mean (124) in the padding.
    assert abs(image[0, 50, 100].item() * 255 - 120) < 3 and image[0, 200, 100].item() * 255 == pytest.approx(124)
    assert torch.allclose(boxes_to_original(target["boxes"], target),
                          torch.tensor([[0.0, 0, 50, 40], [100, 50, 200, 100]]), atol=1e-4)
    # A box reaching into the padding is clipped to the original image.
    far = boxes_to_original(torch.tensor([[200.0, 100.0, 224.0, 224.0]]), target)
    assert far.tolist() == [[pytest.approx(178.5714, abs=1e-3), pytest.approx(89.2857, abs=1e-3), 200, 100]]


def test_flip_augmentation(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (200, 100, [dict(name="dog", xmin=1, ymin=1, xmax=50, ymax=40)])})
    ds = VOCDataset(root, "train", image_size=224, augment=True)
    seen = set()
    torch.manual_seed(0)
    for _ in range(20):
        _, target = ds[0]
        seen.add(tuple(round(v, 3) for v in target["boxes"][0].tolist()))
    # Mirrored inside the 224-wide content: x -> 224 - x. Padding stays at the bottom.
    assert seen == {(0, 0, 56, 44.8), (168, 0, 224, 44.8)}


def test_in_memory_matches_lazy(course_root):
    lazy = VOCDataset(course_root, "val")
    cached = VOCDataset(course_root, "val", in_memory=True)
    for i in range(len(lazy)):
        (a, ta), (b, tb) = lazy[i], cached[i]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
        assert cached._cache[i][0].dtype == torch.uint8


def test_uint8_images_are_the_float_images_before_conversion(course_root):
    from torchvision.transforms.v2 import functional as F

    as_float = VOCDataset(course_root, "val")
    as_uint8 = VOCDataset(course_root, "val", image_dtype=torch.uint8)
    for i in range(len(as_float)):
        (a, ta), (b, tb) = as_float[i], as_uint8[i]
        assert b.dtype == torch.uint8 and torch.equal(F.to_dtype(b, torch.float32, scale=True), a)
        assert torch.equal(ta["boxes"], tb["boxes"])
    with pytest.raises(ValueError, match="image_dtype must be torch.float32 or torch.uint8"):
        VOCDataset(course_root, "val", image_dtype=torch.float16)


def test_empty_image_and_collate(course_root):
    ds = VOCDataset(course_root, "train")
    empty = [i for i, a in enumerate(ds.annotations) if len(a["boxes"]) == 0]
    assert empty and empty[0] == 3
    image, target = ds[3]
    assert image.shape == (3, 224, 224) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    images, gt_boxes, targets = collate_detection([ds[i] for i in range(5)])
    counts = [len(t["boxes"]) for t in targets]
    assert images.shape == (5, 3, 224, 224) and gt_boxes.shape == (5, max(counts), 5)
    assert gt_boxes.dtype == torch.float32
    for b, n in enumerate(counts):
        assert torch.equal(gt_boxes[b, :n, :4], targets[b]["boxes"])
        assert torch.equal(gt_boxes[b, :n, 4], targets[b]["labels"].float())
        assert (gt_boxes[b, n:] == -1).all()
    # A batch of empty images still has one (padding) row per image.
    _, gt_boxes, _ = collate_detection([ds[3], ds[3]])
    assert gt_boxes.shape == (2, 1, 5) and (gt_boxes == -1).all()


def test_explicit_class_names_and_voc_layout(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (60, 50, [dict(name="dog", xmin=1, ymin=1, xmax=9, ymax=9)])})
    ds = VOCDataset(root, "train", class_names=VOC_CLASSES)
    assert ds[0][1]["labels"].tolist() == [VOC_CLASSES.index("dog")]
    with pytest.raises(ValueError, match=r"image_size must be a positive multiple of 32 .*got 100"):
        VOCDataset(root, "train", image_size=100)


# ---------------------------------------------------------------- bad inputs

def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"nothere.*make_course_dataset.*download_voc"):
        VOCDataset(tmp_path / "nothere")


def test_download_root_instead_of_devkit_folder(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2007", {"a": (60, 50, [])})
    with pytest.raises(DatasetError, match=r"VOCdevkit/VOC2007: pass root="):
        VOCDataset(tmp_path)


def test_missing_split_names_existing_ones(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (60, 50, [])}, splits={"train": ["a"], "val": ["a"]})
    (root / "ImageSets" / "Main" / "dog_train.txt").write_text("a 1\n")
    with pytest.raises(DatasetError, match=r"split='test'.*test\.txt does not exist.*\['train', 'val'\]"):
        VOCDataset(root, "test")


def test_annotation_listed_but_missing(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (60, 50, [dict(name="dog", xmin=1, ymin=1, xmax=9, ymax=9)])},
                    splits={"train": ["a", "ghost"]})
    with pytest.raises(DatasetError, match=r"train\.txt lists image id 'ghost'.*ghost\.xml does not exist"):
        VOCDataset(root, "train", class_names=["dog"])
    with pytest.raises(DatasetError, match=r"ghost\.xml does not exist"):
        VOCDataset(root, "train")  # reading the class names hits it first


def test_image_missing_or_unreadable(tmp_path):
    objects = [dict(name="dog", xmin=1, ymin=1, xmax=9, ymax=9)]
    root = make_voc(tmp_path / "voc", {"a": (60, 50, objects), "b": (60, 50, objects)})
    (root / "JPEGImages" / "b.jpg").write_bytes(b"this is not a jpeg")
    # Found when the dataset is built (its header cannot be read), not when the image is used.
    with pytest.raises(DatasetError, match=r"cannot read image .*b\.jpg"):
        VOCDataset(root, "train")
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DatasetError) as err:  # two problems: both reported, grouped
        VOCDataset(root, "train")
    message = str(err.value)
    assert message.startswith("2 problems in split 'train'")
    assert "1 x missing image: a.xml has no image" in message and "remove 'a' from ImageSets/Main/train.txt" in message
    assert "1 x unreadable image: cannot read image" in message and "b.jpg" in message


def test_image_size_disagrees_with_xml(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (60, 50, [])})
    Image.new("RGB", (50, 60)).save(root / "JPEGImages" / "a.jpg")  # rotated by someone
    with pytest.raises(DatasetError, match=r"a\.jpg is 50 x 60 .* <size> says 60 x 50"):
        VOCDataset(root, "train", class_names=["dog"])


def test_bad_box_and_unknown_class_in_a_dataset(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (60, 50, [dict(name="dog", xmin=30, ymin=1, xmax=20, ymax=9)])})
    with pytest.raises(DatasetError, match=r"a\.xml: object 0 \(dog\) xmin=30 .* is degenerate"):
        VOCDataset(root, "train")
    root = make_voc(tmp_path / "voc2", {"a": (60, 50, [dict(name="cat", xmin=1, ymin=1, xmax=20, ymax=9)])})
    with pytest.raises(DatasetError, match=r"a\.xml: object 0 has class name 'cat'.*\['dog', 'bird'\]"):
        VOCDataset(root, "train", class_names=["dog", "bird"])


def test_download_voc_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FCOS_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"FCOS_OFFLINE=1.*make_course_dataset"):
        download_voc(tmp_path, "2007", "trainval")
    # Already on disk: returned without any download, even offline.
    folder = make_voc(tmp_path / "VOCdevkit" / "VOC2007", {"a": (60, 50, [])}, splits={"trainval": ["a"]})
    assert download_voc(tmp_path, "2007", "trainval") == folder


@pytest.mark.parametrize("center_sampling_radius", [1.5, None])
def test_every_box_that_is_not_difficult_gets_a_positive_location(center_sampling_radius):
    # A box that no location is matched to gets no gradient: the model can never learn it.
    # Run chapter 04's matching over every generated split at the course's 224-px input.
    from torch.utils.data import DataLoader

    from fcos_lib.locations import get_fpn_location_coords
    from fcos_lib.matching import fcos_match_indices

    strides = {"p3": 8, "p4": 16, "p5": 32}
    locations = get_fpn_location_coords({p: (224 // s, 224 // s) for p, s in strides.items()}, strides)
    dataset = VOCDataset(make_course_dataset(), "trainval", image_size=224)
    unmatched, total = [], 0
    for images, gt_boxes, targets in DataLoader(dataset, batch_size=50, collate_fn=collate_detection):
        matched = fcos_match_indices(locations, strides, gt_boxes, center_sampling_radius)  # (B, L)
        for b, target in enumerate(targets):
            for n in range(len(target["boxes"])):
                total += 1
                if not target["difficult"][n] and not (matched[b] == n).any():
                    unmatched.append((target["image_id"], target["boxes"][n].tolist()))
    assert total > 2000
    assert unmatched == [], f"{len(unmatched)} boxes that are not difficult have no positive location: {unmatched[:5]}"
