"""Export to / import from the Hugging Face ecosystem and plain PyTorch (CPU, fp32)."""

import json

import pytest
import torch

from tests.launcher.conftest import build_shards, run_train, write_config
from tests.step_log import step_losses

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    return build_shards(shared_data, tmp_path_factory.mktemp("export_data"))


@pytest.fixture(scope="module")
def tp2_run(shards, tmp_path_factory):
    """A GPT trained 2 steps with TP=2 (ZeRO-1): exporting must merge the TP shards."""
    tmp = tmp_path_factory.mktemp("tp2run")
    cfg = write_config(tmp / "c.yaml", tmp / "run", shards, model={"n_ctx": 32}, data={"seq_len": 32},
                       parallel={"tp": 2, "zero_stage": 1}, train={"max_steps": 2},
                       checkpoint={"save_at_end": True})
    proc = run_train(cfg, nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "run"


@pytest.fixture(scope="module")
def bert_tokenizer(shared_data, tmp_path_factory):
    """A 512-piece sentencepiece model with BERT's [CLS], [SEP] and [MASK]."""
    from data.bert_samples import BERT_SYMBOLS
    from data.tokenizer import train_tokenizer
    d = tmp_path_factory.mktemp("bert_tok")
    lines = (shared_data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()[:2000]
    (d / "text.txt").write_text("\n".join(line for line in lines if line.strip()), encoding="utf-8")
    return train_tokenizer([str(d / "text.txt")], str(d / "sp"), vocab_size=512, user_defined_symbols=BERT_SYMBOLS)


def _bert_checkpoint(tmp_path, shards, tokenizer=None):
    """A BERT universal checkpoint straight from the model (mnemos' own format; no training needed)."""
    from launcher.config import RunConfig
    from model.bert import build_bert
    from parallel.reshard import FullState, write_universal
    cfg = RunConfig(run_dir=str(tmp_path / "bert"),
                    model=dict(arch="bert", n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=512,
                               layer_norm_eps=1e-12),
                    data=dict(tokenizer=tokenizer or shards["tokenizer"], train=[shards["train"]], seq_len=32))
    model = build_bert(cfg.model, seed=3)
    with torch.no_grad():  # make biases and LayerNorms non-trivial so a swapped map would show
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v for k, v in model.state_dict().items() if k != "mlm.decoder.weight"}
    ckpt = write_universal(FullState(fp32=sd, client={"config": cfg.model_dump(mode="json"),
                                                      "trainer": {"step": 0}}),
                           tmp_path / "bert" / "checkpoints" / "step_00000000")
    return model.eval(), ckpt


@pytest.mark.slow
def test_gpt_export_loads_in_transformers_with_same_logits(tp2_run, tmp_path):
    from launcher.cli import main
    from launcher.inference import load_for_eval
    out = tmp_path / "hf"
    assert main(["ckpt", "export-hf", str(tp2_run), "--out", str(out)]) == 0
    assert {"model.safetensors", "config.json", "tokenizer.model", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ours, tok, _ = load_for_eval(tp2_run)
    idx = torch.randint(0, hf.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=idx).logits, ours(idx), atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "The tower is 324 metres (1,063 ft) tall, about the same height as an 81-storey building."
    assert hf_tok(text)["input_ids"] == tok.encode(text)


@pytest.mark.slow
def test_gpt_import_round_trips_and_trains(tp2_run, shards, tmp_path):
    from launcher.cli import main
    from launcher.inference import consolidated_state_dict
    out = tmp_path / "hf"
    assert main(["ckpt", "export-hf", str(tp2_run), "--out", str(out)]) == 0
    cfg = write_config(tmp_path / "imp.yaml", tmp_path / "imp", shards, model={"n_ctx": 32},
                       data={"seq_len": 32}, train={"max_steps": 1}, checkpoint={"save_at_end": False})
    assert main(["ckpt", "import-hf", str(out), "--config", str(cfg)]) == 0
    before, _ = consolidated_state_dict(tp2_run)
    after, _ = consolidated_state_dict(tmp_path / "imp")
    assert set(after) <= set(before)
    for k in after:
        assert torch.equal(after[k], before[k]), k
    proc = run_train(cfg)  # starts from the imported weights (a fresh optimizer, the same data stream)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr and sorted(step_losses(tmp_path / "imp")) == [1]


def test_import_refuses_a_different_architecture(tmp_path, shards):
    from launcher.config import ConfigError, load_config
    from parallel.export_hf import import_hf
    hf_dir = tmp_path / "hf"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=64, n_head=4, n_positions=32,
                                                         vocab_size=512)).save_pretrained(hf_dir)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", shards, model={"n_ctx": 32}, data={"seq_len": 32})
    with pytest.raises(ConfigError, match="model.n_layer=2 differs"):
        import_hf(hf_dir, load_config(str(cfg)))


