"""`mmtok report`: one self-contained HTML page about a token folder (``mmtok encode`` output).

Per stream: how many samples have it (of all encoded samples); for a discrete stream the
codebook usage histogram, its perplexity (exp of the entropy of the code distribution over all
present tokens) and usage (share of the vocabulary used); for a continuous stream the histogram
of its token values. With a registry and the manifest the folder was encoded from, a few
decoded samples beside their originals: images (and the middle slice of volumes) as images, 1-D
series and spectra as line plots, tables as small tables; anything else is skipped with a note.

    OUT/index.html              the page; its PNGs next to it, referenced by relative paths
    OUT/<stream>-usage.png      code (or value) histogram
    OUT/<stream>-decoded.png    originals vs decoded samples (where they can be drawn)

Every file is written atomically, the page last. Drawn with matplotlib's Agg canvas (no pyplot,
no global backend switch), imported only here::

    from mmtok.report import write_report
    write_report("runs/clinic/tokens", "runs/clinic/report", manifest="examples/clinic/manifest.json",
                 registry="examples/clinic/registry.yaml")
"""

import dataclasses
import html
import io
import math
import os
from pathlib import Path

import numpy as np
import torch

from mmtok.errors import MmtokError
from mmtok.io import atomic_write

__all__ = ["StreamSummary", "stream_summaries", "write_report", "INDEX_HTML"]

INDEX_HTML = "index.html"
#: rows read per batch when counting codes
_CHUNK = 4096


@dataclasses.dataclass
class StreamSummary:
    """What the page reports of one stream. ``counts`` (vocab,) for discrete streams; ``values``
    a flat sample of the token values (at most 200k) for continuous ones."""

    key: str
    modality: str
    codec: str
    num_tokens: int
    vocab_size: int | None
    present: int
    total: int
    counts: np.ndarray | None = None
    perplexity: float | None = None
    codes_used: int | None = None
    usage: float | None = None
    values: np.ndarray | None = None
    token_dim: int | None = None

    def numbers(self) -> dict:
        """The page's numbers of this stream, as they appear in it (the test reads them back)."""
        out = {"present": self.present, "total": self.total, "num_tokens": self.num_tokens,
               "vocab_size": "continuous" if self.vocab_size is None else self.vocab_size}
        if self.vocab_size is not None:
            out.update(perplexity=_fmt(self.perplexity), codes_used=self.codes_used, usage=_fmt(self.usage))
        elif self.values is not None and len(self.values):
            out.update(token_dim=self.token_dim, mean=_fmt(float(self.values.mean())),
                       std=_fmt(float(self.values.std())))
        return {k: str(v) for k, v in out.items()}


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def stream_summaries(tokens: str | os.PathLike) -> list[StreamSummary]:
    """Per stream of the token folder, read from its shards: presence, code histogram,
    perplexity and usage (discrete), or a sample of the values (continuous)."""
    from mmtok.fit import codebook_usage
    from mmtok.shards import TokenShards

    shards = TokenShards(tokens)
    total = len(shards.index["samples"])
    counts = {k: torch.zeros(i["vocab_size"], dtype=torch.long) for k, i in shards.streams.items()
              if i["vocab_size"] is not None}
    present = dict.fromkeys(shards.keys, 0)
    values: dict[str, list[torch.Tensor]] = {k: [] for k in shards.keys if k not in counts}
    dims: dict[str, int] = {}
    for start in range(0, len(shards), _CHUNK):
        batch = shards.batch(range(start, min(start + _CHUNK, len(shards))))
        for key in shards.keys:
            s = batch[key]
            present[key] += int(s.present.sum())
            if key in counts:
                counts[key] += torch.bincount(s.ids[s.present].reshape(-1), minlength=len(counts[key]))
            else:
                v = s.values[s.present]
                dims[key] = int(s.values.shape[-1])
                values[key].append(v.reshape(-1)[: 200_000])
    out = []
    for key in shards.keys:
        info = shards.streams[key]
        summary = StreamSummary(key, info["modality"], info["codec"], info["num_tokens"], info["vocab_size"],
                                present[key], total)
        if key in counts:
            summary.counts = counts[key].numpy()
            if present[key]:
                usage = codebook_usage(_ids_of(counts[key]), info["vocab_size"])
                summary.perplexity, summary.codes_used, summary.usage = (
                    usage["perplexity"], usage["codes_used"], usage["usage"])
        else:
            flat = torch.cat(values[key]) if values[key] else torch.zeros(0)
            summary.values, summary.token_dim = flat[:200_000].double().numpy(), dims.get(key)
        out.append(summary)
    return out


