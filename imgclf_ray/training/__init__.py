"""Training: the one trainer (trainer.py: estimators and CNNs), the CNN loop (cnn.py), the bundled
example data sets (bundled.py) and the example jobs' models, training specs in jobs/train/
(example_models.py)."""
