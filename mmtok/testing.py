"""Conformance kit: tells a plugin author whether their modalities and codecs are right.

    from mmtok.testing import check_plugin
    def test_conformance():
        check_plugin(my_plugin_module)

Each check raises `ConformanceError` (an AssertionError, so pytest shows it as a failure) with a
message naming the modality / codec and what was wrong.

It is also a pytest plugin defining the fixture ``fresh_plugins`` (plugin manager reloaded around
the test, torch seeded) and failing a run that skips a test for a reason not in `ALLOWED_SKIPS`
(a broken install must not pass as skips). A test suite turns it on for every test in its pytest
configuration::

    [tool.pytest.ini_options]
    addopts = "-p mmtok.testing"
    usefixtures = ["fresh_plugins"]
"""

import argparse
import ast
import contextlib
import copy
import dataclasses
import importlib.util
import inspect
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

import mmtok.builtin
from mmtok.codec import Codec, NeuralCodec
from mmtok.errors import MmtokError, ModalityError
from mmtok.hookspecs import CodecSpec
from mmtok.modality import Modality
from mmtok.plugins import PluginManager, reset_plugin_manager
from mmtok.tokens import TokenStream

__all__ = ["ConformanceError", "check_modality", "check_codec", "check_plugin", "torch_threads"]

try:  # only the fixture needs pytest; the kit works without it
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.fixture
    def fresh_plugins():
        """The installed plugins freshly loaded before and after the test, torch seeded with 0."""
        reset_plugin_manager()
        torch.manual_seed(0)
        yield
        reset_plugin_manager()

    __all__.append("fresh_plugins")


class ConformanceError(AssertionError):
    """A modality, codec or plugin does not meet the mmtok contract."""


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count is ``n`` inside, restored afterwards: tests of tiny tensors
    run on one thread (more only add synchronisation) whatever ``OMP_NUM_THREADS`` says."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ConformanceError(what)


def _bad_shape(t: torch.Tensor) -> torch.Tensor:
    """Same batch, wrong per-sample shape: the last axis grows by 3."""
    return torch.zeros(*t.shape[:-1], t.shape[-1] + 3, dtype=t.dtype) if t.ndim > 1 else torch.zeros(
        t.shape[0], 3, dtype=t.dtype)


def _fields_equal(a: Modality, b: Modality) -> bool:
    for f in type(a).tensor_fields():
        x, y = getattr(a, f), getattr(b, f)
        if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
            return False
    return True


def check_modality(cls: type[Modality], *, batch_size: int = 3) -> None:
    """Construction, batch helpers (len, indexing, collate, to) and clear errors on bad input."""
    name = getattr(cls, "__name__", repr(cls))
    _require(dataclasses.is_dataclass(cls), f"{name}: not a dataclass")
    _require(cls.__dataclass_params__.frozen, f"{name}: must be @dataclass(frozen=True)")
    _require(isinstance(cls.__dict__.get("name"), str), f"{name}: needs a `name` ClassVar")
    _require(isinstance(getattr(cls, "token_key", None), str), f"{name}: needs a token_key")
    fields = cls.tensor_fields()
    _require(bool(fields), f"{name}: has no jaxtyping tensor fields")
    ex = cls.example(batch_size, generator=torch.Generator().manual_seed(0))
    _require(type(ex) is cls, f"{name}.example() returned a {type(ex).__name__}")
    _require(len(ex) == batch_size, f"{name}.example({batch_size}) has batch size {len(ex)}")
    one = ex[0]
    _require(type(one) is cls and len(one) == 1, f"{name}[0] must be a batch of one {name}")
    _require(len(ex[[0, batch_size - 1]]) == 2, f"{name}[[0, -1]] must select 2 samples")
    again = cls.collate([ex[i] for i in range(batch_size)])
    _require(_fields_equal(again, ex), f"{name}.collate of its single samples differs from the batch")
    _require(_fields_equal(ex.to("cpu"), ex), f"{name}.to('cpu') changed the data")
    try:
        setattr(ex, fields[0], getattr(ex, fields[0]))
        raise ConformanceError(f"{name}: assignment to a field did not raise (not frozen)")
    except dataclasses.FrozenInstanceError:
        pass
    values = {f.name: getattr(ex, f.name) for f in dataclasses.fields(ex) if f.init}
    for field in fields:
        if values[field] is None:
            continue
        bad = dict(values, **{field: _bad_shape(values[field])})
        try:
            cls(**bad)
        except ModalityError as err:
            _require(name in str(err) and any(f"{name}.{f}" in str(err) for f in fields),
                     f"{name}: the error for a wrong-shaped {field!r} must name the class and the "
                     f"field that disagrees, got: {err}")
        else:
            # A free trailing axis ('c') may legitimately accept the shape; a wrong rank may not.
            try:
                cls(**dict(values, **{field: values[field][..., None]}))
            except ModalityError:
                pass
            else:
                raise ConformanceError(f"{name}: accepted {field!r} with an extra axis")
        if values[field].is_floating_point():
            nan = values[field].clone()
            nan.view(-1)[0] = float("nan")
            try:
                cls(**dict(values, **{field: nan}))
                raise ConformanceError(f"{name}: accepted NaN in {field!r}")
            except ModalityError:
                pass


