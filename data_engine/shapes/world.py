"""The procedural shapes world: scene graphs and their rendering.

A scene is a list of coloured shapes on a neutral background. Everything in it is known exactly, so a
rendered scene is ground truth for captions, edit targets, the exact detector and the GenEval-style scorer.
Coordinates are resolution-free (fractions of the image side), so the same scene renders at 32 to 256 px.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond")

# GenEval's ten colour names. RGB values are chosen to stay apart after blur and JPEG: no two share both
# hue and lightness, and none is close to the background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 230),
    "purple": (130, 40, 180),
    "pink": (255, 120, 200),
    "brown": (120, 70, 25),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}

BACKGROUND: tuple[int, int, int] = (128, 128, 128)

# Object size is the diameter of the object's bounding circle as a fraction of the image side. The lower
# bound keeps objects ~13 px wide at 64x64, which the detector still reads after blur and JPEG.
MIN_SIZE, MAX_SIZE = 0.2, 0.34

# Supersampling factor for anti-aliasing: draw large, then downsample with a box filter.
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    x: float  # centre, fraction of width (0 = left)
    y: float  # centre, fraction of height (0 = top)
    size: float  # bounding-circle diameter, fraction of the image side

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {', '.join(SHAPES)}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {', '.join(COLORS)}")
        if not (0.0 < self.size <= 1.0):
            raise ValueError(f"object size must be in (0, 1], got {self.size}")

    @property
    def radius(self) -> float:
        return self.size / 2

    def box(self) -> tuple[float, float, float, float]:
        """Exact bounding box `(x1, y1, x2, y2)` of the drawn shape, in image fractions."""
        xs, ys = zip(*shape_outline(self.shape, self.x, self.y, self.radius), strict=True)
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...] = field(default_factory=tuple)
    background: tuple[int, int, int] = BACKGROUND

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": list(self.background)}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        objects = tuple(ShapeObject(**o) for o in data["objects"])
        return cls(objects=objects, background=tuple(data.get("background", BACKGROUND)))

    def with_objects(self, objects) -> Scene:
        return replace(self, objects=tuple(objects))

    def overlaps(self, margin: float = 0.02) -> bool:
        """True when two objects' bounding circles come closer than `margin` (image fractions)."""
        return any(
            _circles_too_close(a, b, margin) for i, a in enumerate(self.objects) for b in self.objects[i + 1 :]
        )

    def fits(self) -> bool:
        """True when every object lies fully inside the image."""
        return all(o.x - o.radius >= 0 and o.x + o.radius <= 1 and o.y - o.radius >= 0 and o.y + o.radius <= 1
                   for o in self.objects)


def _circles_too_close(a: ShapeObject, b: ShapeObject, margin: float) -> bool:
    return math.hypot(a.x - b.x, a.y - b.y) < a.radius + b.radius + margin


def shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape with bounding-circle radius `r` (a circle is a 64-gon).

    The geometry is chosen so classes differ in more than one cue: aspect ratio (diamond is tall, triangle
    is wide, hexagon slightly tall), fill ratio of the box (square 1.0, circle 0.79, triangle/diamond 0.5,
    star ~0.35) and symmetry (triangle is top-light).
    """
    if shape == "circle":
        return _regular(cx, cy, r, 64, 0.0)
    if shape == "square":
        h = r * 0.8
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        # Equilateral, pointing up, centred on its bounding box so `(x, y)` is the visual centre.
        side = r * math.sqrt(3)
        height = side * math.sqrt(3) / 2
        return [(cx, cy - height / 2), (cx + side / 2, cy + height / 2), (cx - side / 2, cy + height / 2)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "hexagon":
        return _regular(cx, cy, r, 6, -math.pi / 2)  # pointy top: taller than wide
    if shape == "diamond":
        w = r * 0.65
        return [(cx, cy - r), (cx + w, cy), (cx, cy + r), (cx - w, cy)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def _regular(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render a scene to an anti-aliased RGB image of `size` x `size` pixels."""
    if not (8 <= size <= 1024):
        raise ValueError(f"render size must be between 8 and 1024 px, got {size}")
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), tuple(scene.background))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        outline = [(x * big, y * big) for x, y in shape_outline(obj.shape, obj.x, obj.y, obj.radius)]
        if obj.shape == "circle":
            # A true ellipse is rounder than the 64-gon; the 64-gon stays the geometric reference.
            r = obj.radius * big
            draw.ellipse([obj.x * big - r, obj.y * big - r, obj.x * big + r, obj.y * big + r], fill=COLORS[obj.color])
        else:
            draw.polygon(outline, fill=COLORS[obj.color])
    return image.resize((size, size), Image.Resampling.BOX)
