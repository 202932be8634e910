"""Constants shared by the model, data and inference layers (kept here so that none has to import another)."""

# ImageNet mean / std per RGB channel on the 0-255 scale: the normalisation of the MSCAN backbones' pretraining.
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
