"""Every validation error names the file and the line (one case per rule)."""

from __future__ import annotations

import json
from functools import partial

import pytest

from densekd.data import (
    DataFormatError, Passage, Query, load_collection, load_corpus, load_dpr, load_id_triples, load_psgs,
    load_qrels, load_queries, load_run, load_text_triples, load_trec_qrels, load_tsv_queries,
)

OK_DOC = '{"_id": "a", "title": "T", "text": "x"}\n'
CORPUS = {"d1": Passage("d1", "x")}
QUERIES = {"q1": Query("q1", "y")}


def dpr(*items) -> str:
    return json.dumps(list(items), indent=1)


def pos(**extra) -> dict:
    return {"question": "q", "positive_ctxs": [{"title": "t", "text": "x", "passage_id": 1}], **extra}


# (loader, file content, expected line, message fragment)
CASES = {
    "corpus_truncated_last_line": (load_corpus, OK_DOC + '{"_id": "b", "te', 2, "malformed JSON"),
    "corpus_non_object_line": (load_corpus, OK_DOC + "[1, 2]\n", 2, "expected a JSON object, got list"),
    "corpus_missing_text": (load_corpus, '\n{"_id": "a"}\n', 2, "missing field 'text'"),
    "corpus_wrong_type_text": (load_corpus, '{"_id": "a", "text": 5}\n', 1, "field 'text' must be str, got int"),
    "corpus_wrong_type_title": (load_corpus, '{"_id": "a", "text": "x", "title": []}\n', 1, "'title' must be str"),
    "corpus_float_id": (load_corpus, '{"_id": 1.5, "text": "x"}\n', 1, "'_id' must be str/int, got float"),
    "corpus_bool_id": (load_corpus, '{"_id": true, "text": "x"}\n', 1, "must be str/int, got bool"),
    "corpus_missing_id": (load_corpus, '{"text": "x"}\n', 1, "missing field '_id'"),
    "corpus_duplicate_id": (load_corpus, OK_DOC + OK_DOC, 2, "duplicate passage id 'a'"),
    "corpus_empty_text": (load_corpus, '{"_id": "a", "title": "Has title", "text": " "}\n', 1, "empty text"),
    "corpus_invalid_utf8": (load_corpus, OK_DOC.encode() + b'{"_id": "b", "text": "\xff"}\n', 2, "invalid UTF-8"),
    "queries_duplicate_id": (load_queries, '{"_id": 1, "text": "a"}\n{"_id": "1", "text": "b"}\n', 2,
                             "duplicate query id '1'"),
    "queries_empty_text": (load_queries, '{"_id": "q", "text": ""}\n', 1, "query 'q' has empty text"),
    "queries_bad_answers": (load_queries, '{"_id": "q", "text": "a", "answers": [1]}\n', 1, "list of strings"),
    "qrels_unknown_query": (partial(load_qrels, queries=QUERIES), "query-id\tcorpus-id\tscore\nq9\td1\t1\n", 2,
                            "unknown query id 'q9'"),
    "qrels_unknown_doc": (partial(load_qrels, corpus=CORPUS), "q1\td1\t1\nq1\td9\t1\n", 2, "unknown document id 'd9'"),
    "qrels_non_integer_relevance": (load_qrels, "q1\td1\t1\nq1\td2\t0.5\n", 2, "must be an integer, got '0.5'"),
    "qrels_header_not_first": (load_qrels, "q1\td1\t1\nquery-id\tcorpus-id\tscore\n", 2, "must be an integer"),
    "qrels_column_count": (load_qrels, "q1\td1\t1\t7\n", 1, "expected 3 tab-separated fields, got 4"),
    "qrels_conflicting_grades": (load_qrels, "q1\td1\t1\nq1\td1\t2\n", 2, "judged 1 and 2"),
    "collection_column_count": (load_collection, "1\ttext\n2\n", 2, "expected 2 or 3 tab-separated fields, got 1"),
    "collection_duplicate_id": (load_collection, "1\ta\n1\tb\n", 2, "duplicate passage id '1'"),
    "collection_empty_text": (load_collection, "1\ta\n2\t \n", 2, "empty text for passage '2'"),
    "tsv_queries_empty_text": (load_tsv_queries, "1\t  \n", 1, "empty text for query '1'"),
    "tsv_queries_duplicate_id": (load_tsv_queries, "1\ta\n1\tb\n", 2, "duplicate query id '1'"),
    "trec_qrels_column_count": (load_trec_qrels, "1 0 7 1\n1 0 8\n", 2, "expected 4 fields"),
    "trec_qrels_non_integer": (load_trec_qrels, "1 0 7 yes\n", 1, "must be an integer"),
    "trec_qrels_unknown_doc": (partial(load_trec_qrels, corpus=CORPUS), "q1 0 d2 1\n", 1, "unknown document id"),
    "triples_column_count": (load_text_triples, "q\tp\tn\nq\tp\n", 2, "expected 3 tab-separated fields, got 2"),
    "triples_empty_field": (load_text_triples, "q\t \tn\n", 1, "empty positive"),
    "id_triples_unknown_passage": (partial(load_id_triples, corpus=CORPUS), "q1\td1\td7\n", 1,
                                   "unknown passage id 'd7'"),
    "id_triples_unknown_query": (partial(load_id_triples, queries=QUERIES), "q2\td1\td7\n", 1, "unknown query id"),
    "dpr_truncated": (load_dpr, dpr(pos(), pos())[:-20], 18, "malformed JSON"),
    "dpr_not_an_array": (load_dpr, '\n{"question": "q"}', 2, "expected a JSON array"),
    "dpr_missing_comma": (load_dpr, '[{"question": "q", "positive_ctxs": []}\n\n{}]', 3, "expected ',' or ']'"),
    "dpr_trailing_data": (load_dpr, '[]\n[]', 2, "extra data after the array"),
    "dpr_non_object_item": (load_dpr, dpr(pos(), "oops"), 12, "expected a JSON object, got str"),
    "dpr_missing_question": (load_dpr, dpr(pos(), {"positive_ctxs": []}), 12, "missing field 'question'"),
    "dpr_missing_positives": (load_dpr, dpr({"question": "q"}), 2, "missing field 'positive_ctxs'"),
    "dpr_empty_question": (load_dpr, dpr(pos(question=" ")), 2, "empty question"),
    "dpr_ctx_empty_text": (load_dpr, dpr(pos(hard_negative_ctxs=[{"text": ""}])), 2,
                           "hard_negative_ctxs[0]: empty passage text"),
    "dpr_ctx_not_object": (load_dpr, dpr(pos(negative_ctxs=["x"])), 2, "negative_ctxs[0]: expected a ctx object"),
    "dpr_duplicate_qid": (load_dpr, dpr(pos(qid="a"), pos(qid="a")), 13, "duplicate query id 'a'"),
    "dpr_invalid_utf8": (load_dpr, b'[\n{"question": "\xc3"}]', 2, "invalid UTF-8"),
    "psgs_column_count": (load_psgs, "id\ttext\ttitle\n1\tonly text\n", 2, "expected 3 tab-separated fields"),
    "psgs_empty_text": (load_psgs, 'id\ttext\ttitle\n1\t""\tT\n', 2, "empty text"),
    "psgs_duplicate_id": (load_psgs, "1\ta\tT\n1\tb\tT\n", 2, "duplicate passage id '1'"),
    "run_column_count": (load_run, "q Q0 d 1 2.0 tag\nq Q0 d2 2 1.0\n", 2, "expected 6 fields"),
    "run_bad_score": (load_run, "q Q0 d 1 high tag\n", 1, "score must be a number"),
    "run_nan_score": (load_run, "q Q0 d 1 nan tag\n", 1, "score must be finite"),
    "run_bad_rank": (load_run, "q Q0 d first 1.0 tag\n", 1, "rank must be an integer"),
    "run_duplicate_pair": (load_run, "q Q0 d 1 2.0 t\nq Q0 d 2 1.0 t\n", 2, "listed twice"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_names_file_and_line(tmp_path, case):
    loader, content, line, fragment = CASES[case]
    path = tmp_path / f"{case}.data"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        loader(path)
    err = info.value
    assert (err.path, err.line) == (str(path), line), str(err)
    assert str(err).startswith(f"{path}:{line}: ")
    assert fragment in str(err)


@pytest.mark.parametrize("loader", [load_corpus, load_queries, load_qrels, load_collection, load_dpr,
                                    load_psgs, load_run, load_trec_qrels, load_text_triples])
def test_missing_file_is_named(tmp_path, loader):
    path = tmp_path / "absent.txt"
    with pytest.raises(DataFormatError, match="file not found") as info:
        loader(path)
    assert info.value.path == str(path) and str(info.value).startswith(str(path))
