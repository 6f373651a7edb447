"""DeepRC-style repertoire classification: simulator, TSV reader, encoding, k-mer baseline, Hopfield model."""

import json
import re

import numpy as np
import pytest
import torch

from evaluation.downstream.hopfield_common import seed_everything
from evaluation.downstream.repertoire_data import (AMINO_ACIDS, EncodedRepertoires, Repertoire, SimConfig,
                                                   encode_repertoire, read_repertoire_tsv, read_repertoires,
                                                   sequence_features, simulate_repertoires, write_repertoires)
from evaluation.downstream.repertoire_kmers import enriched_kmers, kmer_matrix
from evaluation.downstream.repertoire_model import RepConfig, RepertoireNet, train_folds


def test_simulator_implants_motifs_at_the_witness_rate():
    cfg = SimConfig(n_repertoires=10, sequences_per_repertoire=2000, witness_rate=0.005, seed=1)
    reps = simulate_repertoires(cfg)
    assert sum(r.label for r in reps) == 5
    for r in reps:
        assert len(r.sequences) == 2000 and all(set(s) <= set(AMINO_ACIDS) for s in r.sequences)
        assert all(cfg.min_len <= len(s) <= cfg.max_len for s in r.sequences)
        with_motif = sum(cfg.motif in s for s in r.sequences)
        if r.label:
            assert r.witnesses == 10 and with_motif >= 10
        else:
            assert with_motif <= 2  # chance occurrences only
    # at 0.01% of 10^3 sequences a positive still gets one witness
    low = simulate_repertoires(SimConfig(n_repertoires=2, sequences_per_repertoire=1000, witness_rate=1e-4))
    assert [r.witnesses for r in low if r.label] == [1]
    # motif noise substitutes positions
    noisy = simulate_repertoires(SimConfig(n_repertoires=2, sequences_per_repertoire=1000, witness_rate=0.1,
                                           motif_noise=0.5, seed=3))
    pos = next(r for r in noisy if r.label)
    assert sum(pos.sequences[i].count("SLGY") for i in range(1000)) < 100


def test_simulator_implants_at_random_positions_inside_the_variable_middle():
    cfg = SimConfig(n_repertoires=2, sequences_per_repertoire=2000, witness_rate=0.05, motif="WWWW", seed=5)
    pos = next(r for r in simulate_repertoires(cfg) if r.label)
    starts = [s.index("WWWW") for s in pos.sequences if "WWWW" in s]
    assert len(starts) >= 100 and min(starts) >= 3  # never over the germline 'CAS' start
    assert all(s.index("WWWW") + 4 <= len(s) - 1 for s in pos.sequences if "WWWW" in s)  # nor the final 'F'
    assert len(set(starts)) >= 8  # not a fixed position


def test_enriched_kmers_find_the_motif_from_the_training_fold_alone():
    reps = simulate_repertoires(SimConfig(n_repertoires=40, sequences_per_repertoire=300, witness_rate=0.01,
                                          seed=6))
    encoded, labels = EncodedRepertoires(reps), np.array([r.label for r in reps])
    train = np.arange(30)
    top = enriched_kmers(encoded, labels, train, k=4, n=3)
    assert top[0][0] == "SLGY" and top[0][1] > top[1][1] > top[2][1]
    flipped = labels.copy()
    flipped[30:] = 1 - flipped[30:]  # test labels are never read
    assert enriched_kmers(encoded, flipped, train, k=4, n=3) == top


def test_seeded_kernel_detects_its_kmer_and_the_pooling_attends_to_it():
    rep = Repertoire(["CASSLGYAF", "CASSLGAAF"] + ["CASQRTEAF", "CASPPGRTF", "CASWWHEKF"] * 60, np.ones(182, int), 1)
    x, lengths = sequence_features(*encode_repertoire(rep)), encode_repertoire(rep)[1]
    for seed in range(5):  # whatever the random query: the pooling starts out on the sequence that fires
        torch.manual_seed(seed)
        net = RepertoireNet(RepConfig(kernels=4, heads=2, seed_kernels=1))
        with torch.no_grad():
            before = net.pool.get_association_matrix(net.embed(x, lengths)[None])[0, :, 0]  # (heads, N)
        net.seed_kernels(["SLGY"], 2.0, attention=3.0)
        with torch.no_grad():
            e = net.embed(x, lengths)
            after = net.pool.get_association_matrix(e[None])[0, :, 0]  # (heads, N)
        assert e[0, 0] > 0.5 and (e[1:, 0] < 0).all()  # the whole 4-mer, not 3 of its letters
        assert (after[:, 0] > 0.5).all() and (before[:, 0] < 0.1).all()  # 1 in 182 gets most of the attention