def _same(a: TokenStream, b: TokenStream) -> bool:
    if a.is_discrete:
        return torch.equal(a.ids, b.ids)
    return torch.allclose(a.values, b.values, atol=1e-5, rtol=1e-4)


def check_codec(codec: Codec, example: Modality | None = None, *, fit: bool = True,
                reencode: bool | None = None) -> None:
    """Shapes, vocabulary, determinism, batch independence, round trip, save/load equality and
    clear errors. ``example`` defaults to ``codec.modality.example(3)``; with ``fit`` the codec's
    statistics are fitted on it first (needed by e.g. quantile codecs).

    The round trip: samples with different tokens decode differently, and (``reencode``; default:
    exact codecs, not `NeuralCodec` s) ``encode(decode(encode(x)))`` gives back at least
    `REENCODE_AGREEMENT` of the ids (continuous tokens: a reconstruction re-encodes stably). Pass
    ``reencode=True`` with real data to check a trained network too. Exact codecs fitted from data
    are also fitted on tied data (one value but once, as a class label gives): they must keep
    the values apart or refuse the data with an MmtokError. Decode must refuse ids outside the
    vocabulary with a one-line error naming it."""
    name = f"codec {codec.name!r}"
    ex = example if example is not None else codec.modality.example(
        3, generator=torch.Generator().manual_seed(0))
    b = len(ex)
    if fit:
        codec.fit_statistics(ex)
    codec.eval()
    try:
        s = codec.encode(ex)
    except MmtokError as err:
        raise ConformanceError(f"{name}: encode of {type(ex).__name__}.example() failed: {err}") from err
    _require(isinstance(s, TokenStream), f"{name}: encode must return a TokenStream")
    _require(len(s) == b, f"{name}: {len(s)} token rows for a batch of {b}")
    _require(tuple(s.grid) == tuple(codec.grid), f"{name}: stream grid {s.grid} != codec.grid {codec.grid}")
    _require(s.num_tokens == codec.num_tokens, f"{name}: {s.num_tokens} tokens, codec says {codec.num_tokens}")
    _require(s.is_discrete == codec.is_discrete, f"{name}: discreteness differs from codec.is_discrete")
    _require(bool(s.present.all()), f"{name}: encoded samples must be present")
    if s.is_discrete:
        _require(s.vocab_size == codec.vocab_size, f"{name}: stream vocab {s.vocab_size} != {codec.vocab_size}")
        lo, hi = int(s.ids.min()), int(s.ids.max())
        _require(0 <= lo and hi < codec.vocab_size, f"{name}: ids in [{lo}, {hi}] outside [0, {codec.vocab_size})")
    else:
        _require(bool(torch.isfinite(s.values).all()), f"{name}: continuous tokens are not finite")
    _require(_same(s, codec.encode(ex)), f"{name}: encode is not deterministic in eval mode")
    for i in range(b):
        _require(_same(codec.encode(ex[i]), s[i]),
                 f"{name}: sample {i} encodes differently alone than in a batch (batch-dependent codec)")
    out = codec.decode_like(s, ex)
    _require(type(out) is codec.modality, f"{name}: decode returned {type(out).__name__}, "
             f"expected {codec.modality.__name__}")
    x, y = getattr(ex, codec.field), getattr(out, codec.field)
    _require(tuple(y.shape) == codec.decoded_shape(ex), f"{name}: decoded {codec.field} has shape "
             f"{tuple(y.shape)}, expected {codec.decoded_shape(ex)} (input {tuple(x.shape)})")
    _require(bool(torch.isfinite(y).all()), f"{name}: decoded values are not finite")
    again = getattr(codec.decode_like(s, ex), codec.field)
    _require(torch.equal(y, again), f"{name}: decode is not deterministic")
    # the reconstruction must follow the ids. A trained network re-encodes its reconstruction of
    # the kit's random (off-distribution) example to other ids about half the time (labs-fsq: 52%;
    # 89% on real panels), an untrained one worse: re-encoding is checked for exact codecs
    _check_decode_uses_ids(codec, ex, s, y, name)
    if not isinstance(codec, NeuralCodec) if reencode is None else reencode:
        _check_reencode(codec, out, s, name)
    with tempfile.TemporaryDirectory() as tmp:
        codec.save_pretrained(tmp)
        loaded = type(codec).from_pretrained(tmp, modality=codec.modality)
        _require(loaded.fingerprint() == codec.fingerprint(), f"{name}: fingerprint changed on save/load")
        _require(_same(loaded.encode(ex), s), f"{name}: reloaded codec encodes differently")
        y2 = getattr(loaded.decode_like(s, ex), codec.field)
        _require(torch.allclose(y, y2, atol=1e-5, rtol=1e-4), f"{name}: reloaded codec decodes differently")
    # bad input must be a clear mmtok error, never a raw torch traceback
    _check_wrong_shape(codec, ex, name)
    _check_stream_errors(codec, s, name, codec.passthrough_fields(ex))
    if fit and not isinstance(codec, NeuralCodec):  # exact codecs fit their token tables from data
        _check_tied_values(codec, ex, name)


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return True
    if not (a.is_floating_point() or b.is_floating_point()):
        return not torch.equal(a, b)
    return not torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)


