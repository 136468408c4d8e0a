"""Downstream tasks on an exported backbone: classification, detection + instance segmentation, segmentation.

    python -m finetune classify fit --config configs/finetune/classify_tiny.yaml     # accuracy, AUROC, AUPRC, F1
    python -m finetune detect   fit --config configs/finetune/detect_tiny.yaml       # BoxAP, MaskAP (+ AP50, AP75)
    python -m finetune segment  fit --config configs/finetune/segment_tiny.yaml      # Dice per image, pooled Dice, IoU

GPU presets follow the references (docs/FIDELITY.md, Fine-tuning): classify_r50.yaml (SparK's ResNet-50 fine-tune),
probe_r50.yaml (MAE's linear probe), detect_r50.yaml (SparK's / MWM's detectron2 Mask R-CNN), segment_r50.yaml.
Every run starts from `--model.init` = scratch | imagenet (timm weights already on disk) | imagenet:FILE |
a backbone exported by `python -m pretrain export` (finetune.backbone), trains, tests on the test split and writes
one results JSON (finetune.results documents the format) to `--results_dir`. `--train-fraction 0.01|0.1|1.0`
trains on a seeded, stratified subset of the training split for label-efficiency studies.

Plugging in another timm backbone: set `--model.backbone` to any timm convnet name. Classification uses
`timm.create_model(name, num_classes=K)`; segmentation uses timm's `features_only` extractor under a UNet decoder
(finetune.unet); detection uses torchvision's ResNet-FPN for ResNets (timm and torchvision name their
parameters alike) and otherwise `finetune.maskrcnn.TimmFpnBackbone` (timm features_only + torchvision's
FeaturePyramidNetwork, the BackboneWithFPN contract: `out_channels` and an OrderedDict of stride 4..64 maps). The
backbone needs feature levels at strides 4, 8, 16 and 32 for detection; its exported state dict must use the
names of `timm.create_model(name)`.
"""
