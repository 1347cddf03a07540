"""Distributed measurement on Ray (``autotune/cluster.py``) on a local two-node cluster.

One cluster for the module (``ray.cluster_utils.Cluster``: two raylets on this
machine, one CPU and the target's measure resource each), so re-timing on a second
node has a second node; the node-death test adds a third and kills it. Every thread
count is 1 there: the "nodes" share two cores, and a kernel timed on one while another
times another would otherwise see its threads fight. Kernels are tiny and trials few; the Ray workers keep their
runner child between tests.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from tilefx.autotune.cluster import (  # noqa: E402
    TASK_EXIT, TASK_EXIT_FIRST, TASK_HANG, ClusterError, RayBuilder, RayCluster, RayRunner,
    describe, measure_resource)
from tilefx.autotune.tuner import TuneOptions, Tuner  # noqa: E402
from tilefx.codegen.measure import LocalBuilder, LocalRunner  # noqa: E402
from tilefx.codegen.space import is_extern  # noqa: E402
from tilefx.codegen.target import Target  # noqa: E402
from tilefx.ir import DType, TensorType  # noqa: E402
from tilefx.ir.builder import kernel_op  # noqa: E402

TARGET = Target.host_cpu()
RESOURCE = measure_resource(TARGET)
# the runner settings of `tilefx tune --timeout 20` (the CLI test's): the workers' runner
# children, made per settings, are then started once for the whole module
FAST = dict(timeout=20.0, repeats=10, min_repeat_seconds=0.005)
# what a measurement carries besides the one record the tuner counts
EXTRA_NOTES = ("re-timed on node", "timing disagrees", "re-timing on another node failed")


def f32(*shape: int) -> TensorType:
    return TensorType(DType.float32, shape)


def _linear_gelu(name="fc", m=16, k=32, n=16):
    return kernel_op("contraction", [f32(m, k), f32(k, n), f32(n)],
                     lambda b, x, w, c: b.op("gelu", b.op("add", b.op("matmul", x, w), c),
                                             approximate="none"), name=name)


def _softmax(name="sm"):
    return kernel_op("reduction", [f32(8, 64)], lambda b, x: b.op("softmax", x, dim=-1), name=name)


def _relu_add(name="pw", n=256):
    return kernel_op("pointwise", [f32(4, n), f32(4, n)],
                     lambda b, x, y: b.op("relu", b.op("add", x, y)), name=name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    env = {"TILEFX_CACHE_DIR": str(tmp_path_factory.mktemp("cluster_cache")),
           "TVM_BIND_THREADS": "0", "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the raylets, and so every worker, inherit these
    # a killed node is declared dead after 3 failed health checks 1 s apart (Ray's default:
    # 5, 3 s apart), so the node-death test waits seconds, not a quarter minute; a live but
    # busy raylet still has each check's 10 s to answer
    nodes = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, resources={RESOURCE: 1}, include_dashboard=False,
        _system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3}))
    nodes.add_node(num_cpus=1, resources={RESOURCE: 1})
    try:
        ray.init(address=nodes.address, log_to_driver=False)
        nodes.wait_for_nodes()
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _options(tmp_path, **kw):
    # random search: the same proposals here and locally, and no cost model in the driver
    return TuneOptions(**{**dict(trials=4, batch=4, progress=False, seed=1, strategy="random",
                                 db_path=str(tmp_path / "tuning.db")), **FAST, **kw})


def _ray_tuner(tmp_path, cluster_conn, *, tolerance=None, build_fault=None, fault=None,
               task_timeout=60.0, **kw):
    runner = RayRunner(cluster_conn, task_timeout=task_timeout, tolerance=tolerance,
                       fault=fault, **{**FAST, **kw})
    return Tuner(TARGET, _options(tmp_path), builder=RayBuilder(cluster_conn, fault=build_fault),
                 runner=runner)


def _primary(records):
    """The records the tuner counted (one per trial): not re-timings nor re-matches' extras."""
    return [r for r in records if not r.error.startswith(EXTRA_NOTES)]


def _once_per_candidate(db, res, rematched=0):
    records = db.records(res.workload_key, TARGET.key())
    primary = _primary(records)
    fps = [r.fingerprint for r in primary]
    # the tuner's re-match of the library vs the best schedule adds `rematched` measurements
    assert len(set(fps)) == res.trials == len(primary) - rematched, (res, fps)
    return records


