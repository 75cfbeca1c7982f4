"""Masks out of the tool, streamed into a file: COCO JSON (RLE, or polygons) and a dataset zip that imports again.

Neither export holds the whole data set in memory: images are read from the database in chunks, one mask is
decoded at a time, and JSON arrays are written item by item (COCO's annotations go to a temporary file while the
images array is written, then are copied after it). What does grow with the number of images is small: the set of
exported file names, and the zip's central directory, which zipfile keeps until it writes it at the end.

Which images and masks (`ExportOptions.status`): approved images with their approved mask (the default); pending
images with their latest mask version, the model's proposal or a draft nobody has approved; rejected images with no
mask, since their annotation was turned down. An image's label is the radiologist's diagnosis, else the label given
with the upload, else the ensemble's (`export.selectors.EXPORT_LABEL_SOURCES`).
"""
