"""Images with model output made directly in the database, for tests that do not need the ensemble."""
import hashlib

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from PIL import Image as PILImage

from annotator.masks.services import mask_create
from annotator.models import Image, Mask, Prediction
from annotator.png import png_encode
from annotator.tallies import image_tally_add


def annotated_image(project, name="scan.png", size=(40, 30), uncertainty=0.3, flagged=False, box=(5, 5, 20, 15),
                    picture=None):
    """An image the ensemble has seen: one prediction per model, each with a heatmap peaking on `box`
    (x1, y1, x2, y2), and a model mask filling `box`. `picture`: a real image file to use instead of a grey one."""
    if picture is not None:
        data = picture.read_bytes()
        size = PILImage.open(picture).size
    else:
        data = png_encode(PILImage.new("L", size, 90))
    width, height = size
    digest = hashlib.sha256(data + name.encode()).hexdigest()
    image = Image(project=project, sha256=digest, original_name=name, width=width, height=height,
                  annotated_at=timezone.now(), model_version="test@0", predicted_label="lesion",
                  uncertainty=uncertainty, flagged=flagged, flag_reason="models disagree" if flagged else "")
    image.file.save(f"{digest}.png", ContentFile(data), save=False)
    image.save()
    image_tally_add(image)
    for arch in ("resnet50", "efficientnet_b0", "densenet121"):
        prediction = Prediction(image=image, architecture=arch, model_version="test@0", label="lesion", agrees=True,
                                probabilities=[0.2, 0.8], std=[0.05, 0.05], entropy=0.7, mutual_information=0.01,
                                cam_class="lesion")
        prediction.heatmap.save(f"{image.pk}-{arch}.png", ContentFile(png_encode(heatmap_on(size, box))), save=False)
        prediction.save()
    mask_create(image, box_mask(size, box), Mask.Source.MODEL, model_version="test@0")
    return image


def heatmap_on(size, box):
    """A saliency map like XGrad-CAM's: a smooth bump on the box, 0..255."""
    width, height = size
    x1, y1, x2, y2 = box
    ys, xs = np.mgrid[0:height, 0:width]
    spread = max(x2 - x1, y2 - y1, 2)
    bump = np.exp(-(((xs - (x1 + x2) / 2) ** 2 + (ys - (y1 + y2) / 2) ** 2) / (2 * spread ** 2)))
    return PILImage.fromarray(np.round(255 * bump / bump.max()).astype(np.uint8))


def box_mask(size, box):
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def mask_png(mask) -> bytes:
    return png_encode(mask.astype(bool))


def mask_file(mask) -> SimpleUploadedFile:
    """A boolean mask as the PNG file of a mask upload."""
    return SimpleUploadedFile("mask.png", mask_png(mask), content_type="image/png")
