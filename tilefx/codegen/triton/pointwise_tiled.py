"""The pointwise template's 2-D tiled mode, for bodies that read an input transposed.

The flat mode (``pointwise.py``) gives each program ``BLOCK`` consecutive output
elements: the stores coalesce, and so does every input read in the output's
order. A ``permute`` that moves an input's contiguous (last) dim elsewhere --
ConvNeXt's NHWC -> NCHW ``permute(0, 3, 1, 2)`` fused with its layer scale and
residual add, ViT's patch ``flatten(2).transpose(1, 2)`` -- makes that input's
loads strided by a whole row (C elements apart), and such kernels ran at about
a fifth of the H200's memory bandwidth.

So, as Inductor tiles pointwise kernels with transposes, a program here works
on a ``[BLOCK_Y, BLOCK_X]`` tile of the output:

- X is the output's last dim (merged with the dims before it while every input
  reads them as one linear run, ConvNeXt's ``H*W``): stores are contiguous
  along X;
- Y is the output dim the transposed input's last dim maps to (merged the
  same way): that input's loads are contiguous along Y;
- the other dims come from the program id, one scalar index each.

The emitter's index for each output dim is then an ``[BLOCK_Y, 1]`` or
``[1, BLOCK_X]`` block (or a scalar), so every load is a 2-D pointer block
whose contiguity Triton's axis analysis sees. Triton's ``Coalesce`` pass picks
a layout per memory access, ordered by that contiguity (fastest axis first,
vectorized when the divisibility allows), so the transposed load walks axis 0
and the store axis 1, and the layout conversion between them goes through
shared memory: both sides of the transpose touch whole cache lines.

``find_tiling`` picks Y and X from the body alone: it follows each body
input's index backwards from the outputs through the ops the emitter applies
(``permute`` permutes it, ``reshape`` re-links groups of dims, elementwise
and broadcast ops pass it on or drop stretched dims) and records, for every
dim of each input read, which output dim indexes it at unit stride. An input
whose last dim follows an output dim other than X while it also varies along
X is read transposed; the heaviest such output dim is Y. A body without one
(a plain elementwise chain, a head split that keeps ``D`` last, a per-channel
scale read as a broadcast) stays flat.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from tilefx.codegen.triton.emit import Emitter, program_id, shape_of, strides
from tilefx.codegen.triton.ops import delinearize, reshape_groups
from tilefx.ir.graph import Graph, Op, Value

# an input dim whose index is no single output dim at unit stride (a re-linearized
# reshape group, a strided slice, a gathered axis); None: a constant index (stretched)
UNKNOWN = -1
DimMap = tuple[int | None, ...]


@dataclass(frozen=True)
class Tiling:
    """How the output's dims form the tile: ``y`` and ``x`` are runs of consecutive
    non-unit dims (row-major within each), ``z`` the other non-unit dims."""

    shape: tuple[int, ...]
    y: tuple[int, ...]
    x: tuple[int, ...]

    @property
    def z(self) -> tuple[int, ...]:
        return tuple(d for d, n in enumerate(self.shape) if n > 1 and d not in self.y + self.x)

    def size(self, dims: tuple[int, ...]) -> int:
        return math.prod(self.shape[d] for d in dims)

    @property
    def ysize(self) -> int:
        return self.size(self.y)

    @property
    def xsize(self) -> int:
        return self.size(self.x)

    @property
    def zsize(self) -> int:
        return self.size(self.z)

    def programs(self, by: int, bx: int) -> int:
        return self.zsize * -(-self.ysize // by) * -(-self.xsize // bx)


# ------------------------------------------------------------------ analysis

def _operand_maps(op: Op, m: DimMap) -> list[tuple[Value, DimMap]]:
    """Each operand of ``op`` with its dim map, given the map ``m`` of ``op``'s result."""
    out_shape = shape_of(op.result)
    if op.name == "permute":
        src: list[int | None] = [None] * len(m)
        for out_axis, in_axis in enumerate(d % len(m) for d in op.attr("dims")):
            src[in_axis] = m[out_axis]
        return [(op.inputs[0], tuple(src))]
    if op.name == "reshape":
        return [(op.inputs[0], _reshape_map(shape_of(op.inputs[0]), out_shape, m))]
    if op.name == "slice":
        axis = op.attr("axis") % len(m)
        strided = int(op.attr("step")) != 1 and m[axis] is not None
        return [(op.inputs[0], m[:axis] + ((UNKNOWN if strided else m[axis]),) + m[axis + 1:])]
    if op.name in ("pad", "concat"):  # shifted indices: still unit stride
        return [(v, m) for v in op.inputs]
    if op.name == "take":
        table, ind = op.inputs
        axis, k = op.attr("axis") % len(shape_of(table)), len(shape_of(ind))
        return [(table, m[:axis] + (UNKNOWN,) + m[axis + k:]), (ind, m[axis:axis + k])]
    # elementwise and broadcast ops (broadcast_to too): numpy broadcasting, right-aligned
    out = []
    for v in op.inputs:
        shape = shape_of(v)
        lead = len(out_shape) - len(shape)
        out.append((v, tuple(None if d == 1 else m[lead + i] for i, d in enumerate(shape))))
    return out