def _ids_of(counts: torch.Tensor) -> torch.Tensor:
    """The ids whose histogram is ``counts`` (what `codebook_usage` takes)."""
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


# ---------------------------------------------------------------------------- drawing
def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot: nothing global changes)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MmtokError("mmtok report draws its plots with matplotlib, which is not installed: "
                         "pip install matplotlib") from None
    return Figure(figsize=(width, height), dpi=80, layout="constrained")


def _save_png(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    atomic_write(path, lambda p: p.write_bytes(buffer.getvalue()))


def _usage_plot(s: StreamSummary, path: Path) -> None:
    fig = _figure(8, 2.6)
    if s.counts is not None:
        ax, rank = fig.subplots(1, 2, width_ratios=[2, 1])
        ax.stairs(s.counts, np.arange(len(s.counts) + 1) - 0.5, fill=True, color="#3465a4")  # one bar per code
        ax.set(xlabel="code id", ylabel="tokens", xlim=(-0.5, len(s.counts) - 0.5),
               title=f"{s.key}: codes used {s.codes_used} of {s.vocab_size}")
        used = np.sort(s.counts[s.counts > 0])[::-1]
        if len(used):
            rank.semilogy(np.arange(1, len(used) + 1), used / used.sum(), color="#3465a4")
        rank.set(xlabel="rank", ylabel="share of tokens", title=f"perplexity {_fmt(s.perplexity)}")
    else:
        ax = fig.subplots()
        if s.values is not None and len(s.values):
            ax.hist(s.values, bins=100, color="#3465a4")
        ax.set(xlabel="token value", ylabel="count", title=f"{s.key}: continuous token values")
    _save_png(fig, path)


def _kind(codec, original) -> str:
    """How a decoded sample is shown: 'table', 'line', 'image', or why it is not."""
    from mmtok.codecs import CategoricalCodec
    from mmtok.modalities import Columns

    if isinstance(codec, CategoricalCodec):
        return "skip: class labels are decoded exactly; nothing to compare"
    if isinstance(original, Columns):
        return "table"
    target = codec.reconstruction_target(original)
    if not target.is_floating_point():
        return f"skip: decoded field {codec.field!r} is {target.dtype}, not real values"
    shape = tuple(target.shape[1:])
    if len(shape) == 1:
        return "table" if shape[0] <= 16 else "line"
    if len(shape) == 2:
        return "line" if shape[0] <= 8 else "image"
    if len(shape) in (3, 4):
        return "image"
    return f"skip: no drawing for a field of per-sample shape {shape}"


def _axis_of(m, n: int) -> tuple[np.ndarray, str]:
    """The sample's x axis (a wavelength or time field of length n) and its label, else indices."""
    for name in ("wavelength_nm", "wavelength", "time"):
        value = getattr(m, name, None)
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == n:
            return value[0].double().cpu().numpy(), name
    return np.arange(n), "index"


def _plane(x: np.ndarray) -> tuple[np.ndarray, str]:
    """A 2-D picture of one sample's field: (h, w) itself, channel 0 of (c, h, w), the middle
    slice of channel 0 of (c, d, h, w)."""
    if x.ndim == 2:
        return x, ""
    if x.ndim == 3:
        return x[0], f"channel 0 of {x.shape[0]}" if x.shape[0] > 1 else ""
    return x[0, x.shape[1] // 2], f"channel 0, slice {x.shape[1] // 2} of {x.shape[1]}"


def _decoded_plot(kind: str, pairs, path: Path, field: str) -> None:
    """pairs: [(sample id, original modality, target (…), decoded (…), decoded modality)]; ``field``
    the decoded field (shown as the codec sees it: `Codec.reconstruction_target`)."""
    k = len(pairs)
    if kind == "line":
        fig = _figure(3.2 * k, 2.6)
        axes = np.atleast_1d(fig.subplots(1, k, squeeze=False)[0])
        for ax, (sid, _, target, decoded, dm) in zip(axes, pairs):
            t = target.reshape(-1, target.shape[-1])
            d = decoded.reshape(-1, decoded.shape[-1])
            x, label = _axis_of(dm, t.shape[-1])
            for c in range(t.shape[0]):
                ax.plot(x, t[c], color="black", lw=1, label="original" if c == 0 else None)
                ax.plot(x, d[c], color="#cc0000", lw=1, ls="--", label="decoded" if c == 0 else None)
            rmse = float(np.sqrt(np.mean((t - d) ** 2)))
            ax.set(title=f"{sid}  rmse {rmse:.3g}", xlabel=label)
        axes[0].set_ylabel(f"{field} (as the codec sees it)")
        axes[0].legend(fontsize=8)
    else:
        fig = _figure(2.2 * k, 4.4)
        axes = fig.subplots(2, k, squeeze=False)
        for j, (sid, _, target, decoded, _) in enumerate(pairs):
            t, note = _plane(target)
            d, _ = _plane(decoded)
            lo, hi = float(np.percentile(t, 1)), float(np.percentile(t, 99))
            for row, (img, what) in enumerate(((t, "original"), (d, "decoded"))):
                ax = axes[row, j]
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
                ax.set_axis_off()
                ax.set_title(f"{sid} {what}" + (f"\n{note}" if note and row == 0 else ""), fontsize=8)
    _save_png(fig, path)


def _table_html(pairs, names: tuple[str, ...]) -> str:
    width = pairs[0][2].reshape(-1).shape[0]
    names = names if len(names) == width else tuple(f"c{j}" for j in range(width))
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for sid, _, target, decoded, _ in pairs:
        for what, x in (("original", target), ("decoded", decoded)):
            cells = "".join(f"<td>{v:.4g}</td>" for v in x.reshape(-1).tolist())
            rows.append(f"<tr><td>{html.escape(sid)}</td><td>{what}</td>{cells}</tr>")
    return (f"<table class='recon'><tr><th>sample</th><th></th>{head}</tr>" + "".join(rows) + "</table>")


def _reconstructions(summary: StreamSummary, shards, registry, manifest, manager, out: Path,
                     n_samples: int) -> str:
    """HTML of the decoded samples of one stream (a PNG beside the page, a table, or a note)."""
    key = summary.key
    try:
        codec = registry.codec(key)
    except MmtokError as err:
        return _note(f"not decoded: the registry's codec cannot be built ({err})")
    if codec.fingerprint() != shards.streams[key]["fingerprint"]:
        return _note(f"not decoded: the registry gives codec {codec.fingerprint()}, the tokens were encoded by "
                     f"{shards.streams[key]['fingerprint']}; pass the registry used for encoding (--registry)")
    have = [s["id"] for s in shards.samples if key in s["streams"]]
    if not have:
        return _note("no sample has this stream")
    by_id = {s.id: s for s in manifest.samples}
    picks = [have[i] for i in sorted(set(np.linspace(0, len(have) - 1, min(n_samples, len(have))).round()
                                         .astype(int).tolist()))]
    pairs, kind = [], None
    try:
        for sid in picks:
            if sid not in by_id:
                return _note(f"not decoded: sample {sid!r} is not in {manifest.path}; is it the manifest the "
                             "folder was encoded from?")
            original = manifest.load_modality(by_id[sid], summary.modality, manager)
            kind = kind or _kind(codec, original)
            if kind.startswith("skip"):
                return _note(kind.removeprefix("skip: "))
            with torch.no_grad():
                decoded = codec.decode_like(shards.stream(sid, key), original)
                target = codec.reconstruction_target(original)[0].double().cpu().numpy()
                value = getattr(decoded, codec.field)[0].double().cpu().numpy()
            pairs.append((sid, original, target, value, decoded))
    except MmtokError as err:
        return _note(f"not decoded: {err}")
    if kind == "table":
        names = tuple(getattr(pairs[0][1], "column_names", ()) or ())
        return _table_html(pairs, names)
    name = f"{key}-decoded.png"
    _decoded_plot(kind, pairs, out / name, codec.field)
    return f"<img src='{html.escape(name)}' alt='{html.escape(key)} decoded samples'>"


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


# ---------------------------------------------------------------------------- the page
_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
          "text-align:right}th{background:#eee}.note{color:#666;font-style:italic}img{max-width:100%}")


def write_report(tokens: str | os.PathLike, out: str | os.PathLike, *, manifest: str | os.PathLike | None = None,
                 registry: str | os.PathLike | None = None, samples: int = 4, manager=None) -> Path:
    """Write ``out/index.html`` (and its PNGs) about the token folder ``tokens``; returns the page.
    With ``registry`` and ``manifest`` (the files the folder was encoded with) each stream shows
    ``samples`` decoded samples beside their originals; without them, statistics only."""
    from mmtok.shards import TokenShards

    tokens, out = Path(tokens), Path(out)
    if not tokens.is_dir():
        raise MmtokError(f"{tokens}: no such token folder (expected the --out folder of `mmtok encode`)")
    shards = TokenShards(tokens)
    summaries = stream_summaries(tokens)
    _figure(1, 1)  # matplotlib missing: say so before writing anything
    out.mkdir(parents=True, exist_ok=True)
    reg = man = None
    if registry is not None and manifest is not None:
        from mmtok.manifest import Manifest
        from mmtok.plugins import get_plugin_manager
        from mmtok.registry import Registry

        reg, man, manager = Registry.load(registry), Manifest.load(manifest), manager or get_plugin_manager()
    skipped = len(shards.index.get("skipped", []))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>mmtok report: {html.escape(str(tokens))}"
             f"</title><style>{_STYLE}</style></head><body>",
             f"<h1>Token folder {html.escape(str(tokens))}</h1>",
             f"<p>{len(shards.index['samples'])} encoded samples, {skipped} skipped, {len(summaries)} streams, "
             f"{len(shards.files)} shard(s).</p>"]
    if reg is None:
        parts.append(_note("No decoded samples: pass the registry and the manifest the folder was encoded with."))
    else:
        parts.append(f"<p>Decoded with registry {html.escape(str(registry))} against manifest "
                     f"{html.escape(str(manifest))}.</p>")
    columns = ("present", "total", "num_tokens", "vocab_size", "perplexity", "codes_used", "usage")
    header = ("stream", "modality", "codec", "samples with it", "of", "tokens", "vocabulary", "perplexity",
              "codes used", "usage")
    parts.append("<table id='streams'><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>")
    for s in summaries:
        n = s.numbers()
        cells = "".join(f"<td data-k='{c}'>{html.escape(n.get(c, ''))}</td>" for c in columns)
        parts.append(f"<tr data-stream='{html.escape(s.key)}'><td>{html.escape(s.key)}</td><td>{html.escape(s.modality)}"
                     f"</td><td>{html.escape(s.codec)}</td>{cells}</tr>")
    parts.append("</table><p>perplexity: exp of the entropy of the code distribution over every present "
                 "token; usage: codes used / vocabulary.</p>")
    for s in summaries:
        parts.append(f"<h2 id='{html.escape(s.key)}'>{html.escape(s.key)} <small>({html.escape(s.modality)}, "
                     f"{html.escape(s.codec)})</small></h2>")
        share = s.present / s.total if s.total else math.nan
        parts.append(f"<p>{s.present} of {s.total} samples ({100 * share:.1f}%), {s.num_tokens} tokens each"
                     + ("" if s.vocab_size is not None else
                        f"; continuous, {s.token_dim}-d, mean {_fmt(float(s.values.mean())) if len(s.values) else ''}"
                        f", std {_fmt(float(s.values.std())) if len(s.values) else ''}") + ".</p>")
        if s.present:
            name = f"{s.key}-usage.png"
            _usage_plot(s, out / name)
            parts.append(f"<img src='{html.escape(name)}' alt='{html.escape(s.key)} usage'>")
        if reg is not None and s.present:
            parts.append(_reconstructions(s, shards, reg, man, manager, out, samples))
    parts.append("</body></html>\n")
    page = out / INDEX_HTML
    atomic_write(page, lambda p: p.write_text("\n".join(parts)))
    return page
