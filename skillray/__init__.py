"""skillray: model-native skills of language models, recovered from their activations, on Ray."""

__version__ = "0.1.0"
