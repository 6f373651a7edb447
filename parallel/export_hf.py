"""Export a checkpoint of any layout to the Hugging Face ecosystem, import one back, and write a plain
consolidated PyTorch state dict.

- `export_hf(ckpt, out)`: `transformers` model directory: `model.safetensors` + `config.json`
  (GPT -> `GPT2LMHeadModel`, BERT -> `BertForPreTraining`) + the tokenizer: `tokenizer.json` and
  `tokenizer_config.json`, which `AutoTokenizer` loads with the ids mnemos trained on (BERT: with
  `[CLS] A [SEP] B [SEP]` and token type ids), and `tokenizer.model`, the sentencepiece file.
- `import_hf(hf_dir, cfg)`: an HF GPT-2 / BERT directory -> a step-0 universal checkpoint in
  `cfg.run_dir/checkpoints`, so `mnemos train` starts from those weights (fresh optimizer). The run
  directory must hold no checkpoint yet: training resumes from the newest one, never from step 0.
- `export_torch(ckpt, out_file)`: `{name: fp32 tensor}` for `torch.load(weights_only=True)` +
  `load_state_dict` (strict) on mnemos' own model classes, no DeepSpeed needed: every key of the
  model's `state_dict()`, the tied output weights (`lm_head.weight`, BERT's `mlm.decoder.weight`)
  included as the embedding tensor itself (stored once). Beside it, `OUT.config.json`: the run config,
  whose `model` section builds the model.

Weight maps: GPT uses `evaluation.hf` (Linear weights transposed to GPT-2's Conv1D, q|k|v order kept);
BERT uses `model.bert.to_hf_state_dict` / `from_hf_state_dict`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

log = logging.getLogger("mnemos.export")


class ExportError(RuntimeError):
    """What the user asked to export or import cannot be (an HF directory mnemos cannot read, weights that do not
    fit the run's model): `mnemos ckpt` prints it in one line and exits 2. A checkpoint that does not match its own
    model is a bug instead, raised as a plain RuntimeError."""


# ---- GPT <-> GPT-2 --------------------------------------------------------------------------------

_GPT_LINEARS = (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"))


def gpt_to_hf(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    for i in range(n_layer):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            for leaf in ("weight", "bias"):
                out[f"{dst}{ln}.{leaf}"] = sd[f"{src}{ln}.{leaf}"]
        for a, b in _GPT_LINEARS:
            out[f"{dst}{b}.weight"] = sd[f"{src}{a}.weight"].t().contiguous()  # Linear (out, in) -> Conv1D (in, out)
            out[f"{dst}{b}.bias"] = sd[f"{src}{a}.bias"]
    return out


def gpt_from_hf(hf: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    g = lambda k: hf.get(k, hf.get(k[len("transformer."):]))  # noqa: E731 (GPT2Model dirs lack the prefix)
    out = {"wte.weight": g("transformer.wte.weight"), "wpe.weight": g("transformer.wpe.weight"),
           "ln_f.weight": g("transformer.ln_f.weight"), "ln_f.bias": g("transformer.ln_f.bias")}
    for i in range(n_layer):
        src, dst = f"transformer.h.{i}.", f"blocks.{i}."
        for ln in ("ln_1", "ln_2"):
            for leaf in ("weight", "bias"):
                out[f"{dst}{ln}.{leaf}"] = g(f"{src}{ln}.{leaf}")
        for a, b in _GPT_LINEARS:
            out[f"{dst}{a}.weight"] = g(f"{src}{b}.weight").t().contiguous()
            out[f"{dst}{a}.bias"] = g(f"{src}{b}.bias")
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise ExportError(f"the HF GPT-2 checkpoint lacks tensors for {missing[:5]}")
    return out


def bert_hf_config(m):
    from transformers import BertConfig
    return BertConfig(vocab_size=m.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layer,
                      num_attention_heads=m.n_head, intermediate_size=m.ff_width, hidden_act="gelu",
                      hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout,
                      max_position_embeddings=m.n_ctx, type_vocab_size=m.type_vocab_size,
                      initializer_range=m.init_std, layer_norm_eps=m.layer_norm_eps)


def model_fields_from_hf(config: dict) -> dict:
    """mnemos model.* fields from an HF config.json (GPT-2 or BERT)."""
    if config.get("model_type") == "gpt2":
        act = config.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ExportError(f"GPT-2 activation_function={act!r}: mnemos' GPT uses the tanh GELU (gelu_new)")
        return {"arch": "gpt", "n_layer": config["n_layer"], "d_model": config["n_embd"], "n_head": config["n_head"],
                "d_ff": config.get("n_inner") or 4 * config["n_embd"], "n_ctx": config["n_positions"],
                "vocab_size": config["vocab_size"], "layer_norm_eps": config.get("layer_norm_epsilon", 1e-5)}
    if config.get("model_type") == "bert":
        if config.get("hidden_act", "gelu") != "gelu":
            raise ExportError(f"BERT hidden_act={config['hidden_act']!r}: mnemos' BERT uses the erf GELU ('gelu')")
        return {"arch": "bert", "n_layer": config["num_hidden_layers"], "d_model": config["hidden_size"],
                "n_head": config["num_attention_heads"], "d_ff": config["intermediate_size"],
                "n_ctx": config["max_position_embeddings"], "vocab_size": config["vocab_size"],
                "type_vocab_size": config["type_vocab_size"], "layer_norm_eps": config["layer_norm_eps"]}
    raise ExportError(f"model_type={config.get('model_type')!r}: only gpt2 and bert directories can be imported")


# ---- export ----------------------------------------------------------------------------------------

def write_tokenizer(tokenizer_model: str | Path, out: Path, bert: bool = False, max_length: int | None = None,
                    fast=None) -> None:
    """tokenizer.json + tokenizer_config.json that AutoTokenizer loads with the ids mnemos trained on
    (parallel/hf_tokenizer.py), and the sentencepiece file itself. `fast`: the tokenizer, if already built."""
    from parallel.hf_tokenizer import fast_tokenizer, tokenizer_config
    fast = fast or fast_tokenizer(tokenizer_model, bert)
    shutil.copyfile(tokenizer_model, out / "tokenizer.model")
    fast.save(str(out / "tokenizer.json"))
    cfg = tokenizer_config(tokenizer_model, bert, max_length)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    specials = {k: v for k, v in cfg.items() if k.endswith("_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))


def hf_model_from_state(sd: dict[str, torch.Tensor], model_cfg):
    """A transformers model (GPT2LMHeadModel / BertForPreTraining) holding these mnemos weights."""
    if model_cfg.arch == "gpt":
        from evaluation.hf import hf_config
        from transformers import GPT2LMHeadModel
        hf = GPT2LMHeadModel(hf_config(model_cfg))
        hf_sd = gpt_to_hf(sd, model_cfg.n_layer)
        hf_sd["lm_head.weight"] = hf_sd["transformer.wte.weight"]
        ignore = (".attn.bias", ".attn.masked_bias")
    else:
        from model.bert import to_hf_state_dict
        from transformers import BertForPreTraining
        hf = BertForPreTraining(bert_hf_config(model_cfg))
        hf_sd = to_hf_state_dict(sd)
        ignore = ("position_ids", "token_type_ids")
    missing, unexpected = hf.load_state_dict(hf_sd, strict=False)
    missing = [k for k in missing if not k.endswith(ignore)]
    if missing or unexpected:
        raise RuntimeError(f"{type(hf).__name__} export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf.tie_weights()
    return hf.eval()


def export_hf(ckpt: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write a transformers directory for a checkpoint (any TP/DP/ZeRO layout, or universal)."""
    from launcher.inference import consolidated_state_dict
    from parallel.hf_tokenizer import fast_tokenizer
    sd, cfg = consolidated_state_dict(ckpt)
    # before OUT is made: a model transformers cannot hold, or a tokenizer that does not fit, stops here
    hf = hf_model_from_state(sd, cfg.model)
    tok, bert = tokenizer or cfg.data.tokenizer, cfg.model.arch == "bert"
    fast = fast_tokenizer(tok, bert) if tok else None  # ValueError: no [CLS]/[SEP]/[MASK] for a BERT
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    if tok:
        write_tokenizer(tok, out, bert, cfg.model.n_ctx, fast)
    else:
        log.warning("no tokenizer in the run config and none given: the HF directory has weights only")
    log.info("exported %s as %s to %s", ckpt, type(hf).__name__, out)
    return out


def torch_config_path(out_file: str | Path) -> Path:
    """Where `export_torch` writes the run config beside OUT (model.pt -> model.config.json)."""
    return Path(out_file).with_suffix(".config.json")


def model_state_dict(sd: dict[str, torch.Tensor], model_cfg) -> dict[str, torch.Tensor]:
    """`sd` (checkpoints store a tied weight once, under the embedding's name) keyed exactly as the model's own
    `state_dict()`, so `model.load_state_dict(...)` loads it with strict=True: a tied name gets the very tensor
    of the name it shares its parameter with (torch.save then stores it once)."""
    from parallel.build import model_class
    with torch.device("meta"):
        model = model_class(model_cfg.arch)(model_cfg)
    params = dict(model.named_parameters(remove_duplicate=False))
    out, missing = {}, []
    for name in model.state_dict():
        # the names of one parameter, first-registered first (wte.weight before lm_head.weight)
        names = [n for n, p in params.items() if p is params[name]] if name in params else [name]
        source = next((n for n in names if n in sd), None)
        if source is None:
            missing.append(name)
        else:
            out[name] = sd[source]
    unexpected = sorted(set(sd) - set(out))
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the {type(model).__name__} model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return out


def export_torch(ckpt: str | Path, out_file: str | Path) -> Path:
    """Consolidated fp32 state dict (`torch.load(weights_only=True)` + strict `load_state_dict`) + the run config
    as JSON beside it (`torch_config_path`)."""
    from launcher.inference import consolidated_state_dict
    sd, cfg = consolidated_state_dict(ckpt)
    full = model_state_dict(sd, cfg.model)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    # temporary names, then renames: a failed export leaves a file already at OUT as it was
    config = torch_config_path(out)
    tmp, config_tmp = out.with_name(f".{out.name}.tmp"), config.with_name(f".{config.name}.tmp")
    copies: dict[int, torch.Tensor] = {}  # one copy per tensor: a tied weight stays one tensor in the file
    try:
        torch.save({k: copies.setdefault(id(v), v.contiguous().clone()) for k, v in full.items()}, tmp)
        config_tmp.write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
        tmp.replace(out)
        config_tmp.replace(config)
    finally:
        tmp.unlink(missing_ok=True)
        config_tmp.unlink(missing_ok=True)
    return out


# ---- import ----------------------------------------------------------------------------------------

def read_hf_config(hf_dir: str | Path) -> dict:
    """The config.json of a transformers directory with safetensors weights; FileNotFoundError / ExportError in one
    line when `hf_dir` is none (a mnemos run or checkpoint directory is not: export-hf makes one from it)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        error = NotADirectoryError if hf_dir.exists() else FileNotFoundError
        raise error(f"{hf_dir}: {'not a' if hf_dir.exists() else 'no such'} directory (expected a transformers GPT-2 "
                    f"or BERT directory)")
    if not (hf_dir / "config.json").is_file():
        mnemos = any((hf_dir / name).exists() for name in ("checkpoints", "manifest.json"))
        raise ExportError(f"{hf_dir} is not a transformers directory (no config.json)"
                          + ("; it is a mnemos run or checkpoint: `mnemos ckpt export-hf` turns it into one"
                             if mnemos else ""))
    if not any(hf_dir.glob("*.safetensors")):
        raise ExportError(f"{hf_dir}: no *.safetensors weights (pickled pytorch_model.bin is not loaded: it could "
                          f"execute code; convert it to safetensors first)")
    try:
        return json.loads((hf_dir / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{hf_dir / 'config.json'} is not valid JSON: {err}") from None


def read_hf_dir(hf_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(mnemos-named fp32 state dict, mnemos model fields) from an HF GPT-2 / BERT directory."""
    from safetensors.torch import load_file
    hf_dir = Path(hf_dir)
    fields = model_fields_from_hf(read_hf_config(hf_dir))
    files = sorted(hf_dir.glob("*.safetensors"))
    hf = {}
    for f in files:
        hf.update(load_file(str(f)))
    if fields["arch"] == "gpt":
        sd = gpt_from_hf(hf, fields["n_layer"])
    else:
        from model.bert import from_hf_state_dict
        sd = from_hf_state_dict({k: v for k, v in hf.items() if not k.startswith("cls.predictions.decoder.weight")})
        sd.pop("mlm.decoder.weight", None)  # tied to bert.wte
    return {k: v.float().contiguous() for k, v in sd.items()}, fields


# what a transformers directory holds when its tokenizer is not a sentencepiece model
_FOREIGN_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "merges.txt")


