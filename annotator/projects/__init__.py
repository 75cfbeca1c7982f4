"""Projects and what they hold: the home page, a project's page, and the API that reads projects, images, jobs and
the files behind an image page."""
