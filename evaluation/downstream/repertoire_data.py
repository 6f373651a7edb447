"""Repertoires for `mnemos downstream repertoire`: the Repertoire type, the simulator, the TSV reader and
writer, and the encoding into network inputs (amino-acid indices; one-hot amino acids + position features)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
AA_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}


@dataclass
class Repertoire:
    sequences: list[str]
    counts: np.ndarray  # (n_seq,) int
    label: int
    name: str = ""
    witnesses: int = 0  # number of implanted sequences (simulated data only)


# ----------------------------------------------------------------------------------------------------- simulator

@dataclass
class SimConfig:
    n_repertoires: int = 100
    sequences_per_repertoire: int = 1000
    witness_rate: float = 0.01
    motif: str = "SLGY"  # implanted motif (length 4 as in DeepRC's simulations)
    motif_noise: float = 0.0  # per-position substitution probability in implanted motifs
    min_len: int = 10
    max_len: int = 18
    positive_fraction: float = 0.5
    seed: int = 0


def max_motif_len(cfg: SimConfig) -> int:
    """The longest motif that fits the variable middle of every simulated sequence ('CAS' + middle + 'F')."""
    return cfg.min_len - 4


def positives(cfg: SimConfig) -> int:
    """How many of the simulated repertoires are positive (the rest are negative)."""
    return int(round(cfg.positive_fraction * cfg.n_repertoires))


def simulate_repertoires(cfg: SimConfig) -> list[Repertoire]:
    """CDR3-like background (non-uniform amino-acid usage, 'CAS...F'-like ends) with implanted motifs."""
    if not 0 <= cfg.witness_rate <= 1:
        raise ValueError(f"witness_rate={cfg.witness_rate} must be in [0, 1]")
    if not cfg.motif or set(cfg.motif) - set(AMINO_ACIDS):
        raise ValueError(f"motif={cfg.motif!r} must be one or more amino-acid letters of {AMINO_ACIDS}")
    if len(cfg.motif) > max_motif_len(cfg):
        raise ValueError(f"motif={cfg.motif!r} has {len(cfg.motif)} letters (rule: at most {max_motif_len(cfg)}, the "
                         f"variable middle of the shortest simulated sequence, {cfg.min_len} residues minus 'CAS' "
                         f"and 'F')")
    rng = np.random.default_rng(cfg.seed)
    usage = rng.dirichlet(np.full(20, 5.0))  # a fixed, skewed amino-acid usage
    aa = np.array(list(AMINO_ACIDS))
    reps = []
    n_pos = positives(cfg)
    labels = np.array([1] * n_pos + [0] * (cfg.n_repertoires - n_pos))
    rng.shuffle(labels)
    for r, y in enumerate(labels):
        n = cfg.sequences_per_repertoire
        lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=n)
        seqs = ["CAS" + "".join(aa[rng.choice(20, size=L - 4, p=usage)]) + "F" for L in lengths]
        n_wit = 0
        if y == 1 and cfg.witness_rate > 0:  # rate 0: positives like negatives, a null control (no signal)
            n_wit = max(1, int(round(cfg.witness_rate * n)))  # a positive rate implants at least one witness
            for i in rng.choice(n, size=n_wit, replace=False):
                motif = list(cfg.motif)
                for j in range(len(motif)):
                    if rng.random() < cfg.motif_noise:
                        motif[j] = aa[rng.integers(20)]
                s = seqs[i]
                pos = rng.integers(3, len(s) - 1 - len(motif) + 1)  # inside the variable middle
                seqs[i] = s[:pos] + "".join(motif) + s[pos + len(motif):]
        counts = rng.geometric(0.5, size=n)  # clone sizes
        reps.append(Repertoire(seqs, counts, int(y), f"sim_{r:04d}", n_wit))
    return reps


# --------------------------------------------------------------------------------------------------- TSV reader

# Amino-acid columns of immuneACCESS (v1, v2), AIRR, immuneML, VDJtools, MiXCR and immunarch exports, most
# specific first: AIRR's plain `cdr3` and `sequence` hold nucleotides, VDJdb's `cdr3` amino acids.
SEQ_COLUMNS = ("amino_acid", "aminoAcid", "cdr3_aa", "junction_aa", "sequence_aa", "cdr3aa", "aaSeqCDR3", "CDR3.aa",
               "cdr3", "sequence")
COUNT_COLUMNS = ("templates", "count", "duplicate_count", "count (templates/reads)", "counts", "cloneCount",
                 "Clones", "frequency")
_MISSING = {"", "na", "nan", "null", "none"}
_NUCLEOTIDES = set("ACGTN")


def _clone_count(value, path, line: int, column: str) -> int:
    if value is None or value.strip().lower() in _MISSING:
        return 1
    try:
        return max(1, int(float(value)))  # immuneACCESS writes -1 for "unknown"; frequencies below 1 count once
    except ValueError:
        raise ValueError(f"{path}: line {line}: {column}={value!r} (rule: a clone count, a number)") from None


def read_repertoire_tsv(path: str | Path, label: int = -1, max_sequences: int | None = None,
                        rng: np.random.Generator | None = None) -> Repertoire:
    """One repertoire: a TSV with a header, one row per sequence, an amino-acid column and a count column
    (names as in AIRR / immuneACCESS exports, see SEQ_COLUMNS / COUNT_COLUMNS; missing count = 1)."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # Excel writes a byte-order mark
        reader = csv.DictReader(f, delimiter="\t")
        fields = reader.fieldnames or []
        seq_col = next((c for c in SEQ_COLUMNS if c in fields), None)
        if seq_col is None:
            raise ValueError(f"{path}: no amino-acid column (one of {', '.join(SEQ_COLUMNS)}); the header has "
                             f"{fields}")
        cnt_col = next((c for c in COUNT_COLUMNS if c in fields), None)
        seqs, counts = [], []
        for line, row in enumerate(reader, start=2):
            s = (row[seq_col] or "").strip().upper()
            if not s or any(ch not in AA_INDEX for ch in s):
                continue  # empty, stop codons (*) or non-standard letters: not a productive CDR3
            seqs.append(s)
            counts.append(_clone_count(row.get(cnt_col) if cnt_col else None, path, line, cnt_col))
    if not seqs:
        raise ValueError(f"{path}: no valid amino-acid sequences in column {seq_col!r}")
    nucleotide_only = sum(set(q) <= _NUCLEOTIDES for q in seqs)
    if nucleotide_only > len(seqs) / 2:  # A, C, G, T are amino acids too: nucleotides would be read silently
        raise ValueError(f"{path}: column {seq_col!r} holds nucleotides ({nucleotide_only} of {len(seqs)} sequences "
                         f"are only A/C/G/T/N) (rule: amino-acid CDR3s; AIRR files keep them in cdr3_aa or "
                         f"junction_aa)")
    counts = np.asarray(counts)
    if max_sequences and len(seqs) > max_sequences:
        rng = rng or np.random.default_rng(0)
        keep = np.sort(rng.choice(len(seqs), size=max_sequences, replace=False))
        seqs, counts = [seqs[i] for i in keep], counts[keep]
    return Repertoire(seqs, counts, label, Path(path).stem)


