"""The simulated radiologist behind `python -m ml clicks` and `python -m ml refiner` (ml/click_commands.py).

The simulated radiologist follows the standard protocol of interactive segmentation (RITM, SimpleClick): starting
from the proposal the app would show, each next click goes to the centre of the largest error region, positive in a
missed region, negative in a false one, and the refiner redraws the mask from the last mask and every click so far.
NoC@85 is the number of clicks until the mask overlaps the truth by 85 % IoU (0 when the proposal already does;
`max_clicks` when it never gets there). Ground-truth masks stand in for the radiologist's intent.

Beside the methods that start from the proposal stands drawing by hand, as the editor's polygon tool does it, from
nothing: a click per vertex, the vertices where a careful person would put them (on the true outline: after n clicks
the best of its Douglas-Peucker simplifications and evenly spaced points with at most n vertices). It needs no model
and reads no proposal: what the clicks tools must beat to be worth a radiologist's time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ml.interactive import Click, ClickRefiner, mask_refine, next_click
from ml.metrics import mask_iou

# By hand (a polygon from nothing), no refinement (clicks change nothing), training-free, the network.
METHODS = ("polygon", "proposal", "grabcut", "learned")
POLYGON_TOLERANCES = np.geomspace(0.25, 64, 60)  # Douglas-Peucker tolerances tried, in pixels
REPORTED_CLICKS = (1, 3, 5)


@dataclass
class ClickSession:
    ious: list[float]  # IoU with the truth after 0, 1, 2, … clicks
    seconds: list[float]  # time each refinement took

    def clicks_to(self, target: float, max_clicks: int) -> int:
        return next((n for n, iou in enumerate(self.ious) if iou >= target), max_clicks)

    def iou_after(self, clicks: int) -> float:
        return self.ious[min(clicks, len(self.ious) - 1)]  # a session that stopped early keeps its last mask


def click_session(image: np.ndarray, truth: np.ndarray, start: np.ndarray,
                  refine: Callable[[np.ndarray, np.ndarray, list[Click]], np.ndarray] | None,
                  max_clicks: int, stop_iou: float) -> ClickSession:
    """Click as the protocol says until the mask reaches `stop_iou` (and at least max(REPORTED_CLICKS) clicks were
    given) or `max_clicks` is spent; `refine` None changes nothing (the proposal alone)."""
    mask, clicks = start.astype(bool), []
    session = ClickSession([mask_iou(mask, truth)], [])
    while len(clicks) < max_clicks and (session.ious[-1] < stop_iou or len(clicks) < max(REPORTED_CLICKS)):
        click = next_click(mask, truth)
        if click is None:
            break  # the mask is the truth
        clicks.append(click)
        if refine is not None:
            started = time.perf_counter()
            mask = refine(image, mask, clicks)
            session.seconds.append(time.perf_counter() - started)
        session.ious.append(mask_iou(mask, truth))
    return session


def polygon_session(truth: np.ndarray, max_clicks: int) -> ClickSession:
    """Outlining the truth by hand: after n clicks, the best polygon of at most n vertices (fewer than three outline
    nothing), among the Douglas-Peucker simplifications of its outline and n vertices evenly spaced along the
    outline of its largest part (the better for round shapes, which Douglas-Peucker cuts into squares)."""
    contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    candidates = []
    for tolerance in POLYGON_TOLERANCES:
        polygons = [cv2.approxPolyDP(contour, tolerance, True) for contour in contours]
        candidates.append([polygon for polygon in polygons if len(polygon) >= 3])
    if contours:
        largest = max(contours, key=cv2.contourArea)
        candidates += [[_evenly_spaced(largest, n)] for n in range(3, min(max_clicks, len(largest)) + 1)]
    best = np.zeros(max_clicks + 1)
    for polygons in candidates:
        vertices = sum(len(polygon) for polygon in polygons)
        if polygons and vertices <= max_clicks:
            drawn = cv2.fillPoly(np.zeros(truth.shape, np.uint8), polygons, 1) > 0
            best[vertices:] = np.maximum(best[vertices:], mask_iou(drawn, truth))
    return ClickSession([float(iou) for iou in best], [])


def _evenly_spaced(contour: np.ndarray, count: int) -> np.ndarray:
    """`count` points of the closed contour at equal distances along it."""
    points = contour[:, 0].astype(np.float64)
    steps = np.linalg.norm(np.diff(points, axis=0, append=points[:1]), axis=1)
    along = np.concatenate([[0.0], np.cumsum(steps)[:-1]])
    chosen = np.searchsorted(along, np.arange(count) * steps.sum() / count)
    return contour[np.minimum(chosen, len(contour) - 1)]


def method_refine(method: str, refiner: ClickRefiner | None):
    if method == "proposal":
        return None
    if method == "learned":
        return lambda image, mask, clicks: mask_refine(image, mask, clicks, refiner)
    return lambda image, mask, clicks: mask_refine(image, mask, clicks)


def methods_run(images, truths, starts, refiner: ClickRefiner | None, targets: tuple[float, ...], max_clicks: int,
                methods: tuple[str, ...] = METHODS) -> dict[str, list[ClickSession]]:
    """Every method's session on every lesion image; "learned" only with a refiner."""
    chosen = [m for m in methods if m != "learned" or refiner is not None]
    return {method: [polygon_session(truth, max_clicks) if method == "polygon" else
                     click_session(image, truth, start, method_refine(method, refiner), max_clicks, max(targets))
                     for image, truth, start in zip(images, truths, starts)] for method in chosen}


