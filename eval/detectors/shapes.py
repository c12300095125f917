"""Exact detector for the shapes world: colour segmentation plus template fitting, no learning.

Every pixel of a rendered scene is a mix `B + a * (C - B)` of the background B and one palette colour C
(anti-aliasing and blur only move it along that line), so a pixel's colour and coverage `a` are read off by
projecting it onto the ten background-to-colour lines. Objects are seeded from confidently covered pixels, each seed
collects the coverage around it, and the coverage map is explained by one shape: coverage area and centroid do not
change under blur, so they fix each class's radius and centre, and the class whose rendered (and optionally
blurred) template matches the coverage best wins. How well it matches is the detection score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from mmgen.data_engine.shapes.world import BACKGROUND, COLORS, MAX_SIZE, MIN_SIZE, SHAPES, shape_outline
from PIL import Image, ImageDraw
from scipy import ndimage

from .base import Detection, Detections

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_PALETTE = np.array([COLORS[name] for name in COLOR_NAMES], dtype=np.float32)
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]], dtype=np.float32)

# Templates are drawn at 8x and box-averaged. The renderer uses 4x, but PIL snaps polygon vertices to whole
# subpixels, so a 4x template's area jumps as its radius is fitted; at 8x it varies smoothly enough to fit.
_SUPERSAMPLE = 8
# Blur levels (Gaussian sigma, px) tried for every template: sharp renders up to a clearly soft image.
_BLUR_SIGMAS = (0.0, 0.6, 1.0, 1.4)
# Error variance (8-bit levels squared) that compression adds near edges beyond the image's visible noise. Chroma is
# stored at half resolution and quantised harder, so near edges it is ~30x less trustworthy than luma.
_LUMA_EDGE_VARIANCE, _CHROMA_EDGE_VARIANCE = 2.0, 66.0
# A class whose implied object size lies outside the world's size range (with some slack for noisy area estimates)
# must fit much better to win: a small blurred star looks much like a circle, but one far too small.
_SIZE_SLACK, _IMPLAUSIBLE_SIZE_PENALTY = 0.1, 3.0
# Detection score as a function of the template IoU: clean and blurred objects fit with IoU >= 0.8 and score >= 0.9;
# blobs that fit no shape fall fast towards 0.
_IOU_KNOTS, _SCORE_KNOTS = (0.0, 0.5, 0.8, 1.0), (0.0, 0.1, 0.9, 1.0)


@dataclass(frozen=True)
class _Fit:
    shape: str
    cx: float  # centre and bounding-circle radius, pixels
    cy: float
    r: float
    iou: float


@dataclass(frozen=True)
class _Object:
    color: int  # index into COLOR_NAMES
    region: np.ndarray  # bool [H, W]: the pixels explained by this object
    coverage: np.ndarray  # float [H, W]: its colour's coverage over `region`, 0 elsewhere
    fit: _Fit


class ShapesDetector:
    """Finds the shapes world's objects in an image: class, colour, box, mask and a fit-quality score."""

    classnames: list[str] = list(SHAPES)

    def __init__(self, background: tuple[int, int, int] = BACKGROUND, min_size: float = MIN_SIZE,
                 max_size: float = MAX_SIZE, seed_alpha: float = 0.6, min_area_fraction: float = 0.35,
                 working_size: int = 128):
        """`min_size`/`max_size` bound the objects expected (bounding-circle diameter, image fraction); blobs under
        `min_area_fraction` of the smallest such object's area are noise. `seed_alpha` is the coverage a pixel needs
        to seed an object: high enough that the blurred gap between two close objects does not join them. Larger
        images are box-downscaled to at most `working_size` px first: objects are 25 px or more there, plenty to
        read, and the time stays that of a small image."""
        self.background = np.array(background, dtype=np.float32)
        self.min_size, self.max_size = min_size, max_size
        self.seed_alpha = seed_alpha
        self.min_area_fraction = min_area_fraction
        self.working_size = working_size

    def detect(self, image: Image.Image) -> Detections:
        image = image.convert("RGB")
        detections = Detections(width=image.width, height=image.height)
        factor = max(1, math.ceil(max(image.size) / self.working_size))
        rgb = np.asarray(image.reduce(factor) if factor > 1 else image, dtype=np.float32)
        side = min(rgb.shape[:2])
        background, near_background = _estimate_background(rgb, self.background)
        offsets = rgb - background
        labels, alpha = _label_pixels(offsets, background)
        min_area = self.min_area_fraction * _smallest_area(self.min_size * side / 2)
        seeds = _seed_objects(labels, alpha, self.seed_alpha, min_area)
        if not seeds:
            return detections
        owner = _nearest_seed(seeds, labels.shape)
        chroma_weight = _chroma_weight(offsets[near_background])
        radius_range = (self.min_size * side / 2 * (1 - _SIZE_SLACK), self.max_size * side / 2 * (1 + _SIZE_SLACK))

        def measure(color: int, region: np.ndarray) -> _Object | None:
            coverage = np.where(region, offsets @ _coverage_vector(color, background, chroma_weight), 0.0)
            fit = _fit_shape(np.clip(coverage, -0.5, 1.0), region, radius_range)
            return None if fit is None else _Object(color, region, coverage, fit)

        found = [measure(_palette_color(rgb[_interior(seed)], background), owner == index)
                 for index, seed in enumerate(seeds, start=1)]
        for obj in _absorb_fragments([obj for obj in found if obj is not None], measure):
            box = tuple(factor * v for v in _fit_box(obj.fit))
            mask = _upscale(obj.region & (obj.coverage >= 0.5), factor, (image.height, image.width))
            detections.add(obj.fit.shape, Detection(box=box, score=_score(obj.fit.iou), mask=mask,
                                                    color=COLOR_NAMES[obj.color]))
        for same_class in detections.by_class.values():
            same_class.sort(key=lambda d: -d.score)
        return detections


