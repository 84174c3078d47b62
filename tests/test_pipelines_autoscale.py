"""A real Ray autoscaler on this machine (the fake multi-node provider; GPUs are logical resources):
while ingestion keeps the Condenser pool busy, the pool grows onto a second GPU node that the
autoscaler launches, and once the work is done the idle GPU nodes are released."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from ._pipelines_helpers import REPO, HeadNode, tiny_model, write_corpus

ray = pytest.importorskip("ray")


def local_autoscaler_config() -> dict:
    """ray_cluster.yaml with its cloud parts swapped for the fake multi-node provider on this machine:
    the same node types (a CPU head, GPU workers from 0 to max), smaller and quicker to go idle."""
    import yaml

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    config["provider"] = {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                          "disable_launch_config_check": True}  # fmt: skip
    types = config["available_node_types"]
    config["available_node_types"] = {
        "ray.head.default": types["head"] | {"resources": {"CPU": 2}, "node_config": {}},
        "gpu_worker": types["gpu_worker"] | {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "max_workers": 2},
    }
    config.update(head_node_type="ray.head.default", max_workers=2, upscaling_speed=10.0, idle_timeout_minutes=0.05)
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands", "initialization_commands",
                "head_setup_commands", "worker_setup_commands", "cluster_synced_files", "rsync_exclude",
                "rsync_filter"):  # fmt: skip
        config[key] = []  # the monitor reads all of these
    config.update(auth={}, file_mounts={}, docker={}, file_mounts_sync_continuously=False)
    return config


def alive_gpu_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def test_condenser_pool_grows_under_load_and_idle_nodes_are_released(tmp_path):
    model = tiny_model(tmp_path / "model")
    write_corpus(tmp_path / "corpus", 48, tokens=10_000)  # ~40 s for one actor: time for a second to join
    head = HeadNode(num_cpus=2, autoscaling_config=local_autoscaler_config())
    try:
        ray.init(address=head.address, log_to_driver=False)
        assert alive_gpu_nodes() == 0
        seen, done = [0], threading.Event()

        def watch():
            while not done.is_set():
                seen[0] = max(seen[0], alive_gpu_nodes())
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        env = dict(head.env, RAY_DATA_MIN_GAP_BETWEEN_AUTOSCALING_REQUESTS="2", PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "beacon_cli.main", "ingest", str(tmp_path / "corpus"), "--db",
               str(tmp_path / "db"), "--model", str(model), "--address", head.address, "--gpus-per-actor", "1",
               "--actors", "1:2", "--batch-size", "2", "--no-progress", "--json"]  # fmt: skip
        out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        done.set()
        watcher.join()
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        report = json.loads(out.stdout)
        assert report["n_condensed"] == 48
        nodes = {w.split(":")[0] for w, s in report["workers"].items() if s["items"]}
        assert seen[0] == 2 and len(nodes) == 2, (seen, report["workers"])  # grew onto a second GPU node
        deadline = time.time() + 120
        while alive_gpu_nodes() and time.time() < deadline:  # idle nodes go once the idle timeout passes
            time.sleep(1)
        assert alive_gpu_nodes() == 0
    finally:
        ray.shutdown()
        head.stop()
