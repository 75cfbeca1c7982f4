"""A project's dashboard: where its images stand, how reviewing goes, how its model versions score."""
