"""`mnemos data stats`: a total row only adds like things (datasets of one kind from one stage)."""
import json

from tests.data.test_cli_pipeline import mnemos_data


def test_the_total_adds_only_like_inputs(shared_data, small_tokenizer, tmp_path, capsys):
    lines = [line for line in (shared_data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()
             if len(line.split()) > 20]
    for name, part in (("a", lines[:60]), ("b", lines[60:100])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
        assert mnemos_data("dedup", "-i", tmp_path / f"{name}.jsonl", "-o", tmp_path / f"dedup_{name}") == 0
        assert mnemos_data("tokenize", "-i", tmp_path / f"dedup_{name}", "-o", tmp_path / f"tok_{name}",
                           "--tokenizer", small_tokenizer.model_path, "--tasks", 2) == 0
    assert mnemos_data("filter", "-i", tmp_path / "dedup_a", "-o", tmp_path / "filt_a", "--min-words", 0) == 0

    # a corpus and its tokens: the same documents twice, and token bytes next to file bytes -> no total
    capsys.readouterr()
    assert mnemos_data("stats", tmp_path / "tok_a", tmp_path / "dedup_a", "--json-out", tmp_path / "s.json") == 0
    out = capsys.readouterr().out
    s = json.load(open(tmp_path / "s.json"))
    assert s["total"] is None and "different kinds" in s["no_total"]
    assert "| total |" not in out and "no total over the inputs" in out
    by_path = {i["path"]: i for i in s["inputs"]}
    assert by_path[str(tmp_path / "tok_a")]["documents"] == by_path[str(tmp_path / "dedup_a")]["documents"] == 60
    assert f"| total of {tmp_path / 'tok_a'} | token shards | 60 |" in out   # its two shards add up
    # two stages of one corpus, both documents: no total either
    assert mnemos_data("stats", tmp_path / "dedup_a", tmp_path / "filt_a", "--json-out", tmp_path / "s.json") == 0
    s = json.load(open(tmp_path / "s.json"))
    assert s["total"] is None and "different stages" in s["no_total"]
    # a stage's output and raw input files: no total
    assert mnemos_data("stats", tmp_path / "dedup_a", tmp_path / "a.jsonl", "--json-out", tmp_path / "s.json") == 0
    assert json.load(open(tmp_path / "s.json"))["total"] is None
    # two datasets of one kind and stage (a blend's parts): the total is their sum
    capsys.readouterr()
    assert mnemos_data("stats", tmp_path / "tok_a", tmp_path / "tok_b", "--json-out", tmp_path / "s.json") == 0
    s, out = json.load(open(tmp_path / "s.json")), capsys.readouterr().out
    assert s["total"]["documents"] == 100 and s["total"]["kind"] == "token shards"
    assert s["total"]["tokens"] == sum(i["tokens"] for i in s["inputs"]) > 0
    assert f"| total | token shards | 100 | {s['total']['tokens']} |" in out
    # named by a shard prefix or by their directory, token shards are alike
    assert mnemos_data("stats", tmp_path / "tok_a" / "shard_00000", tmp_path / "tok_b", "--json-out", tmp_path / "s.json") == 0
    assert json.load(open(tmp_path / "s.json"))["total"] is not None


def test_documents_with_their_text_in_another_field(tmp_path, capsys):
    """Records whose text is under `body` were counted as 0 documents; now --text-field reads them, and
    without it the command says which fields the records have."""
    path = tmp_path / "body.jsonl"
    path.write_text("".join(json.dumps({"body": f"document {i} of the corpus"}) + "\n" for i in range(5)))
    assert mnemos_data("stats", path) == 2
    assert "--text-field='text' is not a field of" in capsys.readouterr().err
    assert mnemos_data("stats", path, "--text-field", "body", "--json-out", tmp_path / "s.json") == 0
    assert json.load(open(tmp_path / "s.json"))["total"]["documents"] == 5
