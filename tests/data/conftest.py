import pytest


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory, shared_data):
    """A 512-piece BPE model trained on Shakespeare (about a second)."""
    from data.tokenizer import train_tokenizer, Tokenizer
    out = tmp_path_factory.mktemp("tok")
    path = train_tokenizer([str(shared_data / "corpus" / "tinyshakespeare.txt")], str(out / "spm"), 512,
                           input_sentence_size=20000, user_defined_symbols=["<sep>"])
    return Tokenizer(path)