#: per-sample size (elements of the field) above which the costlier round-trip checks use the
#: first sample of the example only (a CT volume or mask: each encode takes seconds)
LARGE_SAMPLE = 2 ** 20


def _few(m: Modality, field: str) -> Modality:
    return m[:1] if getattr(m, field)[0].numel() > LARGE_SAMPLE else m


def _check_decode_uses_ids(codec: Codec, ex: Modality, s: TokenStream, y: torch.Tensor, name: str) -> None:
    """The reconstruction depends on the tokens: a decode that ignores them (e.g. returns zeros)
    fails. Discrete: samples with different ids decode differently. Continuous (a lossy codec may
    map nearby tokens to one reconstruction): other tokens, the values negated and reversed,
    decode differently."""
    if s.is_discrete:
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                _require(torch.equal(s.ids[i], s.ids[j]) or _differ(y[i], y[j]),
                         f"{name}: samples {i} and {j} have different ids but decode to the same "
                         f"{codec.field!r}: the reconstruction does not depend on the ids")
        return
    ex = _few(ex, codec.field)
    some = s[:len(ex)]
    other = getattr(codec.decode(dataclasses.replace(some, values=-some.values.flip(-1)),
                                 **codec.passthrough_fields(ex)), codec.field)
    _require(_differ(y[:len(ex)], other), f"{name}: other continuous tokens (negated and reversed) decode to "
             f"the same {codec.field!r}: the reconstruction does not depend on the tokens")


#: least share of ids that re-encoding an exact codec's reconstruction must give back (discrete
#: streams): nearly all (the shipped exact codecs give back every id; float rounding at a bin edge
#: may move one)
REENCODE_AGREEMENT = 0.9
#: largest relative RMS change of continuous tokens when a reconstruction is re-encoded twice
REENCODE_TOLERANCE = 0.05