def check_same_tokenizer(hf_dir: Path, tokenizer: str | None, new_tokenizer: bool = False) -> None:
    """The weights' embedding rows mean the ids of the tokenizer they were trained with: refuse a run that
    would feed them another tokenizer's ids (it trains, on scrambled inputs), unless `new_tokenizer`."""
    from data.tokenizer import file_sha256
    from launcher.config import ConfigError
    theirs = hf_dir / "tokenizer.model"
    fix = "or pass --new-tokenizer to start the embeddings over on another tokenizer's ids"
    if theirs.exists():
        if tokenizer and file_sha256(str(theirs)) != file_sha256(tokenizer) and not new_tokenizer:
            raise ConfigError(f"data.tokenizer={tokenizer!r} is not {theirs}, the tokenizer these weights were "
                              f"trained with (rule: the imported embeddings mean its ids; tokenize the data with "
                              f"it, {fix})")
        return
    found = [name for name in _FOREIGN_TOKENIZER_FILES if (hf_dir / name).exists()]
    if found and not new_tokenizer:
        raise ConfigError(f"{hf_dir} holds its own tokenizer ({', '.join(found)}), not a sentencepiece model; "
                          f"data.tokenizer={tokenizer!r} numbers tokens differently (rule: the imported "
                          f"embeddings mean their tokenizer's ids; mnemos tokenizes with sentencepiece, {fix})")
    if not found:
        log.warning("%s has no tokenizer: data.tokenizer=%r must be the one the weights were trained with",
                    hf_dir, tokenizer)