def _reshape_map(src: tuple[int, ...], out: tuple[int, ...], m: DimMap) -> DimMap:
    """A reshape keeps the dims of a group whose non-unit sizes agree; a re-linearized
    group's last source dim still steps with the group's last result dim (up to the wrap),
    its other dims do not follow any output dim at unit stride."""
    groups = reshape_groups(src, out) or [(list(range(len(src))), list(range(len(out))))]
    res: list[int | None] = [None] * len(src)
    for gi, gj in groups:
        si = [i for i in gi if src[i] != 1]
        oj = [j for j in gj if out[j] != 1]
        if [src[i] for i in si] == [out[j] for j in oj]:
            for i, j in zip(si, oj):
                res[i] = m[j]
        elif any(m[j] is not None for j in oj):
            for i in si:
                res[i] = UNKNOWN
            if si and oj and m[oj[-1]] is not None:
                res[si[-1]] = m[oj[-1]]
    return tuple(res)


def reads(body: Graph, shape: tuple[int, ...]) -> list[tuple[Value, DimMap]]:
    """Every body input read by the outputs (all of ``shape``), with its dim map."""
    producer = body.producers()
    start: DimMap = tuple(d if n > 1 else None for d, n in enumerate(shape))
    todo = [(v, start) for v in body.outputs]
    seen: set[tuple[str, DimMap]] = set()
    found = []
    while todo:
        v, m = todo.pop()
        if (v.name, m) in seen:
            continue
        seen.add((v.name, m))
        op = producer.get(v.name)
        if op is None:
            found.append((v, m))
        elif op.name not in ("const", "iota"):
            todo += _operand_maps(op, m)
    return found


def _mergeable(found: list[tuple[Value, DimMap]], shape: tuple[int, ...], a: int, b: int) -> bool:
    """Whether output dims ``a`` < ``b`` (consecutive non-unit dims) can share a tile axis:
    every input reads them as one linear run (adjacent dims, same order, same extent) or
    not at all. Only speed depends on it: each dim still gets its own index."""
    for v, m in found:
        ia = [i for i, d in enumerate(m) if d == a]
        ib = [i for i, d in enumerate(m) if d == b]
        if UNKNOWN in m:  # some index of the read is not followed: do not bet on it
            return False
        if not ia and not ib:  # stretched along both
            continue
        if len(ia) != 1 or len(ib) != 1:
            return False
        vs = shape_of(v)
        i, j = ia[0], ib[0]
        if j < i or any(vs[k] != 1 for k in range(i + 1, j)) or vs[j] != shape[b]:
            return False
    return True


def _run(found: list[tuple[Value, DimMap]], shape: tuple[int, ...], last: int,
         stop: int | None) -> tuple[int, ...]:
    """Output dim ``last`` and the non-unit dims before it that merge with it (down to,
    not including, ``stop``)."""
    nonunit = [d for d, n in enumerate(shape) if n > 1]
    run = [last]
    k = nonunit.index(last)
    while k > 0 and nonunit[k - 1] != stop and _mergeable(found, shape, nonunit[k - 1], run[0]):
        k -= 1
        run.insert(0, nonunit[k])
    return tuple(run)


@functools.lru_cache(maxsize=512)  # per body object: clamp, features and emit each ask, per schedule
def find_tiling(body: Graph) -> Tiling | None:
    """The tile axes of a body that reads an input transposed; None: the flat mode fits.
    Bodies whose outputs differ in shape (several launches) stay flat."""
    shapes = {shape_of(v) for v in body.outputs}
    if len(shapes) != 1:
        return None
    (shape,) = shapes
    nonunit = [d for d, n in enumerate(shape) if n > 1]
    if len(nonunit) < 2 or 0 in shape:
        return None
    xb = nonunit[-1]
    found = reads(body, shape)
    votes: dict[int, int] = {}
    for v, m in found:
        vs = shape_of(v)
        lasts = [m[i] for i, n in enumerate(vs) if n > 1]
        # transposed: contiguous along another output dim, yet stepping along X elsewhere
        if lasts and lasts[-1] is not None and lasts[-1] not in (UNKNOWN, xb) and xb in m:
            votes[lasts[-1]] = votes.get(lasts[-1], 0) + math.prod(vs) * v.type.dtype.itemsize
    if not votes:
        return None
    yb = max(votes, key=lambda d: (votes[d], d))
    return Tiling(shape, _run(found, shape, yb, None), _run(found, shape, xb, yb))


