"""On-disk request cache: a re-run of the same requests on the same model is answered from disk.

The key of a request is sha256(model fingerprint, request type, arguments); the value is its answer as
JSON. Storage is one SQLite file (safe for several processes; each data-parallel rank reads it, rank 0
writes). Models without a fingerprint are not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from typing import Any, Sequence

from evaluation.adapters import LM

log = logging.getLogger(__name__)


def request_hash(fingerprint: str, kind: str, args: Any) -> str:
    blob = json.dumps([fingerprint, kind, args], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CachingLM(LM):
    """Wraps an LM; answers cached requests from `path` and forwards only the missing ones."""

    def __init__(self, lm: LM, path: str | os.PathLike):
        self.lm = lm
        self.fingerprint = lm.fingerprint
        self.path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT)")
        self.db.commit()
        self.hits = 0
        self.misses = 0

    def _writer(self) -> bool:
        rank = getattr(self.lm, "world", (0, 1))[0]
        return rank == 0

    def _run(self, kind: str, requests: Sequence[Any]) -> list[Any]:
        fn = getattr(self.lm, kind)
        if self.fingerprint is None:
            return fn(requests)
        keys = [request_hash(self.fingerprint, kind, r) for r in requests]
        found: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i: i + 500]
            rows = self.db.execute(f"SELECT key, value FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                                   chunk).fetchall()
            found.update((k, json.loads(v)) for k, v in rows)
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            answers = fn([requests[i] for i in missing])
            new = {keys[i]: a for i, a in zip(missing, answers)}
            found.update(new)
            if self._writer():
                self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)",
                                    [(k, json.dumps(v)) for k, v in new.items()])
                self.db.commit()
        log.debug("%s: %d cached, %d computed", kind, len(keys) - len(missing), len(missing))
        out = [found[k] for k in keys]
        return [tuple(a) if kind == "loglikelihood" else a for a in out]

    def loglikelihood(self, requests):
        return self._run("loglikelihood", list(requests))

    def loglikelihood_rolling(self, requests):
        return self._run("loglikelihood_rolling", list(requests))

    def generate_until(self, requests):
        return self._run("generate_until", list(requests))

    def continuation_tokens(self, context, continuation):
        return self.lm.continuation_tokens(context, continuation)

    def close(self) -> None:
        self.db.close()
