"""MaskedCLIP (arXiv 2507.17239, our reading of its abstract): masked image modelling on every image, CLIP on
image-report pairs, and a bridge transformer with masked feature distillation between the two (docs/MASKEDCLIP.md)."""
