"""Every bad input fnnp-opt refuses, with its exit code and the words of its one-line message.

`tests/test_bad_input.py` runs each case against an existing study and checks that it is
refused in one line and leaves everything untouched; `python tests/bad_inputs.py` runs them and
writes `docs/errors.md`, so users can look an error up.

In ``args``, ``{data}`` is a small copy of Fashion-MNIST and ``{files}`` a folder of broken files
(:func:`make_files`). Every case also gets ``--data-dir {data}`` unless it sets its own, and the
storage and output of the test.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    what: str  # the mistake, in words
    args: tuple[str, ...]  # `fnnp-opt run` options
    code: int  # exit code: 2 for a wrong option value, 1 for a file or storage that cannot be used
    message: str  # a fragment of the one-line error
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for the run (torchrun's)


def _c(what: str, args: str, code: int, message: str, env: str = "") -> Case:
    env_vars = tuple(tuple(v.split("=", 1)) for v in env.split())
    return Case(what, tuple(args.split("|")) if args else (), code, message, env_vars)


TORCHRUN = "WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500"


CASES = [
    # counts and sizes
    _c("no trials", "--n-trials|0", 2, "--n-trials must be a whole number >= 1, got 0"),
    _c("negative epochs", "--epochs|-1", 2, "--epochs must be a whole number >= 0, got -1"),
    _c("zero batch size", "--batch-size|0", 2, "--batch-size must be a whole number >= 1, got 0"),
    _c("zero ABN batches", "--abn-batches|0", 2, "--abn-batches must be a whole number >= 1, got 0"),
    _c("zero ABN batch size", "--abn-batch-size|0", 2, "--abn-batch-size must be a whole number >= 1, got 0"),
    _c("zero workers", "--workers|0", 2, "--workers must be a whole number >= 1, got 0"),
    _c("more workers than trials", "--workers|9|--n-trials|2", 2, "pass --workers 2 or less"),
    _c("a latency timing option without a latency budget", "--latency-batch|4", 2, "but there is no latency budget"),
    _c("zero search images", "--search-size|0", 2, "--search-size must be a whole number >= 1, got 0"),
    _c("a batch larger than the train part", "--batch-size|100000", 2, "so an epoch would have no step"),
    _c("a search split larger than the data", "--search-size|1000000", 2, "search"),
    _c("negative short fine-tune", "--score-steps|-5", 2, "--score-steps must be a whole number >= 0, got -5"),
    _c("abn-ft without steps", "--score|abn-ft|--score-steps|0", 2, "needs a short fine-tune, but --score-steps is 0"),
    _c("a short fine-tune longer than an epoch", "--score|abn-ft|--score-steps|1000000", 2, "exceed the train part's"),
    _c("rerank more than the trials", "--rerank|5|--n-trials|2", 2, "K <= n-trials must hold"),
    # torchrun's environment (tests/test_distributed.py runs the real launcher)
    _c("torchrun variables that are not numbers", "", 2, "variables must be integers", f"RANK=zero {TORCHRUN}"),
    _c("a rank outside torchrun's world", "", 2, "0 <= RANK < WORLD_SIZE", f"RANK=2 {TORCHRUN}"),
    _c("torchrun variables half set", "", 2, "LOCAL_RANK, LOCAL_WORLD_SIZE is unset", "RANK=0 WORLD_SIZE=2"),
    _c(
        "torchrun without its meeting point",
        "",
        2,
        "MASTER_ADDR and MASTER_PORT unset",
        "RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=2",
    ),
    _c("a batch smaller than the torchrun processes", "--batch-size|1", 2, "over 2 processes", f"RANK=0 {TORCHRUN}"),
    # rates, tolerances, budgets
    _c("NaN learning rate", "--lr|nan", 2, "--lr must be positive and finite, got nan"),
    _c("zero learning rate", "--lr|0", 2, "--lr must be positive and finite, got 0.0"),
    _c("infinite learning rate", "--lr|inf", 2, "--lr must be positive and finite, got inf"),
    _c("a negative seed", "--seed|-1", 2, "--seed must be a whole number in [0, 2**32), got -1"),
    _c("a seed too large", "--seed|99999999999999999999999", 2, "--seed must be a whole number in [0, 2**32)"),
    _c("negative weight decay", "--weight-decay|-1", 2, "--weight-decay must be >= 0"),
    _c(
        "NaN FLOPs tolerance",
        "--flops-tolerance|nan",
        2,
        "--flops-tolerance must be in (0, 1) (a fraction of the base FLOPs), got nan",
    ),
    _c("negative FLOPs tolerance", "--flops-tolerance|-0.1", 2, "got -0.1"),
    _c("R above 1", "--max-rate|1.2", 2, "--max-rate must be in (0, 1), got 1.2"),
    _c("R of zero", "--max-rate|0", 2, "--max-rate must be in (0, 1), got 0.0"),
    _c("zero FLOPs", "--flops|0", 2, "--flops must be positive"),
    _c("FLOPs in words", "--flops|half", 2, "--flops must be a fraction"),
    _c("negative FLOPs", "--flops|-3", 2, "--flops must be a fraction"),
    _c("FLOPs above the base", "--flops|40M", 2, "above the base model's"),
    _c("FLOPs of the whole base", "--flops|1", 2, "keeps all of the base model's"),
    _c("an unreachable budget", "--flops|0.05|--max-rate|0.3", 2, "cannot be reached with ratios in [0, 0.3]"),
    _c("a channel floor above every layer", "--min-channels|100", 2, "--min-channels 100 keeps too many channels"),
    _c("latency in words", "--latency|fast", 2, "--latency must be a positive fraction of the base's latency"),
    _c("latency above the base", "--latency|2x", 2, "a fraction of the base's latency must be at most 1x"),
    _c("latency and FLOPs budgets together", "--latency|0.5x|--flops|0.5", 2, "are both budgets"),
    _c(
        "an unreachable latency",
        "--latency|0.005x|--latency-tolerance|0.004",
        2,
        "cannot be reached",  # with ratios in [0, 0.6], or at all where the pruned network times no faster
    ),
    _c("more timing threads than cores", "--latency|0.8x|--latency-threads|100000", 2, "is more than this machine's"),
    _c("an unknown memory layout", "--latency|0.8x|--latency-layout|nhwc8", 2, "--latency-layout must be one of"),
    _c("round-to in words", "--round-to|eight", 2, "--round-to must be a whole number >= 1 or auto"),
    _c("distillation without a fine-tune", "--distill|--epochs|0", 2, "--distill distils during the fine-tune"),
    _c("distillation weight above 1", "--distill-weight|1.5", 2, "--distill-weight must be in [0, 1], got 1.5"),
    _c("zero distillation temperature", "--distill-temperature|0", 2, "--distill-temperature must be positive"),
    # names
    _c("unknown model", "--model|nope", 2, "unknown model 'nope'"),
    _c("unknown dataset", "--dataset|mnist3d", 2, "unknown dataset 'mnist3d'"),
    _c("unknown sampler", "--sampler|grid", 2, "unknown sampler 'grid'"),
    _c("unknown objective", "--objective|best", 2, "unknown objective 'best'"),
    _c("unknown constraint", "--constraint|maybe", 2, "unknown constraint 'maybe'"),
    _c("unknown score", "--score|loss", 2, "unknown score 'loss'"),
    _c("unknown device", "--device|tpu", 2, "--device must be auto, cpu or cuda[:N], got 'tpu'"),
    _c("a study name that escapes runs/", "--study-name|../../etc", 2, "must be one folder name"),
    # layers
    _c("exclude everything", "--exclude|*", 2, "no prunable channel group outside --exclude"),
    _c("exclude a layer that is not there", "--exclude|layer4.*", 2, "--exclude 'layer4.*' matches no prunable layer"),
    # recipes
    _c("a recipe with an unknown key", "--recipe|{files}/unknown-key.toml", 2, "sets unknown options ['n_trails']"),
    _c("a recipe with an unknown table", "--recipe|{files}/unknown-table.toml", 2, "has unknown tables ['run']"),
    _c("a recipe with a wrong type", "--recipe|{files}/wrong-type.toml", 2, "max_rate must be a number, got 'high'"),
    _c("a broken recipe", "--recipe|{files}/broken.toml", 2, "broken.toml"),
    _c("a recipe that does not exist", "--recipe|{files}/absent.toml", 2, "absent.toml"),
    # data
    _c("no dataset files", "--data-dir|{files}/nothing-here", 1, "apt-get install dataset-fashion-mnist"),
    _c("a truncated dataset file", "--data-dir|{files}/truncated", 1, "it is truncated"),
    _c("a dataset file with a wrong magic number", "--data-dir|{files}/wrong-magic", 1, "(bad magic number)"),
    # checkpoints
    _c("a checkpoint that does not exist", "--checkpoint|{files}/none.safetensors", 1, "does not exist"),
    _c("a folder as checkpoint", "--checkpoint|{files}", 1, "is a folder, not a file"),
    _c("a corrupt checkpoint", "--checkpoint|{files}/corrupt.safetensors", 1, "could not be read"),
    _c("a checkpoint for another model", "--checkpoint|{files}/rgb.safetensors", 1, "does not fit the model"),
    _c("a checkpoint with NaN weights", "--checkpoint|{files}/nan.safetensors", 1, "holds NaN or inf weights"),
    _c("a checkpoint without weights", "--checkpoint|{files}/no-weights.pt", 1, "found a dict with keys acc, epoch"),
    # outputs and storages
    _c("an output path that is a file", "--output|{files}/a-file", 1, "is a file; pass a path to a folder"),
    _c("an output path under a file", "--output|{files}/a-file/out", 1, "which is a file; choose another path"),
    _c("an output path that cannot be created", "--output|/proc/version/out", 1, "choose another path"),
    _c("a storage folder under a file", "--storage|sqlite:///{files}/a-file/s.db", 1, "is not a folder"),
    _c("a journal file under a file", "--storage|{files}/a-file/s.log", 1, "a-file is not a folder"),
    _c("a folder as journal file", "--storage|journal:///{files}", 1, "is a folder, not a journal file"),
    _c("a folder as SQLite file", "--storage|sqlite:///{files}", 1, "is a folder, not a database file"),
    _c("an in-memory SQLite storage", "--storage|sqlite:///:memory:", 1, "is in memory: a study there ends with"),
    _c("a file that is not a journal", "--storage|journal:///{files}/broken.toml", 1, "is not an Optuna journal file"),
    _c("a journal URL without a path", "--storage|journal:///", 1, "names no journal file"),
    _c("an unknown storage kind", "--storage|nosuchdb://localhost/x", 1, "could not be opened"),
    _c(
        "an unreachable database server (its password masked)",
        "--storage|postgresql://nobody:Secret-pw@127.0.0.1:1/none",
        1,
        "nobody:***@127.0.0.1:1/none' could not be opened",
    ),
    _c(
        "a password in the URL's query, masked too",
        "--storage|postgresql://nobody@127.0.0.1:1/none?password=Secret-pw",
        1,
        "none?password=***' could not be opened",
    ),
]


def make_files(folder: Path, fmnist_train: tuple) -> Path:
    """Write the broken files the cases name into ``folder``; ``fmnist_train`` is (images, labels) uint8."""
    import torch
    from safetensors.torch import save_file

    from fnnp_opt.data import write_idx
    from fnnp_opt.models import create_model

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "unknown-key.toml").write_text("n_trails = 5\n")
    (folder / "unknown-table.toml").write_text("[run]\nn_trials = 5\n")
    (folder / "wrong-type.toml").write_text('max_rate = "high"\n')
    (folder / "broken.toml").write_text("[run\nn_trials = 5\n")
    (folder / "a-file").write_text("not a folder\n")
    (folder / "corrupt.safetensors").write_bytes(b"\x00garbage")
    save_file(create_model("resnet20", 3, 10).state_dict(), str(folder / "rgb.safetensors"))
    state = create_model("resnet20", 1, 10).state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(folder / "nan.safetensors"))
    torch.save({"acc": 93.1, "epoch": 199}, folder / "no-weights.pt")
    images, labels = fmnist_train
    for name in ("truncated", "wrong-magic"):
        d = folder / name
        d.mkdir(exist_ok=True)
        write_idx(d / "train-images-idx3-ubyte.gz", images[:600])
        write_idx(d / "train-labels-idx1-ubyte.gz", labels[:600])
        write_idx(d / "t10k-images-idx3-ubyte.gz", images[600:800])
        write_idx(d / "t10k-labels-idx1-ubyte.gz", labels[600:800])
    whole = gzip.decompress((folder / "truncated" / "train-images-idx3-ubyte.gz").read_bytes())
    (folder / "truncated" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(whole[: len(whole) // 2]))
    bad = struct.pack(">HBB", 0, 0x0D, 3) + whole[4:]  # float32 data type: not an unsigned-byte IDX file
    (folder / "wrong-magic" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bad))
    return folder


def expand(case: Case, data: Path, files: Path) -> list[str]:
    """The small-run options, then the case's with its placeholders filled in, and --data-dir unless it sets one."""
    from conftest import SMALL_RUN  # the options that make a run take seconds; the case's come later and win

    args = [a.format(data=data, files=files) for a in case.args]
    return [*SMALL_RUN, *args] if "--data-dir" in args else [*SMALL_RUN, *args, "--data-dir", str(data)]