# --------------------------------------------------------------------- no cluster needed

def test_errors_name_the_argument_and_a_dead_address_fails_fast():
    assert describe("10.0.0.5:6379", "--ray") == "--ray 10.0.0.5:6379"
    assert describe("ray", "--ray") == "--ray"
    assert describe("10.0.0.5:6379") == "cluster='10.0.0.5:6379'"
    conn = RayCluster("127.0.0.1:1", TARGET, where="--ray 127.0.0.1:1")
    with pytest.raises(ClusterError, match=r"^--ray 127\.0\.0\.1:1: cannot connect"):
        conn.connect()
    with pytest.raises(ClusterError, match="cannot connect"):  # remembered: no second wait
        conn.connect()
    with pytest.raises(ClusterError, match="not an address"):
        RayCluster("nonsense", TARGET).connect()


def test_cluster_option_reaches_the_tuner_through_compile_and_the_session(tmp_path):
    import tilefx
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.session import CompileSession

    cm = tilefx.compile(lambda x: x * 2.0, tune=2, cluster="10.0.0.5:6379")
    assert cm.options.cluster == "10.0.0.5:6379"
    with CompileSession() as session:  # made lazily: no connection until something is measured
        tuner = session.tuner(TARGET, CompileOptions(tune_trials=2, cluster="ray",
                                                     tune_db=str(tmp_path / "s.db")))
        assert tuner.options.cluster == "ray" and isinstance(tuner.runner, RayRunner)
        assert not tuner.runner.cluster._connected


# ------------------------------------------------------------------------- on the cluster

def test_ray_tunes_like_local_and_commits_each_record_once(cluster, tmp_path):
    kernels = [_linear_gelu(), _softmax()]
    tuner = Tuner(TARGET, _options(tmp_path, cluster="ray"))
    try:
        results = [tuner.tune_kernel(op) for op in kernels]
        summary = tuner.time_summary()
    finally:
        tuner.close()
    assert ray.is_initialized()  # the fixture's connection: attached to, not shut down
    for res, rematched in zip(results, (4, 0)):  # the contraction's library re-match: 4 more
        assert res.statuses == {"ok": 4}, res
        records = _once_per_candidate(tuner.db, res, rematched)
        assert all(r.status in ("ok", "run_error") for r in records)
        assert res.best is not None and res.best_seconds > 0
    assert "cluster: 2 node(s), " in summary and " measurements" in summary, summary
    assert "task time build" in summary and "queue+transfer" in summary and "driver" in summary
    # the same kernels measured here: the same outcome (all ok, outputs checked)
    (tmp_path / "local").mkdir()
    runner = LocalRunner(**FAST)
    try:
        local = Tuner(TARGET, _options(tmp_path / "local"), builder=LocalBuilder(workers=0),
                      runner=runner)
        local_results = [local.tune_kernel(op) for op in kernels]
    finally:
        runner.close()
    assert [r.statuses for r in local_results] == [r.statuses for r in results]
    for here, there in zip(local_results, results):  # the same candidates, each once
        assert {r.fingerprint for r in _primary(local.db.records(here.workload_key))} == \
            {r.fingerprint for r in _primary(tuner.db.records(there.workload_key))}


def test_a_slow_node_is_named_and_its_disagreement_never_picks_the_winner(cluster, tmp_path,
                                                                          caplog):
    """Node B's timings are 3x too slow (test hook): each new winner is timed again on the
    other node, the warning names B, both measurements are stored and the slower counts."""
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    slow = nodes[1]
    conn = RayCluster("ray", TARGET)
    tuner = _ray_tuner(tmp_path, conn, tolerance=1.5, timing_skew={slow: 3.0})
    op = _linear_gelu(name="skewed", m=32, k=128, n=64)
    try:
        with caplog.at_level(logging.WARNING, logger="tilefx.autotune"):
            res = tuner.tune_kernel(op)
    finally:
        tuner.close()
    assert res.statuses == {"ok": 4}, res.statuses
    records = _once_per_candidate(tuner.db, res, rematched=4)
    dropped = [r for r in records if r.error.startswith("timing disagrees")]
    assert dropped, [r.error for r in records]
    warnings = [m for m in caplog.messages if "slower than node" in m]
    assert len(warnings) == len(dropped)
    # the skewed node is the slower one (both nodes share two cores: a rare disagreement
    # the other way is noise, so the majority is asked for)
    named = [f"node {slow[:8]}" in m.split(" timed ")[0] for m in warnings]
    assert sum(named) > len(named) / 2, warnings
    for d in dropped:  # both kept; the one db.best can pick is the slower (max of medians)
        assert d.status == "run_error" and d.samples
        kept = records[records.index(d) - 1]  # stored together: the pair's ok half first
        assert kept.fingerprint == d.fingerprint and kept.ok and "the slower counts" in kept.error
        assert kept.median > 1.5 * d.median
    best = tuner.db.best(res.workload_key, TARGET.key())
    assert best.ok and best.median == res.best_seconds


