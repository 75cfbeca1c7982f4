"""Fine-tuning a project's ensemble on its approved reviews (the engine side is ml/finetune.py): runs, the model
versions they produce, which one is in use, and the Models page and API."""
