"""Ingest through `datasets` (jsonl/parquet/txt, gzip/zstd), malformed records counted, resumable executor."""
import gzip
import json
import os

import pytest

from data.io import DocumentReader, JsonlWriter, ListReader
from data.pipeline import BaseFilter, LocalExecutor, PipelineStep, run_pipeline


def _write_inputs(d):
    good = [{"id": f"g{i}", "text": f"document number {i} with some words"} for i in range(6)]
    lines = [json.dumps(r) for r in good[:3]]
    lines += ["{not json", json.dumps({"id": "e", "text": "   "}), json.dumps({"id": "m", "body": "no text field"}),
              json.dumps({"id": "h", "text": "x" * 5000}), json.dumps([1, 2])]
    lines += [json.dumps(r) for r in good[3:]]
    raw = ("\n".join(lines) + "\n").encode()
    (d / "plain.jsonl").write_bytes(raw)
    with gzip.GzipFile(d / "c.jsonl.gz", "wb", mtime=0) as f:
        f.write(raw)
    import zstandard
    (d / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (d / "t.txt").write_bytes(b"first line of text\nbad \xff\xfe bytes here\nthird line\n")
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["parquet doc one", "parquet doc two"], "id": ["p1", "p2"]}), d / "p.parquet")
    (d / "empty.jsonl").write_bytes(b"")
    return good


def test_reader_counts_malformed_records_and_reads_all_formats(tmp_path):
    good = _write_inputs(tmp_path)
    r = DocumentReader([str(tmp_path)], max_chars=1000)
    docs = list(r.run())
    texts = [d.text for d in docs]
    for name in ("plain", "c", "z"):  # the same records through plain, gzip and zstd
        assert sum(t.startswith("document number") for t in texts) == 3 * len(good)
    assert "parquet doc two" in texts and "first line of text" in texts and "third line" in texts
    s = r.stats
    assert s["skipped:malformed_json"] == 3 * 2          # "{not json" and a JSON list, in 3 files
    assert s["skipped:empty"] == 3 and s["skipped:missing_text_field"] == 3 and s["skipped:too_long"] == 3
    assert s["skipped:non_utf8"] == 1
    assert s["records"] == s["documents"] + s["skipped"]   # every record accounted for
    assert s["files"] == 6


def test_tasks_split_inputs_without_overlap(tmp_path):
    for k in range(3):
        (tmp_path / f"f{k}.jsonl").write_text("".join(json.dumps({"text": f"f{k} d{i}"}) + "\n" for i in range(4)))
    one = sorted(d.text for d in DocumentReader([str(tmp_path)]).run())
    for world in (2, 5):   # by file (2 <= 3 files) and by record (5 > 3 files)
        readers = [DocumentReader([str(tmp_path)]) for _ in range(world)]
        parts = [sorted(d.text for d in reader.run(None, r, world)) for r, reader in enumerate(readers)]
        assert sorted(sum(parts, [])) == one
        assert sum(reader.stats["files"] for reader in readers) == 3  # the report's "from N files"


class DropShort(BaseFilter):
    name = "short"

    def filter(self, doc):
        return len(doc.text) > 12 or (False, "too_short")


class Crash(PipelineStep):
    """Fails on task 1 while armed (an interrupted stage)."""
    name = "crash"

    def __init__(self, armed_file):
        super().__init__()
        self.armed_file = armed_file

    def run(self, docs, rank=0, world_size=1):
        for k, d in enumerate(docs):
            if rank == 1 and k == 2 and os.path.exists(self.armed_file):
                raise RuntimeError("simulated crash")
            yield d


