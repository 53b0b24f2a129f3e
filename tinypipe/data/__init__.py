"""Training data: images with captions, instruction records, and how they are read, checked and batched."""
