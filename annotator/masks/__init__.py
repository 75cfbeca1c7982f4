"""Mask versions of an image: added, never overwritten; the latest one is what a radiologist sees and approves."""