def import_hf(hf_dir: str | Path, cfg, new_tokenizer: bool = False) -> Path:
    """Write the HF weights as a step-0 universal checkpoint under cfg.run_dir/checkpoints: the run then
    starts from them (same data stream, fresh optimizer). The run config's model must match the HF one,
    and its tokenizer the weights' (`check_same_tokenizer`)."""
    from launcher.config import ConfigError

    refuse_a_run_with_checkpoints(cfg)
    model_fields_from_hf(read_hf_config(hf_dir))  # an HF directory mnemos can read, before the tokenizer check
    check_same_tokenizer(Path(hf_dir), cfg.data.tokenizer, new_tokenizer)
    sd, fields = read_hf_dir(hf_dir)
    now = cfg.model.model_dump(mode="json")
    for k, v in fields.items():
        mine = cfg.model.ff_width if k == "d_ff" else now.get(k)
        if mine != v:
            raise ConfigError(f"model.{k}={mine!r} differs from the HF checkpoint {hf_dir} ({v!r}); rule: the run "
                              f"config's architecture must match the imported weights")
    return write_initial_checkpoint(sd, cfg, imported_from=hf_dir)


def import_run(src: str | Path, cfg, new_tokenizer: bool = False) -> Path:
    """A mnemos checkpoint's weights (any TP/ZeRO layout, or universal; a run directory means its newest valid
    checkpoint) as step 0 of the run `cfg` describes: the same model trained on other data or with another
    schedule, with a fresh optimizer, data stream and step count (Megatron's --finetune). It works for every
    attention pattern, where the way through `export-hf` needs GPT-2's dense attention."""
    from data.tokenizer import file_sha256
    from launcher.config import ARCH_FIELDS, ConfigError
    from launcher.inference import consolidated_state_dict, read_run_config, resolve_checkpoint
    from parallel.manifest import read_manifest

    refuse_a_run_with_checkpoints(cfg)
    ckpt = resolve_checkpoint(src)
    saved = read_run_config(ckpt).model.model_dump(mode="json")
    now = cfg.model.model_dump(mode="json")
    for field in ARCH_FIELDS:
        if saved.get(field) != now.get(field):
            raise ConfigError(f"model.{field}={now.get(field)!r} differs from the checkpoint {ckpt} "
                              f"({saved.get(field)!r}); rule: the run config's architecture must match the "
                              f"imported weights")
    theirs = (read_manifest(ckpt).get("data_files") or {}).get("tokenizer_sha256")
    if theirs and cfg.data.tokenizer and not new_tokenizer and file_sha256(cfg.data.tokenizer) != theirs:
        raise ConfigError(f"data.tokenizer={cfg.data.tokenizer!r} is not the tokenizer the checkpoint {ckpt} trained "
                          f"with (sha256 {theirs[:12]}) (rule: the imported embeddings mean its ids; tokenize the "
                          f"data with it, or pass --new-tokenizer to start the embeddings over on another "
                          f"tokenizer's ids)")
    sd, _ = consolidated_state_dict(ckpt)
    return write_initial_checkpoint(sd, cfg, imported_from=ckpt)


