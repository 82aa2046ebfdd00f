"""Regenerate the LiverSynthesis module icon (128x128 PNG) with Pillow, in the style of make_icons.py.

    python Resources/Icons/make_liver_synthesis_icon.py

Writes LiverSynthesis/Resources/Icons/LiverSynthesis.png: a liver (white) with its portal vein and an
HCC, and a spark for "synthesised", on wine red (the other modules: blue, teal, purple, orange).
Simple shapes, so the output is deterministic.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 128
ROOT = Path(__file__).resolve().parents[2]
COLOUR = (128, 36, 72)  # wine red: liver MRI synthesis
WHITE = (255, 255, 255, 255)


def make_icon() -> Image.Image:
    img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((4, 4, SIZE - 5, SIZE - 5), radius=22, fill=COLOUR + (255,))
    # the liver as seen from the front: a big right lobe (image left) tapering to the left lobe
    liver = [(14, 52), (22, 40), (40, 34), (64, 36), (88, 40), (108, 44), (116, 50), (110, 58), (92, 68),
             (72, 80), (52, 94), (36, 100), (24, 96), (16, 84), (12, 68)]
    draw.polygon(liver, fill=WHITE)
    vein = COLOUR + (255,)
    draw.line([(44, 96), (50, 74), (58, 62)], fill=vein, width=6, joint="curve")  # portal vein trunk
    draw.line([(58, 62), (86, 54)], fill=vein, width=4)
    draw.line([(58, 62), (36, 54)], fill=vein, width=4)
    draw.ellipse((70, 62, 88, 80), fill=(192, 57, 43, 255), outline=vein, width=2)  # an HCC
    # a spark: the volume is synthesised
    cx, cy, r, t = 100, 22, 13, 4
    draw.polygon([(cx, cy - r), (cx + t, cy - t), (cx + r, cy), (cx + t, cy + t), (cx, cy + r), (cx - t, cy + t),
                  (cx - r, cy), (cx - t, cy - t)], fill=(255, 214, 102, 255))
    return img


def main() -> None:
    out = ROOT / "LiverSynthesis" / "Resources" / "Icons" / "LiverSynthesis.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    make_icon().save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
