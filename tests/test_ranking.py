"""The ranking package: ties at the cut, popularity served = popularity evaluated, the column check,
and the package's place in the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from batch_fixtures import assert_same_rows
from xrec_spark.checks import check_columns
from xrec_spark.eval.baselines import popularity_category
from xrec_spark.ranking import dense, kernels
from xrec_spark.ranking.popularity import rank_by_popularity
from xrec_spark.tables import SchemaMismatchError

RANKING = Path(__file__).resolve().parents[1] / "xrec_spark" / "ranking"
CAND_SCHEMA = "user_idx int, category_idx int, rank int, item_idx int, score double"


def test_kernel_breaks_a_tie_at_the_cut_by_lower_item_idx():
    # Scores 1, 1, 1, 2, 1 for items 5, 1, 4, 2, 3: item 2 first, then the lowest ids among the
    # four tied at 1, whichever of them faiss happened to return.
    cat = kernels.build_catalogue(1, np.array([5, 1, 4, 2, 3]), np.array([[1.0], [1.0], [1.0], [2.0], [1.0]]))
    row, rank, item, score = kernels.top_k(cat, np.ones((2, 1)), 3, exclude=[None, np.array([1])])
    assert list(zip(row.tolist(), rank.tolist(), item.tolist())) == [
        (0, 1, 2), (0, 2, 1), (0, 3, 3), (1, 1, 2), (1, 2, 3), (1, 3, 4)]
    assert score.tolist() == [2.0, 1.0, 1.0, 2.0, 1.0, 1.0]


def test_kernel_equals_the_dense_reference_when_scores_tie_a_lot():
    rng = np.random.default_rng(11)
    for _ in range(40):
        n, b, k = int(rng.integers(2, 200)), int(rng.integers(1, 30)), int(rng.integers(1, 25))
        ids = rng.permutation(np.arange(1, n + 1) * 2)
        items = rng.integers(-2, 3, (n, 2)).astype(np.float32)      # few distinct scores: many ties
        users = rng.integers(-2, 3, (b, 2)).astype(np.float32)
        exclude = [rng.choice(ids, size=int(rng.integers(0, min(n, 15) + 1)), replace=False) for _ in range(b)]
        row, _, item, _ = kernels.top_k(kernels.build_catalogue(1, ids, items), users, k, exclude,
                                        block_size=int(rng.integers(1, 8)))
        order = np.argsort(ids)
        mask = np.array([np.isin(ids[order], e) for e in exclude])
        want = dense.ranked_items(users @ items[order].T, ids[order], k, mask)
        for r in range(b):
            assert item[row == r].tolist() == [int(i) for i in want[r] if i != 0]


def test_served_popularity_is_the_evaluated_baseline_and_keeps_items_without_train_positives(spark):
    features = spark.createDataFrame([(1, 1, 5), (2, 1, 7), (3, 1, 0), (6, 1, 5), (7, 1, 0), (8, 1, 5), (4, 2, 1)],
                                     "item_idx int, category_idx int, train_count long")
    pairs = spark.createDataFrame([(10, 1), (11, 1), (11, 2)], "user_idx int, category_idx int")
    seen = spark.createDataFrame([(10, 2)], "user_idx int, item_idx int")
    served = rank_by_popularity(pairs, features, 5, seen)
    # Category 1 by count: 2 (7); 1, 6, 8 (5); 3, 7 (0: kept, after every item with positives).
    # Equal counts go to the lower item_idx, also at the cut (8 in, 3 before 7).
    expected = spark.createDataFrame(
        [(10, 1, 1, 1, 5.0), (10, 1, 2, 6, 5.0), (10, 1, 3, 8, 5.0), (10, 1, 4, 3, 0.0), (10, 1, 5, 7, 0.0),
         (11, 1, 1, 2, 7.0), (11, 1, 2, 1, 5.0), (11, 1, 3, 6, 5.0), (11, 1, 4, 8, 5.0), (11, 1, 5, 3, 0.0),
         (11, 2, 1, 4, 1.0)], CAND_SCHEMA)
    assert_same_rows(served, expected)
    evaluated = popularity_category(pairs, features, seen, 5, 64)
    assert {r.system for r in evaluated.select("system").distinct().collect()} == {"popularity_category"}
    assert_same_rows(evaluated.drop("system"), served)


@pytest.mark.parametrize("schema, kwargs, error, match", [
    ("user_idx int, item_idx int", {"required": ("system", "user_idx", "rank")}, SchemaMismatchError,
     r"^frame: missing columns system, rank \(has user_idx, item_idx\)$"),
    ("user_idx string, vector array<float>", {"ints": ("user_idx",), "vectors": ("vector",)}, TypeError,
     r"^frame: wrong column types: user_idx \(string, expected an integer\)$"),
    ("user_idx bigint, vector array<int>", {"ints": ("user_idx",), "vectors": ("vector",)}, TypeError,
     r"vector \(array<int>, expected array<float>\)"),
    ("user_idx int", {"vectors": ("vector",)}, ValueError, "missing columns vector"),
])
def test_check_columns_names_what_is_missing_or_mistyped(spark, schema, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_columns(spark.createDataFrame([], schema), "frame", **kwargs)


def test_check_columns_accepts_integer_and_float_vector_families(spark):
    df = spark.createDataFrame([], "a smallint, b int, c bigint, v array<float>, w array<double>, s string")
    check_columns(df, "frame", ("s",), ints=("a", "b", "c"), vectors=("v", "w"))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_ranking_imports_no_higher_layer():
    higher = ("xrec_spark.train", "xrec_spark.batch", "xrec_spark.eval", "xrec_spark.pipeline")
    for path in sorted(RANKING.glob("*.py")):
        bad = [m for m in _imported_modules(path) if m.startswith(higher)]
        assert not bad, f"{path.name} imports {bad}"
    assert not _imported_modules(RANKING / "__init__.py"), "the package init stays import-free (numpy-only users)"
