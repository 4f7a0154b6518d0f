"""Export a pruned network as a plan (``pruned.json``: its per-layer channel counts) plus safetensors weights."""

from __future__ import annotations

import os
from pathlib import Path

from fnnp_opt.errors import OutputError
from fnnp_opt.paths import NOT_A_FOLDER, nearest_parent


def check_output_writable(path: Path, folder: bool = False) -> None:
    """Raise :class:`OutputError` unless ``path`` (a file, or a folder when ``folder``) can be written."""
    path = Path(path).absolute()
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise OutputError(f"output path {path} is {kind}; pass a path to a {'folder' if folder else 'file'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"output path {path} is not writable; choose another path")
    parent, problem = nearest_parent(path)
    if problem == NOT_A_FOLDER:
        raise OutputError(f"output path {path} lies under {parent}, which is a file; choose another path")
    if problem:
        raise OutputError(f"output path {path} cannot be created: {parent} is not writable; choose another path")


FORMAT = "fnnp-opt/pruned-v1"


def unique_tensors(state: dict) -> dict:
    """``state`` as safetensors can hold it: CPU, contiguous, and each tensor once.

    A module registered under two names puts its tensors in the state dict twice; safetensors
    refuses tensors that share memory, so only the first name is kept.
    :func:`fnnp_opt.models.load_weights` fills the other names back in from the model's aliases.
    """
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.device, v.data_ptr(), v.dtype, tuple(v.shape)) if v.numel() else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().cpu().contiguous()
    return out


def save_pruned(model, folder: Path, card: dict) -> Path:
    """Write ``folder/pruned.safetensors`` and ``folder/pruned.json``; return the JSON path.

    The JSON is the plan: the architecture name, the per-layer channel counts and
    whatever ``card`` adds (config, strategy, metrics). Files are written to temporary
    names first, so an interrupted export leaves the previous one intact.
    """
    from fnnp_opt.prune import layer_kinds, layer_shapes

    folder = Path(folder)
    check_output_writable(folder, folder=True)
    folder.mkdir(parents=True, exist_ok=True)
    weights, plan = folder / "pruned.safetensors", folder / "pruned.json"
    doc = {"format": FORMAT, **card, "kinds": layer_kinds(model), "layers": layer_shapes(model)}
    save_weights_and_card(model, weights, plan, doc)
    return plan


def save_weights_and_card(model, weights: Path, card_path: Path, card: dict) -> None:
    """Write ``model``'s state (safetensors) to ``weights`` and ``card`` (JSON) to ``card_path``, each first to a
    temporary name and then moved into place, so neither is ever half-written. (The two moves are not one: a stop
    between them leaves the new weights beside the old card, which :func:`load_pruned` refuses by name.) The
    weights get the card's file mode (the umask's; safetensors alone writes 0600)."""
    import json

    from safetensors.torch import save_file

    tmp_w, tmp_c = weights.with_name(weights.name + ".tmp"), card_path.with_name(card_path.name + ".tmp")
    weights.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_file(unique_tensors(model.state_dict()), str(tmp_w))
        tmp_c.write_text(json.dumps(card, indent=2) + "\n")
        os.chmod(tmp_w, tmp_c.stat().st_mode & 0o777)
        os.replace(tmp_w, weights)
        os.replace(tmp_c, card_path)
    finally:
        tmp_w.unlink(missing_ok=True)
        tmp_c.unlink(missing_ok=True)


def read_plan(path: Path, needs: tuple[str, ...] = ()) -> tuple[dict, Path]:
    """Return (plan dict, weights path) for an export folder or its ``pruned.json``.

    Raises :class:`CheckpointError` when the file is not a whole fnnp-opt plan: not JSON, another format, a field
    the network is rebuilt from missing (``layers``, or one of ``needs``: ``model``, ``input_shape`` ...), or any
    field of :data:`PLAN_FIELDS` of the wrong kind."""
    import json

    from fnnp_opt.errors import CheckpointError

    path = Path(path)
    plan = path / "pruned.json" if path.is_dir() else path
    if not plan.is_file():
        raise CheckpointError(f"{plan} does not exist; pass an export folder written by `fnnp-opt run`")
    try:
        doc = json.loads(plan.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{plan} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"{plan} has format {found!r}, expected {FORMAT!r}; re-export the model")
    if "model" not in doc and "class" in doc and "model" in needs:  # saved by fnnp_opt.save: no registry name
        raise CheckpointError(
            f"{plan} holds a {doc['class']} saved from Python, which is not in fnnp-opt's registry; load it with "
            "fnnp_opt.load(path, model=<a fresh instance of that class>)"
        )
    missing = [k for k in ("layers", *needs) if k not in doc]
    if missing:
        raise CheckpointError(f"{plan} lacks {', '.join(missing)}; it is not a complete export, re-export the model")
    wrong = [f"{k} ({doc[k]!r:.40})" for k, ok in PLAN_FIELDS.items() if k in doc and not ok(doc[k])]
    if wrong:
        raise CheckpointError(
            f"{plan} has {', '.join(wrong)} of the wrong kind (edited by hand?); re-export the model with "
            "`fnnp-opt finetune`"
        )
    return doc, plan.with_name("pruned.safetensors")


MAX_SIZE = 1 << 20  # no channel count, class count or image side of a plan is larger (a hand edit is)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIZE


def _shape_entry(v) -> bool:  # one layer of prune.layer_shapes: sizes, or a parameter's shape
    return isinstance(v, dict) and all(_count(x) or (isinstance(x, list) and all(map(_count, x))) for x in v.values())


