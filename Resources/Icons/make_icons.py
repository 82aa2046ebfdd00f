"""Regenerate Pantheon's icons (128x128 PNG) with Pillow.

    python Resources/Icons/make_icons.py

Writes the extension icon Resources/Icons/Pantheon.png and one icon per module,
<Module>/Resources/Icons/<Module>.png (Slicer picks that file up as the module icon).
Each module has its own colour so the modules are easy to tell apart in the module
selector. The drawings are simple shapes, so the output is deterministic.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 128
ROOT = Path(__file__).resolve().parents[2]

# Module name -> (background colour, glyph drawer name)
MODULE_COLOURS = {
    "NemesisSlicer": (33, 102, 172),  # blue: CT
    "ToothAnalysis": (0, 150, 136),  # teal: dental X-ray
    "PNIPredict": (142, 68, 173),  # purple: MRI
}
# Tool modules (no model of their own): not in the extension icon's columns.
TOOL_COLOURS = {
    "PantheonReview": (211, 84, 0),  # orange: reviewing a batch's pseudo-labels
}
WHITE = (255, 255, 255, 255)


def _canvas(colour: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((4, 4, SIZE - 5, SIZE - 5), radius=22, fill=colour + (255,))
    return img, draw


def _nemesis(draw: ImageDraw.ImageDraw) -> None:
    # A CT volume as an isometric cube split into superpatches.
    front = [(30, 50), (78, 50), (78, 98), (30, 98)]
    top = [(30, 50), (52, 30), (100, 30), (78, 50)]
    side = [(78, 50), (100, 30), (100, 78), (78, 98)]
    draw.polygon(top, fill=(255, 255, 255, 230))
    draw.polygon(side, fill=(255, 255, 255, 170))
    draw.polygon(front, fill=WHITE)
    grid = (33, 102, 172, 255)
    for x in (46, 62):
        draw.line([(x, 50), (x, 98)], fill=grid, width=3)
    for y in (66, 82):
        draw.line([(30, y), (78, y)], fill=grid, width=3)


def _tooth(draw: ImageDraw.ImageDraw) -> None:
    # A molar: crown with two roots.
    draw.rounded_rectangle((34, 26, 94, 70), radius=18, fill=WHITE)
    draw.polygon([(36, 58), (60, 58), (54, 104), (44, 104)], fill=WHITE)
    draw.polygon([(68, 58), (92, 58), (84, 104), (74, 104)], fill=WHITE)
    draw.ellipse((56, 36, 72, 52), fill=(0, 150, 136, 255))  # a lesion spot


def _nerve(draw: ImageDraw.ImageDraw) -> None:
    # A tumour (circle) with a nerve fibre running through it.
    draw.ellipse((30, 34, 90, 94), outline=WHITE, width=7)
    draw.line([(16, 100), (48, 72), (80, 58), (112, 28)], fill=WHITE, width=6, joint="curve")
    for cx, cy in ((48, 72), (80, 58)):
        draw.ellipse((cx - 7, cy - 7, cx + 7, cy + 7), fill=WHITE)


def _review(draw: ImageDraw.ImageDraw) -> None:
    # A review sheet: two cases ticked, one crossed out.
    draw.rounded_rectangle((28, 20, 100, 110), radius=10, fill=WHITE)
    draw.rounded_rectangle((48, 13, 80, 27), radius=5, fill=(120, 50, 0, 255))  # the clip
    ink, tick, cross = (90, 90, 90, 255), (39, 174, 96, 255), (192, 57, 43, 255)
    for row, mark in enumerate(("tick", "cross", "tick")):
        y = 44 + 24 * row
        if mark == "tick":
            draw.line([(36, y), (43, y + 7), (56, y - 8)], fill=tick, width=6, joint="curve")
        else:
            draw.line([(37, y - 7), (53, y + 7)], fill=cross, width=6)
            draw.line([(37, y + 7), (53, y - 7)], fill=cross, width=6)
        draw.line([(62, y), (90, y)], fill=ink, width=5)


def _pantheon(draw: ImageDraw.ImageDraw) -> None:
    # The extension icon: a temple (pediment, columns, base) in the three module colours.
    draw.polygon([(16, 42), (64, 14), (112, 42)], fill=WHITE)
    draw.rectangle((18, 44, 110, 50), fill=WHITE)
    colours = list(MODULE_COLOURS.values())
    for i, x in enumerate((26, 50, 74, 98)):
        c = colours[i % len(colours)] + (255,)
        draw.rectangle((x - 7, 54, x + 7, 98), fill=c, outline=WHITE, width=2)
    draw.rectangle((14, 100, 114, 106), fill=WHITE)
    draw.rectangle((10, 108, 118, 114), fill=WHITE)


def make_module_icon(name: str) -> Image.Image:
    img, draw = _canvas({**MODULE_COLOURS, **TOOL_COLOURS}[name])
    {"NemesisSlicer": _nemesis, "ToothAnalysis": _tooth, "PNIPredict": _nerve, "PantheonReview": _review}[name](draw)
    return img


def make_extension_icon() -> Image.Image:
    img, draw = _canvas((44, 62, 80))
    _pantheon(draw)
    return img


def main() -> None:
    out = ROOT / "Resources" / "Icons" / "Pantheon.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    make_extension_icon().save(out, optimize=True)
    print(out)
    for name in [*MODULE_COLOURS, *TOOL_COLOURS]:
        out = ROOT / name / "Resources" / "Icons" / f"{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        make_module_icon(name).save(out, optimize=True)
        print(out)


if __name__ == "__main__":
    main()