def test_a_backend_without_a_shipper_builds_where_it_measures(cluster, tmp_path, monkeypatch):
    """Triton's builds live in the process: such a backend's candidates are built by the
    measuring task itself (here TVM with its shipper taken away)."""
    # in this process (the driver) only: no build tasks
    monkeypatch.setattr(type(TARGET.backend()), "ships_builds", False)
    conn = RayCluster("ray", TARGET)
    tuner = _ray_tuner(tmp_path, conn)
    try:
        res = tuner.tune_kernel(_softmax(name="deferred"))
    finally:
        tuner.close()
    assert res.statuses == {"ok": 4} and conn.stats.tasks["build"] == 0
    _once_per_candidate(tuner.db, res)


def test_cli_tune_on_ray(cluster, tmp_path, capsys):
    from tilefx.compiler.cli import main

    src = tmp_path / "m.py"
    src.write_text("import torch\n"
                   "def f(x):\n"
                   "    return torch.softmax(x, dim=-1) * 2.0\n")
    code = main(["tune", f"{src}:f", "--input", "4x16", "--trials", "2", "--timeout", "20",
                 "--strategy", "random", "--db", str(tmp_path / "cli.db"), "--no-progress",
                 "--ray"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| kernel |" in out and "candidates measured" in out and "cluster: " in out, out
    assert ray.is_initialized()
    code = main(["tune", f"{src}:f", "--input", "4x16", "--ray", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "--ray 127.0.0.1:1: cannot connect" in err, err


def _calibrated_task_timeout(conn, op) -> float:
    """A task timeout that scales with how busy this machine is now: 10x a build and a
    measurement of the kernel's default schedule on the (warm) cluster, at least 6 s."""
    import time

    from tilefx.codegen.measure import Workload
    from tilefx.ir.functional_hash import workload_key

    work = Workload(op, TARGET, (), workload_key(op))
    runner = RayRunner(conn, task_timeout=120.0, tolerance=None, **FAST)
    t0 = time.perf_counter()
    (build,) = RayBuilder(conn).build(work, [TARGET.backend().default_schedule(op)])
    (result,) = runner.run(work, [build])
    assert result.status == "ok", result
    return max(6.0, 10 * (time.perf_counter() - t0))


def test_hanging_task_becomes_timeout_and_tuning_goes_on(cluster, tmp_path):
    hung: list = []

    def fault(schedule):
        if not is_extern(schedule) and (not hung or hung[0] == schedule):
            hung[:1] = [schedule]
            return TASK_HANG
        return None

    conn = RayCluster("ray", TARGET)
    op = _relu_add(name="hangs", n=128)
    timeout = _calibrated_task_timeout(conn, op)
    tuner = _ray_tuner(tmp_path, conn, fault=fault, task_timeout=timeout)
    try:
        res = tuner.tune_kernel(op)
    finally:
        tuner.close()
    assert res.trials == 4 and res.statuses == {"ok": 3, "timeout": 1}, res.statuses
    records = _once_per_candidate(tuner.db, res)
    (timed_out,) = [r for r in records if r.status == "timeout"]
    assert f"no result after {timeout:.1f}s" in timed_out.error and "stopped" in timed_out.error
    assert conn.stats.tasks["timeout"] == 1 and res.best is not None


def test_ctrl_c_stops_every_task_and_a_rerun_resumes(cluster, tmp_path, monkeypatch):
    conn = RayCluster("ray", TARGET)
    tuner = _ray_tuner(tmp_path, conn)
    seen = []

    def interrupt_on_second(*args):
        seen.append(args)
        if len(seen) == 2:
            raise KeyboardInterrupt  # as Ctrl-C would, between two results
    monkeypatch.setattr(tuner, "_on_result", interrupt_on_second)
    try:
        res = tuner.tune_kernel(_relu_add(name="stopped", n=64))
    finally:
        tuner.close()
    assert res.interrupted and conn.in_flight == 0 and len(tuner.db.records()) == 2
    rerun = _ray_tuner(tmp_path, RayCluster("ray", TARGET))
    try:
        res2 = rerun.tune_kernel(_relu_add(name="stopped", n=64))
    finally:
        rerun.close()
    assert not res2.interrupted and res2.trials == 2 and res2.statuses == {"ok": 2}
    fps = [r.fingerprint for r in rerun.db.records()]
    assert len(fps) == len(set(fps)) == 4  # each candidate measured and stored once


def test_killed_workers_lose_nothing_and_kernels_travel(cluster, tmp_path):
    """A worker that dies mid-build or mid-measurement is replaced and its task run again;
    one that dies on every attempt is recorded after ``max_tries``; every kernel is shipped
    from the building node's cache to the measuring one's (split caches)."""
    from tilefx.codegen.tvm import cache

    seen: list = []

    def first_searched(kind):
        def fault(schedule):
            if is_extern(schedule):
                return None
            if schedule not in seen:
                seen.append(schedule)
            index = seen.index(schedule)
            return {("measure", 1): TASK_EXIT_FIRST, ("build", 2): TASK_EXIT}.get((kind, index))
        return fault

    conn = RayCluster("ray", TARGET, max_tries=2, split_caches=True)
    tuner = _ray_tuner(tmp_path, conn, build_fault=first_searched("build"),
                       fault=first_searched("measure"))
    try:
        res = tuner.tune_kernel(_relu_add(name="killed"))
    finally:
        tuner.close()
    assert res.trials == 4 and res.statuses == {"ok": 3, "build_error": 1}, res.statuses
    records = _once_per_candidate(tuner.db, res)
    (failed,) = [r for r in records if r.status == "build_error"]
    assert "worker died 2 time(s)" in failed.error, failed.error
    assert conn.stats.tasks["retried"] == 2  # the first attempts of both
    root = Path(os.environ["TILEFX_CACHE_DIR"])  # measurements read <root>/kernels
    built = sorted((root / "ray-build" / "kernels").glob("*.so"))
    assert len(built) == 3, built  # the default and two searched; one never built
    for so in built:  # installed where it was measured, with a sidecar that verifies
        there = root / "kernels" / so.name
        assert there.read_bytes() == so.read_bytes()
        assert there.with_suffix(".sha256").read_text().strip() == \
            cache.entry_digest(so.stem, there)


def _small_model():
    """LayerNorm, GELU, softmax, sigmoid: three kernels (two reductions, one pointwise;
    no library candidate, so no re-match measurements to count around)."""
    import torch

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = torch.nn.LayerNorm(64)

        def forward(self, x):
            h = torch.nn.functional.gelu(self.ln(x))
            return torch.softmax(h * 2.0, dim=-1) + torch.sigmoid(x)

    torch.manual_seed(0)
    return Small().eval(), torch.randn(8, 64)


def _measuring_now(node_id: str) -> bool:
    """Whether the node's measure resource is taken: a measurement runs there now."""
    from ray._private.state import available_resources_per_node

    return available_resources_per_node().get(node_id, {}).get(RESOURCE, 0) < 1


def test_a_node_killed_mid_run_loses_no_record_and_tuning_finishes(cluster, tmp_path):
    """The issue's fault: a whole worker node (its raylet and every worker on it) is killed
    while a small model's kernels are tuned on three measuring nodes, as a record from
    another node is committed and the doomed node is mid-measurement. Its task is submitted
    again on the nodes that remain; tuning finishes; every candidate has exactly one
    record (rows counted); the records committed before the kill are all there; and the
    model compiled from the database matches eager PyTorch."""
    import torch

    import tilefx
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import model_kernels
    from tilefx.compiler.session import CompileSession

    model, x = _small_model()
    with CompileSession() as session:
        kernels = model_kernels(model, (x,), CompileOptions(), session).kernels
    assert len(kernels) >= 2, [k.attr("name") for k in kernels]
    doomed = cluster.add_node(num_cpus=1, resources={RESOURCE: 1})  # head + two workers
    cluster.wait_for_nodes()
    conn = RayCluster("ray", TARGET)
    tuner = _ray_tuner(tmp_path, conn, tolerance=1.5)  # re-timing on, as by default
    before_kill: list = []
    on_result = tuner._on_result

    def kill_while_it_measures(res, bar, measured, r):
        on_result(res, bar, measured, r)  # committed by now
        if not before_kill and _measuring_now(doomed.node_id):
            before_kill.extend((rec.fingerprint, rec.status, rec.samples)
                               for rec in tuner.db.records())
            cluster.remove_node(doomed, allow_graceful=False)  # raylet and workers, SIGKILL

    tuner._on_result = kill_while_it_measures
    try:
        results = [tuner.tune_kernel(op) for op in kernels]
    finally:
        tuner.close()
        if doomed in cluster.worker_nodes:  # the kill never came: leave the fixture as it was
            cluster.remove_node(doomed)
    assert before_kill, "the node was never killed"
    assert doomed.node_id not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert conn.stats.tasks["retried"] >= 1, conn.stats.tasks  # its task ran again elsewhere
    for res in results:
        assert not res.interrupted and res.trials == 4, res
        assert res.statuses == {"ok": 4}, res.statuses
        _once_per_candidate(tuner.db, res)
    records = tuner.db.records()
    primary = _primary(records)
    assert len(primary) == 4 * len(kernels) == \
        len({(r.workload_key, r.fingerprint) for r in primary})  # one row per candidate
    after = [(r.fingerprint, r.status, r.samples) for r in records]
    assert all(rec in after for rec in before_kill), "a record committed before the kill is lost"
    assert len(after) == len(set(after)), "a measurement was written twice"

    db = str(tmp_path / "tuning.db")
    with CompileSession() as session:  # the tuned model, from the database alone
        compiled = tilefx.compile(model, options=CompileOptions(tune_trials=4, tune_db=db),
                                  session=session)
        out = compiled(x)
    assert len(tuner.db.records()) == len(records)  # nothing measured again
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


def test_the_slower_of_two_disagreeing_nodes_counts():
    """The re-timing verdict on made-up results: agree -> both ok; disagree -> the slower
    ok, the faster kept as run_error; a node always on one side is named."""
    from tilefx.autotune.cluster import ClusterMeasureResult
    from tilefx.codegen.measure import Workload
    from tilefx.codegen.schedule import Schedule

    runner = RayRunner(RayCluster("ray", TARGET), tolerance=1.5)  # never connects here
    referee = runner.referee
    work = Workload(_relu_add(), TARGET, (), "wk")

    def result(name, node, ms, status="ok"):
        return ClusterMeasureResult(Schedule.of(tile=name), status, (ms * 1e-3,) * 3, "",
                                    node=node)

    agree = referee.judge(work, result("a", "n1", 1.0), result("a", "n2", 1.2))
    assert agree.status == "ok" and agree.seconds == 1e-3 and len(agree.also) == 1
    assert agree.also[0].status == "ok" and "1.20x apart" in agree.also[0].error
    assert referee.best["wk"][1] == 1e-3  # what db.best will take: the lower of the two
    for name in ("b", "c"):  # node n2 is 3x slower, twice
        kept = referee.judge(work, result(name, "n1", 0.5), result(name, "n2", 1.5))
        assert kept.status == "ok" and kept.seconds == 1.5e-3 and kept.node == "n2"
        (dropped,) = kept.also
        assert dropped.status == "run_error" and dropped.seconds is None
        assert dropped.samples == (0.5e-3,) * 3 and "3.00x > tolerance 1.50x" in dropped.error
    assert referee.best["wk"][1] == 1e-3  # 1.5 ms confirmed does not beat 1.0 ms
    assert dict(referee.odd["n2"]) == {"slower": 2}
    failed = referee.judge(work, result("d", "n1", 0.2), result("d", "n2", 0, "timeout"))
    assert failed.seconds == 0.2e-3 and failed.also[0].status == "timeout"
    assert "re-timing on another node failed" in failed.also[0].error
