"""The annotation job: the project's ensemble over its images, and what it proposes stored as predictions, heatmaps,
a verdict and a first mask version."""
