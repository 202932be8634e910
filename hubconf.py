"""torch.hub entry points: ``torch.hub.load("<repo or dir>", "csap_tiny_ade20k", source="local")``.

One entry per architecture (``csap_tiny``, ``segnext_base``, ...) and per segmentation checkpoint in the weights
manifest (``csap_tiny_ade20k``, ``segnext_tiny_cityscapes``, ...). ``pretrained=True`` loads the checkpoint
(for a bare architecture: its ImageNet backbone) through the manifest, hash-checked and cached.
"""
# Every module `import csap_zoo` imports (torch.hub checks that each can be found, and names the missing ones).
dependencies = ["torch", "torchvision", "timm", "einops", "safetensors", "huggingface_hub", "numpy", "PIL"]

# Private aliases: torch.hub treats every public callable here as an entry point.
from csap_zoo import create_model as _create_model  # noqa: E402
from csap_zoo.manifest import default_manifest as _default_manifest  # noqa: E402
from csap_zoo.models.registry import get_architecture as _get_architecture  # noqa: E402
from csap_zoo.models.registry import list_architectures  # noqa: E402


def _describe_checkpoint(name: str) -> str:
    manifest = _default_manifest()
    if name not in manifest:
        return "Any class count (default 150); pretrained=True loads the ImageNet backbone.\n"
    entry = manifest.get(name)
    paper = entry.metrics.get("paper", {})
    facts = [f"Dataset: {entry.dataset}, {entry.num_classes} classes."]
    if "mIoU" in paper:
        facts.append(f"Paper mIoU: {paper['mIoU']}.")
    if "GFLOPs" in paper:
        facts.append(f"Paper GFLOPs (MACs): {paper['GFLOPs']}.")
    facts.append(f"Weights: {entry.status}.")
    return " ".join(facts) + "\n"


def _make_entry(model_name: str):
    arch = _get_architecture(model_name.split(".", 1)[0])

    def entry(pretrained: bool = False, **kwargs):
        return _create_model(model_name, pretrained=pretrained, **kwargs)

    entry.__name__ = model_name.replace(".", "_")
    entry.__doc__ = (
        f"{arch.description}.\n\n{_describe_checkpoint(model_name)}"
        "Keyword arguments go to csap_zoo.create_model (num_classes, in_chans, head options, cache_dir, ...)."
    )
    return entry


_segmentor_checkpoints = [c.name for c in _default_manifest().checkpoints if c.kind == "segmentor"]
for _name in list_architectures() + _segmentor_checkpoints:
    globals()[_name.replace(".", "_")] = _make_entry(_name)
del _name
