"""The review app: the queue that puts doubtful images first, a radiologist's decisions on an image and their audit
trail, the mask-saving API behind the editor, and a project's dashboard (dashboard/)."""