def test_import_refuses_weights_of_another_tokenizer(tmp_path, shards, bert_tokenizer):
    """Imported embeddings mean their own tokenizer's ids: a run on another tokenizer's ids would train on
    scrambled inputs without an error, so it needs --new-tokenizer."""
    import shutil

    from evaluation.hf import byte_hf_tokenizer
    from launcher.cli import main
    from launcher.config import ConfigError, load_config
    from parallel.export_hf import import_hf
    hf_dir = tmp_path / "hf"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32,
                                                         vocab_size=shards["vocab_size"])).save_pretrained(hf_dir)
    byte_hf_tokenizer().save_pretrained(hf_dir)  # a byte-level tokenizer.json, as GPT-2 directories have
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", shards, model={"n_ctx": 32}, data={"seq_len": 32})
    with pytest.raises(ConfigError, match=r"holds its own tokenizer \(tokenizer.json\), not a sentencepiece model"):
        import_hf(hf_dir, load_config(str(cfg)))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf_dir / name).unlink(missing_ok=True)
    shutil.copyfile(bert_tokenizer, hf_dir / "tokenizer.model")  # a sentencepiece model, but not the run's
    with pytest.raises(ConfigError, match=r"is not .*tokenizer.model, the tokenizer these weights were trained with"):
        import_hf(hf_dir, load_config(str(cfg)))
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert main(["ckpt", "import-hf", str(hf_dir), "--config", str(cfg), "--new-tokenizer"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "step_00000000").is_dir()


def _gpt2_dir(path, vocab_size):
    """A transformers GPT-2 directory shaped like write_config's model (n_ctx 32), without a tokenizer."""
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32,
                                                         vocab_size=vocab_size)).save_pretrained(path)
    return path


def test_import_refuses_a_run_dir_that_holds_checkpoints(tmp_path, shards, capsys):
    """`mnemos train` resumes from the newest checkpoint: a step 0 imported beside steps 30..40 would never be
    read, so import-hf stops in one line and writes nothing."""
    from launcher.cli import main
    hf_dir = _gpt2_dir(tmp_path / "hf", shards["vocab_size"])
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "yaml_run", shards, model={"n_ctx": 32}, data={"seq_len": 32})
    ckpts = tmp_path / "run" / "checkpoints"
    for step in (30, 35, 40):
        (ckpts / f"step_{step:08d}").mkdir(parents=True)
    (ckpts / "latest").write_text("step_00000040\n")
    before = sorted(p.name for p in ckpts.iterdir())
    capsys.readouterr()
    rc = main(["ckpt", "import-hf", str(hf_dir), "--config", str(cfg), "--set", f"run_dir={tmp_path / 'run'}"])
    out = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out.err and out.out == ""
    err = [line for line in out.err.splitlines() if line.startswith("mnemos:")]
    assert len(err) == 1, out.err
    assert "already holds checkpoints (step_00000040, step_00000035, step_00000030" in err[0]
    assert "rule: import into a fresh run directory" in err[0]
    assert sorted(p.name for p in ckpts.iterdir()) == before
    assert (ckpts / "latest").read_text() == "step_00000040\n"
    # an import that succeeded is a checkpoint too: importing again is refused the same way
    assert main(["ckpt", "import-hf", str(hf_dir), "--config", str(cfg)]) == 0
    assert main(["ckpt", "import-hf", str(hf_dir), "--config", str(cfg)]) == 2
    assert "already holds checkpoints (step_00000000" in capsys.readouterr().err