def write_docs(rows: list[tuple[Case, str]], path: Path, tmp: Path) -> None:
    """docs/errors.md from measured rows: (case, the printed error line); ``tmp`` (the script's folder) is
    shown as ``<tmp>``."""
    lines = [
        "# Errors",
        "",
        "Every bad input fnnp-opt refuses, with the line it prints and its exit code (2: a wrong option value;",
        "1: a file, dataset or storage that cannot be used). Each is refused before anything is written: an",
        "existing study's database stays byte-identical and no export appears.",
        "",
        "Generated by `python tests/bad_inputs.py` from the table in `tests/bad_inputs.py`, which",
        "`tests/test_bad_input.py` checks case by case. `<data>` is a small Fashion-MNIST copy,",
        "`<files>` a folder of broken files the script writes, and `<tmp>` the folder holding both.",
        "",
        "| mistake | `fnnp-opt run` options (environment first) | exit | message |",
        "|---|---|---|---|",
    ]
    for case, line in rows:
        opts = " ".join([*(f"{k}={v}" for k, v in case.env), *case.args])
        opts = opts.replace("{files}", "<files>").replace("{data}", "<data>").replace("|", "\\|")
        msg = line.removeprefix("error: ").replace(str(tmp), "<tmp>").replace("|", "\\|")
        lines.append(f"| {case.what} | `{opts}` | {case.code} | {msg} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    import os
    import shutil
    import tempfile

    from typer.testing import CliRunner

    from conftest import message_lines

    from fnnp_opt.cli import app
    from fnnp_opt.data import DATASETS, load_fashion_mnist, write_idx

    tmp = Path(tempfile.mkdtemp(prefix="fnnp-errors-"))
    arrays = load_fashion_mnist(Path(DATASETS["fashion-mnist"].default_dir))
    data = tmp / "data"
    data.mkdir()
    for part, key, n in (("train", "train", 3000), ("t10k", "test", 1000)):
        write_idx(data / f"{part}-images-idx3-ubyte.gz", arrays[f"{key}_x"][:n])
        write_idx(data / f"{part}-labels-idx1-ubyte.gz", arrays[f"{key}_y"][:n])
    files = make_files(tmp / "files", (arrays["train_x"], arrays["train_y"]))
    os.environ.setdefault("COLUMNS", "400")
    rows = []
    for case in CASES:
        args = ["run", "--storage", f"sqlite:///{tmp}/s.db", "--output", str(tmp / "out"), *expand(case, data, files)]
        res = CliRunner().invoke(app, args, env=dict(case.env))
        line = " ".join(" ".join(message_lines(res.output)).split())  # the error, without INFO log lines
        print(f"{res.exit_code} {line}")
        rows.append((case, line))
    write_docs(rows, Path(__file__).parents[1] / "docs" / "errors.md", tmp)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
