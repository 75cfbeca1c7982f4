"""Bulk upload of images with labels and reference masks: reading archives (archive), labels (labels), DICOM
(dicom), storing (services), and the upload page and API (views, api)."""
