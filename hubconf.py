"""torch.hub entry points: ``torch.hub.load("<repo or dir>", "csap_tiny_ade20k", source="local")``.

One entry per architecture (``csap_tiny``, ``segnext_base``, ...) and per architecture and dataset
(``csap_tiny_ade20k``, ``segnext_tiny_cityscapes``, ...), generated from the csap_zoo registry.
"""
dependencies = ["torch", "torchvision", "timm", "einops", "safetensors", "huggingface_hub"]

from csap_zoo import create_model  # noqa: E402
from csap_zoo.models.registry import DATASET_NUM_CLASSES, get_architecture, list_models  # noqa: E402


def _make_entry(model_name: str):
    arch_name, _, dataset = model_name.partition(".")
    arch = get_architecture(arch_name)
    classes = DATASET_NUM_CLASSES[dataset] if dataset else None

    def entry(pretrained: bool = False, **kwargs):
        return create_model(model_name, pretrained=pretrained, **kwargs)

    entry.__name__ = model_name.replace(".", "_")
    entry.__doc__ = (
        f"{arch.description}.\n\n"
        + (f"Dataset: {dataset}, {classes} classes.\n" if dataset else "Any class count (default 150).\n")
        + "Keyword arguments go to csap_zoo.create_model (num_classes, in_chans, head options)."
    )
    return entry


for _name in list_models() + list_models(with_datasets=True):
    globals()[_name.replace(".", "_")] = _make_entry(_name)
del _name