def test_filter_base_counts_and_keeps_rejects(tmp_path):
    f = DropShort(rejects_writer=JsonlWriter(str(tmp_path / "rej"), compression=None))
    stats = run_pipeline([ListReader(["tiny", "long enough text", "no", "another long text"]), f])
    st = stats[1]
    assert st["documents_in"] == 4 and st["kept"] == 2 and st["dropped"] == 2 and st["dropped:too_short"] == 2
    assert [d.text for d, _ in f.rejects] == ["tiny", "no"]
    rej = [json.loads(l) for l in open(tmp_path / "rej" / "00000.jsonl")]
    assert [r["text"] for r in rej] == ["tiny", "no"] and rej[0]["metadata"]["filter_reason"] == "too_short"


def test_interrupted_stage_rerun_is_identical(tmp_path):
    docs = [f"document {i} " + "word " * (i % 7) for i in range(40)]
    armed = tmp_path / "armed"

    def pipeline(out):
        return [ListReader(docs), DropShort(), Crash(str(armed)), JsonlWriter(str(out))]

    ref = LocalExecutor(pipeline(tmp_path / "ref"), str(tmp_path / "ref" / "logs"), tasks=3).run()
    armed.write_text("1")
    ex = LocalExecutor(pipeline(tmp_path / "run"), str(tmp_path / "run" / "logs"), tasks=3)
    with pytest.raises(RuntimeError):
        ex.run()
    assert ex.is_done(0) and not ex.is_done(1)
    assert not os.path.exists(tmp_path / "run" / "00001.jsonl.zst")   # no partial output under the final name
    armed.unlink()
    mtime0 = os.path.getmtime(tmp_path / "run" / "00000.jsonl.zst")
    stats = LocalExecutor(pipeline(tmp_path / "run"), str(tmp_path / "run" / "logs"), tasks=3).run()
    assert os.path.getmtime(tmp_path / "run" / "00000.jsonl.zst") == mtime0   # completed task skipped
    for r in range(3):
        name = f"{r:05d}.jsonl.zst"
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert stats == ref
    merged = json.load(open(tmp_path / "run" / "logs" / "stats.json"))
    assert merged["steps"][1]["documents_in"] == 40
    assert merged["steps"][1]["kept"] + merged["steps"][1]["dropped"] == 40


