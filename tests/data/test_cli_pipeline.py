"""Acceptance: the whole `mnemos data` pipeline on real text with planted duplicates and planted
benchmark passages: they are removed, everything else is kept, stage reports add up."""
import argparse
import json
import re
import os

import numpy as np

from data import cli
from data.gpt_dataset import PackedGPTDataset
from data.indexed import IndexedDataset
from data.io import DocumentReader
from data.tokenizer import Tokenizer


def mnemos_data(*argv) -> int:
    parser = argparse.ArgumentParser(prog="mnemos")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *map(str, argv)])
    return args.func(args)


def _texts(path):
    return {d.id: d.text for d in DocumentReader([str(path)]).run()}


def test_full_pipeline(shared_data, tmp_path, capsys):
    corpus = shared_data / "corpus"
    paras = [l for l in (corpus / "wikitext2_valid.txt").read_text().splitlines() if len(l.split()) > 60][:250]
    book = (corpus / "tinyshakespeare.txt").read_text()
    books = [book[k * 100_000:(k + 1) * 100_000] for k in range(4)]        # long documents (100 KB)
    passages = [" ".join(p.split()[:40]) for p in
                (corpus / "wikitext2_test.txt").read_text().splitlines() if len(p.split()) > 60][:3]
    docs = {f"wiki{i}": t for i, t in enumerate(paras)}
    docs.update({f"book{i}": t for i, t in enumerate(books)})
    planted_dups = {}
    for i in range(5):
        planted_dups[f"exactdup{i}"] = paras[i].upper()
        w = paras[10 + i].split()
        w[len(w) // 2] = "zzyzx"
        planted_dups[f"neardup{i}"] = " ".join(w)
    contaminated = {"book1": passages[0], "book2": passages[1], "wiki100": passages[2]}
    for k, p in contaminated.items():
        t = docs[k]
        mid = t.index(" ", len(t) // 2)
        docs[k] = t[:mid] + " " + p + " " + t[mid:]
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / "part0.jsonl", "w") as f:
        for k, t in list(docs.items())[:130]:
            f.write(json.dumps({"id": k, "text": t}) + "\n")
        f.write("{this line is not json\n")
    with open(raw / "part1.jsonl", "w") as f:
        for k, t in list(docs.items())[130:] + list(planted_dups.items()):
            f.write(json.dumps({"id": k, "text": t}) + "\n")
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"text": p}) + "\n" for p in passages))

    # dedup
    assert mnemos_data("dedup", "-i", raw, "-o", tmp_path / "dedup", "--tasks", 2) == 0
    out = capsys.readouterr().out
    assert "S-curve" in out and "| 0.9 |" in out and (tmp_path / "dedup" / "s_curve.png").exists()
    st = json.load(open(tmp_path / "dedup" / "stats.json"))
    reader, filt = st["steps"][0], st["steps"][1]
    assert reader["skipped:malformed_json"] == 1
    assert filt["documents_in"] == len(docs) + 10 == filt["kept"] + filt["dropped"]
    assert filt["dropped:exact_duplicate"] == 5 and filt["dropped:near_duplicate"] == 5
    kept = _texts(tmp_path / "dedup")
    assert set(kept) == set(docs)
    # the same OUT with other settings filters again: the earlier output and stats are not kept as "completed"
    assert mnemos_data("dedup", "-i", raw, "-o", tmp_path / "dedup", "--tasks", 2, "--no-exact", "--no-fuzzy") == 0
    filt = json.load(open(tmp_path / "dedup" / "stats.json"))["steps"][1]
    assert filt["kept"] == len(docs) + 10 and "dropped:exact_duplicate" not in filt
    assert sum(1 for _ in DocumentReader([str(tmp_path / "dedup")]).run()) == len(docs) + 10
    assert mnemos_data("dedup", "-i", raw, "-o", tmp_path / "dedup", "--tasks", 2) == 0
    assert _texts(tmp_path / "dedup") == kept

    # decontaminate (a second run resumes from the completion markers and changes nothing)
    args = ["decontaminate", "-i", tmp_path / "dedup", "-o", tmp_path / "clean", "--tasks-from-registry", "none",
            "--eval-file", bench, "--write-index", tmp_path / "train_ngrams.npz", "--tasks", 2]
    assert mnemos_data(*args) == 0
    first = (tmp_path / "clean" / "00000.jsonl.zst").read_bytes()
    assert mnemos_data(*args) == 0
    assert (tmp_path / "clean" / "00000.jsonl.zst").read_bytes() == first
    st = json.load(open(tmp_path / "clean" / "stats.json"))
    f = st["steps"][1]
    # the two books are cut around the passage; the short paragraph has no 200-char piece left: dropped
    assert f["documents_in"] == len(docs) and f["clean"] == len(docs) - 3 and f["cut"] == 2
    assert f["dropped:no_piece_left"] == 1 and "wiki100" not in _texts(tmp_path / "clean")
    assert f["clean"] + f["cut"] + f.get("dropped", 0) == f["documents_in"]
    clean = _texts(tmp_path / "clean")
    for k, t in docs.items():
        if k not in contaminated:
            assert clean[k] == t
    joined = " ".join(clean.values())
    for p in passages:
        assert " ".join(p.split()[10:23]) not in joined
    # book pieces: everything outside the passage and its 200-character windows survived
    assert sum(len(v) for k, v in clean.items() if k.startswith("book1#")) == len(docs["book1"]) - len(passages[0]) - 400
    from data.ngrams import NgramIndex
    assert NgramIndex.load(str(tmp_path / "train_ngrams.npz")).ns == [2, 8, 9, 10, 11, 12, 13]  # word scrambles: 2

    # tokenizer + parallel tokenization (2 tasks on 2 processes)
    assert mnemos_data("train-tokenizer", "-i", tmp_path / "clean", "--model-prefix", tmp_path / "tok" / "spm",
                       "--vocab-size", 600, "--input-sentence-size", 20000) == 0
    model = str(tmp_path / "tok" / "spm.model")
    assert mnemos_data("tokenize", "-i", tmp_path / "clean", "-o", tmp_path / "tokens", "--tokenizer", model,
                       "--tasks", 2, "--workers", 2) == 0
    st = json.load(open(tmp_path / "tokens" / "stats.json"))
    assert st["documents"] == len(clean)
    tok = Tokenizer(model)
    shard = IndexedDataset(str(tmp_path / "tokens" / "shard_00000"))
    first_docs = list(DocumentReader([str(tmp_path / "clean" / "00000.jsonl.zst")]).run())
    assert len(shard) == len(first_docs)
    assert shard[3].tolist() == tok.encode(first_docs[3].text)
    assert shard.dtype == np.uint16
    (tmp_path / "shakes.txt").write_text(book[500_000:600_000])
    assert mnemos_data("tokenize", "-i", tmp_path / "shakes.txt", "-o", tmp_path / "tokens2", "--tokenizer", model) == 0

    # blend with weights, splits and cached indices
    capsys.readouterr()
    assert mnemos_data("blend", "--dataset", f"web=0.7:{tmp_path / 'tokens'}", "--dataset",
                       f"plays=0.3:{tmp_path / 'tokens2'}", "-o", tmp_path / "blend", "--seq-len", 64,
                       "--tokenizer", model, "--num-samples", 3000, "--split", "90,5,5") == 0
    out = capsys.readouterr().out
    assert "| train | web |" in out and "| train | plays |" in out
    blend = json.load(open(tmp_path / "blend" / "blend.json"))
    tr = blend["splits"]["train"]
    assert tr["samples"] == 3000
    assert abs(tr["datasets"]["plays"]["samples"] - 900) <= 1 and tr["datasets"]["plays"]["epochs"] > 1
    cfg = blend["config"]
    ds = PackedGPTDataset(cfg["data.train"], 64, tok.eos_id, weights=cfg["data.weights"], num_samples=3000,
                          seed=blend["seed"], cache_dir=str(tmp_path / "blend" / "index_cache"))
    assert len(ds) == 3000 and ds[2999].shape == (65,)
    assert len(PackedGPTDataset(cfg["data.valid"], 64, tok.eos_id)) > 0

    # stats
    assert mnemos_data("stats", tmp_path / "tokens", tmp_path / "clean", "--json-out", tmp_path / "s.json") == 0
    s = json.load(open(tmp_path / "s.json"))
    assert s["total"] is None  # the tokens of clean/ and clean/ itself: one corpus twice, not added up
    assert s["inputs"][0]["tokens"] == sum(IndexedDataset(str(tmp_path / "tokens" / f"shard_0000{r}")).num_tokens
                                       for r in range(2))
    capsys.readouterr()
    assert mnemos_data("stats", tmp_path / "tokens", tmp_path / "blend") == 2  # a blend holds neither kind
    assert "blend.json" in capsys.readouterr().err


