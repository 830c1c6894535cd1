"""trainlab: train neural networks the way a careful practitioner does."""
