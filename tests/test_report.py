"""`fnnp-opt report` on a small real study: the figures, the allocation's data, the summary, bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from conftest import SMALL_RUN, message_lines, without
from PIL import Image
from typer.testing import CliRunner

from fnnp_opt import optuna_private as P
from fnnp_opt.cli import app
from fnnp_opt.pareto import pareto_front
from fnnp_opt.report import MIN_IMPORTANCE_TRIALS, _space_words, allocation, allocation_figure, write_report
from fnnp_opt.optimize import evaluated

runner = CliRunner()
NAME = "resnet20-fashion-mnist-flops0.5"
TRIALS = MIN_IMPORTANCE_TRIALS + 1  # enough for the importances


@pytest.fixture(scope="module")
def made(tmp_path_factory, small_fmnist) -> Path:
    """A folder with s.db, a real study of the default run (12 evaluated candidates with the default baselines, the
    winner delivered without fine-tuning to out/)."""
    folder = tmp_path_factory.mktemp("report")
    args = ["run", *without(SMALL_RUN, "--n-trials", "--baselines"), "--n-trials", str(TRIALS), "--epochs", "0"]
    args += ["--data-dir", str(small_fmnist), "--storage", f"sqlite:///{folder}/s.db", "--output", str(folder / "out")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return folder


@pytest.fixture()
def db(made, tmp_path) -> Path:
    """A copy of the study's folder (its storage, export and artifacts), for a test to read (and to check it is
    left as it was)."""
    shutil.copytree(made, tmp_path / "study")
    return tmp_path / "study" / "s.db"


def _load(db: Path) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=f"sqlite:///{db}")


def _in_memory(study: optuna.Study, keep=lambda t: True, drop: tuple[str, ...] = ()) -> optuna.Study:
    """A copy of ``study`` in memory with the trials ``keep`` accepts and without the user attributes ``drop``."""
    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    for key, value in study.user_attrs.items():
        if key not in drop:
            copy.set_user_attr(key, value)
    copy.add_trials([t for t in study.trials if keep(t)])
    return copy


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert min(img.size) >= 300, (path, img.size)


def test_report_writes_the_figures_and_the_summary_beside_the_export(made, db):
    before = db.read_bytes()
    res = runner.invoke(app, ["report", "--storage", f"sqlite:///{db}", "--no-upload"])  # its only study
    assert res.exit_code == 0, res.output
    out = db.parent / "out"  # the delivered export's folder, from the study's "result", in the copied folder
    names = ["allocation.png", "score_vs_flops.png", "history.png", "importances.png"]
    assert f"report written to {out}:" in " ".join(res.output.split())
    for name in names:
        _check_png(out / name)
    assert (out / "pruned.json").is_file()  # the export is still there, beside the report
    study = _load(db)
    winner = study.user_attrs["result"]["trial"]
    text = (out / "report.md").read_text()
    assert f"trial {winner} (delivered)" in text and "15.82M (50.0% of 31.64M)" in text
    assert "uniform L1** (the same ratio everywhere): trial 0" in text and "**test set**" in text
    assert "- **space**: ratios in [0, 0.6] per group, every channel count allowed" in text  # ResNet-20: unrounded
    rounded = _space_words({"max_rate": 0.5, "round_to": 16})
    assert rounded.endswith("[0, 0.5] per group, kept channels in multiples of 16")
    assert f"{study.user_attrs['result']['pruned']['test_accuracy']:.2%}" in text
    assert all(f"]({name})" in text for name in names)
    assert db.read_bytes() == before  # the report reads the study only


def test_the_allocation_figure_draws_the_stored_channels(db):
    study = _load(db)
    fig = allocation_figure(study)
    ax = fig.axes[0]
    drawn = {c.get_label(): [round(p.get_height()) for p in c] for c in ax.containers}
    space = study.user_attrs["space"]
    layers = [d["param"].removeprefix("ratio.") for d in space]
    assert [t.get_text() for t in ax.get_xticklabels()] == layers
    by_number = {t.number: t for t in evaluated(study)}
    winner = by_number[study.user_attrs["result"]["trial"]]
    uniform = by_number[0]
    assert uniform.user_attrs["strategy"] == "uniform"
    expected = {
        "unpruned base": [d["channels"] for d in space],
    }
    [winner_label] = [label for label in drawn if label.startswith(f"winner (trial {winner.number})")]
    expected[winner_label] = [winner.user_attrs["channels"][name] for name in layers]
    [uniform_label] = [label for label in drawn if label.startswith("uniform L1 (trial 0)")]
    expected[uniform_label] = [uniform.user_attrs["channels"][name] for name in layers]
    glob = next(t for t in evaluated(study) if t.user_attrs.get("strategy") == "global")  # a default baseline
    expected[f"Torch-Pruning global ranking (trial {glob.number})"] = [glob.user_attrs["channels"][n] for n in layers]
    assert drawn == expected
    assert len(set(uniform.params.values())) == 1  # one ratio everywhere ...
    assert all(k <= b for k, b in zip(drawn[winner_label], drawn["unpruned base"]))
    assert "budget 15.82M (50.0% of 31.64M)" in ax.get_title(loc="left")
    data = allocation(study).as_dict()  # the helper agrees with the figure
    assert list(data) == layers
    for i, name in enumerate(layers):
        assert data[name] == {
            "winner": expected[winner_label][i],
            "uniform": expected[uniform_label][i],
            "base": expected["unpruned base"][i],
            "global": expected[f"Torch-Pruning global ranking (trial {glob.number})"][i],
        }


def test_a_study_without_a_delivery_reports_its_best_score_and_skips_the_importances(db, tmp_path):
    study = _load(db)
    first = sorted(t.number for t in evaluated(study))[:4]
    small = _in_memory(study, keep=lambda t: t.number <= first[-1], drop=("result",))
    report = write_report(small, tmp_path / "r")
    assert (
        report.importances is None
        and f"at least {MIN_IMPORTANCE_TRIALS} evaluated" in report.skipped["importances.png"]
    )
    assert [p.name for p in report.files] == ["allocation.png", "score_vs_flops.png", "history.png", "report.md"]
    for path in report.figures:
        _check_png(path)
    best = max(evaluated(small), key=lambda t: t.value)
    assert allocation(small).winner_trial == best.number
    text = report.summary.read_text()
    assert f"trial {best.number} (best score)" in text and "has been fine-tuned and tested yet" in text
    assert "importances.png was not drawn" in text


def test_draws_outside_the_window_left_complete_are_not_scores(db, tmp_path):
    """A penalized draw is a COMPLETE trial valued -violation: the report must not draw it as a score."""
    from fnnp_opt.report import _evaluated_view

    study = _in_memory(_load(db), drop=("result",))
    study.add_trial(
        optuna.trial.create_trial(
            value=-0.5,
            params=study.trials[0].params,
            distributions=study.trials[0].distributions,
            user_attrs={"feasible": False, "flops": 1},
        )
    )
    view = _evaluated_view(study)
    assert [t.number for t in view.trials] == [t.number for t in study.trials]
    complete = [t.number for t in view.trials if t.state.name == "COMPLETE"]
    assert complete == [t.number for t in evaluated(study)] and study.trials[-1].number not in complete
    report = write_report(study, tmp_path / "r")
    assert report.allocation is not None and min(t.value for t in evaluated(study)) > 0


def test_a_latency_study_plots_the_score_against_measured_latency(db, tmp_path):
    study = _load(db)
    config = dict(study.user_attrs["config"], latency="0.5x")
    timed = optuna.create_study(study_name="timed", direction="maximize")
    for key, value in study.user_attrs.items():
        timed.set_user_attr(key, value)
    timed.set_user_attr("config", config)
    timed.set_user_attr("budget", {"base": 2.0, "target": 1.0, "low": 0.94, "high": 1.06})
    for t in study.trials:  # a latency for each evaluated one: 2 ms x its FLOPs share
        if "flops_ratio" in t.user_attrs:
            ms = 2.0 * t.user_attrs["flops_ratio"]
            t.user_attrs.update(latency_ms=ms, latency_measured_ms=ms * 1.01)
        timed.add_trial(t)
    report = write_report(timed, tmp_path / "r")
    assert report.scores.name == "score_vs_latency.png"
    _check_png(report.scores)
    assert "0.94 ms" in report.summary.read_text()


def _one_line(res, code: int, message: str) -> None:
    lines = message_lines(res.output)
    assert res.exit_code == code and len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output


def test_bad_inputs_get_one_line_and_touch_nothing(db, tmp_path):
    url = f"sqlite:///{db}"
    before = db.read_bytes()
    _one_line(runner.invoke(app, ["report", "--storage", f"sqlite:///{tmp_path}/no.db"]), 1, "does not exist yet")
    empty = f"sqlite:///{tmp_path}/empty.db"  # a storage whose only study was deleted
    optuna.create_study(study_name="gone", storage=empty)
    optuna.delete_study(study_name="gone", storage=empty)
    res = runner.invoke(app, ["report", "--storage", empty])
    _one_line(res, 2, f"{empty} holds no study yet; start one with `fnnp-opt run --storage {empty}`")
    assert not (tmp_path / "no.db").exists()
    res = runner.invoke(app, ["report", "--storage", url, "--study-name", "nope"])
    _one_line(res, 2, f"no study 'nope' in {url} (it holds: {NAME}); pass one of them as --study-name")
    (tmp_path / "a-file").write_text("")
    res = runner.invoke(app, ["report", "--storage", url, "--output", str(tmp_path / "a-file" / "r")])
    _one_line(res, 1, "which is a file; choose another path")
    res = runner.invoke(app, ["report", "--storage", url, "--output", str(tmp_path / "a-file")])
    _one_line(res, 1, "is a file; pass a path to a folder")
    assert db.read_bytes() == before

    empty = optuna.create_study(study_name="empty", storage=url)  # made by fnnp-opt, nothing evaluated yet
    for key in ("config", "space", "budget"):
        empty.set_user_attr(key, _load(db).user_attrs[key])
    empty.enqueue_trial(_load(db).trials[0].params)
    before = db.read_bytes()
    res = runner.invoke(app, ["report", "--storage", url, "--study-name", "empty", "--output", str(tmp_path / "e")])
    _one_line(res, 1, "study 'empty' has no evaluated candidate to report on (1 running or queued)")
    optuna.create_study(study_name="foreign", storage=url)
    before = db.read_bytes()
    res = runner.invoke(app, ["report", "--storage", url, "--study-name", "foreign", "--output", str(tmp_path / "f")])
    _one_line(res, 1, "study 'foreign' was not created by fnnp-opt")
    res = runner.invoke(app, ["report", "--storage", url])  # three studies now: which one?
    _one_line(res, 2, f"3 studies in {url} (it holds:")
    assert db.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p != db.parent]  # no report folder was made


@pytest.mark.slow
def test_a_pareto_study_gets_optunas_pareto_front(small_fmnist, tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    args = ["run", "--objective", "pareto", "--sampler", "nsga2", "--flops", "0.3:0.8", "--output", str(tmp_path / "p")]
    args += without(SMALL_RUN, "--n-trials", "--flops-tolerance") + ["--n-trials", "8", "--epochs", "0"]
    assert runner.invoke(app, [*args, "--data-dir", str(small_fmnist), "--storage", url]).exit_code == 0
    res = runner.invoke(app, ["report", "--storage", url, "--output", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "skipped importances.png" in res.output
    study = optuna.load_study(study_name=None, storage=url)
    for name in ("pareto_front.png", "history.png", "allocation.png"):
        _check_png(tmp_path / "r" / name)
    # nothing delivered: the winner is the front's point that beats the uniform L1 trial nearest its FLOPs most
    uniform = [t for t in evaluated(study) if t.user_attrs.get("strategy") == "uniform"]
    points = [t for t in pareto_front(study) if t.user_attrs.get("strategy") != "uniform"]
    assert len(uniform) == 5

    def gain(t):
        return t.values[0] - min(uniform, key=lambda u: abs(u.values[1] - t.values[1])).values[0]

    data = allocation(study)
    winner = max(points, key=gain) if points else max(evaluated(study), key=lambda t: t.values[0])
    assert data.winner_trial == winner.number
    assert data.uniform_trial == min(uniform, key=lambda u: abs(u.values[1] - winner.values[1])).number
    chosen = "Pareto point best against uniform L1 at its cost" if points else "best score"
    assert f"trial {winner.number} ({chosen})" in (tmp_path / "r" / "report.md").read_text()


def test_report_uploads_its_files_to_the_delivered_trial(made, db, tmp_path):
    from optuna.artifacts import get_all_artifact_meta

    from fnnp_opt import artifacts as A

    recorded = db.parent / "artifacts"  # the copied study's store, beside its database: its export is there
    assert recorded.is_dir()
    store = tmp_path / "store"
    args = ["report", "--storage", f"sqlite:///{db}", "--output", str(tmp_path / "r")]
    res = runner.invoke(app, [*args, "--artifact-dir", str(store)])  # moving the record would orphan the export
    assert res.exit_code == 1 and f"pass --artifact-dir {recorded} or leave it out" in " ".join(res.output.split())
    assert not store.exists() and not (tmp_path / "r").exists()  # refused before anything was drawn
    shutil.copytree(recorded, store)  # this test's own copy of the store, recorded on its copy of the study
    _load(db).set_user_attr(A.STORE_ATTR, str(store))
    res = runner.invoke(app, [*args, "--artifact-dir", str(store)])
    assert res.exit_code == 0, res.output
    study = _load(db)
    (winner,) = [t for t in study.trials if t.number == study.user_attrs["result"]["trial"]]
    metas = {m.filename: m.artifact_id for m in get_all_artifact_meta(winner, storage=P.storage(study))}
    for name in ("allocation.png", "report.md"):
        assert (store / metas[name]).read_bytes() == (tmp_path / "r" / name).read_bytes()
