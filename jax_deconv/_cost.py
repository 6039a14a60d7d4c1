"""What each lowering of a :class:`~jax_deconv._plan.Plan` costs, and the choice of ``'auto'``.

Pure Python, no JAX: estimates from the plan's sizes alone. For each candidate lowering,
``'conv'`` (XLA's convolution of the phase form), ``'gemm'`` (im2col + one matrix product,
in steps along the first spatial axis when its im2col is large), ``'phases'`` (an im2col and
a matrix product per phase, over that phase's own taps) and ``'taps'`` (the definition, one
matrix product per kernel tap), :func:`candidates` gives the multiply-adds it performs, its
im2col buffer and its largest other buffer; :func:`choose` picks one per backend.

The phase form (``'conv'`` and ``'gemm'``) multiplies every tap of its phase kernel, the
zeros of a dilated or stride-padded kernel included, and builds buffers whose size follows
``prod(strides)`` and the dilated kernel, not the call: fine for ordinary layers (1x to 3.4x
the definition's work, buffers about y), out of all proportion for large dilations or strides
far above the input's size. ``'phases'`` does the definition's work with ``prod(strides)``
matrix products (right where a dilation empties phases and the strides are small);
``'taps'`` does it with one per kernel tap (right for strides far above the input's size).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from jax_deconv._plan import MAX_ARGUMENT, MAX_ELEMENTS, Plan


def _phase_rows(plan: Plan) -> int:
    """Batch times the phase rows every phase computes (a symbolic batch counts as one example)."""
    batch = plan.batch if isinstance(plan.batch, int) else 1
    return batch * math.prod(p.m_end - p.m_begin for p in plan.phases)


def phase_buffer_elements(plan: Plan) -> int:
    """Elements of the im2col buffer of the phase-GEMM lowering (taps x padded input).

    A symbolic batch size (``jax.export`` shape polymorphism) counts as one example.
    """
    return _phase_rows(plan) * math.prod(p.taps for p in plan.phases) * plan.in_channels


def _padded_and_interleaved(plan: Plan) -> tuple[int, int]:
    """Elements of the cropped and padded input and of the interleaved phase output before
    its crop, which every phase lowering builds (a symbolic batch counts as one example)."""
    phases = plan.phases
    batch = plan.batch if isinstance(plan.batch, int) else 1
    padded = batch * plan.in_channels * math.prod(p.m_end - p.m_begin + p.span for p in phases)
    interleaved = batch * plan.out_channels * math.prod(p.stride * (p.m_end - p.m_begin) for p in phases)
    return padded, interleaved


def phase_form_elements(plan: Plan) -> int:
    """Elements of the largest buffer both phase lowerings build besides im2col.

    The phase kernel (``prod(kernel_padded)`` taps, which a large dilation or a stride far
    above the input's size inflates), the cropped and padded input, and the interleaved
    phase output before its crop. A symbolic batch counts as one example.
    """
    kernel = math.prod(p.kernel_padded for p in plan.phases) * plan.in_channels * (plan.out_channels // plan.group)
    return max(kernel, *_padded_and_interleaved(plan))


def call_elements(plan: Plan) -> int:
    """Elements of x + weight + y: what any lowering must hold (symbolic batch: one example)."""
    batch = plan.batch if isinstance(plan.batch, int) else 1
    x = batch * plan.in_channels * math.prod(plan.in_spatial)
    w = plan.in_channels * (plan.out_channels // plan.group) * math.prod(plan.kernel)
    y = batch * plan.out_channels * math.prod(plan.out_spatial)
    return x + w + y


def phase_form_macs(plan: Plan) -> int:
    """Multiply-adds of the phase form: every phase tap, the zeros of a dilated or padded
    phase kernel included (a symbolic batch counts as one example)."""
    taps = math.prod(p.kernel_padded for p in plan.phases)
    return _phase_rows(plan) * taps * plan.in_channels * (plan.out_channels // plan.group)


def definition_macs(plan: Plan) -> int:
    """Multiply-adds of the definition: each input position times each kernel tap, at most."""
    batch = plan.batch if isinstance(plan.batch, int) else 1
    per_group = plan.out_channels // plan.group
    return batch * math.prod(plan.in_spatial) * math.prod(plan.kernel) * plan.in_channels * per_group


def _most_phase_taps_per_axis(plan: Plan) -> list[int]:
    """The most kernel taps one phase takes along each axis.

    Tap ``q`` lands in phase ``d*q mod s``; those residues repeat every ``s' = s / gcd(d, s)``
    taps, so a phase takes at most ``ceil(K / s')`` taps of an axis (as
    :func:`~jax_deconv._plan.phase_taps` lists them, without listing the phases).
    """
    cycles = (stride // math.gcd(dilation, stride) for stride, dilation in zip(plan.strides, plan.dilations))
    return [-(-kernel // cycle) for kernel, cycle in zip(plan.kernel, cycles)]


def _most_phase_taps(plan: Plan) -> int:
    """The most kernel taps one phase takes (the product over axes)."""
    return math.prod(_most_phase_taps_per_axis(plan))


def phases_count(plan: Plan) -> int:
    """Phases ``'phases'`` unrolls: ``prod(strides)``, each an im2col and a matrix product
    (or zeros when no tap reaches it)."""
    return math.prod(plan.strides)


def phases_im2col_elements(plan: Plan) -> int:
    """Elements of ``'phases'``' largest im2col: the phase with most taps (at most the phase
    form's ``prod(taps)``); the phases are computed one after another."""
    return _phase_rows(plan) * plan.in_channels * _most_phase_taps(plan)


def phases_macs(plan: Plan) -> int:
    """Multiply-adds of ``'phases'``: every phase's own taps over the phase rows (each kernel
    tap falls in exactly one phase, so this is the definition's work over the kept rows)."""
    return _phase_rows(plan) * math.prod(plan.kernel) * plan.in_channels * (plan.out_channels // plan.group)


PHASE_BUDGET = 8
"""The phase lowerings are used while their buffers stay within ``PHASE_BUDGET`` times
x + weight + y (plus 2**20 elements) and their work within ``PHASE_BUDGET / 2`` times the
definition's (plus 2**16); past either, the per-tap lowering, whose buffers never exceed y
and whose work is the definition's. (Ordinary layers: 1x to 2.4x the work, about 1x the
buffers; large dilations and strides above the input's size: thousands of times.)"""

MAX_OPS = 4096
"""The most ops (:func:`ops_emitted`) an explicitly chosen lowering may unroll; past it the
call is refused by name. XLA compiles every unrolled op: measured on 2 cores (AMD EPYC,
2026-12-03), the gradient of a 1-D ``'taps'`` call compiled in 1.9 s with 64 taps and 9 s with
256, a 3-D one in 6 s with 64; the forward alone of 4096 taps took 55 s and 5.9 GB."""

AUTO_MAX_OPS = 256
"""The most ops ``'auto'`` lets a lowering unroll (64 taps of ``'taps'``: seconds to compile)."""


def ops_emitted(plan: Plan, algorithm: str) -> int:
    """The ops ``algorithm``'s forward emits for ``plan`` that grow with the kernel or strides.

    ``'conv'``: one convolution. ``'gemm'``: an im2col slice per phase tap and axis, and one
    matrix product (its steps are one loop body). ``'phases'``: per phase, as ``'gemm'`` over
    that phase's taps, plus a slice of the weight. ``'taps'``: per kernel tap, a slice of x
    and of the weight, a matrix product and a scatter-add (4). The backward emits about twice
    as many.
    """
    if algorithm == "conv":
        return 1
    if algorithm == "gemm":
        return sum(p.taps for p in plan.phases) + 1
    if algorithm == "phases":
        return phases_count(plan) * (sum(_most_phase_taps_per_axis(plan)) + 2)
    return 4 * math.prod(plan.kernel)


def phase_form_limit(plan: Plan, *, im2col: bool) -> str | None:
    """Why the phase form cannot be built for ``plan`` (a buffer or dimension XLA cannot
    index), or None. ``im2col``: count the GEMM lowering's im2col buffer too."""
    sizes = {
        "a phase-form buffer (phase kernel, padded input or interleaved output)": phase_form_elements(plan),
        "an im2col buffer": phase_buffer_elements(plan) if im2col else 0,
    }
    for what, elements in sizes.items():
        if elements > MAX_ELEMENTS:
            return f"{what} of {elements} elements (limit {MAX_ELEMENTS})"
    features = math.prod(plan.strides) * plan.out_channels
    if features > MAX_ARGUMENT:
        return f"prod(strides) * C_out = {features} phase channels (limit {MAX_ARGUMENT})"
    return None


def phase_form_buffers_fit(plan: Plan) -> bool:
    """Whether the phase form's buffers stay within :data:`PHASE_BUDGET` times x + weight + y."""
    return phase_form_elements(plan) <= PHASE_BUDGET * call_elements(plan) + 2**20


def phase_form_fits(plan: Plan) -> bool:
    """Whether the phase lowerings stay within budget, buffers and work (see :data:`PHASE_BUDGET`)."""
    work_fits = phase_form_macs(plan) <= PHASE_BUDGET // 2 * definition_macs(plan) + 2**16
    return phase_form_buffers_fit(plan) and work_fits


REFUSE_BUFFER_BYTES = 2**30
"""An explicit ``'conv'`` or ``'gemm'`` is refused when a phase-form buffer would exceed both
this and :data:`PHASE_BUDGET` times x + weight + y (a dilation of 1000 cropped to a few
positions: tens of GB for a call of kilobytes)."""


def check_max_buffer_bytes(op: str, value: Any) -> int | None:
    """``max_buffer_bytes``: None or an int in [1, 2**62] (NumPy integers accepted)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: `max_buffer_bytes` must be None or an int (bytes); got {value!r}.")
    if not 1 <= int(value) <= 64 * MAX_ELEMENTS:
        raise ValueError(f"{op}: `max_buffer_bytes` must be between 1 and {64 * MAX_ELEMENTS}; got {int(value)}.")
    return int(value)


GEMM_MAX_TAPS = 64
"""``'gemm'``'s im2col unrolls one slice per phase tap and axis: at most this many per axis."""

GEMM_STEP_ABOVE = 32 * 2**20
"""Bytes of im2col above which ``'gemm'`` steps through the first spatial axis when no
``max_buffer_bytes`` is given (see :func:`gemm_slab`). Measured on a 2-core AVX-512 CPU: a
97 MiB im2col (benchmark layer F) ran 15-30 % faster in steps, a 10 MiB one (layer A) 0-90 %
slower."""

GEMM_STEP_BYTES = 4 * 2**20
"""The im2col of one step, when ``'gemm'`` steps (at least one phase row)."""


def _itemsize(itemsize: int) -> int:
    return max(itemsize, 4)  # 'gemm' multiplies 16-bit inputs in float32


def gemm_row_bytes(plan: Plan, itemsize: int) -> int:
    """Bytes of ``'gemm'``'s im2col for one phase row of the first spatial axis (its smallest step)."""
    first = plan.phases[0]
    return -(-phase_buffer_elements(plan) * _itemsize(itemsize) // max(first.m_end - first.m_begin, 1))


def gemm_slab(plan: Plan, itemsize: int, max_buffer_bytes: int | None = None) -> int | None:
    """Phase rows of the first spatial axis ``'gemm'`` handles per step (0: all at once), or
    None when even one row's im2col exceeds ``max_buffer_bytes``.

    Each step builds the im2col of its rows, multiplies it and drops it; under autodiff the
    step is rematerialised, so the backward holds one step's im2col too. Steps are taken when
    the whole im2col would exceed ``max_buffer_bytes`` (default ``GEMM_STEP_ABOVE``), each of
    about ``GEMM_STEP_BYTES`` (or ``max_buffer_bytes`` if smaller).
    """
    limit = GEMM_STEP_ABOVE if max_buffer_bytes is None else max_buffer_bytes
    if phase_buffer_elements(plan) * _itemsize(itemsize) <= limit:
        return 0
    row = gemm_row_bytes(plan, itemsize)
    if row > limit:
        return None
    return max(1, min(limit, GEMM_STEP_BYTES) // row)


MAX_PHASES = 512
"""``'phases'`` unrolls an im2col and a matrix product per phase (``prod(strides)``): at most
this many."""

PHASES_AUTO_MAX = 64
"""``'auto'`` takes ``'phases'`` for at most this many phases (compile time grows with them)."""

PHASES_WASTE = 3
"""``'auto'`` takes ``'phases'`` over ``'gemm'`` on CPU where the phase form would do at least
this many times ``'phases'``' work: where a dilation shares a factor with the stride and
leaves phases empty (k3 s2 d2: 6 taps' work for 3 per axis, 8x in 3-D; ``'phases'`` forward
0.22-0.26x of ``'gemm'``'s on a 12^3 layer), not for the k3 s2 layers' 2.4x (3-D; 0.75-1.14x,
no consistent gain) or a k5 s2 (1.7x; ``'phases'`` 3-4x slower: its phases' im2cols hold 125
copies of the input against ``'gemm'``'s 27). Measured one core, AMD EPYC, 2026-12-02."""


@dataclasses.dataclass(frozen=True)
class Cost:
    """One lowering's estimated cost for one plan (a symbolic batch counts as one example).

    Attributes:
      algorithm: ``'conv'``, ``'gemm'``, ``'phases'`` or ``'taps'``.
      macs: multiply-adds of the forward (the backward does twice as many, dx and dw).
      im2col_bytes: the im2col buffer (``'gemm'``: one step's when it steps; ``'phases'``:
        the largest phase's).
      buffer_elements: its largest other buffer: the phase kernel, padded input or interleaved
        output of the phase form; for ``'taps'``, y.
      ops: the ops its forward emits that grow with the kernel or the strides (see
        :func:`ops_emitted`): compile time and XLA's scheduling follow them.
      slab: ``'gemm'``: phase rows of the first spatial axis per step (0: one step).
      reason: why it cannot run this call (None: it can).
    """

    algorithm: str
    macs: int
    im2col_bytes: int
    buffer_elements: int
    ops: int = 1
    slab: int = 0
    reason: str | None = None


def phases_limit(plan: Plan) -> str | None:
    """Why ``'phases'`` cannot run ``plan`` (too many phases to unroll, or a buffer XLA cannot
    index), or None."""
    if phases_count(plan) > MAX_PHASES:
        return f"prod(strides) = {phases_count(plan)} phases to unroll, one matrix product each (limit {MAX_PHASES})"
    largest = max(*_padded_and_interleaved(plan), phases_im2col_elements(plan))
    if largest > MAX_ELEMENTS:
        return f"a buffer of {largest} elements, more than XLA can index (limit {MAX_ELEMENTS})"
    return None


def candidates(plan: Plan, itemsize: int, max_buffer_bytes: int | None = None) -> tuple[Cost, ...]:
    """The cost of ``'conv'``, ``'gemm'``, ``'phases'`` and ``'taps'`` for ``plan``
    (``itemsize``: bytes per element of the inputs; ``max_buffer_bytes``: the largest im2col
    allowed)."""
    phase_macs, phase_buffers = phase_form_macs(plan), phase_form_elements(plan)
    batch = plan.batch if isinstance(plan.batch, int) else 1
    y = batch * plan.out_channels * math.prod(plan.out_spatial)
    conv = Cost("conv", phase_macs, 0, phase_buffers, reason=phase_form_limit(plan, im2col=False))
    gemm_ops, phases_ops, taps_ops = (ops_emitted(plan, name) for name in ("gemm", "phases", "taps"))
    reason = phase_form_limit(plan, im2col=True)
    slab = gemm_slab(plan, itemsize, max_buffer_bytes)
    whole = phase_buffer_elements(plan) * _itemsize(itemsize)
    if slab is None:
        reason = reason or f"an im2col step of more than max_buffer_bytes={max_buffer_bytes}"
        im2col = whole
    else:
        im2col = whole if slab == 0 else gemm_row_bytes(plan, itemsize) * slab
    reason = reason or _too_many_ops(gemm_ops)
    gemm = Cost("gemm", phase_macs, im2col, phase_buffers, gemm_ops, slab or 0, reason)
    phase_im2col = phases_im2col_elements(plan) * _itemsize(itemsize)
    buffers = max(_padded_and_interleaved(plan))
    phases_reason = phases_limit(plan) or _too_many_ops(phases_ops)
    phases = Cost("phases", phases_macs(plan), phase_im2col, buffers, phases_ops, reason=phases_reason)
    taps = Cost("taps", definition_macs(plan), 0, y, taps_ops, reason=_too_many_ops(taps_ops))
    return conv, gemm, phases, taps


def _too_many_ops(ops: int) -> str | None:
    return f"{ops} ops to unroll (limit {MAX_OPS})" if ops > MAX_OPS else None


def refusal(plan: Plan, algorithm: str, itemsize: int, max_buffer_bytes: int | None = None) -> str | None:
    """Why an explicit ``algorithm`` is refused for ``plan`` (completing "algorithm=... would"), or None.

    A buffer XLA cannot index, more than :data:`MAX_OPS` ops to unroll, more than
    :data:`~jax_deconv._cost.MAX_PHASES` phases, a phase-form buffer beyond
    :data:`REFUSE_BUFFER_BYTES` and out of proportion to the call, or (``'gemm'``) no im2col
    step within ``max_buffer_bytes``. A call whose output no input reaches runs no lowering.
    """
    if plan.is_zero:
        return None
    cost = {c.algorithm: c for c in candidates(plan, itemsize, max_buffer_bytes)}[algorithm]
    if algorithm in ("conv", "gemm"):
        unindexable = phase_form_limit(plan, im2col=algorithm == "gemm")
        if unindexable is not None:
            return f"build {unindexable}, more than XLA can index"
        largest = phase_form_elements(plan) * _itemsize(itemsize)
        if largest > REFUSE_BUFFER_BYTES and not phase_form_buffers_fit(plan):
            return (
                f"build a phase-form buffer of {largest} bytes (phase kernel, padded input or interleaved "
                f"output) for a call whose x + weight + y hold {call_elements(plan) * itemsize} bytes"
            )
    return None if cost.reason is None else f"need {cost.reason}"


def _phases_fit(plan: Plan, phases: Cost, max_buffer_bytes: int | None) -> bool:
    """Whether ``'auto'`` may take ``'phases'``: few phases, buffers in proportion to the call,
    and an im2col within ``max_buffer_bytes`` (default ``GEMM_STEP_ABOVE``; it does not step)."""
    limit = GEMM_STEP_ABOVE if max_buffer_bytes is None else max_buffer_bytes
    return (
        phases.reason is None
        and phases_count(plan) <= PHASES_AUTO_MAX
        and phases.buffer_elements <= PHASE_BUDGET * call_elements(plan) + 2**20
        and phases.im2col_bytes <= limit
    )


def _channels_first_gemm(plan: Plan) -> bool:
    """``'gemm'``'s channels-first form (NCHW, one phase tap per axis: kernel <= stride), which
    needs no im2col and beats the native kernels' layout transposes there (layer B NCHW,
    N1 64->32 24^3 k2 s2, 2 cores: forward 4.9 against 8.0 ms)."""
    return plan.data_format == "NCHW" and all(p.taps == 1 for p in plan.phases)


def native_runs(plan: Plan) -> int:
    """The small matrix products the native kernels run for ``plan`` (each map about the same):
    one per (example, position of x's outer axes, kernel tap, group), over a run of positions
    along the last axis; depthwise, one per (example, position, tap) for every group at once."""
    depthwise = plan.group > 1 and plan.in_channels == plan.group == plan.out_channels
    groups = 1 if depthwise else plan.group
    return plan.batch * math.prod(plan.in_spatial[:-1]) * math.prod(plan.kernel) * groups


NATIVE_MIN_RUN_MACS = 32
"""``'auto'`` leaves the native kernels to the XLA choice where they would run more than
``NATIVE_MANY_RUNS`` runs of fewer multiply-adds than this on average: each run costs
about 16 ns however small (AMD EPYC Zen 4, 2026-12-07: NHWC x (1, 2000, 1, 1), kernel (1024, 1),
strides (256, 1), one channel: 2 M runs of one multiply-add, 32 ms forward, 'gemm' 1 ms). The
benchmark layers run 128 to 130,000 per run."""

NATIVE_MANY_RUNS = 2**16


def native_overhead_bound(plan: Plan) -> bool:
    """Whether the native kernels' fixed cost per run would outweigh their work (see
    :data:`NATIVE_MIN_RUN_MACS`)."""
    runs = native_runs(plan)
    return runs > NATIVE_MANY_RUNS and definition_macs(plan) < NATIVE_MIN_RUN_MACS * runs


def choose(
    plan: Plan, itemsize: int, backend: str, max_buffer_bytes: int | None = None, *, native: bool = False
) -> Cost:
    """The candidate ``'auto'`` runs on ``backend`` (``'cpu'``, ``'gpu'``, ``'tpu'``...).

    * on CPU where the native kernels can run the call (``native``; a known batch), ``'native'``
      (the definition's work, no im2col and no interleave), except where the XLA choice below
      is ``'gemm'`` in its channels-first form (NCHW, kernel <= stride), which is faster there,
      or where the kernels would run many tiny matrix products (:func:`native_overhead_bound`:
      a long kernel over one or two channels); otherwise, among the XLA lowerings:

    * where the phase form is out of proportion (:func:`phase_form_fits`): ``'phases'`` if it
      fits (at most ``PHASES_AUTO_MAX`` phases, buffers within ``PHASE_BUDGET``, its im2col
      within ``max_buffer_bytes``, default 32 MiB), else ``'taps'`` if it unrolls at most
      ``AUTO_MAX_OPS`` ops, else ``'conv'`` where only the phase form's work is out of
      proportion, not its buffers (one op to compile), else the one of ``'phases'`` and
      ``'taps'`` with fewer ops;
    * on CPU, ``'phases'`` where the phase form would do ``PHASES_WASTE`` times its work and
      it fits; else ``'gemm'`` (XLA:CPU's dots reach a fast GEMM, its convolutions do not),
      in steps as :func:`gemm_slab` says, unless an axis has more than ``GEMM_MAX_TAPS``
      phase taps or no step fits ``max_buffer_bytes``; then ``'conv'`` (XLA:CPU's
      convolution builds no im2col: slower, but its temporaries are about the padded input
      and y);
    * elsewhere ``'conv'``, which cuDNN and the TPU's convolution units run directly.
    """
    xla = _choose_xla(plan, itemsize, backend, max_buffer_bytes)
    if backend != "cpu" or not native or not isinstance(plan.batch, int):
        return xla
    if xla.algorithm == "gemm" and _channels_first_gemm(plan):
        return xla
    if native_overhead_bound(plan) and xla.algorithm != "conv":
        return xla
    y = plan.batch * plan.out_channels * math.prod(plan.out_spatial)
    return Cost("native", definition_macs(plan), 0, y)


def _choose_xla(plan: Plan, itemsize: int, backend: str, max_buffer_bytes: int | None) -> Cost:
    """:func:`choose` among the XLA lowerings."""
    conv, gemm, phases, taps = candidates(plan, itemsize, max_buffer_bytes)
    if not phase_form_fits(plan):
        if _phases_fit(plan, phases, max_buffer_bytes):
            return phases
        if taps.reason is None and taps.ops <= AUTO_MAX_OPS:
            return taps
        # Many taps: their ops would take long to compile. The phase form in one op, where
        # its buffers are in proportion (its work is not: a long or dilated kernel on a short
        # input), else the fewer ops of 'phases' and 'taps'.
        if conv.reason is None and phase_form_buffers_fit(plan):
            return conv
        if phases.reason is None and phases.ops <= taps.ops:
            return phases
        return taps
    if backend != "cpu":
        return conv
    if gemm.macs >= PHASES_WASTE * phases.macs and _phases_fit(plan, phases, max_buffer_bytes):
        return phases
    if gemm.reason is None and max(p.taps for p in plan.phases) <= GEMM_MAX_TAPS:
        return gemm
    return conv
