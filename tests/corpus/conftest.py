"""A fake emoji-datasource-google package in the real layout: emoji.json plus small real RGBA PNGs."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

SUBCATEGORIES = ("face-smiling", "animal-mammal", "food-fruit", "transport-ground", "country-flag")


def draw_fake_emoji(index: int) -> bytes:
    """A 64-px RGBA drawing with sharp edges and detail, so blur and thumbnail defects have something to destroy."""
    rng = np.random.default_rng(index)
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    body = tuple(int(value) for value in rng.integers(0, 256, size=3)) + (255,)
    draw.ellipse((4, 4, 59, 59), fill=body, outline=(0, 0, 0, 255), width=2)
    for _ in range(6):
        x, y = (int(value) for value in rng.integers(12, 48, size=2))
        colour = tuple(int(value) for value in rng.integers(0, 256, size=3)) + (255,)
        draw.rectangle((x, y, x + 5, y + 5), fill=colour)
    draw.line((10, 40, 54, 20), fill=(255, 255, 255, 255), width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fake_entry(index: int) -> dict:
    unified = f"1F{index + 0x600:03X}"
    return {
        "name": f"FAKE THING NUMBER {index}",
        "unified": unified,
        "non_qualified": None,
        "docomo": None,
        "au": None,
        "softbank": None,
        "google": None,
        "image": f"{unified.lower()}.png",
        "sheet_x": index,
        "sheet_y": 0,
        "short_name": f"fake_thing_{index}",
        "short_names": [f"fake_thing_{index}"],
        "text": None,
        "texts": None,
        "category": "Fake",
        "subcategory": SUBCATEGORIES[index % len(SUBCATEGORIES)],
        "sort_order": index,
        "added_in": "1.0",
        "has_img_apple": True,
        "has_img_google": True,
        "has_img_twitter": True,
        "has_img_facebook": True,
    }


N_USABLE_EMOJI = 40


def write_fake_package(package_dir: Path) -> list[dict]:
    """40 usable base emoji plus entries the builder must leave out; returns emoji.json's entries."""
    image_dir = package_dir / "img" / "google" / "64"
    image_dir.mkdir(parents=True)
    entries = [fake_entry(index) for index in range(N_USABLE_EMOJI)]
    entries[0]["name"] = ""  # the builder falls back to short_name
    # Skin-tone variants stay out: only the base image is used.
    entries[1]["skin_variations"] = {
        "1F3FB": {
            "unified": f"{entries[1]['unified']}-1F3FB",
            "image": f"{entries[1]['image'][:-4]}-1f3fb.png",
            "has_img_google": True,
        }
    }
    for index, entry in enumerate(entries):
        (image_dir / entry["image"]).write_bytes(draw_fake_emoji(index))
    (image_dir / f"{entries[1]['image'][:-4]}-1f3fb.png").write_bytes(draw_fake_emoji(999))
    no_google_image = fake_entry(100) | {"has_img_google": False}
    png_missing = fake_entry(101)
    entries += [no_google_image, png_missing]
    (package_dir / "emoji.json").write_text(json.dumps(entries), encoding="utf-8")
    (package_dir / "package.json").write_text(json.dumps({"name": "emoji-datasource-google", "version": "16.0.0"}))
    (package_dir / "LICENSE").write_text("fake licence\n")
    return entries


@pytest.fixture(scope="session")
def fake_package(tmp_path_factory) -> Path:
    package_dir = tmp_path_factory.mktemp("fake_emoji") / "package"
    write_fake_package(package_dir)
    return package_dir
