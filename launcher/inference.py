"""Load a trained checkpoint as a plain PyTorch model for evaluation and export (single process)."""

from __future__ import annotations

from pathlib import Path

import torch

from launcher.config import ConfigError, RunConfig, build_config


class CheckpointNotFound(FileNotFoundError):
    pass


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory, its checkpoints/ folder, or one step_N checkpoint -> the checkpoint directory."""
    from parallel.manifest import MANIFEST, newest_valid, verify

    p = Path(path)
    if (p / MANIFEST).exists():
        ok, reason = verify(p)
        if not ok:
            raise CheckpointNotFound(f"checkpoint {p} does not verify: {reason}")
        return p
    for root in (p / "checkpoints", p):
        if root.is_dir():
            found = newest_valid(root)
            if found:
                return found
    raise CheckpointNotFound(f"no valid checkpoint under {p} (expected RUN/checkpoints/step_*/manifest.json)")


def _model_states_file(ckpt: Path) -> Path:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (ckpt / name).exists():
            return ckpt / name
    raise CheckpointNotFound(f"{ckpt}: no DeepSpeed model-states file")


def read_run_config(ckpt: Path) -> RunConfig:
    from parallel.manifest import read_manifest
    from parallel.reshard import UNIVERSAL_FORMAT, UNIVERSAL_STATE
    if read_manifest(ckpt).get("format") == UNIVERSAL_FORMAT:
        import json
        return build_config(json.loads((ckpt / UNIVERSAL_STATE).read_text())["client"]["config"])
    states = torch.load(_model_states_file(ckpt), map_location="cpu", weights_only=True)
    return build_config(states["config"])


def consolidated_state_dict(ckpt: str | Path) -> tuple[dict[str, torch.Tensor], RunConfig]:
    """Full fp32 weights of the model (ZeRO partitions gathered; TP shards merged) and its config.

    Everything is read with torch.load(weights_only=True) or safetensors (DeepSpeed's zero_to_fp32
    unpickles arbitrary objects, so it is not used)."""
    from parallel.manifest import read_manifest

    ckpt = resolve_checkpoint(ckpt)
    manifest = read_manifest(ckpt)
    cfg = read_run_config(ckpt)
    if manifest.get("tp", 1) == 1 and manifest.get("zero_stage", 0) == 0 and "format" not in manifest:
        states = torch.load(_model_states_file(ckpt), map_location="cpu", weights_only=True)
        return {k: v.float() for k, v in states["module"].items()}, cfg
    # master fp32 weights from the ZeRO partitions / TP shards (or a universal checkpoint)
    from parallel.reshard import merge_tensor_parallel_state
    return merge_tensor_parallel_state(ckpt, cfg), cfg


def load_for_eval(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, Tokenizer, RunConfig) from a run directory or checkpoint directory."""
    from data.tokenizer import Tokenizer

    sd, cfg = consolidated_state_dict(path)
    from parallel.build import model_class
    with torch.device("meta"):
        model = model_class(cfg.model.arch)(cfg.model)
    model = model.to_empty(device=device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    else:
        model.lm_head.weight = model.wte.weight
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # the tied output head is stored once (as the embedding)
    missing = [k for k in missing if k not in ("lm_head.weight",) and not k.endswith("decoder.weight")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    model.eval()
    # scoring windows default to the length the run trained on, for any caller (MnemosLM reads it)
    model.trained_seq_len = cfg.data.seq_len if cfg.model.arch == "gpt" else None
    tokenizer = Tokenizer(cfg.data.tokenizer) if cfg.data.tokenizer else None
    if tokenizer is not None and tokenizer.vocab_size > cfg.model.vocab_size:  # a run from before the check
        raise ConfigError(f"{path}: its tokenizer {cfg.data.tokenizer} has {tokenizer.vocab_size} pieces but the "
                          f"model's embedding {cfg.model.vocab_size} rows (rule: model.vocab_size covers every id; "
                          f"the ids above {cfg.model.vocab_size - 1} have no rows: retrain with a larger vocab_size)")
    return model, tokenizer, cfg
