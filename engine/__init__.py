"""What the scripts run: the training loop, the inference pipeline, evaluation, and the
loading of trained models. Above ``models/`` and ``data/``; nothing below imports it."""
