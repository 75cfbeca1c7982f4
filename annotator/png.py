"""Masks as files: 8-bit PNGs of 0 and 255, written and read here only."""
from __future__ import annotations

import io

import numpy as np
from django.core.files.storage import default_storage
from PIL import Image as PILImage
from PIL import UnidentifiedImageError


class MaskError(ValueError):
    """An uploaded mask that cannot be used."""


def png_encode(picture: np.ndarray | PILImage.Image) -> bytes:
    """A PNG of an 8-bit array or a picture; a boolean array becomes a mask of 0 and 255."""
    if isinstance(picture, np.ndarray):
        picture = PILImage.fromarray(picture.astype(np.uint8) * 255 if picture.dtype == bool else picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def mask_file_read(name: str) -> np.ndarray:
    """A stored mask (its name in the media storage) as a boolean array, True on the foreground."""
    with default_storage.open(name, "rb") as f:
        return np.asarray(PILImage.open(f).convert("L")) > 0


def mask_decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """A mask someone sent as a PNG of the image's `size`; MaskError says why it cannot be used."""
    try:
        with PILImage.open(io.BytesIO(data)) as picture:
            if picture.format != "PNG":
                raise MaskError("a mask must be a PNG")
            if picture.size != size:
                raise MaskError(f"the mask is {picture.size[0]}x{picture.size[1]} but the image is {size[0]}x{size[1]}")
            array = np.asarray(picture.convert("RGBA" if "A" in picture.getbands() else "L"))
    except MaskError:
        raise
    except UnidentifiedImageError as error:  # its message names Python's file object, which tells a person nothing
        raise MaskError("not a PNG image") from error
    except Exception as error:
        raise MaskError(f"not a readable PNG ({error})") from error
    # A drawn mask with transparency marks foreground by alpha; an opaque one by brightness.
    return array[..., 3] > 0 if array.ndim == 3 else array > 0