def test_clean_corpus_short_benchmark_items_and_filter_stage(shared_data, tmp_path):
    """What quickstart does: planted arithmetic items (8 words) and duplicates are removed."""
    from data.clean import clean_corpus
    from data.contamination import eval_texts_from_files
    arith = sorted((shared_data / "gpt3_arithmetic").iterdir())[0]
    items = [t for _, t in eval_texts_from_files([str(arith)])][:20]
    paras = [l for l in (shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines()
             if len(l.split()) > 80][:60]
    docs = list(paras) + [paras[0], paras[1]]
    docs[5] = paras[5] + "\n" + items[3].strip() + "\n" + paras[6]
    with open(tmp_path / "c.jsonl", "w") as f:
        for t in docs:
            f.write(json.dumps({"text": t}) + "\n")
    s = clean_corpus([str(tmp_path / "c.jsonl")], str(tmp_path / "out"), eval_texts=items)
    assert s["documents_in"] == 62 and s["exact_duplicates_removed"] == 2
    assert s["contaminated_documents_cut"] == 1 and s["documents_out"] == 60 + 1   # doc 5 -> two pieces
    out = " ".join(d.text for d in DocumentReader([s["clean_dir"]]).run())
    assert items[3].strip() not in out and paras[40] in out

    # heuristic filter stage: counts add up, rejects are kept with their reason
    samples = [d.strip() for line in (shared_data / "corpus" / "gpt3_175b_samples.jsonl").read_text().splitlines()[:5]
               for d in json.loads(line).split("<|endoftext|>") if len(d.split()) > 100][:10]
    assert len(samples) == 10
    with open(tmp_path / "f.jsonl", "w") as f:
        for t in samples + ["too short", "#### ### ## # " * 20, "spam spam spam\n" * 30]:
            f.write(json.dumps({"text": t}) + "\n")
    assert mnemos_data("filter", "-i", tmp_path / "f.jsonl", "-o", tmp_path / "filtered", "--min-words", 20) == 0
    st = json.load(open(tmp_path / "filtered" / "stats.json"))
    assert st["kept"] == 10
    by_step = {x["step"]: x for x in st["steps"]}
    assert sum(by_step[k].get("dropped", 0) for k in ("length", "symbols", "repetition")) == 3
    rejects = list(DocumentReader([str(tmp_path / "filtered" / "rejects")]).run())
    assert len(rejects) == 3 and all("filter_reason" in d.metadata for d in rejects)


def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("one document\nanother document\n")
    out = tmp_path / "out"
    cases = [
        (["dedup", "--bands", "0"], "argument --bands: must be an integer >= 1, got 0"),
        (["decontaminate", "--n", "0"], "argument --n: must be an integer >= 1, got 0"),
        (["tokenize", "--tokenizer", "spm.model", "--workers", "-2"], "argument --workers: must be an integer >= 1"),
    ]
    for argv, message in cases:
        try:
            mnemos_data(*argv, "--input", src, "--out", out)
        except SystemExit as stop:
            assert stop.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
        assert message in capsys.readouterr().err
    # rules between options: checked by the stage before it reads or writes
    assert mnemos_data("dedup", "--input", src, "--out", out, "--tasks", "2", "--rank", "2") == 2
    assert "--rank=2 (rule: a task number below --tasks=2)" in capsys.readouterr().err
    assert mnemos_data("dedup", "--input", src, "--out", out, "--num-perm", "64") == 2
    assert "--bands=16 x --rows=8 = 128 (rule: at most --num-perm=64" in capsys.readouterr().err
    assert not out.exists()


def test_inputs_are_checked_before_a_stage_starts(tmp_path, capsys):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"not text")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "out"
    assert mnemos_data("dedup", "--input", weights, "--out", out) == 2
    assert "model.pt: unknown input format '.pt'" in capsys.readouterr().err
    assert mnemos_data("tokenize", "--input", str(tmp_path / "nomatch*.txt"), "--out", out,
                       "--tokenizer", "spm.model") == 2
    assert "no input files in" in capsys.readouterr().err
    prefix = str(tmp_path / "tok" / "spm")
    assert mnemos_data("train-tokenizer", "--input", empty, "--model-prefix", prefix, "--vocab-size", "300") == 2
    assert "no text in" in capsys.readouterr().err
    records = tmp_path / "records.jsonl"  # the text under another name: every record would be skipped
    records.write_text('{"content": "a document", "id": 1}\n{"content": "another", "id": 2}\n')
    assert mnemos_data("tokenize", "--input", records, "--out", out, "--tokenizer", "spm.model") == 2
    assert ("--text-field='text' is not a field of " in capsys.readouterr().err)
    assert mnemos_data("dedup", "--input", records, "--out", out, "--text-field", "body") == 2
    assert "its first record has: content, id" in capsys.readouterr().err
    assert not out.exists()
    assert mnemos_data("train-tokenizer", "--input", empty, "--model-prefix", prefix, "--vocab-size", "259") == 2
    assert "vocab_size=259 (rule: with byte fallback at least 256 byte pieces + 4 special pieces + 0 user " \
           "symbols = 260)" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "tok").exists()
    src = tmp_path / "docs.txt"
    src.write_text("one document\n")
    assert mnemos_data("decontaminate", "--input", src, "--out", out, "--tasks-from-registry", "no_such_task") == 2
    assert "unknown task or group 'no_such_task'" in capsys.readouterr().err
    wide = tmp_path / "wide.txt"
    wide.write_text("".join(chr(0x4E00 + i) for i in range(300)) + "\n")  # 300 distinct characters
    assert mnemos_data("train-tokenizer", "--input", wide, "--model-prefix", prefix, "--vocab-size", "100",
                       "--no-byte-fallback") == 2
    assert "sentencepiece refused the input: Vocabulary size is smaller than required_chars" in \
        capsys.readouterr().err


