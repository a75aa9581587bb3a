"""The checks behind `Guard`, one module per surface: images, text, model files, bundles."""
