#!/usr/bin/env python3
"""CMYK JPEGs and what PIL makes of them, for tests/processors/test_image_cmyk.cpp.

Run from the repository root with Pillow installed (made with Pillow 13.0.0; Debian 12's
python3-pil 9.4.0 gives the same bytes):

    .venv/bin/pip install pillow && .venv/bin/python tests/data/images/make_cmyk.py

Writes, for each case NAME:
  NAME.jpg            a 4-component JPEG written by PIL (Adobe APP14 marker, inverted
                      values, as Photoshop writes them)
  NAME.decoded.png    Image.open(NAME.jpg).convert("RGB"), lossless
  NAME.resized.png    that picture resized to 224x224 with Image.BICUBIC, the first step of
                      the BLIP-2 image processors (`transforms.Resize((224, 224), BICUBIC)`)
Sizes are odd so that the 2x2 chroma-free CMYK blocks and the resize both see ragged edges.
"""
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def cmyk_picture(height, width, seed):
    # Smooth gradients plus noise: every ink varies, black too, so the conversion's
    # rounding (255 - k) * (255 - c) / 255 is exercised over the whole range.
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        255 * x / max(width - 1, 1),
        255 * y / max(height - 1, 1),
        127.5 + 127.5 * np.sin((x + 2 * y) / 7.0),
        255 * ((x * y) % 97) / 96.0,
    ]
    ink = np.stack(planes, axis=-1) + rng.normal(0, 12, (height, width, 4))
    return Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8), mode="CMYK")


CASES = {
    # name: (height, width, seed, save options)
    "cmyk_q90": (37, 53, 1, {"quality": 90}),
    "cmyk_q75_progressive": (61, 29, 2, {"quality": 75, "progressive": True}),
}

for name, (h, w, seed, options) in CASES.items():
    path = os.path.join(HERE, name + ".jpg")
    cmyk_picture(h, w, seed).save(path, "JPEG", **options)
    with Image.open(path) as im:
        assert im.mode == "CMYK", im.mode
        rgb = im.convert("RGB")
    rgb.save(os.path.join(HERE, name + ".decoded.png"))
    rgb.resize((224, 224), Image.BICUBIC).save(os.path.join(HERE, name + ".resized.png"))
    print(name, w, "x", h, os.path.getsize(path), "bytes")
