"""`mnemos eval` (few-shot evaluation of a checkpoint) and `mnemos eval-data` (task data helpers)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from launcher.argtypes import existing_path, integer, output_dir, output_file

log = logging.getLogger(__name__)


def _int_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,32") from None
    if not out or any(k < 0 for k in out):
        raise argparse.ArgumentTypeError(f"{text!r}: expected non-negative integers")
    if len(set(out)) != len(out):  # a repeated K would count its examples twice in one row
        raise argparse.ArgumentTypeError(f"{text!r}: expected each number once")
    return out


def _batch_size(text: str):
    if text == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer or 'auto'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer or 'auto'")
    return v


_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B)?", re.IGNORECASE)


def _max_memory(text: str) -> tuple:
    """DEVICE=SIZE for accelerate's max_memory: a GPU index, cpu or disk, and a size like 70GiB or 500MB."""
    dev, eq, size = text.partition("=")
    dev, size = dev.strip(), size.strip()
    if not eq or not (dev.isdigit() or dev in ("cpu", "disk")) or not _SIZE.fullmatch(size):
        raise argparse.ArgumentTypeError(f"{text!r}: expected DEVICE=SIZE, DEVICE a GPU index, cpu or disk and "
                                         f"SIZE like 70GiB or 500MB (e.g. 0=70GiB)")
    return (int(dev) if dev.isdigit() else dev), (int(size) if size.isdigit() else size)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="zero/one/few-shot evaluation of a checkpoint (JSON + Markdown + plots)",
        description="Evaluate a checkpoint on tasks at several numbers of shots (GPT-3 Section 2.4). "
                    "Writes OUT/results.json, OUT/results.md and OUT/plots/*.png.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="run directory or checkpoint directory to evaluate")
    src.add_argument("--hf-model", type=existing_path,
                     help="directory of exported Hugging Face GPT-2 weights, loaded with accelerate's big-model "
                          "loading (device map across GPUs, CPU offload)")
    p.add_argument("--tokenizer", help="with --hf-model: the sentencepiece .model file (default: DIR/tokenizer.model)")
    p.add_argument("--tasks", help="comma-separated task or group names (see --list-tasks)")
    p.add_argument("--shots", type=_int_list, default=[0, 1, 10], help="comma-separated K values (default 0,1,10)")
    p.add_argument("--out", type=output_dir, help="output directory (default: RUN/results/eval, or ./eval_results)")
    p.add_argument("--contamination", metavar="INDEX", help="training-corpus n-gram index: adds the clean/dirty report")
    p.add_argument("--limit", type=integer(1), help="evaluate only the first N examples of each task")
    p.add_argument("--batch-size", type=_batch_size, default=16, help="sequences per forward, or 'auto' (default 16)")
    p.add_argument("--data-dir", help="root of the task data files ({data_dir} in task YAMLs; env MNEMOS_EVAL_DATA)")
    p.add_argument("--include-tasks", action="append", default=[], metavar="DIR",
                   help="directory of extra task YAML files (repeatable; env MNEMOS_EVAL_TASKS)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="compute dtype (GPU only for bf16/fp16)")
    p.add_argument("--max-memory", action="append", default=[], metavar="DEV=SIZE", type=_max_memory,
                   help="with --hf-model: memory cap of one device, a GPU index, cpu or disk (repeatable: "
                        "--max-memory 0=70GiB --max-memory cpu=200GiB)")
    p.add_argument("--offload-folder", help="with --hf-model: where to offload weights that fit nowhere else")
    p.add_argument("--max-length", type=integer(1), default=None,
                   help="tokens per scoring window (default: the run's data.seq_len, at most model.n_ctx)")
    p.add_argument("--seed", type=integer(0), default=1234, help="seed of the demonstration sampling")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the request cache (OUT/cache.sqlite)")
    p.add_argument("--log-samples", action="store_true", help="also write every request and answer (samples_*.jsonl)")
    p.add_argument("--list-tasks", action="store_true", help="list the registered tasks and exit")
    p.set_defaults(func=main)

    d = subparsers.add_parser("eval-data", help="build task data: word lists and GPT-3 synthetic task files")
    dsub = d.add_subparsers(dest="what", metavar="WHAT")
    w = dsub.add_parser("words", help="word list for the word-scramble tasks: the N most frequent words of 5-14 letters")
    w.add_argument("corpus", nargs="*", help="corpus files (txt/jsonl/parquet, optionally compressed), globs or "
                   "directories, read as the data stages read them")
    w.add_argument("--input", "-i", nargs="+", default=[], help="the same, as the data stages take them")
    w.add_argument("--out", "-o", type=output_file, required=True, help="output file, one word per line")
    w.add_argument("--text-field", default="text", help="record field holding the text (jsonl/parquet), as the "
                   "`mnemos data` stages take it")
    w.add_argument("--n", type=integer(1), default=10000, help="words to write")
    w.set_defaults(func=_words)
    a = dsub.add_parser("synthetic", help="write the generated GPT-3 arithmetic (and, with --word-list, scramble) files")
    a.add_argument("--out", "-o", type=output_dir, required=True, help="output directory")
    a.add_argument("--word-list", help="word list for the scramble tasks")
    a.add_argument("--n", type=integer(1), default=2000, help="examples to write")
    a.add_argument("--seed", type=integer(0), default=1234, help="seed of the generated examples")
    a.set_defaults(func=_synthetic)
    d.set_defaults(func=lambda args: d.print_help() or 2)


def _words(args) -> int:
    from evaluation.synthetic import build_word_list

    from data.io import DocumentReader
    paths = args.corpus + args.input
    if not paths:
        print("mnemos eval-data words: give the corpus files (paths, or --input)", file=sys.stderr)
        return 2
    try:  # jsonl's field names and escapes are not words: read documents, as the data stages do
        reader = DocumentReader(paths, text_field=args.text_field)
    except (FileNotFoundError, ValueError) as err:
        print(f"mnemos eval-data words: {err}", file=sys.stderr)
        return 2
    n_docs = 0

    def texts():
        nonlocal n_docs
        for d in reader.run():
            n_docs += 1
            yield d.text
    words = build_word_list(texts(), n=args.n)
    if not words:  # an empty list only fails later, in every scramble task
        why = (f"no documents with the field --text-field={args.text_field!r} (rule: the record field holding the "
               f"text)" if n_docs == 0 else f"no words of 5-14 letters in {n_docs} documents")
        print(f"mnemos eval-data words: {' '.join(paths)}: {why}; nothing written", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(words) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {len(words)} words to {args.out}")
    return 0


def _synthetic(args) -> int:
    from evaluation import synthetic as s
    out = Path(args.out)
    words = None
    if args.word_list:  # before any file is written: a bad list must not leave half an output
        if not os.path.isfile(args.word_list):
            print(f"mnemos eval-data synthetic: --word-list {args.word_list}: no such file", file=sys.stderr)
            return 2
        words = s.read_word_list(args.word_list)
        if not words:
            print(f"mnemos eval-data synthetic: --word-list {args.word_list} is empty (rule: one word per line; "
                  f"`mnemos eval-data words CORPUS --out FILE` builds it)", file=sys.stderr)
            return 2
    for kind, fname in s.ARITHMETIC_FILES.items():
        s.write_jsonl(s.arithmetic_docs(kind, n=args.n, seed=args.seed), out / fname)
    n_files = len(s.ARITHMETIC_FILES)
    if words:
        for kind in s.SCRAMBLES:
            s.write_jsonl(s.scramble_docs(kind, words, n=args.n, seed=args.seed), out / f"scramble_{kind}.jsonl")
            n_files += 1
    print(f"wrote {n_files} task files to {out}")
    if not words:
        print(f"  the {len(s.SCRAMBLES)} word-scramble files need a word list: `mnemos eval-data words CORPUS --out "
              f"FILE`, then this command with --word-list FILE")
    return 0


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"mnemos eval: --device {name} asked but CUDA is not available here; use --device cpu")
    return name


def _hf_model_type(path) -> str | None:
    import json
    try:
        with open(Path(path) / "config.json") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return None


def _preflight(args, device: str):
    """The checks that need no model, each a TaskError (one line): the options, every task's data and
    few-shot pool, and the contamination index against every task's n. Returns (tasks, index)."""
    import torch
    from evaluation.api import contamination_ns, prepare_tasks
    from evaluation.task import TaskError
    if args.dtype != "fp32":
        on_cpu = not torch.cuda.is_available() if args.hf_model else torch.device(device).type == "cpu"
        if on_cpu:
            raise TaskError(f"--dtype {args.dtype} on CPU (rule: bf16 and fp16 need a GPU; use --dtype fp32 here)")
    if (args.max_memory or args.offload_folder) and not args.hf_model:
        raise TaskError("--max-memory/--offload-folder place --hf-model weights with accelerate (rule: only with "
                        "--hf-model; --checkpoint loads onto --device)")
    devices = [d for d, _ in args.max_memory]
    if len(set(devices)) != len(devices):
        raise TaskError(f"--max-memory names a device twice ({', '.join(map(str, devices))}; rule: one cap per device)")
    n_gpus = torch.cuda.device_count()
    for dev, size in args.max_memory:
        if isinstance(dev, int) and dev >= n_gpus:
            raise TaskError(f"--max-memory {dev}={size}: this machine has no GPU {dev} (rule: a GPU index below "
                            f"{n_gpus}, cpu or disk)" if n_gpus else f"--max-memory {dev}={size}: this machine has "
                            f"no GPU (rule: cpu or disk here)")
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = prepare_tasks(names, args.shots, args.data_dir, args.include_tasks, args.limit)
    index = None
    if args.contamination:
        from evaluation.contamination import check_index_covers, load_index
        index = load_index(args.contamination, what="--contamination")
        check_index_covers(contamination_ns(tasks, args.limit), index,
                           what=f"--contamination {args.contamination}")
    return tasks, index


def main(args) -> int:
    from evaluation.registry import expand_names, load_configs
    from evaluation.task import TaskError

    try:  # the task files and names first: a typo stops here, not after the model has loaded
        configs = load_configs(args.include_tasks)
        if args.tasks and not args.list_tasks:
            expand_names([t.strip() for t in args.tasks.split(",") if t.strip()], configs)
    except TaskError as err:
        print(f"mnemos eval: {err}", file=sys.stderr)
        return 2
    if args.list_tasks:
        from evaluation.registry import resolve_data_dir
        from evaluation.task import data_status
        data_dir = resolve_data_dir(args.data_dir)
        for name, cfg in configs.items():
            paper = f" ({cfg.paper_name})" if cfg.paper_name else ""
            data = f"  data: {data_status(cfg, data_dir)}" if data_dir else ""
            print(f"{name}{paper}  [{cfg.output_type}; groups: {', '.join(cfg.group) or '-'}]{data}")
        if not data_dir:
            print("(with --data-dir DIR: whether each task's files are in place, and the path it expects)")
        return 0
    if not args.tasks:
        print("mnemos eval: --tasks is required (see --list-tasks)", file=sys.stderr)
        return 2
    if not (args.checkpoint or args.hf_model):
        print("mnemos eval: give --checkpoint DIR (or --hf-model DIR)", file=sys.stderr)
        return 2
    device = _device(args.device)
    # everything that can be checked without the model is checked now: loading takes minutes on a big model
    try:
        tasks, index = _preflight(args, device)
    except TaskError as err:
        print(f"mnemos eval: {err}", file=sys.stderr)
        return 2
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        # launched by torchrun: data-parallel evaluation, one model replica per rank
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device == "cuda":
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    from evaluation.adapters import MnemosLM
    info = {}
    run_config = None
    if args.hf_model:
        from evaluation.hf import load_hf_for_eval
        max_memory = dict(args.max_memory) or None
        model_type = _hf_model_type(args.hf_model)
        if model_type != "gpt2":  # what load_hf_big_model builds; a BERT export fails there on meta tensors
            what = f"is a {model_type!r} model" if model_type else "has no readable config.json"
            print(f"mnemos eval: --hf-model {args.hf_model} {what} (rule: the harness loads GPT-2 causal language "
                  f"models, as `mnemos ckpt export-hf` writes them from a GPT run)", file=sys.stderr)
            return 2
        try:
            model, tokenizer = load_hf_for_eval(args.hf_model, tokenizer_path=args.tokenizer, max_memory=max_memory,
                                                offload_folder=args.offload_folder, dtype=args.dtype)
        except ValueError as err:  # a --max-memory that fits no layer: the user's setting, not a bug
            print(f"mnemos eval: {err}", file=sys.stderr)
            return 2
        device = model.input_device
        info = {"hf_model": str(args.hf_model)}
        default_out = Path("eval_results")
    else:
        try:
            from launcher.inference import load_for_eval
        except ImportError as err:
            print(f"mnemos eval: checkpoint loading is not available ({err})", file=sys.stderr)
            return 2
        model, tokenizer, run_config = load_for_eval(args.checkpoint, device=device)
        arch = run_config.model.arch if run_config is not None else "gpt"
        if arch != "gpt":  # a BERT would fail deep in the scoring with a TypeError
            print(f"mnemos eval: --checkpoint {args.checkpoint} holds a model.arch={arch!r} model (rule: the harness "
                  f"scores decoder language models, arch 'gpt'; a BERT is measured by `mnemos finetune`)",
                  file=sys.stderr)
            return 2
        info = {"checkpoint": str(args.checkpoint)}
        cfg = getattr(model, "cfg", None)
        if cfg is not None:
            info.update({"n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_head": cfg.n_head, "n_ctx": cfg.n_ctx,
                         "vocab_size": cfg.vocab_size})
        ck = Path(args.checkpoint)
        run_dir = ck if (ck / "config.yaml").exists() else ck.parent.parent if (ck.parent.parent / "config.yaml").exists() else None
        default_out = (run_dir / "results" / "eval") if run_dir else Path("eval_results")
    out = Path(args.out) if args.out else default_out
    if (out / "results.json").exists():
        hint = "" if args.out else " (--out DIR keeps it)"  # the --out hint only helps who did not give one
        print(f"mnemos eval: {out} holds an earlier evaluation; its report is replaced{hint}", file=sys.stderr)
    max_length = args.max_length
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    trained = run_config.data.seq_len if run_config is not None else None
    if max_length is not None and n_ctx is not None and max_length > n_ctx:
        print(f"mnemos eval: --max-length={max_length} (rule: at most the model's n_ctx, {n_ctx})", file=sys.stderr)
        return 2
    if max_length is None and trained and n_ctx and trained < n_ctx:
        max_length = trained  # positions past the training sequence length were never trained
        print(f"mnemos eval: windows of {trained} tokens, the run's data.seq_len (model.n_ctx is {n_ctx}; "
              f"--max-length to choose)", file=sys.stderr)
    elif max_length is None and args.hf_model and n_ctx:
        max_length = n_ctx  # config.json has n_positions only: `ckpt export-hf` does not record data.seq_len
        print(f"mnemos eval: windows of {n_ctx} tokens, the model's n_positions (an exported model does not record "
              f"the length it was trained on; --max-length to choose)", file=sys.stderr)
    adapter = MnemosLM(model, tokenizer, batch_size=args.batch_size, device=device, max_length=max_length,
                       dtype="fp32" if args.hf_model else args.dtype)
    info["max_length"] = adapter.max_length

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    from evaluation.api import run_eval
    try:
        results = run_eval(adapter, tasks, args.shots, out, contamination_index=index, limit=args.limit,
                           seed=args.seed, data_dir=args.data_dir, include=args.include_tasks,
                           cache=None if args.no_cache else out / "cache.sqlite",
                           log_samples=args.log_samples, model_info=info)
    except TaskError as err:
        print(f"mnemos eval: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        from evaluation.report import markdown
        print(markdown(results))
        files = results.get("files", {})
        print(f"results: {files.get('json')}\nreport:  {files.get('markdown')}\nplots:   {', '.join(files.get('plots', []))}")
    return 0