def sessions_summary(sessions: list[ClickSession], targets: tuple[float, ...], max_clicks: int) -> dict:
    seconds = [s for session in sessions for s in session.seconds]
    return {"noc": {t: float(np.mean([s.clicks_to(t, max_clicks) for s in sessions])) for t in targets},
            "iou": {k: float(np.mean([s.iou_after(k) for s in sessions])) for k in REPORTED_CLICKS},
            "ms_per_click": 1000 * float(np.mean(seconds)) if seconds else None}


def clicks_table(results: dict[str, list[ClickSession]], targets: tuple[float, ...], max_clicks: int) -> str:
    names = {"polygon": "polygon drawn by hand (a click per vertex)", "proposal": "the proposal, no refinement",
             "grabcut": "GrabCut from the clicks (training-free)", "learned": "click refiner (learned)"}
    head = ["Method"] + [f"NoC@{round(100 * t)}" for t in targets] + [f"IoU@{k}" for k in REPORTED_CLICKS]
    lines = ["| " + " | ".join(head + ["ms per click"]) + " |", "|---" + "|---:" * (len(head)) + "|"]
    for method, sessions in results.items():
        summary = sessions_summary(sessions, targets, max_clicks)
        ms = "–" if summary["ms_per_click"] is None else f"{summary['ms_per_click']:.0f}"
        lines.append("| " + " | ".join([names[method]] + [f"{summary['noc'][t]:.2f}" for t in targets]
                                       + [f"{100 * summary['iou'][k]:.1f} %" for k in REPORTED_CLICKS] + [ms]) + " |")
    return "\n".join(lines)


def best_method(results: dict[str, list[ClickSession]], target: float, max_clicks: int) -> tuple[str, float]:
    nocs = {m: sessions_summary(s, (target,), max_clicks)["noc"][target] for m, s in results.items()}
    method = min(nocs, key=lambda m: (nocs[m], METHODS.index(m)))
    return method, nocs[method]


def lesion_masks_judge(images, truths, starts, refiner: ClickRefiner | None, max_clicks: int = 10) -> float:
    """NoC@85 of the simulated radiologist on these lesion images with the refiner (None: GrabCut)."""
    method = "learned" if refiner is not None else "grabcut"
    sessions = methods_run(images, truths, starts, refiner, (0.85,), max_clicks, (method,))[method]
    return sessions_summary(sessions, (0.85,), max_clicks)["noc"][0.85]


def lesion_cases(data, indices: list[int]):
    """Grayscale images, truths and the app's proposals of the indexed images whose truth outlines a lesion."""
    kept = [i for i in indices if data.truths[i] is not None and data.truths[i].any()]
    images = [np.asarray(data.images[i].convert("L")) for i in kept]
    return images, [data.truths[i] for i in kept], [data.annotations[i].mask for i in kept], kept
