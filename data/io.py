"""Readers (local files read directly, streaming; `hf://` names through `datasets`) and writers (jsonl, plain or
gzip/zstd compressed).

Inputs: jsonl, json (JSON Lines, or one document: an array of records or an object holding one), parquet
or plain text files, optionally `.gz`/`.zst`/`.bz2`/`.xz` compressed (the
format is taken from the extension under the compression suffix), or a `datasets` hub name with
`hf://NAME[:CONFIG]`. Malformed records (bad JSON, undecodable bytes, no text field, empty or huge
documents) are counted under their reason and skipped, never fatal.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import itertools
import json
import logging
import os
from typing import Iterable, Iterator, Sequence

from .pipeline import Document, PipelineStep

log = logging.getLogger(__name__)

# Undecodable bytes become U+FDD0, a Unicode noncharacter that real text does not contain (unlike
# U+FFFD, which genuine documents do carry), so a record with it is counted as non-UTF-8 and skipped.
_BAD_BYTES_MARK = "\ufdd0"
_BAD_BYTES_HANDLER = "mnemos_mark_bad_bytes"
codecs.register_error(_BAD_BYTES_HANDLER, lambda err: (_BAD_BYTES_MARK, err.end))

COMPRESSIONS = (".gz", ".zst", ".zstd", ".bz2", ".xz")
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "text",
           ".text": "text"}


# GPT-2/3's document separator inside one text (the GPT-3 samples file, OpenWebText-style dumps). Our
# tokenizer's end-of-text piece has the same spelling, but sentencepiece never produces a control piece from
# text: left in, it would be learned as eight pieces of literal text instead of a document boundary.
DOC_SEPARATOR = "<|endoftext|>"

# --txt-sample-by: what one document of a plain-text file is. `auto` looks at the first SNIFF_LINES lines: a
# dump of <|endoftext|>-separated documents is cut at its separators; a book or WikiText has a blank line after
# every paragraph (WikiText a third of its lines, Tiny Shakespeare a sixth); a file of one document per line
# has none, or a stray one.
TXT_SAMPLE_BY = ("auto", "line", "paragraph", "document")
SNIFF_LINES = 2000
PARAGRAPH_BLANK_SHARE = 0.05


def open_text(path: str):
    """A local file, plain or compressed (by its suffix), as UTF-8 text; undecodable bytes become
    _BAD_BYTES_MARK. Universal newlines: CRLF and CR end lines as LF does."""
    kw = {"encoding": "utf-8", "errors": _BAD_BYTES_HANDLER}
    lower = path.lower()
    if lower.endswith(".gz"):
        return gzip.open(path, "rt", **kw)
    if lower.endswith(".bz2"):
        import bz2
        return bz2.open(path, "rt", **kw)
    if lower.endswith(".xz"):
        import lzma
        return lzma.open(path, "rt", **kw)
    if lower.endswith((".zst", ".zstd")):
        import zstandard
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True, closefd=True)
        return io.TextIOWrapper(raw, **kw)
    return open(path, "rt", **kw)


def _stat_digest(paths: Sequence[str]) -> str:
    """A digest of the local inputs' sizes and modification times."""
    import hashlib
    stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths if not p.startswith("hf://")]
    return hashlib.sha1(json.dumps(stats).encode()).hexdigest()


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _separated(lines: Iterable[str], separator: str | None) -> Iterator[str]:
    """Lines (with their ends) joined into documents that end at `separator`; without one, the file as it is.
    Blank pieces are dropped, as a record's are."""
    run: list[str] = []
    for line in lines:
        if separator and separator in line:
            head, *rest = line.split(separator)
            run.append(head)
            for piece in rest:
                text = "".join(run)
                if text.strip():
                    yield text
                run = [piece]
        else:
            run.append(line)
    text = "".join(run)
    if text.strip() or not separator:
        yield text


def _paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Runs of non-blank lines, joined by newlines; a line of only whitespace ends a paragraph."""
    run: list[str] = []
    for line in lines:
        if line.strip():
            run.append(line)
        elif run:
            yield "\n".join(run)
            run = []
    if run:
        yield "\n".join(run)


# What the stages write beside their documents: not input. A corpus's own .json files are.
_STAGE_JSON = {"stats.json", "shards.json", "blend.json", "clean_report.json"}
_SKIP_DIRS = {"logs", "rejects", "minhash", "contamination", "stats", "completions", "index_cache"}


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files, globs and directories (recursively: every file of a known format) -> sorted file list."""
    out: list[str] = []
    for p in paths:
        p = str(p)
        if p.startswith("hf://"):
            out.append(p)
        elif os.path.isdir(p):
            # a stage's output directory: its document shards, not its logs/rejects/work files
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
                out.extend(os.path.join(root, f) for f in files
                           if detect_format(f, strict=False) and f not in _STAGE_JSON and ".tmp" not in f)
        elif any(c in p for c in "*?["):
            out.extend(glob.glob(p, recursive=True))
        elif os.path.exists(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p!r} does not exist")
    return sorted(dict.fromkeys(out))


