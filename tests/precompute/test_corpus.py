"""Corpora (precompute/corpus.py): the embedded python-docs, local .txt/.jsonl/.parquet files and
folders, and packing documents into windows, checked against a packing done by hand."""

from __future__ import annotations

import itertools
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from neurodash.errors import NeurodashError
from precompute.corpus import (
    PIECE_CHARS,
    SHUFFLE_BUFFER,
    corpus_documents,
    load_corpus,
    pack_windows,
    piece_bounds,
    python_docs,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    """Real documents, short ones and an empty one among them (an empty one first)."""
    texts = [d["text"][:600] for d in itertools.islice(python_docs(), 12)]
    texts[3] = "x"
    return [{"text": t} for t in ["", *texts[:6], "", "   ", *texts[6:]]]


def packed_by_hand(docs: list[dict], tokenizer, ctx: int) -> tuple[list[list[int]], list[int], list[int]]:
    """Every window (BOS, then ctx - 1 tokens of the stream), its document and that document's
    offset of its first token. The stream: each document's tokens, EOS before each but the first."""
    stream: list[tuple[int, int, int]] = []  # (token, doc, offset; -1 for a separator)
    for doc_id, doc in enumerate(docs):
        ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        if ids and doc_id > 0:
            stream.append((tokenizer.eos_token_id, doc_id, -1))
        stream += [(t, doc_id, offset) for offset, t in enumerate(ids)]
    body = ctx - 1
    windows, doc_ids, starts = [], [], []
    for i in range(0, len(stream) - body + 1, body):
        piece = stream[i : i + body]
        windows.append([tokenizer.bos_token_id, *(t for t, _, _ in piece)])
        first = next(p for p in piece if p[2] >= 0)
        doc_ids.append(first[1])
        starts.append(first[2])
    return windows, doc_ids, starts


@pytest.mark.parametrize(("ctx", "batch_size"), [(16, 4), (33, 5), (64, 100)])
def test_windows_equal_a_packing_by_hand(docs, tokenizer, ctx, batch_size):
    batches = list(pack_windows(docs, tokenizer, ctx, batch_size))
    windows, doc_ids, starts = packed_by_hand(docs, tokenizer, ctx)
    assert len(windows) >= 3
    assert [len(b.seq_ids) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert torch.cat([b.seq_ids for b in batches]).tolist() == list(range(len(windows)))
    assert torch.cat([b.tokens for b in batches]).tolist() == windows
    assert torch.cat([b.doc_ids for b in batches]).tolist() == doc_ids
    assert torch.cat([b.starts for b in batches]).tolist() == starts
    for window, doc, start in zip(windows, doc_ids, starts):  # a window's start points into its document
        first = next(t for t in window[1:] if t != tokenizer.eos_token_id)
        assert tokenizer(docs[doc]["text"], add_special_tokens=False)["input_ids"][start] == first


def test_max_tokens_keeps_whole_windows(docs, tokenizer):
    windows, _, _ = packed_by_hand(docs, tokenizer, 16)
    for max_tokens, n in ((16 * 3, 3), (16 * 3 + 15, 3), (5, 1)):
        batches = list(pack_windows(docs, tokenizer, 16, 2, max_tokens=max_tokens))
        assert torch.cat([b.tokens for b in batches]).tolist() == windows[:n]


def test_skip_tokens_reads_the_windows_after_a_run_of_that_many_tokens(docs, tokenizer):
    windows, doc_ids, _ = packed_by_hand(docs, tokenizer, 16)
    for skip, n in ((16 * 3, 2), (16 * 3 + 15, 2), (5, 1)):  # whole windows, as --tokens counts them
        batches = list(pack_windows(docs, tokenizer, 16, 2, max_tokens=16 * n, skip_tokens=skip))
        first = skip // 16
        assert torch.cat([b.tokens for b in batches]).tolist() == windows[first : first + n]
        assert torch.cat([b.doc_ids for b in batches]).tolist() == doc_ids[first : first + n]
        assert torch.cat([b.seq_ids for b in batches]).tolist() == list(range(first, first + n))
    with pytest.raises(NeurodashError, match="^the corpus holds no window of --ctx 16 tokens after the "):
        list(pack_windows(docs, tokenizer, 16, 2, skip_tokens=16 * len(windows)))


def test_another_text_column(docs, tokenizer):
    renamed = [{"body": d["text"]} for d in docs]
    got = torch.cat([b.tokens for b in pack_windows(renamed, tokenizer, 16, 8, text_column="body")])
    assert got.tolist() == packed_by_hand(docs, tokenizer, 16)[0]


@pytest.mark.parametrize(
    ("texts", "ctx", "message"),
    [
        (["", "  "], 16, "the corpus is empty: no text in its documents"),
        (["a few words"], 64, "the corpus is shorter than one window of --ctx 64 tokens"),
        (["text"], 1, "--ctx 1 is too short"),
    ],
)
def test_too_little_text(tokenizer, texts, ctx, message):
    with pytest.raises(NeurodashError, match=f"^{message}$"):
        list(pack_windows([{"text": t} for t in texts], tokenizer, ctx, 4))


def test_python_docs_reads_topics_and_stdlib_docstrings_in_a_fixed_order():
    first = list(itertools.islice(python_docs(), 60))
    assert first == list(itertools.islice(python_docs(), 60))
    kinds = {d["source"].split(":")[0] for d in first}
    assert kinds == {"pydoc", "stdlib"}
    assert all(d["text"].strip() for d in first)
    modules = [d["source"].removeprefix("stdlib:") for d in first if d["source"].startswith("stdlib:")]
    assert all(m.endswith(".py") and "test" not in m.split("/")[:-1] for m in modules)
    from pydoc_data.topics import topics

    for d in first:
        if d["source"].startswith("pydoc:"):
            assert d["text"] == topics[d["source"].removeprefix("pydoc:")]


def test_the_embedded_corpus_by_name():
    ds = load_corpus("python-docs")
    assert [r["text"] for r in itertools.islice(iter(ds), 5)] == [
        d["text"] for d in itertools.islice(python_docs(), 5)
    ]


TEXTS = ["first document\nwith two lines", "second, with ünïcode", "third"]


def write(folder, kind: str, texts=TEXTS) -> None:
    folder.mkdir(exist_ok=True)
    if kind == "txt":  # one document per file
        for i, t in enumerate(texts):
            (folder / f"doc{i}.txt").write_text(t, encoding="utf-8")
    elif kind == "jsonl":
        (folder / "docs.jsonl").write_text("".join(json.dumps({"text": t, "n": 1}) + "\n" for t in texts))
    else:
        pq.write_table(pa.table({"text": texts, "n": [1] * len(texts)}), folder / "docs.parquet")


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_local_files_and_folders(tmp_path, kind):
    write(tmp_path / "corpus", kind)
    assert sorted(load_corpus(str(tmp_path / "corpus"))["text"]) == sorted(TEXTS)
    one = next((tmp_path / "corpus").iterdir())
    if kind != "txt":
        assert load_corpus(str(one))["text"] == TEXTS


def test_local_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeurodashError, match="holds no .txt, .jsonl or .parquet files"):
        load_corpus(str(tmp_path / "empty"))
    write(tmp_path / "mixed", "txt")
    write(tmp_path / "mixed", "jsonl")
    with pytest.raises(NeurodashError, match="use files of one kind"):
        load_corpus(str(tmp_path / "mixed"))
    write(tmp_path / "jsonl", "jsonl")
    with pytest.raises(NeurodashError, match=r"has no text column 'body' \(columns: text, n\)"):
        load_corpus(str(tmp_path / "jsonl"), text_column="body")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(NeurodashError, match="cannot read corpus"):
        load_corpus(str(broken))


# --- sampling: what a pass reads of the corpus -------------------------------------------------
BOOKS = "abcdef"


def write_books(folder, lines: int = 1500) -> None:
    """Six long one-document files, every line naming its book, as a folder of books would be."""
    folder.mkdir()
    for b in BOOKS:
        text = "\n".join(f"book{b} line {i}: " + "some words of prose " * 3 for i in range(lines))
        (folder / f"{b}.txt").write_text(text)


def test_a_sample_reads_pieces_of_every_file(tmp_path, tokenizer):
    write_books(tmp_path / "books")
    docs, sampling = corpus_documents(str(tmp_path / "books"), seed=3)
    assert sampling == {"method": "shuffled pieces", "seed": 3, "piece_chars": PIECE_CHARS}
    windows = torch.cat([b.tokens for b in pack_windows(docs, tokenizer, 64, 8, max_tokens=64 * 640)])
    text = tokenizer.decode(windows.flatten())
    assert all(f"book{b}" in text for b in BOOKS), "every book is sampled, not only the first"
    first_lines = [int(x) for x in re.findall(r"line (\d+):", text)]
    assert max(first_lines) > 1000, "each book is sampled throughout, not only its start"
    again, _ = corpus_documents(str(tmp_path / "books"), seed=3)
    assert list(itertools.islice(iter(again), 20)) == list(itertools.islice(iter(docs), 20)), "seeded"
    other, _ = corpus_documents(str(tmp_path / "books"), seed=4)
    assert list(itertools.islice(iter(other), 20)) != list(itertools.islice(iter(docs), 20))


def test_without_shuffling_the_first_documents_are_read_whole_and_in_order(tmp_path):
    write_books(tmp_path / "books", lines=50)
    docs, sampling = corpus_documents(str(tmp_path / "books"), shuffle=False)
    assert sampling == {"method": "in order"}
    assert [d["text"][:5] for d in docs] == [f"book{b}" for b in BOOKS]
    embedded, sampling = corpus_documents(shuffle=False)
    assert sampling == {"method": "in order"}
    assert next(iter(embedded)) == next(python_docs(None))


def test_the_embedded_corpus_keeps_its_order_at_seed_0():
    docs, sampling = corpus_documents()
    assert sampling == {"method": "shuffled documents", "seed": 0}
    assert [d["text"] for d in itertools.islice(iter(docs), 3)] == [
        d["text"] for d in itertools.islice(python_docs(), 3)
    ]


def test_pieces_partition_a_document_at_line_breaks():
    text = "".join(f"line {i} " + "x" * (i % 37) + "\n" for i in range(400))
    n = -(-len(text) // 100)
    bounds = [piece_bounds(text, i, 100) for i in range(n)]
    assert "".join(text[a:b] for a, b in bounds) == text
    assert all(text[b - 1] == "\n" for _, b in bounds[:-1]), "cut after a line break"
    assert all(50 <= b - a <= 150 for a, b in bounds[:-1])


def test_a_streamed_dataset_is_shuffled_in_a_buffer():
    import datasets

    rows = [{"text": f"document {i}"} for i in range(50)]
    streamed = datasets.IterableDataset.from_generator(lambda: iter(rows))
    shuffled = streamed.shuffle(seed=0, buffer_size=SHUFFLE_BUFFER)
    got = [r["text"] for r in shuffled]
    assert sorted(got) == sorted(r["text"] for r in rows) and got != [r["text"] for r in rows]