def test_import_prints_the_train_command_with_the_overrides(tmp_path, shards, capsys):
    """The printed next step trains the run that was written: --set run_dir=X (and every other override) kept,
    shell-quoted, so pasting it does not train the YAML's own run_dir."""
    import shlex

    from launcher.cli import main
    from launcher.config import load_config
    hf_dir = _gpt2_dir(tmp_path / "hf", shards["vocab_size"])
    cfg = write_config(tmp_path / "my run.yaml", tmp_path / "yaml_run", shards, model={"n_ctx": 32},
                       data={"seq_len": 32})
    run_dir = tmp_path / "imported run"
    sets = [f"run_dir={run_dir}", "optim.lr=3e-4"]
    capsys.readouterr()
    assert main(["ckpt", "import-hf", str(hf_dir), "--config", str(cfg), *[w for s in sets for w in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    want = shlex.join(["mnemos", "train", str(cfg), "--set", sets[0], "--set", sets[1]])
    assert f"wrote {run_dir / 'checkpoints' / 'step_00000000'}; `{want}` starts from these weights" in out, out
    # the printed words, parsed back as a shell would, configure exactly the run that was written
    words = shlex.split(out.split("`")[1])
    assert words[:2] == ["mnemos", "train"]
    again = load_config(words[2], words[4::2])
    assert again.run_dir == str(run_dir) and again.optim.lr == 3e-4
    assert not (tmp_path / "yaml_run").exists()


def test_bert_export_loads_as_bert_for_pretraining_with_same_logits(tmp_path, shards, bert_tokenizer):
    from parallel.export_hf import export_hf, read_hf_dir
    model, ckpt = _bert_checkpoint(tmp_path, shards, bert_tokenizer)
    out = export_hf(ckpt, tmp_path / "hf_bert")
    hf = transformers.BertForPreTraining.from_pretrained(out).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 512, (2, 32), generator=g)
    types = torch.cat([torch.zeros(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long)], 1)
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[1, 25:] = 0
    with torch.no_grad():
        mlm, nsp = model(ids, types, mask)
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    torch.testing.assert_close(ref.prediction_logits, mlm, atol=1e-4, rtol=0)
    torch.testing.assert_close(ref.seq_relationship_logits, nsp, atol=1e-4, rtol=0)
    # transformers' fill-mask pipeline on the export fills [MASK] with our model's choice
    from data.tokenizer import Tokenizer
    tok = Tokenizer(bert_tokenizer)
    text = "The tower is [MASK] metres tall."
    ids = [tok.sp.piece_to_id("[CLS]")] + tok.encode(text) + [tok.sp.piece_to_id("[SEP]")]
    at = ids.index(tok.sp.piece_to_id("[MASK]"))
    with torch.no_grad():
        mlm, _ = model(torch.tensor([ids]), torch.zeros(1, len(ids), dtype=torch.long),
                       torch.ones(1, len(ids), dtype=torch.long))
    fill = transformers.pipeline("fill-mask", model=str(out), top_k=1)
    assert fill(text)[0]["token"] == mlm[0, at].argmax().item()
    # and back: the HF directory imports to exactly our weights
    sd, fields = read_hf_dir(out)
    assert fields["arch"] == "bert" and fields["n_layer"] == 2
    ours = {k: v for k, v in model.state_dict().items() if k != "mlm.decoder.weight"}
    assert set(sd) == set(ours)
    for k in ours:
        assert torch.equal(sd[k], ours[k]), k


@pytest.mark.slow
def test_consolidated_torch_export_loads_without_deepspeed(tp2_run, tmp_path):
    from launcher.cli import main
    from launcher.config import ModelConfig
    from model.gpt import GPT
    out = tmp_path / "model.pt"
    assert main(["ckpt", "export-torch", str(tp2_run), "--out", str(out)]) == 0
    sd = torch.load(out, weights_only=True)
    cfg = json.loads(out.with_suffix(".config.json").read_text())
    model = GPT(ModelConfig(**cfg["model"])).eval()
    model.load_state_dict(sd)  # strict: the tied lm_head.weight is in the file
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * 64, 64)  # full, not a TP shard
    from launcher.inference import load_for_eval
    ours, _, _ = load_for_eval(tp2_run)
    idx = torch.randint(0, cfg["model"]["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(idx), ours(idx))


def _gpt_checkpoint(tmp_path, shards):
    """A GPT universal checkpoint straight from the model, the tied lm_head stored once as a training save does."""
    from launcher.config import RunConfig
    from model.gpt import build_gpt
    from parallel.reshard import FullState, write_universal
    cfg = RunConfig(run_dir=str(tmp_path / "gpt"),
                    model=dict(n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=512),
                    data=dict(tokenizer=shards["tokenizer"], train=[shards["train"]], seq_len=32))
    model = build_gpt(cfg.model, seed=5)
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ckpt = write_universal(FullState(fp32=sd, client={"config": cfg.model_dump(mode="json"), "trainer": {"step": 0}}),
                           tmp_path / "gpt" / "checkpoints" / "step_00000000")
    return model.eval(), ckpt


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_torch_export_loads_strictly_into_a_fresh_model_with_identical_logits(tmp_path, shards, bert_tokenizer,
                                                                             arch, capsys):
    """What export-torch prints is what works: torch.load(weights_only=True) + a strict load_state_dict into a
    model built from the model.config.json beside it; the tied output weight is one tensor in the file."""
    from launcher.cli import main
    from launcher.config import ModelConfig
    from parallel.build import model_class
    ref, ckpt = _gpt_checkpoint(tmp_path, shards) if arch == "gpt" else _bert_checkpoint(tmp_path, shards,
                                                                                          bert_tokenizer)
    out = tmp_path / "model.pt"
    capsys.readouterr()
    assert main(["ckpt", "export-torch", str(ckpt.parents[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (model.load_state_dict(torch.load(..., weights_only=True)))" in printed, printed
    assert f"and {tmp_path / 'model.config.json'} (the run config" in printed, printed
    sd = torch.load(out, weights_only=True)
    cfg = json.loads((tmp_path / "model.config.json").read_text())
    model = model_class(arch)(ModelConfig(**cfg["model"]))
    model.load_state_dict(sd)  # strict=True
    model.eval()
    tied, embedding = (("lm_head.weight", "wte.weight") if arch == "gpt"
                       else ("mlm.decoder.weight", "bert.wte.weight"))
    assert sd[tied].data_ptr() == sd[embedding].data_ptr()  # stored once
    ids = torch.randint(5, 512, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        if arch == "gpt":
            assert torch.equal(model(ids), ref(ids))
        else:
            types, mask = torch.zeros_like(ids), torch.ones_like(ids)
            for a, b in zip(model(ids, types, mask), ref(ids, types, mask)):
                assert torch.equal(a, b)


def test_a_bert_tokenizer_without_bert_pieces_is_refused_before_writing(tmp_path, shards, capsys):
    from launcher.cli import main
    _bert_checkpoint(tmp_path, shards)  # with the GPT shards' tokenizer: no [CLS], [SEP], [MASK]
    assert main(["ckpt", "export-hf", str(tmp_path / "bert"), "--out", str(tmp_path / "hf")]) == 2
    assert "no [CLS] piece (rule: BERT needs [CLS], [SEP], [MASK]" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_a_model_transformers_cannot_hold_is_refused_in_one_line(tmp_path, shards, capsys):
    """GPT-3's alternating dense/banded layers have no GPT-2 class: exit code 2 and the reason, nothing written."""
    from launcher.cli import main
    from launcher.config import RunConfig
    from model.gpt import build_gpt
    from parallel.reshard import FullState, write_universal
    cfg = RunConfig(run_dir=str(tmp_path / "gpt"),
                    model=dict(n_layer=2, d_model=32, n_head=2, n_ctx=32, vocab_size=512,
                               attn_pattern="alternating", local_window=8),
                    data=dict(tokenizer=shards["tokenizer"], train=[shards["train"]], seq_len=32))
    sd = {k: v for k, v in build_gpt(cfg.model, seed=0).state_dict().items() if k != "lm_head.weight"}  # tied
    write_universal(FullState(fp32=sd, client={"config": cfg.model_dump(mode="json"), "trainer": {"step": 0}}),
                    tmp_path / "gpt" / "checkpoints" / "step_00000000")
    assert main(["ckpt", "export-hf", str(tmp_path / "gpt"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnemos ckpt export-hf: model.attn_pattern='alternating'") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    # how to get a model that exports: the setting to train with, and what works for this checkpoint
    assert "train a run that is to be exported with model.attn_pattern=dense (--set model.attn_pattern=dense" in err
    assert "`mnemos ckpt export-torch`" in err
    assert not (tmp_path / "hf").exists()


def test_import_run_starts_a_new_run_from_a_checkpoint_any_attention_pattern(tmp_path, shards, bert_tokenizer,
                                                                             capsys):
    """Other data or another schedule from a run's weights: a GPT-3-style alternating model, which export-hf
    cannot carry, starts a new run at step 0 with the same weights, a fresh optimizer and its own data order."""
    from launcher.cli import main
    from launcher.inference import consolidated_state_dict
    model = {"n_ctx": 32, "attn_pattern": "alternating", "local_window": 8}
    first = write_config(tmp_path / "first.yaml", tmp_path / "first", shards, model=model, data={"seq_len": 32},
                         train={"max_steps": 2}, checkpoint={"save_at_end": True})
    proc = run_train(first)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    second = write_config(tmp_path / "second.yaml", tmp_path / "second", shards, model=model,
                          data={"seq_len": 32, "seed": 7}, train={"max_steps": 1}, optim={"lr": 1e-4},
                          checkpoint={"save_at_end": False})
    capsys.readouterr()
    assert main(["ckpt", "import-run", str(tmp_path / "first"), "--config", str(second)]) == 0
    assert "`mnemos train " + str(second) + "` starts from these weights" in capsys.readouterr().out
    before, _ = consolidated_state_dict(tmp_path / "first")
    after, _ = consolidated_state_dict(tmp_path / "second")
    assert set(after) <= set(before) and all(torch.equal(after[k], before[k]) for k in after)
    proc = run_train(second)  # the other data order from the imported weights
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr and sorted(step_losses(tmp_path / "second")) == [1]
    # refused in one line, nothing written: a run with checkpoints, another shape, another tokenizer
    for sets, message in (([], "already holds checkpoints (step_00000000"),
                          ([f"run_dir={tmp_path / 'third'}", "model.n_layer=3"], "model.n_layer=3 differs from"),
                          ([f"run_dir={tmp_path / 'third'}", f"data.tokenizer={bert_tokenizer}"],
                           "is not the tokenizer the checkpoint")):
        rc = main(["ckpt", "import-run", str(tmp_path / "first"), "--config", str(second),
                   *[w for s in sets for w in ("--set", s)]])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "third").exists()
