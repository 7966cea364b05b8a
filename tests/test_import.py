"""Importing your own activations: a matrix + ids + layout becomes a store that basis, interpret and select read."""

import json

import numpy as np
import pytest

from skillray.basis import SkillBasis, run_basis
from skillray.basis.linalg import principal_angles_deg
from skillray.config import BasisConfig, InterpretConfig, SelectConfig
from skillray.corpus.records import Record, write_records
from skillray.extract.importer import ActivationImportError, import_activations
from skillray.extract.store import ActivationStore

N, HIDDEN, LAYERS = 90, 16, [2, 5, 7]


def _data(tmp_path, seed=0):
    """Records, a (N, 48) matrix with three planted directions of decreasing spread, ids in shuffled row order."""
    rng = np.random.default_rng(seed)
    dim = HIDDEN * len(LAYERS)
    v = np.linalg.qr(rng.standard_normal((dim, 3)))[0].T  # (3, dim) orthonormal
    coef = rng.standard_normal((N, 3)) * np.array([4.0, 2.0, 1.0])
    x = (coef @ v + 0.05 * rng.standard_normal((N, dim)) + 0.5).astype(np.float32)
    records = [Record(id=f"q{i:03d}", messages=({"role": "user", "content": f"question {i} " + "word " * (i % 7)},
                                                {"role": "assistant", "content": "answer"}), skill=f"s{i % 3}")
               for i in range(N)]  # fmt: skip
    write_records(tmp_path / "records.jsonl", records)
    order = rng.permutation(N)  # rows are not in record order: the ids say which is which
    ids = [records[i].id for i in order]
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    return x, ids, records


def test_import_npy_basis_select_interpret_match_the_direct_fit(tmp_path):
    x, ids, records = _data(tmp_path)
    np.save(tmp_path / "acts.npy", x)
    run = tmp_path / "run"
    m = import_activations(run, tmp_path / "acts.npy", tmp_path / "ids.json", layers=LAYERS, hidden=HIDDEN,
                           records=tmp_path / "records.jsonl", shard_size=32,
                           n_tokens=[len(i) for i in ids])  # fmt: skip
    assert m.summary["rows"] == N and m.summary["shards"] == 3 and m.summary["records_without_row"] == 0
    store = ActivationStore(run / "extract")
    assert store.ids() == ids and store.layers == LAYERS and store.layer_slices == [(0, 16), (16, 32), (32, 48)]
    np.testing.assert_array_equal(store.load_all(), x)  # float32 in, float32 stored: the same bits
    store.verify()

    # the basis stage on the imported store vs SkillBasis on the matrix itself (streaming vs exact:
    # two code paths and BLAS kernels, so compare subspaces and spectra with a tolerance)
    run_basis(run, BasisConfig(n_components=3, method="streaming", num_workers=0))
    fitted = SkillBasis.load(run / "basis")
    direct = SkillBasis(n_components=3, method="exact").fit(x)
    assert principal_angles_deg(fitted.components_, direct.components_).max() < 0.01
    np.testing.assert_allclose(fitted.explained_variance_, direct.explained_variance_, rtol=1e-4)
    assert fitted.layers_ == LAYERS

    # select ranks the store rows by the basis: top of d0 = top of the direct projections
    from skillray.select import read_selection, run_select

    run_select(run, SelectConfig(strategy="direction", direction=0, budget=10, name="d0"))
    z = direct.transform(x)[:, 0]
    assert read_selection(run / "select" / "d0") == [ids[i] for i in np.argsort(-z)[:10]]

    # interpret reads the store, the corpus and the imported token counts
    from skillray.interpret.stage import run_interpret

    mi = run_interpret(run, InterpretConfig(top_n=4, n_heldout=3))
    assert mi.complete and (run / "interpret").is_dir()

    # the same import again is skipped; another matrix under the same run is refused without --force
    again = import_activations(run, tmp_path / "acts.npy", tmp_path / "ids.json", layers=LAYERS, hidden=HIDDEN,
                               records=tmp_path / "records.jsonl", shard_size=32, n_tokens=[len(i) for i in ids])  # fmt: skip
    assert again.created == m.created
    np.save(tmp_path / "acts2.npy", x[:, ::-1].copy())
    from skillray.artifacts import StageMismatchError

    with pytest.raises(StageMismatchError):
        import_activations(run, tmp_path / "acts2.npy", tmp_path / "ids.json", layers=LAYERS, records=tmp_path / "records.jsonl")