class ShapesColorClassifier:
    """Colour of a detected object read from the image: the median of its mask's interior, matched to the palette."""

    def __init__(self, background: tuple[int, int, int] = BACKGROUND):
        self.background = np.array(background, dtype=np.float32)

    def classify(self, image: Image.Image, detection: Detection, classname: str) -> str:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        mask = detection.mask
        if mask is None or not mask.any():
            mask = np.zeros(rgb.shape[:2], dtype=bool)
            x1, y1, x2, y2 = (int(round(v)) for v in detection.box)
            mask[max(y1, 0):max(y2, y1 + 1), max(x1, 0):max(x2, x1 + 1)] = True
        background, _ = _estimate_background(rgb, self.background)
        return COLOR_NAMES[_palette_color(rgb[_interior(mask)], background)]


def _estimate_background(rgb: np.ndarray, nominal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median of the pixels near the nominal background (absorbing a generator's slight colour shift), and which
    pixels those are."""
    near = np.abs(rgb - nominal).max(axis=-1) < 24
    return (np.median(rgb[near], axis=0) if near.sum() >= 16 else nominal), near


def _label_pixels(offsets: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the palette colour whose background-to-colour segment passes closest, and the coverage on it.

    Returns `labels` (index into COLOR_NAMES, -1 for background) and `alpha` (coverage of the labelled colour).
    """
    directions = _PALETTE - background  # [K, 3]
    lengths = (directions**2).sum(axis=1)
    projections = offsets @ directions.T  # [H, W, K]
    along = projections / lengths
    on_segment = np.clip(along, 0.0, 1.0)
    # |offset - a * direction|^2 without the offset term, which is the same for every colour
    residual = on_segment * (on_segment * lengths - 2 * projections)
    labels = residual.argmin(axis=-1)
    alpha = np.take_along_axis(along, labels[..., None], axis=-1)[..., 0]
    labels[alpha <= 0.0] = -1
    return labels, alpha


def _seed_objects(labels: np.ndarray, alpha: np.ndarray, seed_alpha: float, min_area: float) -> list[np.ndarray]:
    """Masks of connected same-colour pixels covered at least `seed_alpha`, one per object; small blobs dropped.

    Two same-colour objects a blurred pixel apart can still touch at `seed_alpha`; a region that falls apart into
    several object-sized pieces at a stricter coverage is split into them.
    """
    seeds = []
    for color in np.unique(labels[(alpha >= seed_alpha) & (labels >= 0)]):
        same_color = labels == color
        for blob in _components(same_color & (alpha >= seed_alpha), min_area):
            for stricter in (0.75, 0.9):
                pieces = _components(blob & (alpha >= stricter), min_area)
                if len(pieces) > 1:
                    seeds.extend(pieces)
                    break
            else:
                seeds.append(blob)
    return seeds


def _components(mask: np.ndarray, min_area: float) -> list[np.ndarray]:
    components, count = ndimage.label(mask)
    areas = np.bincount(components.ravel(), minlength=count + 1)
    return [components == index for index in np.flatnonzero(areas[1:] >= min_area) + 1]


def _nearest_seed(seeds: list[np.ndarray], shape: tuple[int, int], reach: float = 3.0) -> np.ndarray:
    """Seed number (from 1) owning each pixel within `reach` px of a seed, the nearest one; 0 elsewhere."""
    numbered = np.zeros(shape, dtype=np.int32)
    for index, seed in enumerate(seeds, start=1):
        numbered[seed] = index
    distance, (rows, cols) = ndimage.distance_transform_edt(numbered == 0, return_indices=True)
    owner = numbered[rows, cols]
    owner[distance > reach] = 0
    return owner


def _absorb_fragments(objects: list[_Object], measure) -> list[_Object]:
    """Objects of the world never overlap, so a blob centred inside a better-fitting object is a piece of it (a
    star's arm cut off by noise, a mislabelled edge): a same-colour piece is merged back and the object refitted,
    any other piece dropped."""
    kept: list[_Object] = []
    for obj in sorted(objects, key=lambda o: -o.fit.iou):
        host = next((k for k, other in enumerate(kept)
                     if math.hypot(obj.fit.cx - other.fit.cx, obj.fit.cy - other.fit.cy) < other.fit.r), None)
        if host is None:
            kept.append(obj)
        elif kept[host].color == obj.color:
            kept[host] = measure(obj.color, kept[host].region | obj.region) or kept[host]
    return kept


def _interior(mask: np.ndarray) -> np.ndarray:
    """The mask eroded once, where enough is left: its pixels are free of anti-aliasing and blur."""
    eroded = ndimage.binary_erosion(mask)
    return eroded if eroded.sum() >= 4 else mask


def _palette_color(pixels: np.ndarray, background: np.ndarray) -> int:
    """Palette colour (index) explaining the median pixel as a mostly covered mix with the background."""
    median = np.median(pixels, axis=0) - background
    directions = _PALETTE - background
    alpha = np.clip(directions @ median / (directions**2).sum(axis=1), 0.5, 1.0)
    return int(((median - alpha[:, None] * directions) ** 2).sum(axis=1).argmin())


def _chroma_weight(background_offsets: np.ndarray) -> float:
    """Trust in chroma relative to luma for reading coverage, from the noise seen on the background.

    Inverse-variance weighting: on clean or compressed images luma carries the sharp edges and chroma is mostly
    compression error; under strong additive noise both channels are equally noisy and chroma adds signal.
    """
    if len(background_offsets) < 16:
        return _LUMA_EDGE_VARIANCE / _CHROMA_EDGE_VARIANCE
    ycc = background_offsets @ _RGB_TO_YCC.T
    spread = (1.4826 * np.median(np.abs(ycc - np.median(ycc, axis=0)), axis=0)) ** 2  # robust variance per channel
    return float((_LUMA_EDGE_VARIANCE + spread[0]) / (_CHROMA_EDGE_VARIANCE + spread[1:].mean()))


def _coverage_vector(color: int, background: np.ndarray, chroma_weight: float) -> np.ndarray:
    """`v` such that `offset @ v` is the weighted least-squares coverage of `color` (luma weight 1, chroma
    `chroma_weight`)."""
    direction = _RGB_TO_YCC @ (_PALETTE[color] - background)
    weighted = direction * np.array([1.0, chroma_weight, chroma_weight], dtype=np.float32)
    return _RGB_TO_YCC.T @ weighted / (direction @ weighted)


@cache
def _unit_outline(shape: str) -> np.ndarray:
    """Outline vertices `[N, 2]` at centre (0, 0), radius 1; every outline scales and shifts linearly from it."""
    return np.array(shape_outline(shape, 0.0, 0.0, 1.0))


def _outline(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    return _unit_outline(shape) * r + (cx, cy)


@cache
def _unit_geometry(shape: str) -> tuple[float, float, float]:
    """Area and centroid offset `(dx, dy)` from the shape's nominal centre, for bounding-circle radius 1."""
    xs, ys = _unit_outline(shape).T
    cross = xs * np.roll(ys, -1) - np.roll(xs, -1) * ys
    area = cross.sum() / 2
    dx = ((xs + np.roll(xs, -1)) * cross).sum() / (6 * area)
    dy = ((ys + np.roll(ys, -1)) * cross).sum() / (6 * area)
    return abs(area), dx, dy


def _smallest_area(radius: float) -> float:
    return min(_unit_geometry(shape)[0] for shape in SHAPES) * radius**2


def _fit_shape(coverage: np.ndarray, region: np.ndarray, radius_range: tuple[float, float]) -> _Fit | None:
    """The shape, centre and radius whose rendered template best explains `coverage` over `region`.

    Each class is placed by the coverage's area and centroid, then blurred by the level that fits best; the class
    with the lowest squared error wins, penalised when its implied radius lies outside `radius_range`.
    """
    rows, cols = np.nonzero(region)
    top, left = rows.min(), cols.min()
    observed = coverage[top : rows.max() + 1, left : cols.max() + 1]
    area = observed.sum()
    if area <= 0:
        return None
    ys, xs = np.mgrid[: observed.shape[0], : observed.shape[1]] + 0.5
    centroid = ((observed * xs).sum() / area, (observed * ys).sum() / area)
    clipped = np.clip(observed, 0.0, 1.0)
    candidates = []
    for shape in SHAPES:
        cx, cy, r, template = _placed_template(shape, area, centroid, xs, ys)
        error, iou = min(
            (((observed - blurred) ** 2).sum(), np.minimum(clipped, blurred).sum() / np.maximum(clipped, blurred).sum())
            for blurred in (_blur(template, sigma) for sigma in _BLUR_SIGMAS)
        )
        if not radius_range[0] <= r <= radius_range[1]:
            error *= _IMPLAUSIBLE_SIZE_PENALTY
        candidates.append((error, _Fit(shape, cx + left, cy + top, r, float(iou))))
    return min(candidates, key=lambda c: c[0])[1]


def _placed_template(shape: str, area: float, centroid: tuple[float, float], xs: np.ndarray, ys: np.ndarray
                     ) -> tuple[float, float, float, np.ndarray]:
    """Centre, radius and template of `shape` with the given coverage area and centroid (patch coordinates)."""
    unit_area, dx, dy = _unit_geometry(shape)
    r = math.sqrt(area / unit_area)
    cx, cy = centroid[0] - dx * r, centroid[1] - dy * r
    template = _template(shape, cx, cy, r, xs.shape)
    # Rasterisation grows a shape by a fraction of a pixel and shifts it by half a subpixel: one correction step
    # gives the template the observed area and centroid exactly.
    drawn = template.sum()
    if drawn == 0:  # a shape too small to cover any subpixel (noise blobs): no correction possible
        return cx, cy, r, template
    r *= math.sqrt(area / drawn)
    cx += centroid[0] - (template * xs).sum() / drawn
    cy += centroid[1] - (template * ys).sum() / drawn
    return cx, cy, r, _template(shape, cx, cy, r, xs.shape)


def _template(shape: str, cx: float, cy: float, r: float, patch: tuple[int, int]) -> np.ndarray:
    """Anti-aliased coverage of one shape drawn as the renderer draws it, over a `patch` (rows, cols).

    Circles are drawn as their 64-gon outline: the renderer's true ellipse snaps its radius to whole subpixels,
    which would make the template's area jump as the radius is fitted; the 64-gon varies smoothly.
    """
    s = _SUPERSAMPLE
    canvas = Image.new("L", (patch[1] * s, patch[0] * s), 0)
    ImageDraw.Draw(canvas).polygon((_outline(shape, cx, cy, r) * s).ravel().tolist(), fill=255)
    small = canvas.reduce(s)
    return np.asarray(small, dtype=np.float32) / 255.0


def _blur(template: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return template
    return _blur_matrix(template.shape[0], sigma) @ template @ _blur_matrix(template.shape[1], sigma).T


@cache
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """Gaussian blur along one axis as a matrix; what leaves the patch is lost, as for zero padding."""
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / (sigma * math.sqrt(2 * math.pi))).astype(np.float32)


def _fit_box(fit: _Fit) -> tuple[float, float, float, float]:
    outline = _outline(fit.shape, fit.cx, fit.cy, fit.r)
    (x1, y1), (x2, y2) = outline.min(axis=0), outline.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def _upscale(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """A working-resolution mask back at the image's resolution (`Image.reduce` keeps partial edge blocks)."""
    if factor == 1:
        return mask
    return np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)[: shape[0], : shape[1]]


def _score(iou: float) -> float:
    return float(max(np.interp(iou, _IOU_KNOTS, _SCORE_KNOTS), 1e-3))