def detect_format(path: str, strict: bool = True) -> str | None:
    name = os.path.basename(path).lower()
    for c in COMPRESSIONS:
        if name.endswith(c):
            name = name[: -len(c)]
            break
    ext = os.path.splitext(name)[1]
    if ext in FORMATS:
        return FORMATS[ext]
    if strict:
        raise ValueError(f"{path}: unknown input format {ext!r} (known: {sorted(FORMATS)} + {COMPRESSIONS})")
    return None


class DocumentReader(PipelineStep):
    """Reads this task's share of the inputs: whole files when there are at least as many files as
    tasks (files[rank::world_size]), otherwise every task reads all files and keeps the records
    with index % world_size == rank."""

    name = "reader"

    def __init__(self, paths: Sequence[str], text_field: str = "text", id_field: str = "id",
                 txt_sample_by: str = "auto", min_chars: int = 1, max_chars: int = 100_000_000,
                 limit: int | None = None, doc_separator: str | None = DOC_SEPARATOR):
        super().__init__()
        self.paths = expand_paths(paths)
        if not self.paths:
            raise FileNotFoundError(f"no input files in {list(paths)}")
        self.text_field = text_field
        self.id_field = id_field
        if txt_sample_by not in TXT_SAMPLE_BY:
            raise ValueError(f"txt_sample_by={txt_sample_by!r} (allowed: {', '.join(TXT_SAMPLE_BY)})")
        self.txt_sample_by = txt_sample_by
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.limit = limit
        self.doc_separator = doc_separator or None
        self._told: set[str] = set()  # auto's choices already logged
        # part of a stage's completion fingerprint: inputs replaced or edited under the same paths re-run it
        self.inputs_digest = _stat_digest(self.paths)

    def text_mode(self, path: str) -> str:
        """How plain-text `path` is cut into documents: --txt-sample-by, or for `auto` by paragraph when
        blank lines separate its text (a book, an article, WikiText), else one document per line."""
        if self.txt_sample_by != "auto":
            return self.txt_sample_by
        head = list(itertools.islice(self._text_lines(path), SNIFF_LINES))
        if self.doc_separator and any(self.doc_separator in line for line in head):
            return "document"  # an OpenWebText-style dump: its separators say where documents end
        blank = sum(1 for line in head if not line.strip())
        return "paragraph" if head and blank >= PARAGRAPH_BLANK_SHARE * len(head) else "line"

    def _text_lines(self, path: str, keepends: bool = False) -> Iterator[str]:
        """The file's lines without their ends, read directly (a `datasets` builder per file cost ~0.2 s each,
        minutes for a directory of small files; bench/data_reader.py), split at line breaks only (not with
        str.splitlines, which also cuts at U+2028, a character a JSON string may hold raw)."""
        with open_text(path) as f:
            for k, line in enumerate(f):
                if line.endswith("\n") and not keepends:
                    line = line[:-1]
                # a byte-order mark (Windows tools write one) is neither JSON nor text
                yield line.removeprefix("\ufeff") if k == 0 else line

    def _text_records(self, path: str, mode: str) -> Iterator[tuple[int, dict | None, str]]:
        """Plain text as documents: each line, each paragraph (lines between blank or whitespace-only lines:
        `datasets` splits only at an empty line, so WikiText's " " lines would make it one document), or
        the whole file, cut at the document separator while it is read (a multi-gigabyte dump of separated
        documents is never one string)."""
        if mode == "line":
            chunks: Iterator[str] = self._text_lines(path)
        elif mode == "paragraph":
            chunks = _paragraphs(self._text_lines(path))
        else:
            chunks = _separated(self._text_lines(path, keepends=True), self.doc_separator)
        for k, text in enumerate(chunks):
            text = text.removeprefix("\ufeff") if k == 0 else text
            yield (k, None, "non_utf8") if _BAD_BYTES_MARK in text else (k, {self.text_field: text}, "")

    def _records(self, path: str, text_mode: str | None = None) -> Iterator[tuple[int, dict | None, str]]:
        """(record number, record or None, problem)."""
        if path.startswith("hf://"):
            import datasets
            datasets.disable_progress_bars()
            name, _, config = path[5:].partition(":")
            ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
            for k, rec in enumerate(ds):
                yield k, rec, ""
            return
        fmt = detect_format(path)
        if os.path.getsize(path) == 0:
            return
        if fmt == "parquet":
            import pyarrow.parquet as pq
            k = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for rec in batch.to_pylist():
                    yield k, rec, ""
                    k += 1
            return
        if fmt == "text":
            yield from self._text_records(path, text_mode or self.text_mode(path))
            return
        lines = self._text_lines(path)
        first = next((line for line in lines if line.strip()), None)
        if first is None:
            return
        lines = itertools.chain([first], lines)
        head = first.lstrip()[:1]
        if head == "[" or (head == "{" and not self._is_record_line(first)):  # one JSON document, or an array
            text = "\n".join(lines)
            if _parses(text):
                yield from self._json_document_records(json.loads(text))
                return
            lines = iter(text.split("\n"))  # not one document either: JSON Lines with a bad first line
        k = -1
        for line in lines:
            if not line.strip():
                continue
            k += 1
            if _BAD_BYTES_MARK in line:
                yield k, None, "non_utf8"
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                yield k, None, "malformed_json"
                continue
            if isinstance(rec, str):          # a bare JSON string is a document (GPT-3 samples file)
                rec = {self.text_field: rec}
            if not isinstance(rec, dict):
                yield k, None, "malformed_json"
                continue
            yield k, rec, ""

    def _is_record_line(self, line: str) -> bool:
        try:
            rec = json.loads(line)
        except ValueError:
            return False
        return isinstance(rec, dict) and self.text_field in rec

    def _json_document_records(self, obj) -> Iterator[tuple[int, dict | None, str]]:
        """Records of a whole-file JSON document: an array of records (or of strings), one record, or an object
        holding one array of records (`{"data": [...]}`, as `datasets`' json loader takes with `field`)."""
        if isinstance(obj, dict) and self.text_field not in obj:
            arrays = [v for v in obj.values() if isinstance(v, list) and v and isinstance(v[0], (dict, str))]
            if len(arrays) != 1:
                yield 0, None, "json_layout"  # no single array of records to read
                return
            obj = arrays[0]
        for k, rec in enumerate(obj if isinstance(obj, list) else [obj]):
            if isinstance(rec, str):
                rec = {self.text_field: rec}
            if not isinstance(rec, dict):
                yield k, None, "malformed_json"
            elif _BAD_BYTES_MARK in str(rec.get(self.text_field, "")):
                yield k, None, "non_utf8"
            else:
                yield k, rec, ""

    def _split(self, text: str) -> list[str]:
        """The documents inside one record's text: pieces between separators, blank ones dropped (a trailing
        separator is common); a text that is all blank stays one piece, to be counted as empty."""
        sep = self.doc_separator
        if sep is None or sep not in text:
            return [text]
        return [p for p in text.split(sep) if p.strip()] or [text]

    def run(self, docs=None, rank=0, world_size=1):
        by_file = len(self.paths) >= world_size
        paths = self.paths[rank::world_size] if by_file else self.paths
        emitted = 0
        tf, idf, min_chars, max_chars = self.text_field, self.id_field, self.min_chars, self.max_chars
        progress = _Progress(paths, rank, world_size)
        counts_files = by_file or rank == 0  # split by record, every task opens every file: count them once
        for path in paths:
            if counts_files:
                self.stat("files")
            base = os.path.basename(path)
            n_rec = n_doc = n_chars = 0        # local counters: the per-document path stays lean
            try:
                mode = None
                if not path.startswith("hf://") and detect_format(path) == "text":
                    mode = self.text_mode(path)
                    if counts_files:
                        self.stat(f"text_files_by_{mode}")
                    if self.txt_sample_by == "auto" and mode not in self._told:
                        self._told.add(mode)
                        log.info("%s: plain text read one document per %s (--txt-sample-by auto; give line, "
                                 "paragraph or document to choose)", path, mode)
                for k, rec, problem in self._records(path, mode):
                    if not by_file and k % world_size != rank:
                        continue
                    n_rec += 1
                    text = None if rec is None else rec.get(tf)
                    if rec is not None and not isinstance(text, str):
                        problem = "missing_text_field"
                    if problem:
                        self.stat(f"skipped:{problem}")
                        self.stat("skipped")
                        continue
                    doc_id = rec.get(idf)
                    doc_id = f"{base}/{k}" if doc_id is None else str(doc_id)
                    meta = rec.get("metadata")
                    parts = self._split(text)
                    if len(parts) > 1:
                        self.stat("split_records")
                    for j, part in enumerate(parts):
                        if len(part) > max_chars or len(part.strip()) < min_chars:
                            problem = "too_long" if len(part) > max_chars else "empty"
                            self.stat(f"skipped:{problem}")
                            self.stat("skipped")
                            continue
                        n_doc += 1
                        n_chars += len(part)
                        if not n_doc & 1023:
                            progress.tick(n_doc, n_chars)
                        yield Document(part, doc_id if len(parts) == 1 else f"{doc_id}#{j}",
                                       dict(meta) if isinstance(meta, dict) else {})
                        emitted += 1
                        if self.limit is not None and emitted >= self.limit:
                            return
            except Exception as err:  # an unreadable file (corrupt archive, bad parquet) is a count, not a crash
                log.warning("%s: unreadable after some records (%s: %s)", path, type(err).__name__, err)
                if counts_files:
                    self.stat("unreadable_files")
            finally:
                self.stat("records", n_rec)
                self.stat("documents", n_doc)
                self.stat("chars", n_chars)
                progress.file_done(path, n_doc, n_chars)