def _image(v) -> bool:  # [N, C, H, W] of one batch, small enough to build an example input from
    return isinstance(v, list) and len(v) == 4 and all(map(_count, v)) and v[1] * v[2] * v[3] <= 1 << 26


REGISTRY_FIELDS = ("model", "in_channels", "num_classes")  # what rebuilds a registry model before its layers resize

# the fields of a pruned.json that fnnp-opt reads, and the test each value must pass
PLAN_FIELDS = {
    "model": lambda v: isinstance(v, str) and bool(v),
    "in_channels": _count,
    "num_classes": _count,
    "input_shape": _image,
    "dataset": lambda v: isinstance(v, str) and bool(v),
    "layers": lambda v: isinstance(v, dict) and all(_shape_entry(x) for x in v.values()),
    "config": lambda v: isinstance(v, dict),
    "metrics": lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
}


def load_pruned(path: Path):
    """Rebuild a pruned network from an export folder (or its ``pruned.json``), without pickle."""
    from fnnp_opt.errors import CheckpointError
    from fnnp_opt.models import create_model, load_weights, read_state_dict
    from fnnp_opt.prune import apply_shapes

    doc, weights = read_plan(path, needs=REGISTRY_FIELDS)
    if not weights.is_file():
        raise CheckpointError(
            f"{weights} does not exist beside {weights.with_name('pruned.json')}; the export is incomplete: pass a "
            "folder that `fnnp-opt run` or `fnnp-opt finetune` wrote whole, or write it again with `fnnp-opt finetune`"
        )
    model = create_model(doc["model"], doc["in_channels"], doc["num_classes"])
    apply_shapes(model, doc["layers"])
    load_weights(
        model,
        read_state_dict(weights),
        str(weights),
        f"they are not the weights of {weights.with_name('pruned.json')}: write the export again with `fnnp-opt "
        "finetune`",
    )
    return model.eval()


ONNX_RTOL, ONNX_ATOL = 1e-3, 1e-4  # onnxruntime must match PyTorch within atol + rtol * |PyTorch| per logit


def require_onnx() -> None:
    """Raise :class:`MissingExtraError` unless onnx, onnxscript and onnxruntime can be imported."""
    import importlib.util

    from fnnp_opt.errors import MissingExtraError

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"ONNX export needs {', '.join(missing)}, not installed here; install the extra with "
            "pip install 'fnnp-opt[onnx]' (or drop --onnx)"
        )


def save_onnx(model, input_shape: tuple[int, ...], path: Path, check_batch: int = 3, time_batches=(1,)) -> dict:
    """Write ``model`` as ONNX (opset of torch's exporter, a dynamic batch axis) and check it in onnxruntime.

    The deploy form is exported (eval mode, BatchNorm folded). onnxruntime's logits on ``check_batch``
    random images must match PyTorch's within ``ONNX_ATOL + ONNX_RTOL * |logit|``, or
    :class:`OutputError` is raised and nothing is left at ``path``. Returns ``max_abs_diff``,
    ``tolerance`` and ``ort_ms`` (median onnxruntime ms per pass, CPU, at each of ``time_batches``).
    """
    import logging
    import warnings

    import numpy as np
    import torch

    from fnnp_opt.latency import deploy_form, onnx_ms

    require_onnx()
    import onnxruntime as ort

    path = Path(path)
    check_output_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # as --output folders are made
    deployed = deploy_form(model).cpu()
    batch = torch.export.Dim("batch", min=1, max=65536)
    example = torch.randn(2, *input_shape[1:])
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnxscript", "torch.export"):
            logging.getLogger(name).setLevel(logging.ERROR)
        program = torch.onnx.export(
            deployed,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=["images"],
            output_names=["logits"],
            verbose=False,
        )
        assert program is not None  # dynamo=True returns the program
        program.save(str(tmp))
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # timed like PyTorch, on as many threads
        session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        x = torch.randn(check_batch, *input_shape[1:])
        with torch.no_grad():
            want = deployed(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        diff = np.abs(got - want)
        if got.shape != want.shape or not np.all(diff <= ONNX_ATOL + ONNX_RTOL * np.abs(want)):
            raise OutputError(
                f"the ONNX export's logits differ from PyTorch's by up to {float(diff.max()):.3g} (allowed "
                f"{ONNX_ATOL} + {ONNX_RTOL} x |logit|); not written. Report this model to fnnp-opt"
            )
        ort_ms = {b: onnx_ms([session], input_shape, b)[0] for b in time_batches}
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return {"max_abs_diff": float(diff.max()), "tolerance": [ONNX_ATOL, ONNX_RTOL], "ort_ms": ort_ms}


def export_onnx(path: Path, output: Path | None = None) -> tuple[Path, dict]:
    """`fnnp-opt export --onnx`: write an export folder's network as ONNX, checked in onnxruntime.

    ``output`` defaults to ``pruned.onnx`` in the export folder. Returns (its path, :func:`save_onnx`'s
    result, with ``ort_ms`` at batch 1).
    """
    require_onnx()
    path = Path(path)
    doc, _ = read_plan(path, needs=(*REGISTRY_FIELDS, "input_shape"))
    model = load_pruned(path)
    out = Path(output) if output else (path if path.is_dir() else path.parent) / "pruned.onnx"
    return out, save_onnx(model, tuple(doc["input_shape"]), out, time_batches=(1,))