def test_genuine_replacement_characters_are_not_malformed(tmp_path):
    (tmp_path / "u.jsonl").write_text(json.dumps({"text": "generated text with \ufffd in it"}, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "bad \xff byte"}\n{"text": "fine"}\n')
    r = DocumentReader([str(tmp_path)])
    assert sorted(d.text for d in r.run()) == ["fine", "generated text with \ufffd in it"]
    assert r.stats["skipped:non_utf8"] == 1


def test_a_completed_task_runs_again_when_the_steps_change(tmp_path):
    """The same logging directory with other settings (the CLI's OUT rerun with another option) must not
    reuse completions: here the second writer's files would otherwise never be made."""
    docs = [f"document {i} " + "word " * i for i in range(12)]
    logs = str(tmp_path / "logs")
    LocalExecutor([ListReader(docs), DropShort(), JsonlWriter(str(tmp_path / "a"))], logs, tasks=2).run()
    again = LocalExecutor([ListReader(docs), DropShort(), JsonlWriter(str(tmp_path / "a"))], logs, tasks=2)
    assert again.is_done(0) and again.is_done(1)
    changed = LocalExecutor([ListReader(docs), DropShort(), JsonlWriter(str(tmp_path / "b"))], logs, tasks=2)
    assert not changed.is_done(0)
    changed.run()
    assert sorted(os.listdir(tmp_path / "b")) == ["00000.jsonl.zst", "00001.jsonl.zst"]
    fewer = LocalExecutor([ListReader(docs), DropShort(), JsonlWriter(str(tmp_path / "b"))], logs, tasks=1)
    assert not fewer.is_done(0)  # task 0 of 2 made half of what task 0 of 1 must


def test_plain_text_is_cut_at_blank_lines_whitespace_only_ones_included(tmp_path):
    """WikiText separates its sections with lines holding one space: `datasets`' paragraph mode splits only
    at empty lines and read the whole file as one document."""
    (tmp_path / "wiki.txt").write_text(" \n = Title = \n \n First para .\n Second para .\n \t\n\n = = Next = = \n")
    docs = [d.text for d in DocumentReader([str(tmp_path / "wiki.txt")], txt_sample_by="paragraph").run()]
    assert docs == [" = Title = ", " First para .\n Second para .", " = = Next = = "]
    lines = [d.text for d in DocumentReader([str(tmp_path / "wiki.txt")], txt_sample_by="line").run()]
    assert lines == [" = Title = ", " First para .", " Second para .", " = = Next = = "]
    whole = [d.text for d in DocumentReader([str(tmp_path / "wiki.txt")], txt_sample_by="document").run()]
    assert len(whole) == 1 and "Second para" in whole[0]
    (tmp_path / "bom.txt").write_bytes("\ufeffOne.\n\nTwo.\n".encode())  # a byte-order mark is not text
    for mode in ("line", "paragraph", "document"):
        docs = [d.text for d in DocumentReader([str(tmp_path / "bom.txt")], txt_sample_by=mode).run()]
        assert docs[0].startswith("One."), (mode, docs)


def test_auto_reads_a_play_by_paragraph_and_a_list_by_line(shared_data, tmp_path):
    """The default: Tiny Shakespeare by line was 32,777 one-line documents, and exact dedup then deleted 7,139
    of them (every repeated "ROMEO:"); by paragraph each speech is a document. A file of one document per line,
    even with a stray blank line, stays one per line."""
    play = DocumentReader([str(shared_data / "corpus" / "tinyshakespeare.txt")])
    speeches = list(play.run())
    assert len(speeches) == 7222 and speeches[0].text == "First Citizen:\nBefore we proceed any further, hear me speak."
    assert play.stats["text_files_by_paragraph"] == 1
    rows = [f"document {i} says something about topic {i % 7}" for i in range(300)]
    (tmp_path / "list.txt").write_text("\n".join(rows[:150] + [""] + rows[150:]) + "\n")
    listed = DocumentReader([str(tmp_path / "list.txt")])
    assert [d.text for d in listed.run()] == rows and listed.stats["text_files_by_line"] == 1


def test_json_files_holding_one_document_are_read_as_records(tmp_path):
    """A .json file is often one JSON document (an array of records, or {"data": [...]}), which `datasets`' json
    loader reads; read as JSON Lines, each of its lines was a malformed record and a stage wrote nothing."""
    docs = [{"id": f"d{i}", "text": f"document {i}"} for i in range(5)]
    (tmp_path / "pretty.json").write_text(json.dumps(docs, indent=2))
    (tmp_path / "oneline.json").write_text(json.dumps(docs))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": "1", "data": docs}, indent=1))
    (tmp_path / "strings.json").write_text(json.dumps([d["text"] for d in docs]))
    for name in ("pretty", "oneline", "wrapped", "strings"):
        r = DocumentReader([str(tmp_path / f"{name}.json")])
        assert [d.text for d in r.run()] == [d["text"] for d in docs], name
        assert r.stats["records"] == 5 and "skipped" not in r.stats, name
    (tmp_path / "two.json").write_text(json.dumps({"a": docs, "b": docs}))
    r = DocumentReader([str(tmp_path / "two.json")])
    assert list(r.run()) == [] and r.stats["skipped:json_layout"] == 1
    # a byte-order mark before the first record is not a malformed record
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(d) + "\n" for d in docs).encode())
    r = DocumentReader([str(tmp_path / "bom.jsonl")])
    assert len(list(r.run())) == 5 and "skipped" not in r.stats
    # JSON Lines whose first line is broken are still read line by line
    (tmp_path / "lines.jsonl").write_text("{broken\n" + "".join(json.dumps(d) + "\n" for d in docs))
    r = DocumentReader([str(tmp_path / "lines.jsonl")])
    assert len(list(r.run())) == 5 and r.stats["skipped:malformed_json"] == 1