class _Progress:
    """A periodic log line per task: documents, MB read, rate, and an ETA from the input bytes."""

    def __init__(self, paths, rank: int, world_size: int, every_s: float = 10.0):
        import time
        self.time = time.monotonic
        self.t0 = self.last = self.time()
        self.every_s = every_s
        self.total_bytes = sum(os.path.getsize(p) for p in paths if not p.startswith("hf://") and os.path.exists(p))
        self.done_bytes = 0
        self.docs = self.chars = 0
        self.tag = f"task {rank}/{world_size}"

    def tick(self, n_doc: int, n_chars: int) -> None:
        now = self.time()
        if now - self.last < self.every_s:
            return
        self.last = now
        self._log(self.docs + n_doc, self.chars + n_chars, now)

    def file_done(self, path: str, n_doc: int, n_chars: int) -> None:
        self.docs += n_doc
        self.chars += n_chars
        if not path.startswith("hf://") and os.path.exists(path):
            self.done_bytes += os.path.getsize(path)

    def _log(self, docs: int, chars: int, now: float) -> None:
        dt = max(now - self.t0, 1e-9)
        eta = ""
        if self.done_bytes and self.total_bytes:
            eta = f", ETA {(self.total_bytes - self.done_bytes) * dt / self.done_bytes:.0f}s (by input bytes)"
        log.info("%s: %d documents, %.1f MB, %.2f MB/s, %.0f%% of input files done%s", self.tag, docs,
                 chars / 1e6, chars / 1e6 / dt, 100 * self.done_bytes / max(1, self.total_bytes), eta)


