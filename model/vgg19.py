"""The VGG19 trunk the perceptual loss measures with (model/loss.py, ``VGGPerceptualLoss``): where its weights file
is found, how a file is checked and loaded, and why the weights end up as constants rather than parameters.

Weights come only from local files, never from the network: ``--vgg_weights PATH``, else the environment variable
``THESIS_VGG_WEIGHTS``, else torchvision's file in the torch hub cache. The trunk is torchvision's
``vgg19().features[:30]`` (conv1_1 ... relu5_1) with its original layer names, in float32.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

VGG_WEIGHTS_ENV_VAR = "THESIS_VGG_WEIGHTS"
VGG19_HUB_FILENAME = "vgg19-dcbb9e9d.pth"   # torchvision's IMAGENET1K_V1 file name in the hub cache
VGG19_TRUNK_LENGTH = 30                     # features[:30]: conv1_1 ... relu5_1, the deepest layer the loss taps


class VGGWeightsUnavailable(RuntimeError):
    """No VGG19 weights file was found and random weights were not allowed."""


def _vgg19_hub_cache_path() -> str:
    # Looked up at call time (not imported by name) so TORCH_HOME / torch.hub.set_dir changes are honoured.
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG19_HUB_FILENAME)


def find_vgg19_weights(weights_path: str | os.PathLike | None = None) -> str:
    """Locate a VGG19 weights file; returns its path.

    Order: ``weights_path``; else the environment variable ``THESIS_VGG_WEIGHTS``; else torchvision's file in
    the torch hub cache (``<torch.hub.get_dir()>/checkpoints/vgg19-dcbb9e9d.pth``).

    Raises:
        FileNotFoundError: ``weights_path`` or ``THESIS_VGG_WEIGHTS`` names a file that does not exist (the user
            asked for that file explicitly, so silently training without the perceptual term would be wrong).
        VGGWeightsUnavailable: nothing was given and the hub cache has no file.
    """
    if weights_path is not None:
        path = os.fspath(weights_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VGG19 weights file given explicitly does not exist: {path}")
        return path
    env_path = os.environ.get(VGG_WEIGHTS_ENV_VAR, "")
    if env_path:
        if not os.path.isfile(env_path):
            raise FileNotFoundError(f"{VGG_WEIGHTS_ENV_VAR}={env_path} does not name an existing file")
        return env_path
    hub_path = _vgg19_hub_cache_path()
    if os.path.isfile(hub_path):
        return hub_path
    raise VGGWeightsUnavailable(
        f"no VGG19 weights found (no weights path given, {VGG_WEIGHTS_ENV_VAR} unset, {hub_path} missing); "
        f"provide them with --vgg_weights PATH or {VGG_WEIGHTS_ENV_VAR}=PATH, or copy torchvision's "
        f"{VGG19_HUB_FILENAME} to {hub_path}")


def build_vgg19_trunk() -> nn.Sequential:
    """torchvision VGG19 ``features[:30]`` (conv1_1 ... relu5_1) with uninitialised float32 CPU weights.

    Built on the meta device so the 120M-parameter classifier (discarded anyway) is never allocated or initialised;
    ``weights=None`` guarantees torchvision never tries to download anything.
    """
    import torchvision  # imported here: only the perceptual term needs it, and it adds seconds to import time

    with torch.device("meta"):
        full_network = torchvision.models.vgg19(weights=None)
    trunk = full_network.features[:VGG19_TRUNK_LENGTH]   # slicing keeps the original keys "0" ... "29"
    return trunk.to_empty(device="cpu")


def _one_line(text: str, limit: int = 160) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return first_line if len(first_line) <= limit else first_line[:limit] + "..."


def load_vgg19_trunk_weights(trunk: nn.Sequential, path: str) -> None:
    """Copy a VGG19 state dict from ``path`` into ``trunk`` (as built by :func:`build_vgg19_trunk`).

    Accepts torchvision's full VGG19 state dict (``features.N.*`` plus ``classifier.*``) or a features-only one
    (``N.*``); layers after relu5_1 and the classifier are ignored.  Any other content -> one-line ValueError.
    """
    def reject(reason: str) -> ValueError:
        return ValueError(f"{path}: not a torchvision VGG19 weights file ({reason})")

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types (pickle, zip, weights_only guard); all mean "bad file"
        raise reject(f"cannot be loaded: {type(error).__name__}: {_one_line(str(error))}") from None
    if not isinstance(raw, Mapping) or not all(isinstance(value, torch.Tensor) for value in raw.values()):
        raise reject("expected a dict of tensors")

    if any(key.startswith("features.") for key in raw):
        raw = {key[len("features."):]: value for key, value in raw.items() if key.startswith("features.")}

    def layer_index(key: str) -> int | None:
        head = key.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    selected = {key: value for key, value in raw.items()
                if layer_index(key) is None or layer_index(key) < VGG19_TRUNK_LENGTH}
    expected = trunk.state_dict()
    missing = sorted(set(expected) - set(selected))
    unexpected = sorted(set(selected) - set(expected))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys, e.g. {missing[0]!r}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]!r}")
        raise reject("; ".join(detail))
    for key, reference in expected.items():
        if selected[key].shape != reference.shape:
            raise reject(f"{key} has shape {tuple(selected[key].shape)}, expected {tuple(reference.shape)}")
    trunk.load_state_dict({key: value.float() for key, value in selected.items()}, strict=True)


def freeze_as_constants(trunk: nn.Sequential) -> None:
    """Turn every parameter of ``trunk`` into a non-persistent buffer of the same name.

    The VGG weights are constants that come from a file, not state of the run, so:
    they never enter any ``state_dict`` (20M floats do not belong in VFI checkpoints, and loading a checkpoint
    must not need them), they are not ``parameters()`` (no optimiser or grad-clipping can touch them), they
    cannot require grad, and as buffers they still follow ``.to(device)`` / ``.cuda()``.  ``nn.Conv2d.forward``
    reads ``self.weight`` / ``self.bias`` by attribute, which finds buffers just as well as parameters.
    """
    for layer in trunk:
        for name, parameter in list(layer.named_parameters(recurse=False)):
            delattr(layer, name)
            layer.register_buffer(name, parameter.detach(), persistent=False)


def frozen_vgg19_trunk(weights_path: str | os.PathLike | None = None, allow_random: bool = False
                       ) -> tuple[nn.Sequential, str]:
    """(trunk, source): the VGG19 trunk with the weights of the file :func:`find_vgg19_weights` finds, frozen as
    constants (:func:`freeze_as_constants`); source is that file's path, or ``"random"`` when none was found and
    ``allow_random`` (tests only) lets the convolutions keep a random initialisation.

    Raises:
        VGGWeightsUnavailable: no file found and ``allow_random`` is False.
        FileNotFoundError: an explicitly named file (argument or env var) does not exist.
        ValueError: the file is not a VGG19 state dict (one line, naming the file).
    """
    try:
        resolved_path: str | None = find_vgg19_weights(weights_path)
    except VGGWeightsUnavailable:
        if not allow_random:
            raise
        resolved_path = None
    trunk = build_vgg19_trunk()
    if resolved_path is None:
        for layer in trunk:
            if isinstance(layer, nn.Conv2d):
                layer.reset_parameters()
    else:
        load_vgg19_trunk_weights(trunk, resolved_path)
    freeze_as_constants(trunk)
    return trunk, resolved_path or "random"
