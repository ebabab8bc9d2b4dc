"""Turning a plan into flat steps over value slots, and running them.

Everything that can be decided once per plan is decided here: which slot
holds which value, how each node is called, which ports are checked. The
per-call loop only moves values between slots and calls the nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

import attrs

from ._context import Context
from ._errors import PortValidationError
from ._ports import Bindings, Check, SpecViolation, compile_check, summarize
from ._spec import NodeSpec
from ._wiring import Feed, StageWiring, Wiring

__all__ = ["Program", "compile_program"]

CONTEXT_SLOT = 0
_NO_ARGS, _ONE_ARG, _POSITIONAL, _GENERAL = range(4)
_MISSING = object()

Step = tuple[int, Callable[..., Any], Any, Any, Any]


@attrs.frozen
class PortCheck:
    """The run-time check of one value arriving at (or leaving) one port.

    A variadic port has one check per producer, so that an error names the
    producer of the offending element.
    """

    port: str
    check: Check
    slot: int
    producer: str
    optional: bool


@attrs.frozen
class StepInfo:
    """What an error note or a check needs to know about one step."""

    node: str
    location: str
    inputs: tuple[tuple[str, Any], ...]
    input_checks: tuple[PortCheck, ...]
    output_checks: tuple[PortCheck, ...]
    outputs: tuple[tuple[str, int], ...]


@attrs.frozen(eq=False)
class Program:
    """The compiled form of a plan: slots, steps and result layout."""

    size: int
    batch_slots: tuple[tuple[str, int], ...]
    steps: tuple[Step, ...]
    infos: tuple[StepInfo, ...]
    results: tuple[tuple[str, Any], ...]
    stage: Any
    extras: frozenset[str] | None

    @property
    def batch_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.batch_slots)

    def run(
        self,
        batch: Mapping[str, Any],
        context: Context,
        checks: bool,
        view: str = "outputs",
    ) -> Any:
        """Run the steps and return the outputs in one view.

        ``view`` is ``"outputs"`` (values by name, as `Pipeline.forward`
        returns them), ``"nodes"`` (by node, then output) or ``"both"`` (a
        pair of the two).
        """
        vals: list[Any] = [None] * self.size
        vals[CONTEXT_SLOT] = context
        for key, slot in self.batch_slots:
            vals[slot] = batch[key]
        extras: dict[str, Any] = {}
        index = 0
        bindings: Bindings = {}
        try:
            for index, (kind, fn, get, out, post) in enumerate(self.steps):
                if checks:
                    bindings = {}
                    if self.infos[index].input_checks:
                        self._check(self.infos[index], True, vals, bindings)
                if kind == _ONE_ARG:
                    result = fn(get(vals))
                elif kind == _POSITIONAL:
                    result = fn(*get(vals))
                elif kind == _NO_ARGS:
                    result = fn()
                else:
                    args, kwargs = get(vals)
                    result = fn(*args, **kwargs)
                if post is None:
                    vals[out] = result
                else:
                    post(result, vals, extras)
                if checks and self.infos[index].output_checks:
                    self._check(self.infos[index], False, vals, bindings)
        except Exception as exc:
            self._annotate(exc, index, vals, context)
            raise
        if view == "outputs":
            return self._collect(vals, extras)
        if view == "nodes":
            return self._by_node(vals, extras)
        return self._collect(vals, extras), self._by_node(vals, extras)

    def _check(
        self, info: StepInfo, inputs: bool, vals: list[Any], bindings: Bindings
    ) -> None:
        for port_check in info.input_checks if inputs else info.output_checks:
            value = vals[port_check.slot]
            if value is None and port_check.optional:
                continue
            try:
                port_check.check(value, bindings, port_check.port)
            except SpecViolation as violation:
                raise _port_error(
                    violation, info, port_check, inputs, self.stage
                ) from None

    def _annotate(
        self, exc: Exception, index: int, vals: list[Any], context: Context
    ) -> None:
        if isinstance(exc, PortValidationError) or not self.infos:
            return
        info = self.infos[index]
        shown = ", ".join(
            f"{port}={_summary(vals, slots)}" for port, slots in info.inputs
        )
        add_note(
            exc,
            f"while running node {info.node!r} ({info.location}) in stage "
            f"{context.stage.name}, epoch={context.epoch}, "
            f"batch_idx={context.batch_idx}\n"
            f"with inputs: {shown or '(none)'}",
        )

    def _collect(self, vals: list[Any], extras: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, where in self.results:
            out[name] = _fetch(vals, where)
        if extras:
            self._merge_undeclared(out, extras)
        return out

    def _merge_undeclared(self, out: dict[str, Any], extras: dict[str, Any]) -> None:
        """Add undeclared outputs; one key from several nodes becomes a list.

        The list follows node names, like a fan-in port, and starts with the
        declared value when a declared output has the same name.
        """
        gathered: dict[str, list[Any]] = {}
        for node in sorted(extras):
            for key, value in extras[node].items():
                if self.extras is None or key in self.extras:
                    gathered.setdefault(key, []).append(value)
        for key, values in gathered.items():
            if key in out:
                values.insert(0, out[key])
            out[key] = values[0] if len(values) == 1 else values

    def _by_node(
        self, vals: list[Any], extras: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        result = {
            info.node: {n: vals[s] for n, s in info.outputs} for info in self.infos
        }
        for node, values in extras.items():
            result[node] = dict(values)
        return result


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note`` where it exists (3.11+), the same attribute otherwise."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        notes = [*getattr(exc, "__notes__", []), note]
        exc.__notes__ = notes  # type: ignore[attr-defined]


def _summary(vals: list[Any], slots: tuple[int, ...] | int | None) -> str:
    if slots is None:
        return "(default)"
    if isinstance(slots, int):
        return summarize(vals[slots])
    return summarize([vals[s] for s in slots])


def _port_error(
    violation: SpecViolation,
    info: StepInfo,
    port_check: PortCheck,
    is_input: bool,
    stage: Any,
) -> PortValidationError:
    producer = port_check.producer
    origin = "external input" if producer == "" else f"node {producer!r}"
    direction = "input" if is_input else "output"
    if not is_input:
        origin = f"node {info.node!r} itself"
    lines = [
        f"{direction} {port_check.port!r} of node {info.node!r} ({info.location}) "
        f"rejected a value in stage {stage.name}: {violation.reason}",
        f"  from: {origin}",
    ]
    if violation.expected:
        lines.append(f"  expected: {violation.expected}")
    lines.append(
        "  Fix: correct the producer, convert the value in a node between them, "
        "or loosen the port's annotation"
    )
    return PortValidationError(
        "\n".join(lines),
        node=info.node,
        port=port_check.port,
        stage=stage,
        producer=producer or "external input",
    )


class _Slots:
    """Hands out value slots: context first, then batch keys and outputs."""

    def __init__(self) -> None:
        self.size = CONTEXT_SLOT + 1
        self.batch: dict[str, int] = {}
        self.outputs: dict[tuple[str, str], int] = {}

    def new(self) -> int:
        self.size += 1
        return self.size - 1

    def of_batch(self, key: str) -> int:
        if key not in self.batch:
            self.batch[key] = self.new()
        return self.batch[key]

    def of_output(self, node: str, output: str) -> int:
        if (node, output) not in self.outputs:
            self.outputs[(node, output)] = self.new()
        return self.outputs[(node, output)]


def compile_program(
    wiring: Wiring,
    wired: StageWiring,
    order: list[str],
    outputs: tuple[str, ...] | None,
    batch_keys: frozenset[str],
    targets: Mapping[str, Callable[..., Any]],
    inputs_of: str | None = None,
) -> Program:
    """Lay out slots and steps for the nodes of a plan, in order.

    With ``inputs_of``, the results are that node's input values by port
    name (its default where nothing feeds a port) instead of outputs.
    """
    slots = _Slots()
    for node in order:
        for output in wiring.specs[node].outputs:
            slots.of_output(node, output.name)
    steps, infos = [], []
    for node in order:
        spec = wiring.specs[node]
        feeds = wired.feeds[node]
        sources = [_source(feed, slots, batch_keys) for feed in feeds]
        steps.append(_step(spec, sources, targets[node], slots))
        infos.append(_info(spec, feeds, sources, slots))
    if inputs_of is None:
        results = _results(wiring, wired, order, outputs, slots, batch_keys)
    else:
        results = _input_results(wired.feeds[inputs_of], slots, batch_keys)
    return Program(
        size=slots.size + 1,
        batch_slots=tuple(slots.batch.items()),
        steps=tuple(steps),
        infos=tuple(infos),
        results=results,
        stage=wired.stage,
        extras=None if outputs is None else frozenset(outputs),
    )


def _source(feed: Feed, slots: _Slots, batch_keys: frozenset[str]) -> Any:
    """A slot, a tuple of slots (variadic) or _MISSING (use the default)."""
    if feed.producers:
        found = tuple(slots.of_output(n, o) for n, o in feed.producers)
        return found if feed.port.variadic else found[0]
    if feed.external is not None and feed.external in batch_keys:
        slot = slots.of_batch(feed.external)
        return (slot,) if feed.port.variadic else slot
    return () if feed.port.variadic else _MISSING


def _step(
    spec: NodeSpec, sources: list[Any], target: Callable[..., Any], slots: _Slots
) -> Step:
    post, out = _output_handler(spec, slots)
    entries = [
        (
            port.kind,
            port.name,
            _Constant(None) if source is _MISSING and not port.has_default else source,
            port.default,
        )
        for port, source in zip(spec.inputs, sources)
    ]
    if spec.context is not None:
        kind = "keyword" if spec.context_position is None else "positional"
        position = (
            len(entries) if spec.context_position is None else (spec.context_position)
        )
        entries.insert(position, (kind, spec.context, CONTEXT_SLOT, None))
    if all(
        kind in ("positional", "positional-only") and type(source) is int
        for kind, _, source, _ in entries
    ):
        plain = [source for _, _, source, _ in entries]
        if not plain:
            return (_NO_ARGS, target, None, out, post)
        if len(plain) == 1:
            return (_ONE_ARG, target, itemgetter(plain[0]), out, post)
        return (_POSITIONAL, target, itemgetter(*plain), out, post)
    return (_GENERAL, target, _general_getter(entries), out, post)


def _general_getter(entries: list[tuple[str, str, Any, Any]]) -> Callable[..., Any]:
    """Build args and kwargs for a node with keyword, variadic or default ports.

    A port left to its default is omitted; the positional ports after it
    are then passed by keyword (a positional-only one gets its default).
    With ``*args``, positional ports always get a value (their default if
    need be), since the values for ``*args`` would otherwise fill them.
    """
    positional: list[Any] = []
    keyword: list[tuple[str, Any]] = []
    star: Any = ()
    skipping = False
    by_position = any(kind == "varargs" for kind, _, _, _ in entries)
    for kind, name, source, default in entries:
        if kind == "varargs":
            star = source
        elif source is _MISSING and (
            kind == "keyword" or (kind == "positional" and not by_position)
        ):
            skipping = True
        elif kind == "keyword" or (skipping and kind == "positional"):
            keyword.append((name, source))
        else:
            positional.append(_Constant(default) if source is _MISSING else source)

    def get(vals: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        args = [_fetch(vals, source) for source in positional]
        args.extend(vals[slot] for slot in star)
        kwargs = {name: _fetch(vals, source) for name, source in keyword}
        return args, kwargs

    return get


@attrs.frozen
class _Constant:
    value: Any


def _fetch(vals: list[Any], source: Any) -> Any:
    if type(source) is int:
        return vals[source]
    if type(source) is tuple:
        return [vals[slot] for slot in source]
    return source.value


def _output_handler(spec: NodeSpec, slots: _Slots) -> tuple[Any, Any]:
    if spec.returns == "single":
        return None, slots.of_output(spec.name, spec.outputs[0].name)
    if spec.returns == "none":
        return _ignore, None
    if spec.returns == "undeclared":
        return _undeclared_handler(spec), None
    names = spec.output_names
    targets = tuple(slots.of_output(spec.name, name) for name in names)
    optional = frozenset(p.name for p in spec.outputs if p.optional)
    return _several_handler(spec.name, names, targets, optional), None


def _ignore(result: Any, vals: list[Any], extras: dict[str, Any]) -> None:
    return None


def _several_handler(
    node: str,
    names: tuple[str, ...],
    targets: tuple[int, ...],
    optional: frozenset[str],
) -> Callable[[Any, list[Any], dict[str, Any]], None]:
    def post(result: Any, vals: list[Any], extras: dict[str, Any]) -> None:
        if isinstance(result, Mapping):
            unknown = [key for key in result if key not in names]
            if unknown:
                raise _shape_error(node, names, f"returned undeclared keys {unknown}")
            for name, slot in zip(names, targets):
                if name in result:
                    vals[slot] = result[name]
                elif name not in optional:
                    raise _shape_error(node, names, f"returned no {name!r}")
            return
        if isinstance(result, (tuple, list)) and len(result) == len(names):
            for value, slot in zip(result, targets):
                vals[slot] = value
            return
        raise _shape_error(node, names, f"returned {summarize(result)}")

    return post


def _undeclared_handler(
    spec: NodeSpec,
) -> Callable[[Any, list[Any], dict[str, Any]], None]:
    def post(result: Any, vals: list[Any], extras: dict[str, Any]) -> None:
        if result is None:
            return
        if not isinstance(result, Mapping):
            raise TypeError(
                f"node {spec.name!r} ({spec.location}) returned "
                f"{summarize(result)}; a node without declared outputs returns "
                f"a dict of them.\n  Fix: return {{'{spec.name}': ...}}, or "
                f"declare the outputs (OUTPUT_SPECS or outputs=)"
            )
        extras[spec.name] = result

    return post


def _shape_error(node: str, names: tuple[str, ...], what: str) -> TypeError:
    declared = ", ".join(repr(name) for name in names)
    hint = (
        f"\n  Fix: for one output write outputs={names[0]!r} (a string), and "
        f"the return value is that output whatever its type"
        if len(names) == 1
        else ""
    )
    return TypeError(
        f"node {node!r} {what}; it declares the outputs ({declared}), so it "
        f"must return a tuple of {len(names)} values or a mapping with these "
        f"keys{hint}"
    )


def _info(
    spec: NodeSpec, feeds: tuple[Feed, ...], sources: list[Any], slots: _Slots
) -> StepInfo:
    inputs: list[tuple[str, Any]] = []
    checks: list[PortCheck] = []
    for feed, source in zip(feeds, sources):
        port = feed.port
        inputs.append((port.name, None if source is _MISSING else source))
        check = compile_check(port.annotation, port.spec)
        if check is None or source is _MISSING:
            continue
        found = source if isinstance(source, tuple) else (source,)
        producers = tuple(n for n, _ in feed.producers) or ("",) * len(found)
        checks.extend(
            PortCheck(port.name, check, slot, producer, port.optional)
            for slot, producer in zip(found, producers)
        )
    output_checks = []
    for port in spec.outputs:
        check = compile_check(port.annotation, port.spec)
        if check is not None:
            slot = slots.of_output(spec.name, port.name)
            output_checks.append(
                PortCheck(port.name, check, slot, spec.name, port.optional)
            )
    return StepInfo(
        node=spec.name,
        location=spec.location,
        inputs=tuple(inputs),
        input_checks=tuple(checks),
        output_checks=tuple(output_checks),
        outputs=tuple(
            (port.name, slots.of_output(spec.name, port.name)) for port in spec.outputs
        ),
    )


def _results(
    wiring: Wiring,
    wired: StageWiring,
    order: list[str],
    outputs: tuple[str, ...] | None,
    slots: _Slots,
    batch_keys: frozenset[str],
) -> tuple[tuple[str, Any], ...]:
    ran = set(order)
    names = outputs if outputs is not None else _all_output_names(wiring, order)
    results = []
    for name in names:
        sources = [s for s in wired.values.get(name, ()) if s[0] in ran]
        if sources:
            found = tuple(slots.of_output(n, o) for n, o in sources)
            results.append((name, found[0] if len(found) == 1 else found))
        elif name in batch_keys:
            results.append((name, slots.of_batch(name)))
    return tuple(results)


def _input_results(
    feeds: tuple[Feed, ...], slots: _Slots, batch_keys: frozenset[str]
) -> tuple[tuple[str, Any], ...]:
    results = []
    for feed in feeds:
        source = _source(feed, slots, batch_keys)
        if source is _MISSING:
            port = feed.port
            source = _Constant(port.default if port.has_default else None)
        results.append((feed.port.name, source))
    return tuple(results)


def _all_output_names(wiring: Wiring, order: list[str]) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for node in order:
        for port in wiring.specs[node].outputs:
            names[port.name] = None
    return tuple(names)