def test_config_checks_the_number_of_seeded_kernels():
    with pytest.raises(ValueError, match=r"--seed-kernels 8 \(rule: at most --kernels 4"):
        RepConfig(kernels=4, seed_kernels=8)


def test_tsv_round_trip(tmp_path):
    reps = simulate_repertoires(SimConfig(n_repertoires=4, sequences_per_repertoire=50, seed=2))
    meta = write_repertoires(reps, tmp_path)
    back = read_repertoires(tmp_path, meta)
    assert [r.label for r in back] == [r.label for r in reps]
    assert back[0].sequences == reps[0].sequences and (back[0].counts == reps[0].counts).all()
    # real-style file: other column names, junk rows skipped, missing counts default to 1
    f = tmp_path / "real.tsv"
    f.write_text("cdr3_aa\tduplicate_count\tv_call\nCASSLGYF\t3\tTRBV1\nCAS*F\t2\tx\n\t1\tx\nCASRRF\t\tx\n")
    r = read_repertoire_tsv(f, label=1)
    assert r.sequences == ["CASSLGYF", "CASRRF"] and r.counts.tolist() == [3, 1]


def test_metadata_as_users_write_it_and_files_that_would_be_misread(tmp_path, capsys):
    """DeepRC-style metadata (CSV, an id column, names without .tsv) is read; AIRR nucleotide CDR3s, which are
    all valid amino-acid letters, and metadata naming no existing column are refused with the rule."""
    reps = simulate_repertoires(SimConfig(n_repertoires=4, sequences_per_repertoire=30, seed=3))
    write_repertoires(reps, tmp_path)
    meta = tmp_path / "meta.csv"
    meta.write_text("ID,status\n" + "".join(f"{r.name},{'positive' if r.label else 'negative'}\n" for r in reps))
    back = read_repertoires(tmp_path, meta, label_column="status", filename_column="ID")
    assert [(r.name, r.label) for r in back] == [(r.name, r.label) for r in reps]
    # saved from Excel ("CSV UTF-8"): a byte-order mark before the header's first name
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    back = read_repertoires(tmp_path, meta, label_column="status", filename_column="ID")
    assert [(r.name, r.label) for r in back] == [(r.name, r.label) for r in reps]
    first = tmp_path / f"{reps[0].name}.tsv"
    first.write_bytes(b"\xef\xbb\xbf" + first.read_bytes())
    assert read_repertoire_tsv(first).sequences == reps[0].sequences
    with pytest.raises(ValueError, match=r"--label-column='label' is not a column \(rule: name one of the header's "
                                         r"columns: \['ID', 'status'\]\)"):
        read_repertoires(tmp_path, meta, filename_column="ID")
    with pytest.raises(ValueError, match=r"repertoire 'sim_0000' is not in .*other"):
        read_repertoires(tmp_path / "other", meta, label_column="status", filename_column="ID")

    from launcher.cli import main as mnemos
    out = tmp_path / "run"
    assert mnemos(["downstream", "repertoire", "--repertoires", str(tmp_path), "--metadata", str(meta),
                   "--label-column", "status", "--filename-column", "ID", "--folds", "3", "--out", str(out)]) == 2
    assert re.search(r"repertoire: --folds 3 \(rule: at most 2, the repertoires of the smaller", capsys.readouterr().err)
    assert not out.exists()

    nucleotides = tmp_path / "airr.tsv"
    nucleotides.write_text("cdr3\tduplicate_count\n" + "TGTGCCAGCAGTTTAGGGTACTTC\t2\n" * 3 + "CASSLGYF\t1\n")
    with pytest.raises(ValueError, match=r"column 'cdr3' holds nucleotides \(3 of 4 sequences"):
        read_repertoire_tsv(nucleotides)
    counts = tmp_path / "counts.tsv"
    counts.write_text("amino_acid\ttemplates\nCASSLGYF\tna\nCASRRF\t-1\nCAF\tmany\n")
    with pytest.raises(ValueError, match=r"line 4: templates='many' \(rule: a clone count"):
        read_repertoire_tsv(counts)