def refuse_a_run_with_checkpoints(cfg) -> None:
    """Imported weights are step 0 of a fresh run: `mnemos train` resumes from the newest checkpoint of a run
    directory and would never read them."""
    from launcher.config import ConfigError
    from parallel.manifest import list_checkpoints
    root = Path(cfg.run_dir) / "checkpoints"
    held = list_checkpoints(root)
    if held:
        names = ", ".join(p.name for p in held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise ConfigError(f"run_dir={cfg.run_dir!r} already holds checkpoints ({names} in {root}); `mnemos train` "
                          f"would resume from the newest, not from the imported weights (rule: import into a fresh "
                          f"run directory: --set run_dir=NEW_DIR)")


def write_initial_checkpoint(sd: dict[str, torch.Tensor], cfg, imported_from: str | Path) -> Path:
    """`sd` (fp32, the model's parameter names) as the universal checkpoint step_00000000 of cfg.run_dir, at the
    start of its data stream, and `latest` pointing to it."""
    from launcher.objectives import make_objective
    from parallel.build import model_class
    from parallel.manifest import step_dirname, write_latest
    from parallel.reshard import FullState, write_universal
    from parallel.topology import Topology
    # the model's own parameter names: nothing missing, nothing extra (a tied weight's second name, such as
    # lm_head.weight in a TP=1 ZeRO-0 save, is the same tensor: it is not stored twice)
    with torch.device("meta"):
        model = model_class(cfg.model.arch)(cfg.model)
    names = [n for n, _ in model.named_parameters()]
    every_name = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    missing, extra = [n for n in names if n not in sd], sorted(set(sd) - every_name)
    if missing or extra:
        raise ExportError(f"the weights of {imported_from} do not fit the model: missing {missing[:5]}, "
                          f"unexpected {extra[:5]}")
    n_samples = len(make_objective(cfg, Topology.single()).train_dataset())
    client = {"trainer": {"step": 0, "consumed_samples": 0, "consumed_tokens": 0},
              "sampler": {"consumed_samples": 0, "num_samples": n_samples, "seed": cfg.data.seed},
              "config": cfg.model_dump(mode="json"), "history": {"train_loss": [], "valid": []}}
    root = Path(cfg.run_dir) / "checkpoints"
    out = root / step_dirname(0)
    write_universal(FullState(fp32={n: sd[n] for n in names}, client=client), out,
                    meta={"imported_from": str(imported_from)})
    write_latest(root, out.name)
    return out