def _check_reencode(codec: Codec, out: Modality, s: TokenStream, name: str) -> None:
    """``encode(decode(encode(x)))`` gives back at least `REENCODE_AGREEMENT` of the ids of
    ``encode(x)``. Continuous tokens: the reconstruction is a fixed point, re-encoding ``decode``
    of its tokens changes them little (a lossy exact codec, such as a mask's region fractions, may
    move x's tokens once)."""
    out = _few(out, codec.field)
    s = s[:len(out)]
    try:
        again = codec.encode(out)
    except MmtokError as err:
        raise ConformanceError(f"{name}: its own reconstruction cannot be encoded again: {err}") from err
    if s.is_discrete:
        agree = float((again.ids == s.ids).float().mean())
        _require(agree >= REENCODE_AGREEMENT, f"{name}: encode(decode(encode(x))) gives back only "
                 f"{100 * agree:.0f}% of the ids of encode(x) (at least {100 * REENCODE_AGREEMENT:.0f}% "
                 "expected): decode does not reconstruct what the ids say")
        return
    third = codec.encode(codec.decode_like(again, out)).values
    change = float((third - again.values).pow(2).mean().sqrt() / again.values.pow(2).mean().sqrt().clamp_min(1e-12))
    _require(change <= REENCODE_TOLERANCE, f"{name}: re-encoding a reconstruction changes its continuous "
             f"tokens by {100 * change:.0f}% (RMS, at most {100 * REENCODE_TOLERANCE:.0f}% expected): decode "
             "does not reconstruct what the tokens say")


def _check_tied_values(codec: Codec, ex: Modality, name: str) -> None:
    """Fitted on tied data (all copies of one sample but one, as a discrete column or a class
    label gives), a codec must still tell the two samples apart, or refuse the data at fit with
    an MmtokError. Both ties are tried: at the low and at the high value of every element."""
    if type(codec).fit_statistics is Codec.fit_statistics or len(ex) < 2:
        return  # nothing fitted from data, or no two samples
    a, b = ex[:1], ex[1:2]
    x, y = getattr(a, codec.field), getattr(b, codec.field)
    try:
        if x.is_floating_point():  # every element tied at its low / high value
            fields = codec.passthrough_fields(a)
            a = codec.modality(**{**fields, codec.field: torch.minimum(x, y)})
            b = codec.modality(**{**fields, codec.field: torch.maximum(x, y)})
        pair = codec.modality.collate([a, b])
    except MmtokError:
        return
    reference = codec.encode(pair).tokens
    if not _differ(reference[0], reference[1]):
        return  # the codec fitted on varied data does not tell them apart either
    n = min(codec.vocab_size or 16, 256) + 1  # one more than the vocabulary merges every quantile bin
    for majority, minority in ((0, 1), (1, 0)):
        tied = copy.deepcopy(codec)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tied.fit_statistics(pair[[majority] * (n - 1) + [minority]])
        except MmtokError:
            continue  # refused loudly
        tokens = tied.encode(pair).tokens
        _require(_differ(tokens[0], tokens[1]),
                 f"{name}: fitted on tied data ({n - 1} copies of one sample and 1 of another, as a "
                 "discrete column or a class label gives), the two different samples encode to the same "
                 "tokens: tied values silently collapse; refuse such data at fit (an MmtokError) or keep "
                 "them apart (an exact codec such as 'categorical' for discrete values)")


def _check_wrong_shape(codec: Codec, ex: Modality, name: str) -> None:
    """A wrong-shaped field is a clear error, unless the codec brings any input to its own grid
    (its `decoded_shape` of the input differs from the input's shape): then it must decode to
    that grid."""
    one = ex[:1]  # a single sample: codecs that resample may work on a large grid
    bad = _wrong_shaped(codec, one)
    if bad is None:
        return  # the modality itself refuses the shape: no codec can be handed it
    try:
        stream = codec.encode(bad)
    except MmtokError as err:
        _require(codec.field in str(err) or codec.modality.__name__ in str(err),
                 f"{name}: error for a wrong-shaped input must name the field, got: {err}")
        return
    except Exception as err:  # noqa: BLE001
        raise ConformanceError(f"{name}: a wrong-shaped {codec.field!r} raised a raw "
                               f"{type(err).__name__} instead of a ModalityError: {err}") from err
    shape = tuple(getattr(bad, codec.field).shape)
    _require(codec.decoded_shape(bad) != shape,
             f"{name}: encoded a wrong-shaped {codec.field!r} {shape} without error")
    out = getattr(codec.decode_like(stream, bad), codec.field)
    _require(tuple(out.shape) == codec.decoded_shape(bad),
             f"{name}: a {shape} input decodes to {tuple(out.shape)}, the codec's decoded_shape says "
             f"{codec.decoded_shape(bad)}")