def test_auto_cuts_a_separated_text_dump_at_its_separators(tmp_path):
    """A .txt of <|endoftext|>-separated documents (OpenWebText-style dumps, GPT-2 samples) whose documents hold
    paragraphs: by paragraph or by line its documents fell apart; its separators say where they end."""
    docs = ["Title one\n\nFirst paragraph of one.\nStill one.", "Second doc.\n\nWith two paragraphs.", "Third."]
    (tmp_path / "dump.txt").write_text("<|endoftext|>\n".join(d + "\n" for d in docs) + "<|endoftext|>\n")
    r = DocumentReader([str(tmp_path / "dump.txt")])
    got = [d.text.strip("\n") for d in r.run()]
    assert got == docs and r.stats["text_files_by_document"] == 1
    # --doc-separator '' makes the separator text, as the user chose: then blank lines cut the file
    literal = [d.text for d in DocumentReader([str(tmp_path / "dump.txt")], doc_separator="").run()]
    assert len(literal) == 3 and "<|endoftext|>" in literal[1]


def test_a_directory_input_reads_its_json_files_but_not_the_stages_own(tmp_path):
    """Every .json under an input directory was skipped (to skip stats.json): a corpus of .json files read as
    "no input files", and beside .jsonl files its .json files were silently left out."""
    from data.io import expand_paths
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one document"}) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([{"text": "two"}, {"text": "three"}]))
    for meta in ("stats.json", "shards.json", "blend.json"):
        (tmp_path / meta).write_text("{}")
    assert [os.path.basename(p) for p in expand_paths([str(tmp_path)])] == ["a.jsonl", "b.json"]
    assert sorted(d.text for d in DocumentReader([str(tmp_path)]).run()) == ["one document", "three", "two"]


def test_a_stage_runs_again_when_its_input_changed_under_the_same_path(tmp_path):
    """Completion markers named the inputs by path: a corpus replaced under the same name found the stage
    "already completed" and its old output was used."""
    src = tmp_path / "corpus.jsonl"
    src.write_text(json.dumps({"text": "the first corpus"}) + "\n")

    def run():
        out = tmp_path / "out"
        LocalExecutor([DocumentReader([str(src)]), JsonlWriter(str(out), compression=None)],
                      str(tmp_path / "logs")).run()
        return [json.loads(line)["text"] for line in open(out / "00000.jsonl")]
    assert run() == ["the first corpus"]
    src.write_text(json.dumps({"text": "a second corpus, same file name"}) + "\n")
    assert run() == ["a second corpus, same file name"]


def test_local_files_are_read_directly_every_compression_and_raw_line_separators(tmp_path):
    """Local files are read without a `datasets` builder per file (about 0.2 s each: minutes for a directory of
    small files), as `datasets` read them: lines end at line breaks only (U+2028, which a JSON string may hold
    raw, is not one), and bz2, xz and multi-frame zstd read like gzip."""
    import bz2
    import lzma
    import zstandard
    recs = [{"text": "a line\u2028separator inside"}, {"text": "second"}, {"text": "third"}]
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()
    (tmp_path / "u.jsonl").write_bytes(raw)
    (tmp_path / "b.jsonl.bz2").write_bytes(bz2.compress(raw))
    (tmp_path / "x.jsonl.xz").write_bytes(lzma.compress(raw))
    half = raw.index(b"\n") + 1  # two zstd frames, as appending writers produce
    c = zstandard.ZstdCompressor()
    (tmp_path / "m.jsonl.zst").write_bytes(c.compress(raw[:half]) + c.compress(raw[half:]))
    for name in ("u.jsonl", "b.jsonl.bz2", "x.jsonl.xz", "m.jsonl.zst"):
        r = DocumentReader([str(tmp_path / name)])
        assert [d.text for d in r.run()] == [x["text"] for x in recs], name
        assert "skipped" not in r.stats, (name, r.stats)
