"""cluster.yaml and cluster-onprem.yaml validate offline, and broken copies fail by name.

No Ray cluster and no cloud: Ray's schema plus Ray's own prepare_config/validate_config
(what `ray up` checks before it touches a cloud). Each broken copy changes one thing in the
shipped file, so a failure here means the check, not the fixture, is wrong.
"""
import copy
from pathlib import Path

import pytest
import yaml

from filterkd_ray import InputError
from filterkd_ray.cluster import cluster_resources_offered, unplaceable, validate_cluster_config

ROOT = Path(__file__).resolve().parent.parent
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"


def load(path):
    return yaml.safe_load(path.read_text())


def write(tmp_path, cfg, name="broken.yaml"):
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
    return path


def fails(path, *fragments):
    with pytest.raises(InputError) as err:
        validate_cluster_config(path)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


# ---- the shipped configs -------------------------------------------------------------------

def test_aws_config_validates_offline():
    cfg = validate_cluster_config(AWS)
    assert cfg["provider"]["type"] == "aws"
    assert cfg["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    # prepare_config filled what ray up needs; our own setup replaced Ray's default, which
    # would pip-install a nightly Ray wheel.
    assert "cluster_synced_files" in cfg
    assert not any("ray-wheels" in c for c in cfg["head_setup_commands"] + cfg["worker_setup_commands"])
    assert any("pip install" in c and "~/filterkd_ray" in c for c in cfg["setup_commands"])
    assert "~/filterkd_ray" in cfg["file_mounts"]


def test_aws_config_security_defaults():
    cfg = load(AWS)
    # Dashboard on loopback (SSH tunnel only) and token auth on for every container process.
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    assert "--env=RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    # No extra inbound rules (Ray adds only intra-cluster + SSH), so 8265/10001 stay closed.
    assert "IpPermissions" not in cfg["provider"].get("security_group", {})
    # Explicit instance profiles: otherwise Ray creates a role with EC2 + S3 full access.
    for name, node in cfg["available_node_types"].items():
        assert "IamInstanceProfile" in node["node_config"], name


def test_aws_node_types_offer_what_the_sweep_needs():
    offered = {n["node_type"]: n for n in cluster_resources_offered(validate_cluster_config(AWS))}
    assert offered["head_cpu"]["head"] and offered["head_cpu"]["resources"]["GPU"] == 0
    assert offered["head_cpu"]["resources"]["TRAIN_DRIVER"] > 0
    assert offered["gpu_1x"]["resources"]["GPU"] == 1
    assert offered["gpu_4x"]["resources"]["GPU"] == 4
    assert all(n["complete"] for n in offered.values())
    nodes = list(offered.values())
    assert unplaceable(nodes, {"GPU": 4}) is None
    assert unplaceable(nodes, {"CPU": 1, "TRAIN_DRIVER": 1}) is None
    msg = unplaceable(nodes, {"GPU": 8})
    assert msg.startswith("no node type offers GPU: 8") and "gpu_4x" in msg


def test_object_store_flags_match_shm():
    # Each node's --object-store-memory must fit in its container's /dev/shm, or Ray falls
    # back to a slow disk-backed store.
    cfg = load(AWS)

    def gb(opts, prefix):
        (v,) = [o.split("=", 2)[-1] for o in opts if o.startswith(prefix)]
        return float(v[:-1]) if v.endswith("g") else int(v) / 1e9

    head_store = int(" ".join(cfg["head_start_ray_commands"]).split("--object-store-memory=")[1].split()[0])
    assert head_store / 1e9 < gb(cfg["docker"]["head_run_options"], "--shm-size")
    for name in ("gpu_1x", "gpu_4x"):
        opts = cfg["available_node_types"][name]["docker"]["worker_run_options"]
        assert gb(opts, "--env=FILTERKD_OBJECT_STORE_BYTES") < gb(opts, "--shm-size"), name
    assert "${FILTERKD_OBJECT_STORE_BYTES:?" in " ".join(cfg["worker_start_ray_commands"])


def test_onprem_config_validates_offline():
    cfg = validate_cluster_config(ONPREM)
    # Ray turned the IP lists into its single on-premise node type.
    assert list(cfg["available_node_types"]) == ["local.cluster.node"]
    assert cfg["available_node_types"]["local.cluster.node"]["max_workers"] == 2
    offered = cluster_resources_offered(cfg)
    head = offered[0]
    assert head["head"] and head["resources"] == {"TRAIN_DRIVER": 4, "GPU": 0}
    # GPU counts of the workers are detected at start: never reported as "does not fit".
    assert offered[1]["max_nodes"] == 2 and not offered[1]["complete"]
    assert unplaceable(offered, {"GPU": 4}) is None
    assert "TRAIN_DRIVER: 9" in unplaceable(offered, {"TRAIN_DRIVER": 9})


# ---- broken copies -------------------------------------------------------------------------

def test_key_typo_is_rejected_with_a_suggestion(tmp_path):
    cfg = load(AWS)
    cfg["setup_comands"] = cfg.pop("setup_commands")
    fails(write(tmp_path, cfg), "setup_comands", "did you mean 'setup_commands'")


def test_nested_key_typo_names_the_node_type(tmp_path):
    cfg = load(AWS)
    node = cfg["available_node_types"]["gpu_1x"]
    node["node_confg"] = node.pop("node_config")
    fails(write(tmp_path, cfg), "available_node_types.gpu_1x.node_confg", "'node_config'")


def test_fractional_resource_is_rejected(tmp_path):
    cfg = load(AWS)
    cfg["available_node_types"]["gpu_1x"]["resources"]["CPU"] = 0.5
    fails(write(tmp_path, cfg), "available_node_types.gpu_1x.resources.CPU", "0.5", "whole number")


def test_min_workers_above_max_workers_is_rejected(tmp_path):
    cfg = load(AWS)
    cfg["available_node_types"]["gpu_1x"]["min_workers"] = 8
    cfg["available_node_types"]["gpu_4x"]["min_workers"] = 2
    cfg["max_workers"] = 9                           # 8 + 2 > 9: Ray's own check
    fails(write(tmp_path, cfg), "max_workers", "min_workers")


def test_local_provider_with_node_types_is_rejected(tmp_path):
    cfg = load(ONPREM)
    cfg["available_node_types"] = {"gpu": {"resources": {"GPU": 1}, "node_config": {}}}
    cfg["head_node_type"] = "gpu"
    fails(write(tmp_path, cfg), "available_node_types", "on-premise")


def test_unquoted_resources_json_is_reported_as_the_yaml_trap(tmp_path):
    text = ONPREM.read_text().replace(
        "    - ~/filterkd-venv/bin/ray stop\n    # RAY_AUTH_MODE",
        "    - ray start --head --resources='{\"TRAIN_DRIVER\": 4}'\n    # RAY_AUTH_MODE", 1)
    assert text != ONPREM.read_text()
    fails(write(tmp_path, text), "head_start_ray_commands.0", "mapping", "quote")


def test_bad_resources_json_in_ray_start_is_rejected(tmp_path):
    text = ONPREM.read_text().replace("""--resources='{"TRAIN_DRIVER": 4}'""",
                                      """--resources='{"TRAIN_DRIVER": 4'""")
    fails(write(tmp_path, text), "head_start_ray_commands", "not JSON")


def test_gpu_count_must_match_the_instance_type(tmp_path):
    cfg = load(AWS)
    cfg["available_node_types"]["gpu_4x"]["node_config"]["InstanceType"] = "g5.xlarge"
    fails(write(tmp_path, cfg), "available_node_types.gpu_4x.resources", "g5.xlarge has")


def test_head_node_type_must_exist(tmp_path):
    cfg = load(AWS)
    cfg["head_node_type"] = "head"
    fails(write(tmp_path, cfg), "head_node_type")


def test_missing_file_and_non_mapping(tmp_path):
    fails(tmp_path / "nope.yaml", "not found")
    fails(write(tmp_path, "- just\n- a list\n"), "YAML mapping")
    fails(write(tmp_path, "a: [1,\n"), "not valid YAML", "line")


def test_unknown_instance_type_is_incomplete_not_wrong():
    cfg = copy.deepcopy(load(AWS))
    node = cfg["available_node_types"]["gpu_1x"]
    node["node_config"]["InstanceType"] = "x9.future"
    node["resources"] = {}
    offered = {n["node_type"]: n for n in cluster_resources_offered(cfg)}
    assert offered["gpu_1x"]["resources"] == {} and not offered["gpu_1x"]["complete"]
