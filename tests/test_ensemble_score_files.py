"""The score-file format and run directories: writing, reading, and every bad input.

``ensembling.write_score_file`` is the format's one writer (the trainer's too); it checks by the
rules ``read_score_file`` applies. Damaged files are made here by rewriting a written file's
arrays or bytes (``damage``), which the writer would refuse to produce.
"""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ensemble_testing import (
    LABELS,
    hela_groups,
    write_fold,
    write_hela_run,
    write_run,
)

import ensembling

ROOT = Path(__file__).resolve().parent.parent
VALID = {
    "scores": np.full((2, 3, 3), 1 / 3),
    "labels": [0, 1, 2],
    "test_indices": [5, 3, 4],
    "class_names": ("a", "b", "c"),
    "member_seeds": [11, 12],
    "diverged": [False, False],
    "optimizer": "dgrad",
    "fold": 2,
    "dataset": "hela",
}


@pytest.fixture
def hela_run(tmp_path):
    """The run of known accuracies of test_ensemble.py."""
    return write_hela_run(tmp_path)


def damage(path, drop=(), **changes):
    """Rewrites a score file's arrays with ``changes`` and without the keys in ``drop``."""
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays.update({key: np.asarray(value) for key, value in changes.items()})
    for key in drop:
        del arrays[key]
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------------------------
# Writing.


def test_written_file_reads_back_in_the_pinned_dtypes(tmp_path):
    scores = np.random.default_rng(0).dirichlet(np.ones(3), size=(2, 3))  # float64
    path = ensembling.write_score_file(
        tmp_path / "fold2" / "dgrad.npz",
        **{**VALID, "scores": scores, "labels": np.array([0, 2, 1], np.int32)},
    )
    assert path == tmp_path / "fold2" / "dgrad.npz"
    with np.load(path) as archive:
        stored = dict(archive)
    assert sorted(stored) == sorted(ensembling.SCORE_FILE_KEYS)
    expected_dtypes = {
        "scores": np.float32,
        "labels": np.int64,
        "test_indices": np.int64,
        "member_seeds": np.int64,
        "diverged": np.bool_,
        "fold": np.int64,
    }
    for key, dtype in expected_dtypes.items():
        assert stored[key].dtype == dtype, key
    for key in ("class_names", "optimizer", "dataset"):
        assert stored[key].dtype.kind == "U", key
    np.testing.assert_array_equal(stored["scores"], scores.astype(np.float32))
    read = ensembling.read_score_file(path)
    np.testing.assert_array_equal(read.labels, [0, 2, 1])
    np.testing.assert_array_equal(read.test_indices, [5, 3, 4])
    np.testing.assert_array_equal(read.member_seeds, [11, 12])
    assert read.class_names == ("a", "b", "c")
    assert (read.optimizer, read.fold, read.dataset) == ("dgrad", 2, "hela")
    assert not read.diverged.any()
    # Only the file itself is left: no temporary file.
    assert sorted(p.name for p in path.parent.iterdir()) == ["dgrad.npz"]


# A write that fails part-way for real: the process may write files of at most 100 bytes, so
# the score file's write stops with EFBIG ("File too large") after its first bytes.
INTERRUPTED_WRITE = """
import resource, signal, sys
import numpy as np
from ensembling import write_score_file
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))
write_score_file(sys.argv[1], scores=np.full((2, 3, 3), 1 / 3), labels=[0, 1, 2],
                 test_indices=[5, 3, 4], class_names=("a", "b", "c"), member_seeds=[11, 12],
                 diverged=[False, False], optimizer="dgrad", fold=3, dataset="hela")
"""