def test_encoding_and_model_mask_padding():
    rep = Repertoire(["CASSLGYF", "CAF", "CASRRTEAFF"], np.ones(3, int), 1)
    idx, lengths = encode_repertoire(rep)
    x = sequence_features(idx, lengths)
    assert x.shape == (3, 23, 10)
    assert torch.allclose(x[:, :20].sum(1), (idx >= 0).float())  # one-hot where there is a residue
    assert x[1, :, 3:].abs().sum() == 0  # padding is zeros
    torch.manual_seed(0)
    net = RepertoireNet(RepConfig(kernels=4, kernel_size=3, seed_kernels=0))
    e = net.embed(x, lengths)
    # a sequence's embedding does not depend on the padding around it
    idx1, l1 = encode_repertoire(Repertoire(["CAF"], np.ones(1, int), 1))
    assert torch.allclose(net.embed(sequence_features(idx1, l1), l1)[0], e[1], atol=1e-6)
    assert net(x, lengths).shape == ()


def test_kmer_matrix_frequencies():
    reps = [Repertoire(["AAAAC", "CAAAA"], np.array([1, 3]), 1)]
    X = kmer_matrix(reps, k=4)
    assert abs(X.sum() - 1) < 1e-9 and X.nnz == 3  # AAAA x2, AAAC, CAAA
    assert abs(X[0, 0] - 0.5) < 1e-9  # AAAA has code 0
    Xc = kmer_matrix(reps, k=4, use_counts=True)
    assert abs(Xc[0, 0] - 4 / 8) < 1e-9


def test_cv_learns_an_easy_witness_rate_and_cli_writes_results(tmp_path):
    from launcher.cli import main
    out = tmp_path / "run"
    assert main(["downstream", "repertoire", "--n-repertoires", "32", "--sequences", "100", "--witness-rates", "0.2",
                 "--folds", "2", "--epochs", "20", "--subsample", "50", "--kernels", "8", "--seed-kernels", "4",
                 "--batch-repertoires", "1", "--out", str(out), "--export", str(tmp_path / "tsv")]) == 0
    res = json.loads((out / "results" / "repertoire.json").read_text())["results"][0]
    assert res["auc_mean"] > 0.8 and res["kmer_auc_mean"] >= 0.0
    assert all(f["seeded_kmers"][0] == "SLGY" for f in res["per_fold"])  # found on each training fold
    assert (out / "results" / "repertoire.md").exists() and any((out / "tensorboard").iterdir())
    assert (tmp_path / "tsv" / "witness_0.2" / "metadata.tsv").exists()


def test_data_parallel_training_matches_one_process():
    """2 ranks, each on a disjoint share of every global batch, make the updates one process makes on the whole
    batch. 7 repertoires in batches of 4 give uneven shares (2 + 2, then 2 + 1), which a per-rank mean would get
    wrong; a subsample of 40 of 60 sequences checks that both ranks draw the same rows a single process draws."""
    reps = simulate_repertoires(SimConfig(n_repertoires=8, sequences_per_repertoire=60, witness_rate=0.1, seed=4))
    encoded, labels = EncodedRepertoires(reps), np.array([r.label for r in reps])
    splits = [(np.arange(7), np.arange(7, 8))]
    cfg = RepConfig(kernels=4, kernel_size=3, head_dim=4, epochs=2, batch_repertoires=4, subsample=40, seed_kernels=2,
                    seed_min_t=-1e9)  # 8 repertoires: seed whatever ranks first
    [(one, [log1])] = train_folds(encoded, labels, splits, cfg, seed=3, nproc=1)
    [(two, [log_r0, log_r1])] = train_folds(encoded, labels, splits, cfg, seed=3, nproc=2)
    seed_everything(3)
    init = dict(RepertoireNet(cfg).named_parameters())  # (before seeding: seeding moves conv weights too)
    for name in ("conv.weight", "pool.pooling_weights", "head.weight"):  # the steps moved the weights
        assert not torch.allclose(one.get_parameter(name), init[name], atol=1e-4), name
    for name, p in one.state_dict().items():
        assert torch.allclose(p, two.state_dict()[name], atol=1e-5), name
    assert np.allclose(log1.losses, log_r0.losses, atol=1e-6) and log_r0.losses == log_r1.losses
    assert len(log1.seeds) == 2 and log1.seeds == log_r0.seeds == log_r1.seeds  # every rank seeds alike
    # every repertoire of every epoch went through exactly one rank, and both ranks worked
    assert sorted(log_r0.seen + log_r1.seen) == sorted(log1.seen) == sorted(list(range(7)) * 2)
    assert len(log_r0.seen) == 8 and len(log_r1.seen) == 6


