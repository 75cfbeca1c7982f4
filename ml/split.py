"""Train/validation and held-out splits that keep near-duplicate images on one side.

No torch here, so that `python -m ml split` starts without it.
"""
from __future__ import annotations

import csv
import hashlib
import random
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components
from scipy.spatial import KDTree

# Images whose 256-bit difference hashes differ in at most this many bits stay on one side of the split. On BUSI,
# pairs at 27 bits were the same scan with and without calipers; the count of grouped images levels off near 30.
DUPLICATE_DISTANCE = 30


def image_dhash(image: Image.Image, side: int = 16) -> np.ndarray:
    """A 256-bit difference hash: re-exports of one scan, with or without caliper marks, differ in few bits."""
    # PIL's bilinear filter, not cv2.resize: PIL widens it when shrinking, and cv2's hashes would group differently.
    small = np.asarray(image.convert("L").resize((side + 1, side), Image.BILINEAR), dtype=np.float32)
    return (small[:, 1:] > small[:, :-1]).flatten()


def data_hash(paths: list[Path], labels: list[int]) -> str:
    """One hash of every image's name, label and content, to tell which data a checkpoint saw."""
    entries = sorted(f"{Path(p).name}\t{label}\t{hashlib.sha256(Path(p).read_bytes()).hexdigest()}\n"
                     for p, label in zip(paths, labels))
    return hashlib.sha256("".join(entries).encode()).hexdigest()


def validation_split(images: list[Image.Image], labels: list[int], val_fraction: float, seed: int,
                     duplicate_distance: int = DUPLICATE_DISTANCE) -> tuple[list[int], list[int], list[int]]:
    """Training and validation indices, stratified by label with near-duplicates on one side, and each image's
    near-duplicate group: the split `ml train` makes, found again the same way by `ml calibrate`."""
    groups = near_duplicate_groups([image_dhash(image) for image in images], duplicate_distance)
    train_idx, val_idx = split_grouped_stratified(labels, groups, val_fraction, seed)
    return train_idx, val_idx, groups


def near_duplicate_groups(hashes: list[np.ndarray], max_distance: int) -> list[int]:
    """A group id per image; images within `max_distance` bits of each other, directly or through others, share it."""
    bits = np.stack(hashes)
    # On 0/1 vectors the L1 distance counts the differing bits, exactly.
    pairs = KDTree(bits).query_pairs(max_distance, p=1, output_type="ndarray")
    graph = coo_array((np.ones(len(pairs), dtype=bool), (pairs[:, 0], pairs[:, 1])), shape=(len(bits), len(bits)))
    return connected_components(graph, directed=False)[1].tolist()


def split_grouped_stratified(labels: list[int], groups: list[int], val_fraction: float,
                             seed: int) -> tuple[list[int], list[int]]:
    """Train/validation indices keeping each class's share, with every near-duplicate group on one side only."""
    rng = random.Random(seed)
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    train, val = [], []
    for label in sorted(set(labels)):
        # A group is filed under the label of most of its images; a tie goes to the label that sorts first, as a
        # set's order of strings changes with Python's hash seed from one run to the next.
        class_groups = [g for g, idx in members.items()
                        if max(sorted(set(labels[i] for i in idx)), key=[labels[i] for i in idx].count) == label]
        rng.shuffle(class_groups)
        quota = max(1, round(sum(len(members[g]) for g in class_groups) * val_fraction))
        taken = 0
        for group in class_groups:
            if taken < quota:
                val += members[group]
                taken += len(members[group])
            else:
                train += members[group]
    return sorted(train), sorted(val)


def manifest_split(data: Path, out: Path, test_fraction: float, seed: int) -> tuple[int, int, int]:
    """`train.csv` and `test.csv` in `out`: the manifest's rows split by class and near-duplicate group, with
    absolute paths so that the files work from wherever they are. The counts of training and test images and of
    groups."""
    with data.open() as f:
        rows = list(csv.DictReader(f))
    root = data.parent.resolve()
    for row in rows:
        row["filename"] = str(root / row["filename"])
        if row.get("mask_path"):
            row["mask_path"] = str(root / row["mask_path"])
    groups = near_duplicate_groups([image_dhash(Image.open(row["filename"])) for row in rows], DUPLICATE_DISTANCE)
    train, test = split_grouped_stratified([row["label"] for row in rows], groups, test_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, indices in (("train.csv", train), ("test.csv", test)):
        with (out / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows[i] for i in indices)
    return len(train), len(test), len(set(groups))