class ListReader(PipelineStep):
    """Documents from memory (tests, small tools): a list of Documents or strings."""

    name = "reader"

    def __init__(self, docs: Sequence[Document | str]):
        super().__init__()
        self.docs = [d if isinstance(d, Document) else Document(text=d, id=str(k)) for k, d in enumerate(docs)]

    def run(self, docs=None, rank=0, world_size=1):
        for d in self.docs[rank::world_size]:
            self.stat("documents")
            yield Document(d.text, d.id, dict(d.metadata))


class _Sink:
    """One output file, written under a temporary name and renamed on close()."""

    def __init__(self, path: str, compression: str | None):
        self.path = path
        self.tmp = f"{path}.tmp{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        raw = open(self.tmp, "wb")
        self._raw = raw
        if compression == "zst":
            import zstandard
            self._comp = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
            stream = self._comp
        elif compression == "gz":
            self._comp = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)   # mtime 0: identical re-runs
            stream = self._comp
        elif compression in (None, "", "none"):
            self._comp = None
            stream = raw
        else:
            raise ValueError(f"compression={compression!r} (allowed: zst, gz, none)")
        self._f = io.TextIOWrapper(stream, encoding="utf-8", newline="\n", write_through=False)
        self.count = 0

    def write(self, doc: Document) -> None:
        rec = {"id": doc.id, "text": doc.text}
        if doc.metadata:
            rec["metadata"] = doc.metadata
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        self._f.flush()
        self._f.detach()
        if self._comp is not None:
            self._comp.close()
        self._raw.close()
        os.replace(self.tmp, self.path)


class JsonlWriter(PipelineStep):
    """Writes this task's documents to `OUT_DIR/{prefix}{rank:05d}.jsonl[.zst|.gz]` and passes them on."""

    name = "writer"

    def __init__(self, out_dir: str, compression: str | None = "zst", prefix: str = ""):
        super().__init__()
        self.out_dir = str(out_dir)
        self.compression = compression
        self.prefix = prefix

    def path(self, rank: int) -> str:
        ext = {"zst": ".jsonl.zst", "gz": ".jsonl.gz"}.get(self.compression or "", ".jsonl")
        return os.path.join(self.out_dir, f"{self.prefix}{rank:05d}{ext}")

    def open(self, rank: int) -> _Sink:
        return _Sink(self.path(rank), self.compression)

    def run(self, docs, rank=0, world_size=1):
        sink = self.open(rank)
        for doc in docs:
            sink.write(doc)
            self.stat("documents")
            yield doc
        sink.close()
