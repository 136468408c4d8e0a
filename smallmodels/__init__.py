"""Small localizer models trained here on synthetic sample corpora: a tiny CLIP (MaskedCLIP's trainer, L_CLIP on
image-report pairs, exported as an open_clip folder) and a tiny SAM (segment_anything's classes, SAM's loss on box
prompts), plus the `localize.yaml` that runs them. Meaningful on the synthetic corpus only.

It sits above `localize/` and `pretrain/` (it uses both); neither imports it.
"""