def test_write_is_atomic_and_cleans_up_when_interrupted(tmp_path):
    path = ensembling.write_score_file(tmp_path / "dgrad.npz", **VALID)
    before = path.read_bytes()
    assert len(before) > 100  # the limit falls inside the new file, not after it
    failed = subprocess.run([sys.executable, "-c", INTERRUPTED_WRITE, str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert failed.returncode != 0 and "File too large" in failed.stderr, failed.stderr
    assert path.read_bytes() == before  # the previous file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["dgrad.npz"]  # temporary file removed


def test_written_file_has_the_permissions_of_an_ordinary_file(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = ensembling.write_score_file(tmp_path / "dgrad.npz", **VALID)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_leftover_temporary_file_is_not_a_score_file(hela_run):
    # What a kill between creating and renaming the temporary file leaves behind.
    (hela_run / "scores" / "fold0" / ".sgd.npz.1a2b3c4d.partial.npz").write_bytes(b"cut")
    assert list(ensembling.load_run(hela_run).groups) == ["sgd", "dgrad", "cos1"]


BAD_CONTENTS = [
    ({"scores": np.full((2, 3, 3), 2.0)}, "member 0's scores are not softmax probabilities"),
    (
        {"scores": np.full((2, 3, 3), np.nan)},
        "member 0 has non-finite scores but is not marked diverged",
    ),
    ({"scores": np.full((2, 3), 0.5)}, r"'scores' must be float \[members, n_test, n_classes\]"),
    ({"scores": np.ones((2, 3, 1))}, r"'scores' has 1 class\(es\); need at least 2"),
    ({"labels": [0, 1, 3]}, r"labels \[3\] outside the 3 classes"),
    ({"labels": [0.0, 1.0, 2.0]}, "'labels' must be integer"),
    ({"labels": [0, 1]}, r"'labels' must be integer \[3\], got int64 \(2,\)"),
    ({"test_indices": [0, 1, 1]}, "'test_indices' must be distinct"),
    ({"diverged": [False]}, r"'diverged' must be bool \[2\]"),
    ({"member_seeds": [1, 2, 3]}, r"'member_seeds' must be integer \[2\]"),
    ({"class_names": ("a", "b")}, r"'class_names' must be unicode \[3\]"),
    ({"class_names": (0, 1, 2)}, r"'class_names' must be unicode \[3\]"),
    ({"fold": -1}, "'fold' must be a fold number >= 0, got -1"),
    ({"fold": [0]}, "'fold' must be a 0-d integer"),
    ({"optimizer": "Cos#1"}, "'optimizer' 'Cos#1' is not a group name"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONTENTS)
def test_writer_refuses_what_the_reader_refuses(tmp_path, change, message):
    name = f"{change.get('optimizer', 'dgrad')}.npz"
    with pytest.raises(ensembling.ScoreFileError, match=re.escape(name) + f": {message}"):
        ensembling.write_score_file(tmp_path / name, **{**VALID, **change})
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(("change", "message"), BAD_CONTENTS)
def test_reader_refuses_bad_contents(tmp_path, change, message):
    path = damage(ensembling.write_score_file(tmp_path / "dgrad.npz", **VALID), **change)
    with pytest.raises(ensembling.ScoreFileError, match=f"dgrad.npz: {message}"):
        ensembling.read_score_file(path)


def test_writer_names_the_file_after_the_group(tmp_path):
    with pytest.raises(
        ensembling.ScoreFileError, match=r"sgd.npz: a score file of group 'dgrad' must be named"
    ):
        ensembling.write_score_file(tmp_path / "sgd.npz", **VALID)


def test_diverged_member_may_have_nan_scores(tmp_path):
    scores = np.full((2, 3, 3), 1 / 3)
    scores[1] = np.nan
    path = ensembling.write_score_file(
        tmp_path / "dgrad.npz", **{**VALID, "scores": scores, "diverged": [False, True]}
    )
    read = ensembling.read_score_file(path)
    assert np.isnan(read.scores[1]).all() and read.diverged.tolist() == [False, True]


# --------------------------------------------------------------------------------------------
# Damaged files: always a ScoreFileError naming the file, never a raw traceback.


def test_missing_keys(tmp_path):
    path = ensembling.write_score_file(tmp_path / "dgrad.npz", **VALID)
    damage(path, drop=("diverged", "class_names"))
    with pytest.raises(
        ensembling.ScoreFileError, match=r"dgrad.npz: missing keys \['class_names', 'diverged'\]"
    ):
        ensembling.read_score_file(path)


def test_every_truncation_and_corruption_is_a_score_file_error(tmp_path):
    whole = ensembling.write_score_file(tmp_path / "dgrad.npz", **VALID).read_bytes()
    path = tmp_path / "damaged" / "dgrad.npz"
    path.parent.mkdir()
    damaged = [whole[:length] for length in range(0, len(whole), 7)]
    rng = np.random.default_rng(0)
    for _ in range(400):
        corrupt = bytearray(whole)
        for position in rng.integers(0, len(whole), size=3):
            corrupt[position] ^= 1 << int(rng.integers(0, 8))
        damaged.append(bytes(corrupt))
    refused = 0
    for content in damaged:
        path.write_bytes(content)
        try:
            read = ensembling.read_score_file(path)
        except ensembling.ScoreFileError as error:
            assert str(error).startswith(f"{path}: "), error
            refused += 1
        else:  # a flip that left a valid file (in a timestamp, say) must read as written
            np.testing.assert_array_equal(read.scores, np.full((2, 3, 3), 1 / 3, np.float32))
    assert refused >= len(damaged) // 2


def test_malformed_and_truncated_score_files(hela_run):
    path = hela_run / "scores" / "fold0" / "sgd.npz"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(
        ensembling.ScoreFileError, match=r"fold0/sgd.npz: .*(malformed or truncated)"
    ):
        ensembling.load_run(hela_run)
    path.write_bytes(b"")
    with pytest.raises(ensembling.ScoreFileError, match=r"fold0/sgd.npz: not a readable .npz"):
        ensembling.load_run(hela_run)
    path.write_bytes(b"these are not scores")
    with pytest.raises(ensembling.ScoreFileError, match=r"fold0/sgd.npz: not a readable .npz"):
        ensembling.read_score_file(path)
    np.save(path.with_suffix(".npy"), np.zeros(3))
    path.with_suffix(".npy").rename(path)
    with pytest.raises(ensembling.ScoreFileError, match="not an .npz archive"):
        ensembling.read_score_file(path)
    # A member whose CRC no longer matches: the archive opens, an array cannot be read.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("scores.npy", b"\x93NUMPY broken header")
    with pytest.raises(ensembling.ScoreFileError, match=r"sgd.npz: missing keys"):
        ensembling.read_score_file(path)
    ensembling.write_score_file(path, **{**VALID, "optimizer": "sgd"})
    with np.load(path) as archive:
        arrays = dict(archive)
    with zipfile.ZipFile(path, "w") as archive:
        for key in arrays:
            archive.writestr(f"{key}.npy", b"\x93NUMPY broken" if key == "labels" else b"")
    with pytest.raises(ensembling.ScoreFileError, match=r"sgd.npz: cannot read its arrays"):
        ensembling.read_score_file(path)
    with pytest.raises(ensembling.ScoreFileError, match=r"missing.npz: file not found"):
        ensembling.read_score_file(path.with_name("missing.npz"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "config.json: empty; expected the run's configuration as a JSON object"),
        ("  \n", "config.json: empty"),
        ("{", "config.json: not valid JSON"),
        ("[1, 2]", "config.json: expected a JSON object, got list"),
        ("{}", "config.json: 'optimizers' must map group names to member counts"),
        ('{"optimizers": {}}', "config.json: 'optimizers' must map group names"),
        ('{"optimizers": {"sgd": 0}}', "config.json: 'optimizers' entry 'sgd': 0; expected"),
        ('{"optimizers": {"sgd": true}}', "config.json: 'optimizers' entry 'sgd': True"),
        ('{"optimizers": {"sgd": 1.5}}', "config.json: 'optimizers' entry 'sgd': 1.5"),
        ('{"optimizers": {"../sgd": 2}}', "config.json: 'optimizers' entry '../sgd': 2"),
        ('{"optimizers": {"sgd": 2}, "folds": 3}', "config.json: 'folds' must be null or a list"),
        ('{"optimizers": {"sgd": 2}, "folds": [-1]}', "config.json: 'folds' must be null"),
    ],
)
def test_bad_config_json_is_named(hela_run, content, message):
    (hela_run / "config.json").write_text(content)
    with pytest.raises(ensembling.ScoreFileError, match=re.escape(f"{hela_run}/{message}")):
        ensembling.load_run(hela_run)


def test_missing_or_unreadable_config_json(hela_run):
    config = hela_run / "config.json"
    config.write_bytes(b"\xff\xfe{")
    with pytest.raises(ensembling.ScoreFileError, match=r"config.json: cannot be read"):
        ensembling.load_run(hela_run)
    config.unlink()
    with pytest.raises(ensembling.ScoreFileError, match=r"config.json: not found; is .* a train"):
        ensembling.load_run(hela_run)


# --------------------------------------------------------------------------------------------
# Run directories that disagree with themselves.


def _fold_file(run, fold=0, optimizer="sgd"):
    return run / "scores" / f"fold{fold}" / f"{optimizer}.npz"


def test_labels_disagreeing_between_groups_of_a_fold(hela_run):
    path = _fold_file(hela_run, 1, "dgrad")
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["labels"] = (arrays["labels"] + 1) % 3
    np.savez(path, **arrays)
    with pytest.raises(
        ensembling.ScoreFileError, match=r"fold1/dgrad.npz and .*fold1/sgd.npz disagree on 'labels'"
    ):
        ensembling.load_run(hela_run)


@pytest.mark.parametrize("classes", ["renamed", "one more"])
def test_class_names_disagreeing_between_groups_of_a_fold(hela_run, classes):
    # Each file is valid alone; the fold's groups must still name the same classes, or the
    # pooled scores would not line up (a different count crashed deep in NumPy).
    path = _fold_file(hela_run, 1, "dgrad")
    with np.load(path) as archive:
        arrays = dict(archive)
    if classes == "renamed":
        arrays["class_names"] = np.array(["x", "y", "z"])
    else:
        arrays["class_names"] = np.array([*arrays["class_names"], "extra"])
        arrays["scores"] = np.concatenate([arrays["scores"], 0 * arrays["scores"][..., :1]], -1)
    np.savez(path, **arrays)
    with pytest.raises(
        ensembling.ScoreFileError,
        match=r"fold1/dgrad.npz and .*fold1/sgd.npz disagree on 'class_names'",
    ):
        ensembling.load_run(hela_run)


def test_class_names_disagreeing_across_folds(tmp_path):
    run = write_run(tmp_path / "r", "hela", {"sgd": hela_groups()["sgd"]}, LABELS)
    scores = hela_groups()["sgd"][:, 6:]
    write_fold(
        _fold_file(run, 1),
        scores,
        LABELS[6:],
        np.arange(6, 12),
        optimizer="sgd",
        fold=1,
        dataset="hela",
        class_names=("a", "b", "x"),
    )
    with pytest.raises(
        ensembling.ScoreFileError,
        match=r"fold1/sgd.npz and .*fold0/sgd.npz disagree on 'class_names'",
    ):
        ensembling.load_run(run)


def test_a_sample_in_two_folds(tmp_path):
    run = write_run(tmp_path / "r", "hela", {"sgd": hela_groups()["sgd"]}, LABELS)
    scores = hela_groups()["sgd"][:, 6:]
    write_fold(
        _fold_file(run, 1),
        scores,
        LABELS[6:],
        np.arange(5, 11),
        optimizer="sgd",
        fold=1,
        dataset="hela",
    )
    with pytest.raises(ensembling.ScoreFileError, match="both hold test index 5"):
        ensembling.load_run(run)


def test_score_files_disagreeing_with_the_run(hela_run):
    config = hela_run / "config.json"
    scores = hela_groups()["dgrad"][:, 6:]
    write_fold(
        _fold_file(hela_run, 1, "dgrad"),
        scores,
        LABELS[6:],
        np.arange(6, 12),
        optimizer="dgrad",
        fold=1,
        dataset="bg",
    )
    with pytest.raises(
        ensembling.ScoreFileError,
        match=r"fold1/dgrad.npz and .*fold1/sgd.npz name different data sets: 'bg' vs 'hela'",
    ):
        ensembling.load_run(hela_run)
    write_fold(
        _fold_file(hela_run, 1, "dgrad"),
        scores,
        LABELS[6:],
        np.arange(6, 12),
        optimizer="dgrad",
        fold=0,
        dataset="hela",
    )
    with pytest.raises(
        ensembling.ScoreFileError,
        match=r"fold1/dgrad.npz: holds optimizer='dgrad' fold=0; its place says 'dgrad', fold 1",
    ):
        ensembling.load_run(hela_run)
    write_fold(
        _fold_file(hela_run, 1, "dgrad"),
        scores,
        LABELS[6:],
        np.arange(6, 12),
        optimizer="dgrad",
        fold=1,
        dataset="hela",
    )
    config.write_text(
        json.dumps({"dataset": "hela", "seed": 0, "optimizers": {"sgd": 14, "dgrad": 8, "cos1": 7}})
    )
    with pytest.raises(ensembling.ScoreFileError, match="dgrad.npz: 7 members; config.json says 8"):
        ensembling.load_run(hela_run)
    config.write_text(
        json.dumps(
            {
                "dataset": "hela",
                "seed": 0,
                "optimizers": {"sgd": 14, "dgrad": 7, "cos1": 7, "adam": 7},
            }
        )
    )
    with pytest.raises(
        ensembling.ScoreFileError, match="fold0/adam.npz: missing; config.json lists 'adam'"
    ):
        ensembling.load_run(hela_run)
    config.write_text(
        json.dumps({"dataset": "hela", "seed": 0, "optimizers": {"sgd": 14, "dgrad": 7}})
    )
    with pytest.raises(
        ensembling.ScoreFileError, match=r"score files \['cos1'\] for groups not in config.json"
    ):
        ensembling.load_run(hela_run)
    config.write_text("{")
    with pytest.raises(ensembling.ScoreFileError, match="config.json: not valid JSON"):
        ensembling.load_run(hela_run)


def test_a_run_of_some_folds(tmp_path):
    # Only fold 1 of a two-fold protocol was trained; member 0 diverged there.
    scores = hela_groups()["dgrad"]
    diverged = {"dgrad": np.zeros((7, 2), dtype=bool)}
    diverged["dgrad"][0, 1] = True
    run = write_run(tmp_path / "r", "hela", {"dgrad": scores}, LABELS, diverged=diverged, folds=[1])
    # An unfinished write of the trainer is not a score file.
    (run / "scores" / "fold1" / "dgrad.npz.partial.npz").write_bytes(b"cut short")
    data = ensembling.load_run(run)
    assert data.folds == (1,)
    np.testing.assert_array_equal(data.test_indices, np.arange(6, 12))
    result = ensembling.evaluate_ensemble(data, ensembling.parse_ensemble_spec("DGrad(7)"))
    assert result.left_out == (ensembling.LeftOutMember("dgrad", 0, 1),)
    # Members 1-6 on blocks b2 (right) and b3 (wrong): 3/6.
    assert result.metrics.accuracy == pytest.approx(0.5)
    assert ensembling.member_results(data)[0].diverged_folds == (1,)

    config = json.loads((run / "config.json").read_text())
    # A planned fold without scores (a run not finished) is named, not hidden.
    config["folds"] = [0, 1]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.warns(ensembling.RunWarning, match=r"folds \[0\] of the planned \[0, 1\]"):
        assert ensembling.load_run(run).missing_folds == (0,)
    config["folds"] = [0]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ensembling.ScoreFileError, match=r"holds folds \[1\]; config.json plans folds \[0\]"
    ):
        ensembling.load_run(run)

    config["folds"] = [1]
    (run / "config.json").write_text(json.dumps(config))
    other = write_run(tmp_path / "o", "hela", {"sgd": hela_groups()["sgd"]}, LABELS)
    with pytest.raises(
        ensembling.ScoreFileError, match=r"trained different folds: \[0, 1\] vs \[1\]"
    ):
        ensembling.load_runs([other, run])
