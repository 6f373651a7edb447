"""DeepRC-style repertoire classification: simulator, TSV reader, encoding, k-mer baseline, Hopfield model."""

import argparse
import json

import numpy as np
import torch

from evaluation.downstream import repertoire as rp


def test_simulator_implants_motifs_at_the_witness_rate():
    cfg = rp.SimConfig(n_repertoires=10, sequences_per_repertoire=2000, witness_rate=0.005, seed=1)
    reps = rp.simulate_repertoires(cfg)
    assert sum(r.label for r in reps) == 5
    for r in reps:
        assert len(r.sequences) == 2000 and all(set(s) <= set(rp.AMINO_ACIDS) for s in r.sequences)
        assert all(cfg.min_len <= len(s) <= cfg.max_len for s in r.sequences)
        with_motif = sum(cfg.motif in s for s in r.sequences)
        if r.label:
            assert r.witnesses == 10 and with_motif >= 10
        else:
            assert with_motif <= 2  # chance occurrences only
    # at 0.01% of 10^3 sequences a positive still gets one witness
    low = rp.simulate_repertoires(rp.SimConfig(n_repertoires=2, sequences_per_repertoire=1000, witness_rate=1e-4))
    assert [r.witnesses for r in low if r.label] == [1]
    # motif noise substitutes positions
    noisy = rp.simulate_repertoires(rp.SimConfig(n_repertoires=2, sequences_per_repertoire=1000, witness_rate=0.1,
                                                 motif_noise=0.5, seed=3))
    pos = next(r for r in noisy if r.label)
    assert sum(pos.sequences[i].count("SLGY") for i in range(1000)) < 100


def test_tsv_round_trip(tmp_path):
    reps = rp.simulate_repertoires(rp.SimConfig(n_repertoires=4, sequences_per_repertoire=50, seed=2))
    meta = rp.write_repertoires(reps, tmp_path)
    back = rp.read_repertoires(tmp_path, meta)
    assert [r.label for r in back] == [r.label for r in reps]
    assert back[0].sequences == reps[0].sequences and (back[0].counts == reps[0].counts).all()
    # real-style file: other column names, junk rows skipped, missing counts default to 1
    f = tmp_path / "real.tsv"
    f.write_text("cdr3_aa\tduplicate_count\tv_call\nCASSLGYF\t3\tTRBV1\nCAS*F\t2\tx\n\t1\tx\nCASRRF\t\tx\n")
    r = rp.read_repertoire_tsv(f, label=1)
    assert r.sequences == ["CASSLGYF", "CASRRF"] and r.counts.tolist() == [3, 1]


def test_encoding_and_model_mask_padding():
    rep = rp.Repertoire(["CASSLGYF", "CAF", "CASRRTEAFF"], np.ones(3, int), 1)
    idx, lengths = rp.encode_repertoire(rep)
    x = rp.sequence_features(idx, lengths)
    assert x.shape == (3, 23, 10)
    assert torch.allclose(x[:, :20].sum(1), (idx >= 0).float())  # one-hot where there is a residue
    assert x[1, :, 3:].abs().sum() == 0  # padding is zeros
    torch.manual_seed(0)
    net = rp.RepertoireNet(rp.RepConfig(kernels=4, kernel_size=3))
    e = net.embed(x, lengths)
    # a sequence's embedding does not depend on the padding around it
    idx1, l1 = rp.encode_repertoire(rp.Repertoire(["CAF"], np.ones(1, int), 1))
    assert torch.allclose(net.embed(rp.sequence_features(idx1, l1), l1)[0], e[1], atol=1e-6)
    assert net(x, lengths).shape == ()


def test_kmer_matrix_frequencies():
    reps = [rp.Repertoire(["AAAAC", "CAAAA"], np.array([1, 3]), 1)]
    X = rp.kmer_matrix(reps, k=4)
    assert abs(X.sum() - 1) < 1e-9 and X.nnz == 3  # AAAA x2, AAAC, CAAA
    assert abs(X[0, 0] - 0.5) < 1e-9  # AAAA has code 0
    Xc = rp.kmer_matrix(reps, k=4, use_counts=True)
    assert abs(Xc[0, 0] - 4 / 8) < 1e-9


def test_cv_learns_an_easy_witness_rate_and_cli_writes_results(tmp_path):
    parser = argparse.ArgumentParser()
    from evaluation.downstream import cli
    cli.register(parser.add_subparsers())
    out = tmp_path / "run"
    args = parser.parse_args(["downstream", "repertoire", "--n-repertoires", "32", "--sequences", "100",
                              "--witness-rates", "0.2", "--folds", "2", "--epochs", "20", "--subsample", "50", "--kernels", "8",
                              "--batch-repertoires", "1",
                              "--out", str(out), "--export", str(tmp_path / "tsv")])
    assert args.func(args) == 0
    res = json.loads((out / "results" / "repertoire.json").read_text())["results"][0]
    assert res["auc_mean"] > 0.8 and res["kmer_auc_mean"] >= 0.0
    assert (out / "results" / "repertoire.md").exists() and any((out / "tensorboard").iterdir())
    assert (tmp_path / "tsv" / "witness_0.2" / "metadata.tsv").exists()


def test_data_parallel_training_matches_one_process():
    """2 ranks, each on a disjoint share of every global batch, make the updates one process makes on the whole
    batch. 7 repertoires in batches of 4 give uneven shares (2 + 2, then 2 + 1), which a per-rank mean would get
    wrong; a subsample of 40 of 60 sequences checks that both ranks draw the same rows a single process draws."""
    reps = rp.simulate_repertoires(rp.SimConfig(n_repertoires=8, sequences_per_repertoire=60, witness_rate=0.1, seed=4))
    encoded, labels = rp.EncodedRepertoires(reps), np.array([r.label for r in reps])
    splits = [(np.arange(7), np.arange(7, 8))]
    cfg = rp.RepConfig(kernels=4, kernel_size=3, head_dim=4, epochs=2, batch_repertoires=4, subsample=40)
    [(one, [log1])] = rp.train_folds(encoded, labels, splits, cfg, seed=3, nproc=1)
    [(two, [log_r0, log_r1])] = rp.train_folds(encoded, labels, splits, cfg, seed=3, nproc=2)
    rp.seed_everything(3)
    init = dict(rp.RepertoireNet(cfg).named_parameters())
    for name in ("conv.weight", "pool.pooling_weights", "head.weight"):  # the steps moved the weights
        assert not torch.allclose(one.get_parameter(name), init[name], atol=1e-4), name
    for name, p in one.state_dict().items():
        assert torch.allclose(p, two.state_dict()[name], atol=1e-5), name
    assert np.allclose(log1.losses, log_r0.losses, atol=1e-6) and log_r0.losses == log_r1.losses
    # every repertoire of every epoch went through exactly one rank, and both ranks worked
    assert sorted(log_r0.seen + log_r1.seen) == sorted(log1.seen) == sorted(list(range(7)) * 2)
    assert len(log_r0.seen) == 8 and len(log_r1.seen) == 6