def _wrong_shaped(codec: Codec, one: Modality) -> Modality | None:
    """``one`` with the codec's field one longer by 3 on its last axis. Optional fields that share
    that axis (a spectrum's wavelengths) would make the modality refuse it, so they are dropped
    when needed; None when the modality refuses the shape even then."""
    fields = dict(codec.passthrough_fields(one), **{codec.field: _bad_shape(getattr(one, codec.field))})
    try:
        return codec.modality(**fields)
    except ModalityError:
        optional = {f.name for f in dataclasses.fields(codec.modality) if f.init and f.default is None}
        try:
            return codec.modality(**{k: None if k in optional and k != codec.field else v
                                     for k, v in fields.items()})
        except ModalityError:
            return None


def _check_stream_errors(codec: Codec, s: TokenStream, name: str, fields: dict[str, Any]) -> None:
    """A stream of the wrong grid, and ids outside the vocabulary (both ways), are refused by
    decode with a one-line MmtokError; the id error names the vocabulary."""
    bad = {"the wrong grid": dataclasses.replace(s, grid=(*s.grid, 1))}
    if s.is_discrete and s.num_tokens:
        for what, value in (("an id of -1", -1), (f"an id of {s.vocab_size}", s.vocab_size)):
            ids = s.ids.clone()
            ids.view(-1)[-1] = value
            bad[what] = dataclasses.replace(s, ids=ids)
    for what, stream in bad.items():
        try:
            codec.decode(stream, **fields)
        except MmtokError as err:
            _require("\n" not in str(err), f"{name}: the error for a stream with {what} must be one line: {err!r}")
            _require(what == "the wrong grid" or str(codec.vocab_size) in str(err),
                     f"{name}: the error for a stream with {what} must name the vocabulary "
                     f"[0, {codec.vocab_size}), got: {err}")
        except Exception as err:  # noqa: BLE001
            raise ConformanceError(f"{name}: a stream with {what} raised a raw "
                                   f"{type(err).__name__}: {err}") from err
        else:
            raise ConformanceError(f"{name}: decoded a stream with {what} without error")


#: what a plugin may import of mmtok: the top level and these modules
PUBLIC_MODULES = ("mmtok", "mmtok.nn", "mmtok.testing")


def private_imports(plugin: Any) -> list[str]:
    """``"<file>:<line>: <import>"`` for every import of a non-public mmtok module (anything but
    `PUBLIC_MODULES`) in the source files of ``plugin``'s top-level package."""
    module = inspect.getmodule(plugin) if not inspect.ismodule(plugin) else plugin
    top = sys.modules.get((getattr(module, "__name__", "") or "").split(".")[0])
    files = []
    if top is not None and getattr(top, "__path__", None):
        files = sorted(p for d in top.__path__ for p in Path(d).rglob("*.py"))
    elif getattr(module, "__file__", None):
        files = [Path(module.__file__)]
    found = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == "mmtok":  # `from mmtok import codec` reaches a private module too
                    names += [f"mmtok.{a.name}" for a in node.names
                              if importlib.util.find_spec(f"mmtok.{a.name}") is not None]
            for n in names:
                if (n == "mmtok" or n.startswith("mmtok.")) and n not in PUBLIC_MODULES:
                    found.append(f"{path}:{node.lineno}: imports {n}")
    return found