def test_safetensors_bfloat16_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import save_file

    x, ids, _ = _data(tmp_path)
    save_file({"acts": torch.from_numpy(x).to(torch.bfloat16)}, str(tmp_path / "acts.safetensors"))
    import_activations(tmp_path / "st", tmp_path / "acts.safetensors", tmp_path / "ids.json", layers=LAYERS,
                       records=tmp_path / "records.jsonl", shard_size=40)  # fmt: skip
    want = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ActivationStore(tmp_path / "st" / "extract").load_all(), want)

    # Parquet: an id column, a list column of vectors, token counts
    pq.write_table(pa.table({"rid": ids, "vec": pa.array(list(x), pa.list_(pa.float32())), "n_tokens": list(range(N))}),
                   tmp_path / "acts.parquet")  # fmt: skip
    import_activations(tmp_path / "pq", tmp_path / "acts.parquet", "rid", layers=LAYERS, records=tmp_path / "records.jsonl")
    s = ActivationStore(tmp_path / "pq" / "extract")
    np.testing.assert_array_equal(s.load_all(), x)
    assert s.ids() == ids and s.row_values("n_tokens") == list(range(N)) and s.layers == LAYERS
    # Parquet: one numeric column per feature, ids in the default "id" column, no layout = one block
    cols = {"id": ids, **{f"f{j}": x[:, j] for j in range(x.shape[1])}}
    pq.write_table(pa.table(cols), tmp_path / "wide.parquet")
    import_activations(tmp_path / "wide", tmp_path / "wide.parquet", records=tmp_path / "records.jsonl")
    s = ActivationStore(tmp_path / "wide" / "extract")
    np.testing.assert_array_equal(s.load_all(), x)
    assert s.layers == [0] and s.layer_slices == [(0, 48)]


def test_bad_inputs_are_clear_errors(tmp_path):
    x, ids, _ = _data(tmp_path)
    recs = tmp_path / "records.jsonl"
    np.save(tmp_path / "acts.npy", x)

    def imp(matrix="acts.npy", ids_=tmp_path / "ids.json", **kw):
        return import_activations(tmp_path / "r", tmp_path / matrix, ids_, records=kw.pop("records", recs), **kw)

    (tmp_path / "acts.pkl").write_bytes(b"not even read")
    with pytest.raises(ActivationImportError, match=r"acts.pkl: a pickle-based file; loading a pickle runs code.*np.save"):
        imp("acts.pkl")
    np.save(tmp_path / "obj.npy", np.array([[1.0], "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ActivationImportError, match="needs allow_pickle; loading a pickle runs code"):
        imp("obj.npy")
    (tmp_path / "short.json").write_text(json.dumps(ids[:-1]))
    with pytest.raises(ActivationImportError, match=f"has {N} rows but {N - 1} ids"):
        imp(ids_=tmp_path / "short.json")
    (tmp_path / "dup.json").write_text(json.dumps(ids[:-1] + ids[:1]))
    with pytest.raises(ActivationImportError, match=f"id {ids[0]!r} is on rows 0 and {N - 1}"):
        imp(ids_=tmp_path / "dup.json")
    (tmp_path / "unknown.json").write_text(json.dumps(ids[:5] + ["nope"] + ids[6:]))
    with pytest.raises(ActivationImportError, match=r"row id 'nope' \(row 5; 1 in all\) is not a record id"):
        imp(ids_=tmp_path / "unknown.json")
    with pytest.raises(ActivationImportError, match="3 layers x hidden 10 = 30 columns, but the matrix has 48"):
        imp(layers=LAYERS, hidden=10)
    with pytest.raises(ActivationImportError, match="48 columns do not split into 5 equal layer slices"):
        imp(layers=[1, 2, 3, 4, 5])
    with pytest.raises(ActivationImportError, match="give the record id of every row"):
        imp(ids_=None)
    with pytest.raises(FileNotFoundError, match="no finished corpus; give the records with --records"):
        import_activations(tmp_path / "no-corpus", tmp_path / "acts.npy", tmp_path / "ids.json")
    bad = x.copy()
    bad[17, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ActivationImportError, match=rf"row 17 \(id {ids[17]!r}; 1 such rows.*NaN or infinite"):
        imp("nan.npy", shard_size=32)
    with pytest.raises(ActivationImportError, match="unknown matrix format '.csv'"):
        (tmp_path / "acts.csv").write_text("1,2\n")
        imp("acts.csv")


def test_cli_import_then_basis(tmp_path):
    from typer.testing import CliRunner

    from skillray.cli.main import app

    x, ids, _ = _data(tmp_path)
    np.save(tmp_path / "acts.npy", x)
    run = tmp_path / "cli-run"
    runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"})  # no line wrapping of the messages
    r = runner.invoke(app, ["import-activations", str(tmp_path / "acts.npy"), "--ids", str(tmp_path / "ids.json"),
                                 "--layers", "2,5,7", "--hidden", "16", "--records", str(tmp_path / "records.jsonl"),
                                 "-o", str(run)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "import-activations" in r.output and ActivationStore(run / "extract").n_rows == N
    r = runner.invoke(app, ["import-activations", str(tmp_path / "acts.npy"), "--ids", str(tmp_path / "ids.json"),
                                 "--layers", "2,5", "--hidden", "16", "-o", str(tmp_path / "other")])  # fmt: skip
    assert r.exit_code == 2 and "2 layers x hidden 16 = 32 columns, but the matrix has 48" in r.output
