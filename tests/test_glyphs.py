"""The COCO-like embedded dataset: its statistics on a sample, and the imbalance it gives the loss."""

import itertools
import json

import numpy as np
import pytest
import torch

from detector.cli import build, build_datasets
from detector.data import glyphs
from detector.data.glyphs import CLASSES, class_frequencies, object_count_probabilities, prepare_glyphs_coco
from detector.data.loader import infinite_train_batches


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """200 training images of the default generator (about 10 s)."""
    splits = prepare_glyphs_coco(str(tmp_path_factory.mktemp("glyphs")), num_train=200, num_val=10)
    return json.loads(open(splits.train_ann).read())


def test_eighty_classes_each_drawn_at_its_size():
    assert len(CLASSES) == len(set(CLASSES)) == 80
    assert not {"d", "q"} & set(CLASSES)  # a horizontal flip would turn b and p into them
    rng = np.random.default_rng(0)
    for name in CLASSES:
        mask = glyphs.object_mask(rng, name, 48.0, 128)
        ys, xs = np.nonzero(mask)
        side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        assert 44 <= side <= 50 and mask.sum() > 100, name


def test_class_frequency_is_long_tailed(sample):
    frequencies = class_frequencies(80, 1.0, seed=0)
    assert frequencies.sum() == pytest.approx(1.0)
    assert frequencies.max() / frequencies.min() == pytest.approx(80.0)  # rank 1 against rank 80 under 1/r
    labels = np.array([a["category_id"] - 1 for a in sample["annotations"]])
    counts = np.bincount(labels, minlength=80)
    order = np.argsort(-frequencies)
    assert counts[order[:5]].sum() / len(labels) > 0.35  # expected 0.46: the head
    assert counts[order[40:]].sum() / len(labels) < 0.25  # expected 0.14: the tail half
    assert (counts > 0).sum() >= 60


def test_objects_per_image_like_coco(sample):
    probabilities = object_count_probabilities(30, 2.2)
    assert probabilities[:3].sum() > 0.85 and probabilities[20:].sum() > 0.005
    per_image = np.bincount([a["image_id"] for a in sample["annotations"]], minlength=201)[1:]
    assert per_image.min() >= 1
    assert ((per_image >= 1) & (per_image <= 3)).mean() > 0.6  # most images hold 1–3 objects
    assert per_image.max() > 20  # and a tail past 20


def test_small_medium_large_like_coco(sample):
    """COCO: 41 / 34 / 24 % of the boxes small / medium / large."""
    areas = np.array([a["area"] for a in sample["annotations"]])
    small, large = (areas < 32**2).mean(), (areas >= 96**2).mean()
    assert 0.30 < small < 0.50 and 0.25 < 1 - small - large < 0.45 and 0.15 < large < 0.33


def test_a_batch_of_the_paper_protocol_has_over_three_times_ten_to_the_four_negatives_per_positive(
    compose_cfg, tmp_path
):
    """The figure the trainer logs as neg/pos: the criterion's negative (anchor, class) elements over
    its positive ones, on experiment=paper_cpu's first training batches (80 classes, the paper's
    anchors, 320 px)."""
    cfg = compose_cfg(
        [
            "experiment=paper_cpu",
            f"data.cache_dir={tmp_path}",
            "data.num_train=96",
            "data.num_val=1",
            "model.backbone.weights_path=null",
        ]
    )
    train_set, _ = build_datasets(cfg.data)
    model, criterion, _ = build(cfg, train_set.num_classes)
    batches = infinite_train_batches(
        train_set, cfg.data.batch_size, 0, cfg.seed, 0, size_divisibility=cfg.data.size_divisibility
    )
    negatives = positives = 0.0
    layout = None  # the model's anchors for a 320 px batch; the counts do not depend on the logits
    with torch.no_grad():
        for images, targets in itertools.islice(batches, 96 // cfg.data.batch_size):
            assert images.shape[-2:] == (320, 320)
            layout = layout or model.eval()(images[:1])
            outputs = {
                **layout,
                "cls_logits": layout["cls_logits"].expand(len(images), -1, -1),
                "box_deltas": layout["box_deltas"].expand(len(images), -1, -1),
            }
            losses = criterion(outputs, targets)
            negatives, positives = negatives + float(losses["num_neg"]), positives + float(losses["num_pos"])
    assert train_set.num_classes == 80 and negatives / positives >= 3e4
