"""The annotator app: projects and their images, the ensemble's proposals, mask versions, and the features around
them, one folder each: projects/, ingest/, annotation/, masks/, export/, finetune/. What they share sits here:
models, access (who may see or change what), enqueue and tasks (the workers), png, serializers. Nothing here
imports the review app, which builds on this one."""