_TRUTH = {"1": 1, "true": 1, "+": 1, "positive": 1, "0": 0, "false": 0, "-": 0, "negative": 0}


def read_metadata(metadata: str | Path, label_column: str = "label",
                  filename_column: str = "filename") -> list[tuple[str, int]]:
    """(filename, 0/1 label) rows of a metadata table: tab-separated, or comma-separated when the file ends in
    .csv or its header has commas and no tabs."""
    with open(metadata, newline="", encoding="utf-8-sig") as f:
        header = f.readline()
        f.seek(0)
        comma = str(metadata).endswith(".csv") or ("\t" not in header and "," in header)
        reader = csv.DictReader(f, delimiter="," if comma else "\t")
        fields = reader.fieldnames or []
        for option, column in (("--filename-column", filename_column), ("--label-column", label_column)):
            if column not in fields:
                raise ValueError(f"{metadata}: {option}={column!r} is not a column (rule: name one of the header's "
                                 f"columns: {fields})")
        rows = []
        for line, row in enumerate(reader, start=2):
            raw = str(row[label_column]).strip().lower()
            if raw not in _TRUTH:
                raise ValueError(f"{metadata}: line {line}: {label_column}={row[label_column]!r} of "
                                 f"{row[filename_column]} (rule: 0/1, true/false, +/- or positive/negative)")
            rows.append((row[filename_column].strip(), _TRUTH[raw]))
    if len({y for _, y in rows}) < 2:
        raise ValueError(f"{metadata}: {len(rows)} repertoires, all labelled {rows[0][1] if rows else '-'} (rule: "
                         f"both classes, for training and AUC)")
    return rows


def _repertoire_file(directory: Path, name: str, metadata) -> Path:
    """The file a metadata row names; names given without their extension (DeepRC's metadata) find X.tsv."""
    for candidate in (directory / name, directory / f"{name}.tsv"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"{metadata}: repertoire {name!r} is not in {directory} (rule: the filename column names "
                     f"files in --repertoires, with or without .tsv)")