def check_plugin(plugin: Any, *, name: str | None = None, batch_size: int = 3,
                 codec_overrides: dict[str, dict] | None = None) -> list[str]:
    """Register ``plugin`` (a module or object with hook implementations) next to mmtok's
    built-ins and check everything it provides. Returns the names checked.

    ``codec_overrides`` maps codec names to config overrides, to check codecs whose default
    size is costly (a 64x512x512 CT grid) at a small one."""
    name = name or getattr(plugin, "__name__", type(plugin).__name__)
    manager = PluginManager(entrypoints=False, builtin=plugin is not mmtok.builtin)
    info = manager.register(plugin, name)
    _require(info.ok, f"plugin {name!r} did not load cleanly: {info.errors}")
    if plugin is not mmtok.builtin:
        private = private_imports(plugin)
        _require(not private, f"plugin {name!r} imports mmtok modules outside the public API "
                 f"({', '.join(PUBLIC_MODULES)}): " + "; ".join(private))
    _require(any(info.provides.values()), f"plugin {name!r} provides nothing")
    checked = []
    for mod in info.provides.get("modalities", []):
        check_modality(manager.modality(mod), batch_size=batch_size)
        checked.append(f"modality:{mod}")
    for codec_name in info.provides.get("codecs", []):
        spec: CodecSpec = manager.codec_spec(codec_name)
        try:
            modality = manager.modality(spec.modality)
        except MmtokError as err:
            raise ConformanceError(f"codec {codec_name!r}: {err}") from err
        codec = spec.build((codec_overrides or {}).get(codec_name), modality=modality)
        check_codec(codec, modality.example(batch_size, generator=torch.Generator().manual_seed(0)))
        checked.append(f"codec:{codec_name}")
    for pre in info.provides.get("pretrained", []):
        codec = manager.load_pretrained(pre)
        check_codec(codec, codec.modality.example(batch_size), fit=False)
        checked.append(f"pretrained:{pre}")
    for reader in info.provides.get("readers", []):
        spec = manager.reader(reader)
        _require(callable(spec.read) and spec.suffixes, f"reader {reader!r}: needs read() and suffixes")
        checked.append(f"reader:{reader}")
    for bundle in info.provides.get("bundles", []):
        _require(bool(manager.bundle(bundle).streams), f"bundle {bundle!r} has no streams")
        checked.append(f"bundle:{bundle}")
    commands = {c.name: c for c in manager.commands()}
    for command in info.provides.get("commands", []):
        parser = argparse.ArgumentParser(prog=f"mmtok {command}")
        try:
            commands[command].configure(parser)
        except Exception as err:  # noqa: BLE001
            raise ConformanceError(f"command {command!r}: configure(parser) raised {type(err).__name__}: "
                                   f"{err}") from err
        _require(callable(parser.get_default("func")), f"command {command!r}: configure(parser) must "
                 "set parser.set_defaults(func=run) with run(args) -> int")
        checked.append(f"command:{command}")
    return checked




# ---------------------------------------------------------------------------- pytest: no silent skips
#: Skip reasons (prefixes) a test run may report, each with why it is legitimate. Any other skip
#: fails the run: an ``importorskip`` of a package the install lacks, or data that is not there,
#: would otherwise let a broken install pass. A suite allows more in its pytest configuration
#: (``mmtok_allowed_skips``, one reason prefix a line).
ALLOWED_SKIPS = {
    "needs a CUDA GPU": "GPU-only checks; CPU machines (CI) have no GPU",
}


class _SkipGuard:
    """Records every skip; at the end, a skip with no allowed reason fails the run and is listed."""

    def __init__(self, config):
        self.config, self.skips = config, []

    def unexpected(self) -> list[tuple[str, str]]:
        """(node id, reason) of the skips whose reason starts with no allowed prefix."""
        allowed = (*ALLOWED_SKIPS, *self.config.getini("mmtok_allowed_skips"))
        return [(node, reason) for node, reason in self.skips if not reason.startswith(allowed)]

    def _record(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skips.append((report.nodeid, reason.removeprefix("Skipped: ")))

    def pytest_collectreport(self, report):  # a module-level skip (importorskip at import time)
        self._record(report)

    def pytest_runtest_logreport(self, report):
        self._record(report)

    def pytest_sessionfinish(self, session, exitstatus):
        if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED) and self.unexpected():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        found = self.unexpected()
        if found:
            terminalreporter.section("unexpected skips (mmtok.testing)", red=True)
            for node, reason in found:
                terminalreporter.line(f"{node}: {reason}")
            terminalreporter.line(f"{len(found)} unexpected skip(s) fail the run: install what is missing, or "
                                  f"give a legitimate skip a reason starting with one of {sorted(ALLOWED_SKIPS)} "
                                  "or with a line of the suite's `mmtok_allowed_skips` ini option")


if pytest is not None:
    def pytest_addoption(parser):
        parser.addini("mmtok_allowed_skips", "skip reasons (prefixes) that do not fail the run (mmtok.testing)",
                      type="linelist", default=[])

    def pytest_configure(config):
        config.pluginmanager.register(_SkipGuard(config), "mmtok-skip-guard")
