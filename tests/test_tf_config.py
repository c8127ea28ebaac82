"""TF_CONFIG as trainer.distribution=multi_worker reads it (components/trainer/cluster.py): every
fault is a TFConfigError (exit 2) naming TF_CONFIG and what is wrong. Pure Python; the `seq2seq
train` processes of tests/test_multi_worker.py check the CLI's exit code and its one line."""
from __future__ import annotations

import json

import pytest

from components.trainer.cluster import Task, TFConfigError, read_tf_config

WORKERS = {"worker": ["host1:2222", "host2:2222", "[::1]:2223"]}


def read(value) -> object:
    return read_tf_config({"TF_CONFIG": value if isinstance(value, str) else json.dumps(value)})


def test_a_valid_tf_config_gives_the_training_tasks_and_this_one():
    cluster = read({"cluster": {"chief": ["boss:1"], **WORKERS, "evaluator": ["ev:3"]},
                    "task": {"type": "worker", "index": 2}})
    assert [str(t) for t in cluster.tasks] == ["chief 0 (boss:1)", "worker 0 (host1:2222)", "worker 1 (host2:2222)",
                                               "worker 2 ([::1]:2223)"]  # the evaluator is not waited for
    assert cluster.own == Task("worker", 2, "[::1]:2223") and cluster.own.host_port == ("::1", 2223)
    assert [t.index for t in cluster.peers] == [0, 0, 1]
    assert read_tf_config({}) is None  # not set: one worker (the trainer warns)


@pytest.mark.parametrize("value, fault", [
    ("", "TF_CONFIG is set but empty"),
    ("{'cluster': {}}", "TF_CONFIG is not valid JSON: Expecting property name"),
    ([1, 2], 'TF_CONFIG must be a JSON object with "cluster" and "task"'),
    ({"task": {"type": "worker", "index": 0}}, 'TF_CONFIG has no "cluster"'),
    ({"cluster": WORKERS}, 'TF_CONFIG has no "task"'),
    ({"cluster": {"worker": "host1:2222"}, "task": {"type": "worker", "index": 0}},
     'TF_CONFIG "cluster": worker must be a non-empty list of "host:port" addresses'),
    ({"cluster": {"worker": ["host1"]}, "task": {"type": "worker", "index": 0}},
     "TF_CONFIG \"cluster\": worker address 'host1' is not \"host:port\""),
    ({"cluster": {"workers": ["host1:1"]}, "task": {"type": "worker", "index": 0}},
     "TF_CONFIG \"cluster\" has an unknown job 'workers'"),
    ({"cluster": {"ps": ["host1:1"]}, "task": {"type": "worker", "index": 0}},
     'TF_CONFIG "cluster" has no "worker" (or "chief") job'),
    ({"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}},
     'TF_CONFIG "cluster" has 2 chief addresses: at most one'),
    ({"cluster": WORKERS, "task": {"type": "evaluator", "index": 0}},
     "TF_CONFIG \"task\" type 'evaluator' cannot train"),
    ({"cluster": WORKERS, "task": {"type": "chief", "index": 0}},
     "TF_CONFIG \"task\" type 'chief' is not a job of \"cluster\" (worker)"),
    ({"cluster": WORKERS, "task": {"type": "worker"}}, 'TF_CONFIG "task" index must be an integer'),
    ({"cluster": WORKERS, "task": {"type": "worker", "index": "1"}}, 'TF_CONFIG "task" index must be an integer'),
    ({"cluster": WORKERS, "task": {"type": "worker", "index": -1}}, 'TF_CONFIG "task" index -1 is out of range'),
    ({"cluster": WORKERS, "task": {"type": "worker", "index": 3}},
     'TF_CONFIG "task" index 3 is out of range: the cluster has 3 worker address(es), so 0 to 2'),
])
def test_a_malformed_tf_config_names_the_fault(value, fault):
    with pytest.raises(TFConfigError) as error:
        read(value)
    assert str(error.value).startswith(fault), str(error.value)
    assert error.value.exit_code == 2 and "\n" not in str(error.value)