# ------------------------------------------------------------------ emission

class TileEmitter(Emitter):
    """The emitter with the tile's merged axes kept linear: an input that holds a run's
    dims consecutively, with the run's sizes, is read at ``linear index * stride`` rather
    than at the sum of the delinearized parts (``(y // 28) * 28 + y % 28`` hides from
    Triton's axis analysis that ``y`` steps by one: a merged ``H*W`` axis would load in
    4-element pieces, not 16-byte vectors). Equal on every lane the mask keeps: the run's
    index variables are exactly ``delinearize(linear, sizes)``."""

    def __init__(self, body: Graph, args: dict[str, str]) -> None:
        super().__init__(body, args)
        self.runs: list[tuple[tuple[str, ...], str, tuple[int, ...]]] = []  # (vars, linear, sizes)

    def offset(self, idx: tuple[str, ...], shape: tuple[int, ...]) -> str:
        idx, terms, st = tuple(idx), [], strides(shape)
        for names, lin, sizes in self.runs:
            n = len(names)
            for i in range(len(idx) - n + 1):
                if idx[i:i + n] == names and shape[i:i + n] == sizes:
                    terms.append(lin if st[i + n - 1] == 1 else f"{lin} * {st[i + n - 1]}")
                    idx = idx[:i] + ("0",) * n + idx[i + n:]
                    break
        rest = super().offset(idx, shape)
        return " + ".join(([] if rest == "0" else [rest]) + terms) or "0"


def emit_tiled_kernel(body: Graph, fn: str, tiling: Tiling, outputs: list[tuple[str, Value]],
                      by: int, bx: int, args: dict[str, str], params: list[str]) -> list[str]:
    """One jit function computing ``outputs`` (pointer name, body value) in
    ``[BLOCK_Y, BLOCK_X]`` tiles; programs run X tiles fastest, then Y tiles, then the
    other dims (``tiling.programs(by, bx)`` of them)."""
    shape = tiling.shape
    ny, nx = -(-tiling.ysize // by), -(-tiling.xsize // bx)
    e = TileEmitter(body, args)
    e.scalars |= {"pid", "pid_x", "pid_y", "pid_z"}
    e.line(f"pid = {program_id(body, 0)}")
    y_tiles = "pid" if nx == 1 else f"pid // {nx}"
    if nx > 1:
        e.line(f"pid_x = pid % {nx}")
    if ny > 1:
        wrapped = y_tiles if nx == 1 else f"({y_tiles})"
        e.line(f"pid_y = {y_tiles}" if tiling.zsize == 1 else f"pid_y = {wrapped} % {ny}")
    if tiling.zsize > 1:
        e.line(f"pid_z = pid // {nx * ny}")
    start_y = "pid_y * BLOCK_Y + " if ny > 1 else ""
    start_x = "pid_x * BLOCK_X + " if nx > 1 else ""
    e.line(f"yindex = ({start_y}tl.arange(0, BLOCK_Y))[:, None]")
    e.line(f"xindex = ({start_x}tl.arange(0, BLOCK_X))[None, :]")
    ymask = xmask = mask = None
    if tiling.ysize % by:
        e.line(f"ymask = yindex < {tiling.ysize}")
        ymask = mask = "ymask"
    if tiling.xsize % bx:
        e.line(f"xmask = xindex < {tiling.xsize}")
        xmask = mask = "xmask"
    if ymask and xmask:
        e.line("mask = ymask & xmask")
        mask = "mask"
    if mask is not None:  # the body only stores: a per-channel scale needs no column mask
        e.mask_parts[mask] = ((ymask, "yindex"), (xmask, "xindex"))
    idx = ["0"] * len(shape)
    for dims, lin in ((tiling.z, "pid_z"), (tiling.y, "yindex"), (tiling.x, "xindex")):
        if dims:
            sizes = tuple(shape[d] for d in dims)
            names = delinearize(e, lin, sizes)
            for d, i in zip(dims, names):
                idx[d] = i
            if len(dims) > 1:
                e.runs.append((names, lin, sizes))
    # the row-major offset of the output (and of every input read in its order)
    zoff = e.offset(tuple(i if d in tiling.z else "0" for d, i in enumerate(idx)), shape)
    terms = [] if zoff == "0" else [zoff]
    terms += [f"yindex * {strides(shape)[tiling.y[-1]]}", "xindex"]  # x is the trailing run: stride 1
    offset = e.index_var(" + ".join(terms))
    e.flat = (tuple(idx), shape, offset)
    for ptr, v in outputs:
        e.store(ptr, v, tuple(idx), mask, offset=offset)
    return ["@triton.jit",
            f"def {fn}({', '.join(params)}, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):", *e.lines]