def test_a_rerun_with_other_tasks_is_refused_and_only_listed_shards_are_read(shared_data, tmp_path, capsys):
    """Task files of an earlier run with more --tasks would stay beside the new ones and be read as part of
    the output (documents twice): such a re-run is refused; a stray shard beside a shards.json is skipped."""
    import shutil

    from data.tokenize import find_prefixes
    lines = (shared_data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()[:3000]
    src = tmp_path / "text.txt"
    src.write_text("\n".join(line for line in lines if len(line.split()) > 5))
    model = str(tmp_path / "tok" / "spm")
    assert mnemos_data("train-tokenizer", "--input", src, "--model-prefix", model, "--vocab-size", "512") == 0
    out = tmp_path / "shards"
    assert mnemos_data("tokenize", "--input", src, "--out", out, "--tokenizer", f"{model}.model", "--tasks", "2") == 0
    assert len(find_prefixes([str(out)])) == 2
    before = sorted(os.listdir(out))
    capsys.readouterr()
    assert mnemos_data("tokenize", "--input", src, "--out", out, "--tokenizer", f"{model}.model", "--tasks", "1") == 2
    assert "--tasks=1 but " in capsys.readouterr().err and sorted(os.listdir(out)) == before
    assert mnemos_data("dedup", "--input", src, "--out", tmp_path / "dd", "--tasks", "3") == 0
    assert mnemos_data("dedup", "--input", src, "--out", tmp_path / "dd", "--tasks", "2") == 2
    assert "holds the output of a run with --tasks=3" in capsys.readouterr().err
    shutil.copy(out / "shard_00000.idx", out / "shard_00007.idx")  # a stray shard, not in shards.json
    shutil.copy(out / "shard_00000.bin", out / "shard_00007.bin")
    assert find_prefixes([str(out)]) == [str(out / "shard_00000"), str(out / "shard_00001")]
    assert mnemos_data("stats", out, "--json-out", tmp_path / "s.json") == 0
    assert json.load(open(tmp_path / "s.json"))["total"]["documents"] == len(list(DocumentReader([str(src)]).run()))


def test_train_tokenizer_does_not_learn_the_separator_in_plain_text(shared_data, tmp_path):
    """Plain text with <|endoftext|> between documents goes to sentencepiece as it is: its trainer leaves the
    spelling of the control piece out, so no learnt piece spells part of the separator."""
    from data.tokenizer import Tokenizer
    lines = (shared_data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()[:2000]
    src = tmp_path / "docs.txt"
    src.write_text("\n<|endoftext|>\n".join(line for line in lines if len(line.split()) > 5))
    prefix = str(tmp_path / "tok" / "spm")
    assert mnemos_data("train-tokenizer", "--input", src, "--model-prefix", prefix, "--vocab-size", "600") == 0
    tok = Tokenizer(f"{prefix}.model")
    special = {tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id}
    learnt = [tok.id_to_piece(i) for i in range(tok.vocab_size) if i not in special]
    assert [p for p in learnt if "endof" in p or "|" in p or "<" in p.replace("<0x", "")] == []
    assert tok.encode("a<|endoftext|>b").count(tok.eos_id) == 0  # and text never becomes the control id


def test_gpt3_samples_are_split_at_their_document_separators(shared_data, small_tokenizer, tmp_path):
    """The GPT-3 samples file holds several documents per record, separated by <|endoftext|>. Each must become
    its own indexed document (the dataset puts the end-of-text id between documents); left whole, the separator would be tokenized as literal
    text (sentencepiece never emits a control piece from text) and the model would learn it as prose."""
    from data.indexed import IndexedDataset
    src = shared_data / "corpus" / "gpt3_175b_samples.jsonl"
    with open(tmp_path / "few.jsonl", "w") as f:  # the first 20 records, as shipped
        f.writelines(src.read_text(encoding="utf-8").splitlines(keepends=True)[:20])
    records = [json.loads(line) for line in open(tmp_path / "few.jsonl")]
    want = [p for r in records for p in r.split("<|endoftext|>") if p.strip()]
    assert len(want) > len(records)

    tok = small_tokenizer
    assert mnemos_data("tokenize", "-i", tmp_path / "few.jsonl", "-o", tmp_path / "split",
                       "--tokenizer", tok.model_path) == 0
    ds = IndexedDataset(str(tmp_path / "split" / _first_shard(tmp_path / "split")))
    assert len(ds) == len(want)
    literal = tok.encode("<|endoftext|>")
    for k in (0, len(want) // 2, len(want) - 1):
        ids = ds[k].tolist()
        assert tok.decode(ids) == want[k]
        assert not any(ids[i:i + len(literal)] == literal for i in range(len(ids)))
    st = json.load(open(tmp_path / "split" / "stats.json"))
    reader = next(s for s in st["steps"] if s["step"] == "reader")
    assert reader["records"] == 20 and reader["documents"] == len(want)

    # --doc-separator '' keeps each record whole: the separator is then text, as the user asked
    assert mnemos_data("tokenize", "-i", tmp_path / "few.jsonl", "-o", tmp_path / "whole", "--doc-separator", "",
                       "--tokenizer", tok.model_path) == 0
    whole = IndexedDataset(str(tmp_path / "whole" / _first_shard(tmp_path / "whole")))
    assert len(whole) == 20
    assert tok.decode(whole[0].tolist()) == records[0] and "<|endoftext|>" in records[0]


def _first_shard(out) -> str:
    return os.path.basename(json.load(open(out / "shards.json"))["prefixes"][0])


def test_blend_takes_the_tokenizer_from_the_shards_and_records_it(shared_data, small_tokenizer, tmp_path, capsys):
    """`data blend` without --tokenizer/--eos-id reads both from the shards' shards.json and writes the tokenizer
    into blend.json, so `data: {blend: ...}` alone is a complete GPT data config; an --eos-id other than the
    shards' tokenizer's would separate documents with a wrong id and is refused."""
    lines = (shared_data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()[:800]
    (tmp_path / "wiki.txt").write_text("\n".join(lines), encoding="utf-8")
    assert mnemos_data("tokenize", "-i", tmp_path / "wiki.txt", "-o", tmp_path / "shards",
                       "--tokenizer", small_tokenizer.model_path) == 0
    assert mnemos_data("blend", "--dataset", f"wiki=1:{tmp_path / 'shards'}", "-o", tmp_path / "blend",
                       "--seq-len", 32) == 0
    summary = json.load(open(tmp_path / "blend" / "blend.json"))
    assert summary["tokenizer"] == os.path.abspath(small_tokenizer.model_path)
    assert summary["config"]["data.tokenizer"] == summary["tokenizer"] and summary["eos_id"] == small_tokenizer.eos_id
    capsys.readouterr()
    assert mnemos_data("blend", "--dataset", f"wiki=1:{tmp_path / 'shards'}", "-o", tmp_path / "blend2",
                       "--seq-len", 32, "--eos-id", 3) == 2
    assert f"--eos-id 3 but the shards' tokenizer {os.path.abspath(small_tokenizer.model_path)} ends documents " \
           f"with id {small_tokenizer.eos_id}" in capsys.readouterr().err
    assert not (tmp_path / "blend2").exists()


def test_stats_takes_input_like_the_other_stages(shared_data, small_tokenizer, tmp_path, capsys):
    lines = (shared_data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()[:300]
    (tmp_path / "wiki.txt").write_text("\n".join(lines), encoding="utf-8")
    assert mnemos_data("tokenize", "-i", tmp_path / "wiki.txt", "-o", tmp_path / "shards",
                       "--tokenizer", small_tokenizer.model_path) == 0
    capsys.readouterr()
    assert mnemos_data("stats", "-i", tmp_path / "shards", "--json-out", tmp_path / "a.json") == 0
    assert mnemos_data("stats", tmp_path / "shards", "--json-out", tmp_path / "b.json") == 0
    a, b = (json.load(open(tmp_path / f"{x}.json")) for x in "ab")
    sections = [b for b in re.split(r"\n[ \t]*\n", "\n".join(lines)) if b.strip()]  # WikiText: blank-line separated
    assert a == b and a["total"]["documents"] == len(sections)
    capsys.readouterr()
    assert mnemos_data("stats") == 2
    assert "give the shards or files to count" in capsys.readouterr().err


def test_a_book_read_line_by_line_is_pointed_out(shared_data, small_tokenizer, tmp_path, capsys):
    """Plain text read one document per line (`datasets`' default, ours when a file has no blank lines): right
    for a list of documents, wrong for a book, whose every line break would become an end-of-text id."""
    lines = (shared_data / "corpus" / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()[:400]
    (tmp_path / "play.txt").write_text("\n".join(lines), encoding="utf-8")
    for sample_by, noted in (("line", True), ("document", False)):
        capsys.readouterr()
        assert mnemos_data("tokenize", "-i", tmp_path / "play.txt", "-o", tmp_path / sample_by, "--txt-sample-by",
                           sample_by, "--tokenizer", small_tokenizer.model_path) == 0
        assert ("use --txt-sample-by document" in capsys.readouterr().out) is noted


def test_decontaminate_names_the_tasks_it_could_not_read_and_takes_a_data_dir(shared_data, tmp_path, capsys):
    """With --tasks-from-registry all, tasks whose files are not here were skipped in a log line; the stage
    had no --data-dir to find them. Now it takes one, and names what it could not filter against."""
    arith = shared_data / "gpt3_arithmetic" / "two_digit_addition.jsonl"
    item = json.loads(arith.read_text().splitlines()[7])
    planted = "word " * 300 + item["context"] + item["completion"] + " word" * 300
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": planted}) + "\n")
    runs = {}
    for name, extra in (("without", []), ("with", ["--data-dir", shared_data])):
        capsys.readouterr()
        assert mnemos_data("decontaminate", "-i", tmp_path / "train.jsonl", "-o", tmp_path / name, *extra) == 0
        runs[name] = (json.load(open(tmp_path / name / "stats.json")), capsys.readouterr().out)
    stats, out = runs["without"]
    assert "gpt3_arithmetic_2da" in stats["tasks_without_data"] and "gpt3_arithmetic_2da" in out.split("note:")[1]
    assert next(s for s in stats["steps"] if s["step"] == "decontaminate").get("cut", 0) == 0  # missed silently
    stats, out = runs["with"]
    assert "gpt3_arithmetic_2da" not in stats["tasks_without_data"]
    cut = next(s for s in stats["steps"] if s["step"] == "decontaminate")
    assert cut["cut"] == 1 and cut["matched_in:gpt3_arithmetic_2da"] == 1  # the released 2D+ item is found


def test_a_stage_that_reads_no_document_fails_and_says_why(tmp_path, capsys):
    """Every record malformed (here: records without the text field in a .json of two arrays) used to end with
    exit code 0 and an empty output that passed for a result."""
    docs = [{"text": f"document {i} with some words"} for i in range(4)]
    (tmp_path / "two.json").write_text(json.dumps({"train": docs, "test": docs}))
    for stage in ("filter", "dedup"):
        capsys.readouterr()
        assert mnemos_data(stage, "-i", tmp_path / "two.json", "-o", tmp_path / stage) == 1
        err = capsys.readouterr().err
        assert f"mnemos data {stage}: none of the 1 records read became a document" in err and "json_layout" in err
    (tmp_path / "ok.json").write_text(json.dumps({"data": docs}))
    assert mnemos_data("filter", "-i", tmp_path / "ok.json", "-o", tmp_path / "ok") == 0


def test_tokenize_again_after_the_tokenizer_changed_under_its_path(shared_data, small_tokenizer, tmp_path):
    """Completion markers named the tokenizer by path: retrained into the same --model-prefix, a re-run found
    its output "already completed" and kept the old ids."""
    import shutil
    from data.indexed import IndexedDataset
    from data.tokenizer import Tokenizer
    lines = (shared_data / "corpus" / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()[:300]
    (tmp_path / "play.txt").write_text("\n".join(lines), encoding="utf-8")
    tok = tmp_path / "tok.model"
    shutil.copy(small_tokenizer.model_path, tok)
    assert mnemos_data("tokenize", "-i", tmp_path / "play.txt", "-o", tmp_path / "out", "--tokenizer", tok) == 0
    blend = ("blend", "--dataset", f"play=1:{tmp_path / 'out'}", "--split", "90,10,0", "--seq-len", "16",
             "-o", tmp_path / "blend")
    assert mnemos_data(*blend) == 0
    other = str(tmp_path / "other" / "spm")
    assert mnemos_data("train-tokenizer", "-i", tmp_path / "play.txt", "--model-prefix", other,
                       "--vocab-size", "400") == 0
    shutil.copy(other + ".model", tok)  # retrained into the same path
    assert mnemos_data("tokenize", "-i", tmp_path / "play.txt", "-o", tmp_path / "out", "--tokenizer", tok) == 0
    first = IndexedDataset(str(tmp_path / "out" / _first_shard(tmp_path / "out")))[0].tolist()
    assert first == Tokenizer(str(tok)).encode(lines[0] + "\n" + lines[1])  # the new tokenizer's ids
    # blending again into the same directory copies the new shards (its split copies were kept before)
    assert mnemos_data(*blend) == 0
    train = json.load(open(tmp_path / "blend" / "blend.json"))["config"]["data.train"]
    assert IndexedDataset(train[0])[0].tolist() == first