@pytest.mark.parametrize("extra, message", [
    (["--seed-kernels", "9", "--kernels", "8"], "repertoire: --seed-kernels 9 (rule: at most --kernels 8; seeded kernels are a "
                                                    "subset of the kernels)"),
    (["--kernel-size", "30"], "repertoire: --kernel-size 30 (rule: at most "),
])
def test_options_the_model_cannot_take_stop_before_the_run(tmp_path, extra, message, capsys):
    from launcher.cli import main
    out = tmp_path / "run"
    assert main(["downstream", "repertoire", "--n-repertoires", "8", "--sequences", "20", "--witness-rates", "0.1",
                 "--folds", "2", "--epochs", "1", "--no-baseline", "--out", str(out), *extra]) == 2
    assert re.search(re.escape(message), capsys.readouterr().err)
    assert not out.exists()


TINY = ["--sequences", "20", "--witness-rates", "0.1", "--epochs", "1", "--no-baseline", "--folds", "2"]


def test_export_is_written_only_after_every_setting_is_checked(tmp_path, capsys):
    """--folds 50 with 20 repertoires used to write metadata.tsv and 20 TSVs, then refuse."""
    from launcher.cli import main
    out, export = tmp_path / "run", tmp_path / "exp"
    assert main(["downstream", "repertoire", "--n-repertoires", "20", "--sequences", "20", "--folds", "50",
                 "--export", str(export), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "repertoire: --folds 50 (rule: at most 10, the repertoires of the smaller class among --n-repertoires 20)" in err
    assert not export.exists() and not out.exists()
    assert main(["downstream", "repertoire", *TINY, "--n-repertoires", "8", "--kernel-size", "19",
                 "--export", str(export), "--out", str(out)]) == 2
    assert "repertoire: --kernel-size 19 (rule: at most 18, the longest simulated sequence)" in capsys.readouterr().err
    assert not export.exists() and not out.exists()


def test_export_naming_a_file_is_refused_as_export(tmp_path, capsys):
    from launcher.cli import main
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    with pytest.raises(SystemExit) as stop:
        main(["downstream", "repertoire", "--export", str(taken), "--out", str(tmp_path / "run")])
    assert stop.value.code == 2
    assert f"argument --export: must be a directory, but '{taken}' is a file" in capsys.readouterr().err
    assert taken.read_text() == "mine\n" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("n", ["2", "3"])
def test_too_few_repertoires_for_any_cv_are_refused_at_parse_time(tmp_path, capsys, n):
    from launcher.cli import main
    with pytest.raises(SystemExit) as stop:
        main(["downstream", "repertoire", "--n-repertoires", n, "--out", str(tmp_path / "run")])
    assert stop.value.code == 2
    assert (f"argument --n-repertoires: must be an integer >= 4 (half are positive, and 2-fold CV needs 2 "
            f"repertoires of each class), got {n}") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, message", [
    (["--metadata", "META"], "repertoire: --metadata META (rule: only with --repertoires DIR"),
    (["--max-sequences", "100"], "repertoire: --max-sequences 100 (rule: only with --repertoires DIR"),
])
def test_real_data_options_without_repertoires_are_refused(tmp_path, capsys, extra, message):
    from launcher.cli import main
    meta = tmp_path / "metadata.tsv"
    meta.write_text("filename\tlabel\na.tsv\t1\n")
    extra = [str(meta) if a == "META" else a for a in extra]
    assert main(["downstream", "repertoire", *TINY, "--n-repertoires", "8", *extra,
                 "--out", str(tmp_path / "run")]) == 2
    assert message.replace("META", str(meta)) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_seed_kernels_default_follows_a_smaller_kernels(tmp_path):
    """--kernels 8 alone used to be refused for a --seed-kernels 16 the user never gave."""
    import yaml
    from launcher.cli import main
    out = tmp_path / "run"
    assert main(["downstream", "repertoire", *TINY, "--n-repertoires", "8", "--kernels", "8",
                 "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["seed_kernels"] == 8
    res = json.loads((out / "results" / "repertoire.json").read_text())["results"][0]
    assert res["model"]["kernels"] == 8 and res["model"]["seed_kernels"] == 8
