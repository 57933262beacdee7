"""The classifiers: backbones, their convolutions and BatchNorm, heads, SilaClassifier."""