def read_repertoires(directory: str | Path, metadata: str | Path, label_column: str = "label",
                     max_sequences: int | None = None, filename_column: str = "filename") -> list[Repertoire]:
    """Repertoires listed in a metadata table (see read_metadata) with a filename column (relative to
    `directory`) and a 0/1 (or True/False, +/-) label column. Every file is found before any is read."""
    rows = read_metadata(metadata, label_column, filename_column)
    files = [_repertoire_file(Path(directory), name, metadata) for name, _ in rows]
    return [read_repertoire_tsv(path, y, max_sequences) for path, (_, y) in zip(files, rows)]


def write_repertoires(reps: list[Repertoire], directory: str | Path) -> Path:
    """Writes repertoires in the reader's format (for users who want the simulated data as files)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "metadata.tsv", "w") as meta:
        meta.write("filename\tlabel\n")
        for r in reps:
            meta.write(f"{r.name}.tsv\t{r.label}\n")
            with open(d / f"{r.name}.tsv", "w") as f:
                f.write("amino_acid\ttemplates\n")
                f.writelines(f"{s}\t{c}\n" for s, c in zip(r.sequences, r.counts))
    return d / "metadata.tsv"


# ------------------------------------------------------------------------------------------------------ encoding

def encode_repertoire(rep: Repertoire) -> tuple[torch.Tensor, torch.Tensor]:
    """Amino-acid indices (n_seq, L_max) int8 (-1 = padding) and lengths (n_seq,)."""
    lengths = np.array([len(s) for s in rep.sequences])
    idx = np.full((len(rep.sequences), lengths.max()), -1, dtype=np.int8)
    for i, s in enumerate(rep.sequences):
        idx[i, : len(s)] = [AA_INDEX[c] for c in s]
    return torch.from_numpy(idx), torch.from_numpy(lengths)


def sequence_features(idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """One-hot amino acids + DeepRC's 3 position features: (n_seq, L) -> (n_seq, 23, L).

    The position features rise/fall linearly over the sequence's start, middle and end, so a kernel knows
    where in the CDR3 it looks; padding is all zeros."""
    n, L = idx.shape
    valid = idx >= 0  # (n, L)
    onehot = F.one_hot(idx.long().clamp_min(0), 20).float() * valid[..., None]  # (n, L, 20)
    pos = torch.arange(L).float()[None, :] / (lengths[:, None].float() - 1).clamp_min(1)  # (n, L) in [0, 1]
    start = (1 - 2 * pos).clamp_min(0)
    middle = 1 - (2 * pos - 1).abs()
    end = (2 * pos - 1).clamp_min(0)
    feats = torch.stack([start, middle, end], -1) * valid[..., None]  # (n, L, 3)
    return torch.cat([onehot, feats], -1).transpose(1, 2)  # (n, 23, L)


class EncodedRepertoires:
    """Encoded repertoires; the (n_seq, 23, L) network inputs are cached while they fit in `cache_bytes`
    (small simulated sets), and built per step otherwise (real repertoires of 10^5 sequences)."""

    def __init__(self, reps: list[Repertoire], cache_bytes: float = 2e9):
        self._set_items([encode_repertoire(r) for r in reps], cache_bytes)

    @classmethod
    def from_arrays(cls, arrays: list[tuple[np.ndarray, np.ndarray]], cache_bytes: float = 2e9) -> "EncodedRepertoires":
        """Rebuilds from `arrays()` (numpy pickles by value: how worker processes receive the data)."""
        self = cls.__new__(cls)
        self._set_items([(torch.from_numpy(i), torch.from_numpy(n)) for i, n in arrays], cache_bytes)
        return self

    def _set_items(self, items, cache_bytes: float) -> None:
        self.items, self.cache_bytes = items, cache_bytes
        total = sum(idx.numel() * 23 * 4 for idx, _ in items)
        self.cache = [sequence_features(*it) for it in items] if total <= cache_bytes else None

    def arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(idx.numpy(), lengths.numpy()) for idx, lengths in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def n_sequences(self, i: int) -> int:
        return self.items[i][0].shape[0]

    def features(self, i: int, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx, lengths = self.items[i]
        if self.cache is not None:
            x = self.cache[i]
            return (x, lengths) if rows is None else (x[rows], lengths[rows])
        if rows is not None:
            idx, lengths = idx[rows], lengths[rows]
        return sequence_features(idx, lengths), lengths
